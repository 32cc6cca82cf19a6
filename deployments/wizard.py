"""The deploy wizard's steps: what each asks, how it is checked, and how the
answers become a call to `deployment_create`. The answers live in the
session until Deploy, so Back keeps what was entered."""

from __future__ import annotations

from django import forms
from django.conf import settings as django_settings
from django.utils.text import slugify

from cluster.models import CachedArtifact, Node
from config.errors import DomainError
from config.forms import StyledForm
from config.vault import seal, unseal
from deployments import memory, placement, services, vllm_args
from deployments.models import Deployment
from registry.models import Artifact, ArtifactKind, ArtifactStatus, Compatibility

STEPS = ["base", "adapters", "resources", "server", "review"]
TITLES = {
    "base": "Base model",
    "adapters": "Adapters",
    "resources": "Resources",
    "server": "Model server",
    "review": "Review",
}
GiB = 1 << 30


def ready_bases(user):
    return Artifact.objects.filter(
        workspace__memberships__user=user, kind=ArtifactKind.BASE, status=ArtifactStatus.READY
    ).select_related("workspace")


class BaseForm(StyledForm):
    base = forms.ModelChoiceField(queryset=None, widget=forms.RadioSelect, empty_label=None)
    name = forms.SlugField(
        max_length=63,
        label="Deployment name",
        help_text="Letters, digits and dashes; also the base model's id on the gateway.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["base"].queryset = ready_bases(user)

    def clean_name(self):
        name = self.cleaned_data["name"]
        # Names are unique across the console (the model's constraint), as gateway model ids must be.
        if Deployment.objects.filter(name=name).exists():
            raise forms.ValidationError(
                f"A deployment named “{name}” already exists, and model ids must be unique; choose another name."
            )
        return name


def adapter_rows(base: Artifact, data: dict) -> list[dict]:
    """Every adapter of the base's workspace, with whether it fits and its chosen served name."""
    verdicts = {v.adapter_id: v for v in Compatibility.objects.filter(base=base).select_related("adapter")}
    chosen = {int(k): v for k, v in data.get("adapters", {}).items() if k.isdigit()}
    rows = []
    for adapter in Artifact.objects.filter(workspace=base.workspace, kind=ArtifactKind.ADAPTER).order_by("name"):
        verdict = verdicts.get(adapter.pk)
        rows.append({
            "adapter": adapter,
            "fits": bool(verdict and verdict.compatible),
            "reason": "; ".join(verdict.reasons) if verdict else (adapter.problems[0] if adapter.problems else "Not inspected yet."),
            "selected": adapter.pk in chosen,
            "served_name": chosen.get(adapter.pk, adapter.name),
        })  # fmt: skip
    return rows


def posted_adapters(post) -> dict[str, str]:
    """{adapter id: served name} as the adapters step's form sent them, unchecked."""
    return {value: post.get(f"served_name_{value}", "").strip() for value in post.getlist("adapter")}


def read_adapters(post, base: Artifact, *, name: str) -> dict[str, str]:
    """{adapter id: served name} from the adapters step, refusing adapters that do not fit
    and served names that cannot be model ids (`name` is the deployment's)."""
    fits = set(Compatibility.objects.filter(base=base, compatible=True).values_list("adapter_id", flat=True))
    chosen = posted_adapters(post)
    for value, served in chosen.items():
        if not value.isdigit() or int(value) not in fits:
            raise DomainError("Only adapters that fit this base model can be selected.")
        if served:
            _check_served_name(served)
    names = [n for n in chosen.values() if n]
    if len(set(names)) != len(names):
        raise DomainError("Two adapters have the same served name; give each its own.")
    if name in names:
        raise DomainError(f"An adapter's served name cannot be the deployment's own name “{name}”; choose another.")
    return chosen


def _check_served_name(served: str) -> None:
    """Refuses a served name that is no model id, or that the deployment would serve under another spelling."""
    if not vllm_args.SERVED_NAME.fullmatch(served):
        raise DomainError(
            f"“{served}” cannot be a served name: it is part of a model id, so no spaces; use letters, digits, "
            "“.”, “_”, “:” and “-”, starting with a letter or digit."
        )
    slug = slugify(served)
    if slug != served:
        raise DomainError(
            f"“{served}” would be served as “{slug}” (lower-case letters, digits and dashes); write that."
        )


class ResourcesForm(StyledForm):
    """Where the server runs and how much memory it takes. With `base`, a max model length
    above the model's own context is refused."""

    placement = forms.ChoiceField(choices=[("auto", "Automatic"), ("manual", "Manual")], widget=forms.RadioSelect)
    node = forms.ModelChoiceField(queryset=Node.objects.all(), required=False, help_text="Manual placement only.")
    gpus = forms.CharField(
        required=False, label="GPUs", help_text="Manual placement on a GPU node: the GPU numbers, e.g. 0,1."
    )
    max_model_len = forms.IntegerField(
        required=False,
        min_value=16,
        label="Max model length (tokens)",
        help_text="Prompt and answer together; blank for the model's own context length.",
    )
    gpu_memory_utilization = forms.FloatField(
        required=False,
        min_value=0.05,
        max_value=1.0,
        label="GPU memory share",
        help_text="GPU nodes: the share of each GPU's memory vLLM claims; "
        f"blank for {vllm_args.DEFAULT_GPU_MEMORY_UTILIZATION:g}.",
    )
    kv_cache_gib = forms.FloatField(
        required=False,
        min_value=0.25,
        max_value=1 << 20,  # 1 PiB: a bound that no node reaches, and that keeps the bytes an integer
        initial=vllm_args.DEFAULT_CPU_KV_CACHE_BYTES / GiB,
        label="KV cache (GiB)",
        help_text=f"CPU nodes: memory for the tokens in flight; blank for {vllm_args.DEFAULT_CPU_KV_CACHE_BYTES / GiB:g} GiB.",
        error_messages={"min_value": "Give the KV cache at least 0.25 GiB, or leave it blank for the default."},
    )
    cpu_threads = forms.CharField(
        required=False,
        label="CPU threads",
        help_text="CPU nodes: the cores to bind, e.g. 0-1; blank for vLLM's choice.",
    )

    def __init__(self, *args, base: Artifact | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.base = base
        if base is not None and base.context_length:
            self.fields[
                "max_model_len"
            ].help_text = f"Prompt and answer together; blank for the model's own, {base.context_length}."

    def clean_max_model_len(self):
        value = self.cleaned_data["max_model_len"]
        problem = services.max_model_len_problem(base=self.base, max_model_len=value) if self.base else None
        if problem:
            raise forms.ValidationError(problem)
        return value

    def clean(self):
        data = super().clean()
        if data.get("placement") == "manual" and not data.get("node"):
            self.add_error("node", "Pick a node for a manual placement.")
        try:
            data["gpu_indices"] = [int(x) for x in (data.get("gpus") or "").replace(" ", "").split(",") if x]
        except ValueError:
            self.add_error("gpus", "Write GPU indices as numbers separated by commas.")
        return data


class ResourcesStepForm(ResourcesForm):
    """The wizard's resources step: its fields, then whether the deployment fits where
    they place it, given the answers of the other steps (`answers`)."""

    def __init__(self, *args, base: Artifact, answers: dict, **kwargs):
        super().__init__(*args, base=base, **kwargs)
        self.answers = answers

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        resources = stored(data)
        problem = placement_problem({**self.answers, "resources": resources}, self.base)
        if problem:
            # The KV cache is to blame when the smallest one would fit (it only counts on CPU).
            smallest = {**resources, "kv_cache_gib": self.fields["kv_cache_gib"].min_value}
            if data.get("kv_cache_gib") and not placement_problem({**self.answers, "resources": smallest}, self.base):
                self.add_error("kv_cache_gib", f"{problem} Choose a smaller KV cache.")
            else:
                self.add_error(None, problem)
        return data


def stored(cleaned: dict) -> dict:
    """A step's cleaned answers as the session keeps them (rows by primary key; the environment sealed,
    since its values can be secrets and a session outlives an abandoned wizard)."""
    answers = {k: (v.pk if hasattr(v, "pk") else v) for k, v in cleaned.items()}
    if "extra_env" in answers:
        answers["extra_env"] = seal({"env": answers["extra_env"]}).decode()
    return answers


def env_of(server: dict) -> str:
    """The environment text the server step's answers hold (stored() sealed it)."""
    sealed = server.get("extra_env") or ""
    return unseal(sealed.encode()).get("env", "") if sealed else ""


def server_initial(data: dict) -> dict:
    """The server step's form as the answers so far fill it (the environment unsealed for the person typing it)."""
    server = data.get("server") or {"dtype": "auto"}
    return {**server, "extra_env": env_of(server)}


class ServerForm(StyledForm):
    dtype = forms.ChoiceField(
        choices=[(d, d) for d in vllm_args.DTYPES],
        initial="auto",
        label="Data type",
        help_text="auto: the precision the model was saved in, as vLLM picks it.",
    )
    tensor_parallel_size = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=64,
        label="GPUs per server",
        help_text="GPU nodes: GPUs one server spans (tensor parallel); blank for one per GPU chosen, or 1.",
    )
    max_loras = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1024,
        label="Max adapters in one batch",
        help_text="How many different adapters one batch of requests may use (vLLM's --max-loras); more can be "
        "attached, they take turns. Blank for the number chosen, at most "
        f"{vllm_args.DEFAULT_MAX_LORAS}.",
    )
    max_lora_rank = forms.TypedChoiceField(
        choices=[("", "The smallest that fits the adapters"), *((r, r) for r in vllm_args.VLLM_LORA_RANKS)],
        coerce=int, required=False, empty_value=None, label="Max LoRA rank",
        help_text=f"The largest adapter rank it can serve; with no adapter, blank is {vllm_args.VLLM_DEFAULT_MAX_LORA_RANK}.",
    )  # fmt: skip
    max_cpu_loras = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1024,
        label="Adapters kept in memory",
        help_text="Adapters kept loaded (vLLM's --max-cpu-loras), at least the max in one batch; the others "
        "are loaded from disk on first use. Blank for vLLM's default, the max in one batch.",
    )
    enable_prefix_caching = forms.BooleanField(
        required=False, label="Prefix caching", help_text="Reuse the KV cache of shared prompt prefixes."
    )
    enforce_eager = forms.BooleanField(required=False, label="Eager mode (no CUDA graphs)")
    extra_args = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Extra arguments",
        help_text="More vLLM flags, e.g. --max-num-seqs 16; the flags set above are refused here.",
    )
    extra_env = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Environment",
        help_text="KEY=value, one per line, from the console's list (e.g. OMP_NUM_THREADS, VLLM_LOGGING_LEVEL). "
        "Values are stored encrypted and never shown again.",
    )

    # The base model whose files path flags (--chat-template) may name; None checks only their form.
    base: Artifact | None = None

    def clean_extra_args(self):
        return self._checked(
            "extra_args", vllm_args.parse_extra_args,
            allow_trust_remote_code=django_settings.PLUGBOARD_ALLOW_TRUST_REMOTE_CODE,
            allowed_flags=django_settings.PLUGBOARD_ALLOWED_FLAGS,
            model_files=services.model_files_of(self.base) if self.base else None,
        )  # fmt: skip

    def clean_extra_env(self):
        return self._checked("extra_env", vllm_args.parse_env, allowed_env=django_settings.PLUGBOARD_ALLOWED_ENV)

    def _checked(self, name: str, parse, **policy) -> str:
        """The field's text, once `parse` accepts it under the administrator's settings `policy`."""
        try:
            parse(self.cleaned_data[name], **policy)
        except vllm_args.ArgumentError as exc:
            raise forms.ValidationError(str(exc)) from None
        return self.cleaned_data[name]


class ServerStepForm(ServerForm):
    """The wizard's server step: its fields, then whether the deployment still fits where it
    is placed with these settings (adapter slots and GPUs per server change what it needs)."""

    def __init__(self, *args, base: Artifact, answers: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.base, self.answers = base, answers

    def clean(self):
        data = super().clean()
        if not self.errors:
            answers = {**self.answers, "server": stored(data)}
            try:
                node, _, _ = resolve_placement(answers, self.base)
            except DomainError as exc:
                self.add_error(None, exc.message)
                return data
            problem = services.runtime_argument_problem(node=node, extra_args=data.get("extra_args") or "")
            if problem:
                self.add_error("extra_args", problem)
        return data


def answers_from(deployment) -> dict:
    """The wizard's answers that would make `deployment` again ("Duplicate"): its base under a new
    name, its adapters and served names, its node and GPUs (placed by hand), and its settings."""
    settings = deployment.settings
    kv_cache = settings.get("kv_cache_bytes")
    indices = list(deployment.accelerator_indices)
    resources = {
        "placement": "manual", "node": deployment.node_id, "gpus": ",".join(map(str, indices)), "gpu_indices": indices,
        "max_model_len": settings.get("max_model_len"), "gpu_memory_utilization": settings.get("gpu_memory_utilization"),
        "kv_cache_gib": kv_cache / GiB if kv_cache else None, "cpu_threads": settings.get("cpu_threads") or "",
    }  # fmt: skip
    server_fields = ("dtype", "tensor_parallel_size", "max_loras", "max_lora_rank", "max_cpu_loras")
    server = {key: settings.get(key) for key in server_fields}
    server |= {
        "enable_prefix_caching": bool(settings.get("enable_prefix_caching")),
        "enforce_eager": bool(settings.get("enforce_eager")),
        "extra_args": deployment.extra_args, "extra_env": seal({"env": _env_to_retype(deployment)}).decode(),
    }  # fmt: skip
    attached = deployment.adapters.exclude(state="detaching")
    return {
        "base": {"base": deployment.base_id, "name": f"{deployment.name}-copy"[:63]},
        "adapters": {str(a.adapter_id): a.served_name for a in attached},
        "resources": resources,
        "server": server,
    }


def _env_to_retype(deployment) -> str:
    """The copy's environment box: the names the original sets, commented out, since values (secrets,
    maybe) are never copied into a form or the session; deploying without typing them sets none."""
    names = deployment.env_names
    if not names:
        return ""
    return "\n".join(
        [f"# The values of {deployment.name}'s variables are not copied: type each, then remove its #."]
        + [f"# {name}=" for name in names]
    )


def chosen_adapters(data: dict) -> list[tuple[Artifact, str]]:
    ids = {int(k): v for k, v in data.get("adapters", {}).items()}
    return [(a, ids[a.pk]) for a in Artifact.objects.filter(pk__in=ids).order_by("name")]


def settings_of(data: dict, device: str) -> dict:
    """The deployment settings the answers so far say, with the defaults the wizard offers."""
    resources, server = data.get("resources", {}), data.get("server", {})
    adapters = chosen_adapters(data)
    options = {
        "dtype": server.get("dtype") or "auto",
        "max_model_len": resources.get("max_model_len"),
        "max_lora_rank": server.get("max_lora_rank")
        or vllm_args.default_max_lora_rank([a.rank or 1 for a, _ in adapters]),
        "max_loras": server.get("max_loras") or vllm_args.default_max_loras(len(adapters), device=device),
        "max_cpu_loras": server.get("max_cpu_loras"),
        "enable_prefix_caching": server.get("enable_prefix_caching") or None,
        "enforce_eager": bool(server.get("enforce_eager")),
    }
    if device == "cpu":
        kv_cache_gib = resources.get("kv_cache_gib")
        options["kv_cache_bytes"] = int(kv_cache_gib * GiB) if kv_cache_gib else vllm_args.DEFAULT_CPU_KV_CACHE_BYTES
        options["cpu_threads"] = resources.get("cpu_threads") or None
    else:
        options["gpu_memory_utilization"] = (
            resources.get("gpu_memory_utilization") or vllm_args.DEFAULT_GPU_MEMORY_UTILIZATION
        )
        options["tensor_parallel_size"] = server.get("tensor_parallel_size") or max(
            1, len(resources.get("gpu_indices") or [])
        )
    return {k: v for k, v in options.items() if v is not None}


def node_kinds() -> dict:
    """{node id: "gpu" or "cpu"} for the resources step's script, which shows only the fields that
    apply where the deployment would go; "auto" is the kind automatic placement picks."""
    states = services.accelerator_states()
    kinds = {
        str(node.pk): "gpu" if services.device_for(node, states) == "cuda" else "cpu" for node in Node.objects.all()
    }
    kinds["auto"] = "gpu" if services.device_for(None, states) == "cuda" else "cpu"
    return kinds


def preflight(data: dict, base: Artifact) -> list[dict]:
    """Per accelerator of every node: whether the deployment fits, and why (the resources step's table)."""
    rows = []
    states = services.accelerator_states()
    for state in states:
        device = "cuda" if state.kind == "gpu" else "cpu"
        options = settings_of(data, device)
        estimate = services.memory_estimate(base=base, device=device, options=options)
        verdict = memory.verdict(
            estimate, memory_total=state.memory_total, memory_free=state.memory_free,
            gpu_memory_utilization=options.get("gpu_memory_utilization"), device=device,
        )  # fmt: skip
        rows.append(
            {
                "state": state,
                "fits": verdict.fits and state.node_online and not state.busy,
                "reason": verdict.reason if state.node_online else "The node is offline.",
                "busy": state.busy,
            }
        )
    return rows


def resolve_placement(data: dict, base: Artifact) -> tuple[Node, str, list[int]]:
    """The node, device and GPU indices the answers give: the chosen node, checked, or
    automatic placement's choice. Raises DomainError saying why it does not fit."""
    resources = data.get("resources", {})
    states = services.accelerator_states()
    chosen = None
    if resources.get("placement") == "manual" and resources.get("node"):
        chosen = Node.objects.get(pk=resources["node"])
    device = services.device_for(chosen, states)
    options = settings_of(data, device)
    need = services.memory_estimate(base=base, device=device, options=options).needed
    try:
        placed = placement.decide(
            states, device=device, node=chosen.name if chosen else None, count=options.get("tensor_parallel_size", 1),
            indices=list(resources.get("gpu_indices") or []) if chosen and device == "cuda" else [],
            need_bytes=need, gpu_memory_utilization=options.get("gpu_memory_utilization"),
        )  # fmt: skip
    except placement.PlacementError as exc:
        raise DomainError(str(exc)) from None
    return chosen or Node.objects.get(name=placed.node), device, list(placed.indices) if device == "cuda" else []


def placement_problem(data: dict, base: Artifact) -> str | None:
    """Why the answers place the deployment nowhere, or None when they do."""
    try:
        resolve_placement(data, base)
    except DomainError as exc:
        return exc.message
    return None


def command_preview(data: dict, base: Artifact, placed: tuple[Node, str, list[int]]) -> str:
    """The exact command line the node will run on `placed` (what resolve_placement
    gives), secrets masked and the port left to the node."""
    node, device, indices = placed
    options = settings_of(data, device)
    cache = f"{node.cache_dir}/artifacts"

    def path(artifact: Artifact) -> str:
        return f"{cache}/{CachedArtifact(artifact=artifact, revision=artifact.resolved_revision).key}"

    name = data["base"]["name"]
    server = data.get("server", {})
    argv, env = services.server_command(
        name=name, device=device, indices=indices, options=options, model_path=path(base),
        adapters=[(services._served_name(s or a.name), path(a), a.rank or 1) for a, s in chosen_adapters(data)],
        host=node.address, port=1, api_key="secret", extra_args=server.get("extra_args", ""),
        extra_env=env_of(server), model_files=services.model_files_of(base),
    )  # fmt: skip
    argv[argv.index("--port") + 1] = "<port chosen by the node>"
    # The user's variables are shown by name only: their values can be secrets, and the page may be shared.
    # The key is a placeholder here, masked where the environment holds it, like the real one would be.
    typed = set(vllm_args.env_names(env_of(server)))
    environment = " ".join(
        f"{k}={vllm_args.ENV_MASK if k in typed or v == 'secret' else v}" for k, v in sorted(env.items())
    )
    return f"{environment} {vllm_args.display(argv)}"


def deploy(data: dict, *, workspace, user):
    """Creates the deployment the answers describe."""
    base = Artifact.objects.get(pk=data["base"]["base"])
    node, device, indices = resolve_placement(data, base)
    server = data.get("server", {})
    return services.deployment_create(
        workspace=workspace, name=data["base"]["name"], base=base, node=node, adapters=chosen_adapters(data),
        accelerator_indices=indices, settings={**settings_of(data, device), "device": device},
        extra_args=server.get("extra_args", ""), extra_env=env_of(server),
        allow_trust_remote_code=django_settings.PLUGBOARD_ALLOW_TRUST_REMOTE_CODE, user=user,
    )  # fmt: skip
