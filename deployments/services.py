"""All writes and state transitions of deployments: creating one, attaching
and detaching adapters, stop/start/restart/delete, and the status changes the
node agent's supervisor records."""

from __future__ import annotations

import logging
import secrets
import shlex

from django.conf import settings as django_settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from audit.services import audit_record
from cluster import services as cluster_services
from cluster.models import Accelerator, CachedArtifact, Node
from config import changes, jobs
from config.errors import DomainError
from config.vault import seal
from deployments import lifecycle, memory, placement, revisions, tasks, vllm_args
from deployments.models import Deployment, DeploymentAdapter, DeploymentEvent, DeploymentRevision
from registry.models import Artifact, ArtifactKind, Compatibility

log = logging.getLogger(__name__)


def event_record(*, deployment: Deployment, message: str, status: str = "") -> DeploymentEvent:
    """Adds an event to the deployment's timeline, and drops its oldest beyond PLUGBOARD_EVENTS_KEPT: a
    server that crash-loops all night must not grow the table without end."""
    event = DeploymentEvent.objects.create(deployment=deployment, status=status, message=message)
    keep = django_settings.PLUGBOARD_EVENTS_KEPT
    newest_first = DeploymentEvent.objects.filter(deployment=deployment).order_by("-pk")
    if dropped := list(newest_first.values_list("pk", flat=True)[keep : keep + 1]):
        DeploymentEvent.objects.filter(deployment=deployment, pk__lte=dropped[0]).delete()
    return event


def revision_record(*, deployment: Deployment, user=None, restores: int | None = None) -> DeploymentRevision:
    """Records the deployment's arguments and resources as its revision `deployment.revision`, made by `user`."""
    return DeploymentRevision.objects.create(
        deployment=deployment, number=deployment.revision, node=deployment.node,
        accelerator_indices=list(deployment.accelerator_indices), settings=deployment.settings,
        extra_args=deployment.extra_args, encrypted_env=deployment.encrypted_env, restores=restores,
        created_by=user if user is not None and user.is_authenticated else None,
    )  # fmt: skip


def _nudge(deployment: Deployment) -> None:
    """Once the change is committed, wakes the supervisor on the deployment's node."""
    _nudge_node(deployment.node)


def _nudge_node(node: Node) -> None:
    queue = node.queue
    # Only a wake-up: the supervisor reconciles every second anyway, so a lost or repeated one is harmless.
    jobs.send_on_commit(lambda: tasks.reconcile_now.apply_async(queue=queue, expires=30), what=f"a nudge of {node}")


# Status changes -------------------------------------------------------------
# Each is a named move that says where it may come from (deployments/lifecycle.py holds the table).
# The check and the write are one conditional UPDATE, so a change made meanwhile by another
# process (a stop from the web while the supervisor marks the server ready) is never overwritten.


def _move(*, deployment: Deployment, to: str | None, reason: str, always_noted: bool = False, **fields) -> Deployment:
    """Moves `deployment` to the status `to` (None: keeps it) with `fields`, if the table allows
    the move from the status it has in the database; records an event when the status changes
    (or, with `always_noted`, in any case). Raises IllegalTransition, and logs it, otherwise."""
    current = Deployment.objects.filter(pk=deployment.pk).values_list("status", flat=True).first()
    if current is None:
        raise lifecycle.IllegalTransition(f"Deployment {deployment.pk} no longer exists.")
    target = current if to is None else to
    if to is not None:
        try:
            lifecycle.check(current, to)
        except lifecycle.IllegalTransition:
            log.error(
                "refused to move deployment %s (%s) from %s to %s: %s",
                deployment.pk,
                deployment.name,
                current,
                to,
                reason,
            )
            raise
    updated = Deployment.objects.filter(pk=deployment.pk, status=current).update(
        status=target, status_reason=reason, **fields
    )
    if updated != 1:  # it changed between the read and the write: the caller looks again
        raise lifecycle.IllegalTransition(f"Deployment {deployment.name} changed meanwhile; not moved to {target}.")
    if target != current or always_noted:
        event_record(deployment=deployment, status=target if target != current else "", message=reason)
    if target != current or {"port", "pid", "launched_node"} & fields.keys():
        changes.announce()  # the gateway routes by status and port
    deployment.refresh_from_db()
    return deployment


def deployment_mark_fetching(*, deployment: Deployment, reason: str) -> Deployment:
    """The node fetches what the deployment needs before its server can start."""
    return _move(deployment=deployment, to=lifecycle.FETCHING, reason=reason)


def deployment_mark_launching(
    *, deployment: Deployment, token: str, port: int, command: str, log_path: str, node: Node
) -> Deployment:
    """Records, before its process exists, that `node` is launching a server for the deployment's current
    revision on `port`, which will carry `token` in its environment: an agent that dies before it records
    the pid (deployment_mark_started) finds that server by the token when it comes back, and adopts or stops
    it (supervisor.Supervisor.recover_launch) instead of launching a second one. The status stays as it is."""
    # Only while it should still run and nothing moved it since the supervisor read it: a stop asked for
    # meanwhile must not be followed by a launch.
    updated = Deployment.objects.filter(
        pk=deployment.pk, status=deployment.status, desired=Deployment.Desired.RUNNING
    ).update(
        launch_token=token, port=port, command=command, log_path=log_path, launched_revision=deployment.revision,
        launched_node=node,
    )  # fmt: skip
    if updated != 1:
        raise lifecycle.IllegalTransition(f"Deployment {deployment.name} changed meanwhile; not launched.")
    deployment.refresh_from_db()
    return deployment


def deployment_mark_started(
    *,
    deployment: Deployment,
    pid: int,
    process_identity: str,
    port: int,
    command: str,
    log_path: str,
    node: Node,
    revision: int | None = None,
    reason: str = "",
) -> Deployment:
    """The node launched (or, after a restart of its agent, found) the server of `revision` (by default the
    deployment's own); it is starting (or still restarting, if it was). The launch intent is settled."""
    restarting = deployment.status == lifecycle.RESTARTING
    return _move(
        deployment=deployment, to=None if restarting else lifecycle.STARTING,
        reason=reason or f"Started the server (pid {pid}) on port {port}.", always_noted=bool(reason), pid=pid,
        process_identity=process_identity, port=port, started_at=timezone.now(), command=command,
        log_path=log_path, next_start_at=None, launched_revision=revision or deployment.revision,
        launched_node=node, launch_token="",
    )  # fmt: skip


def deployment_forget_launch(*, deployment: Deployment, reason: str, noted: bool = True) -> Deployment:
    """Settles a launch whose server was not found running after the agent came back (or was stopped, as
    no longer wanted), or could not start at all: the deployment holds no server on that node, and the
    supervisor starts one if it should run. `reason` goes on the timeline unless not `noted` (the caller
    says what happened next)."""
    if not noted:
        reason = deployment.status_reason
    return _move(
        deployment=deployment, to=None, reason=reason, always_noted=noted, launch_token="", pid=None, port=None,
        process_identity="", launched_node=None,
    )  # fmt: skip


def deployment_note_adopted(*, deployment: Deployment, reason: str) -> DeploymentEvent:
    """Puts on the timeline that a node agent found the deployment's server running when it started (its
    agent was restarted) and supervises it from now on; nothing else changes."""
    return event_record(deployment=deployment, message=reason)


def deployment_forget_process(*, deployment: Deployment, reason: str) -> Deployment:
    """Forgets a server whose pid now names another process (the node restarted, or the number was
    reused): that process is never adopted or signalled. The supervisor starts a new server if one
    should run."""
    return _move(deployment=deployment, to=None, reason=reason, always_noted=True, pid=None, process_identity="")


def deployment_mark_ready(*, deployment: Deployment, reason: str, log_tail: str | None = None) -> Deployment:
    """The server answers its health check (after a start, or again). Its count of crashes stays: the
    supervisor forgets them only once a server has stayed up (supervisor.CRASH_WINDOW)."""
    fields = {"ready_at": timezone.now()} if deployment.status != lifecycle.DEGRADED else {}
    if log_tail is not None:
        fields["log_tail"] = log_tail
    return _move(deployment=deployment, to=lifecycle.READY, reason=reason, **fields)


def deployment_mark_degraded(*, deployment: Deployment, reason: str) -> Deployment:
    return _move(deployment=deployment, to=lifecycle.DEGRADED, reason=reason)


def _check_fields(fields: dict, allowed: set[str]) -> None:
    """Refuses a field a transition does not own: a programming error, never a user's."""
    unknown = fields.keys() - allowed
    if unknown:
        raise TypeError(f"This transition does not set {', '.join(sorted(unknown))}.")


def deployment_mark_restarting(*, deployment: Deployment, reason: str, **fields) -> Deployment:
    """The server is being restarted: it crashed (with the backoff in `fields`), a restart or a
    new revision was asked for, or it moved to this node and waits for the old one."""
    _check_fields(fields, {"pid", "restart_requested", "failures", "next_start_at", "log_tail"})
    return _move(deployment=deployment, to=lifecycle.RESTARTING, reason=reason, **fields)


def deployment_mark_failed(*, deployment: Deployment, reason: str, **fields) -> Deployment:
    """It waits for a person: too many crashes in a row, or its base model cannot be fetched."""
    _check_fields(fields, {"pid", "port", "failures", "log_tail"})
    return _move(deployment=deployment, to=lifecycle.FAILED, reason=reason, **fields)


def deployment_mark_stopped(*, deployment: Deployment, reason: str = "Stopped.") -> Deployment:
    """Its server is gone, as it should be; its port is free."""
    return _move(deployment=deployment, to=lifecycle.STOPPED, reason=reason, pid=None, port=None, launched_node=None)


def _check_adapter(*, base: Artifact, adapter: Artifact, workspace) -> None:
    if adapter.workspace_id != workspace.pk:
        raise DomainError("That adapter belongs to another workspace.")
    if adapter.kind != ArtifactKind.ADAPTER or not adapter.is_ready:
        raise DomainError(f"{adapter.name} is not a ready LoRA adapter.")
    verdict = Compatibility.objects.filter(adapter=adapter, base=base).first()
    if verdict is None or not verdict.compatible:
        reasons = "; ".join(verdict.reasons) if verdict else "no verdict was computed"
        raise DomainError(f"{adapter.name} does not fit {base.name}: {reasons}")


def _served_name(name: str) -> str:
    served = slugify(name)
    if not served:
        raise DomainError(f"“{name}” cannot be a served name: use letters, digits and dashes.")
    return served


def deployment_create(
    *,
    workspace,
    name: str,
    base: Artifact,
    node: Node | None = None,
    adapters: list[tuple[Artifact, str]] = (),
    accelerator_indices: list[int] | None = None,
    settings: dict | None = None,
    extra_args: str = "",
    extra_env: str = "",
    allow_trust_remote_code: bool = False,
    user=None,
) -> Deployment:
    """Creates a deployment that should run on `node` (or wherever it fits,
    when None); the node's agent fetches what it needs and starts the server.
    Refuses anything that could not run, with the reason, and then changes
    nothing."""
    name = slugify(name)
    if not name:
        raise DomainError("Give the deployment a name: letters, digits and dashes.")
    if base.workspace_id != workspace.pk:
        raise DomainError("That base model belongs to another workspace.")
    if base.kind != ArtifactKind.BASE or not base.is_ready:
        raise DomainError(f"{base.name} is not a ready base model.")
    served = []
    for adapter, served_name in adapters:
        _check_adapter(base=base, adapter=adapter, workspace=workspace)
        served.append((adapter, _served_name(served_name or adapter.name)))
    names = [s for _, s in served]
    if len(set(names)) != len(names):
        raise DomainError("Two adapters have the same served name; give each its own.")
    if name in names:
        raise DomainError(f"An adapter's served name cannot be the deployment's own name “{name}”.")

    options = {k: v for k, v in (settings or {}).items() if k in vllm_args.SETTINGS and v not in (None, "")}
    _check_context(base=base, options=options)
    ranks = [a.rank or 1 for a, _ in served]
    states = accelerator_states()
    device = options.pop("device", None) or device_for(node, states)
    if device == "cuda":
        options.setdefault("tensor_parallel_size", max(1, len(accelerator_indices or ())) if node else 1)
    try:
        options.setdefault("max_lora_rank", vllm_args.default_max_lora_rank(ranks))
        options.setdefault("max_loras", vllm_args.default_max_loras(len(served), device=device))
    except vllm_args.ArgumentError as exc:
        raise DomainError(str(exc)) from None
    need = memory_estimate(base=base, device=device, options=options)
    if node is not None and not node.is_online:
        raise DomainError(f"The node {node.name} is offline: its agent has not reported for a while.")
    if node is None and not any(s.node_online for s in states):
        raise DomainError(
            "No node is online to place the deployment on: start a node agent (or wait until one reports), "
            "then deploy again."
        )
    try:
        placed = placement.decide(
            states, device=device, node=node.name if node else None, indices=list(accelerator_indices or ()),
            count=options.get("tensor_parallel_size", 1), need_bytes=need.needed,
            gpu_memory_utilization=options.get("gpu_memory_utilization"),
        )  # fmt: skip
    except placement.PlacementError as exc:
        raise DomainError(str(exc)) from None
    node = node or Node.objects.get(name=placed.node)
    # On CPU, automatic placement names the node's CPU accelerator; a CPU deployment holds no GPU numbers.
    accelerator_indices = list(placed.indices) if device == "cuda" else []
    server_command(
        name=name, device=device, indices=tuple(accelerator_indices or ()), options=options,
        adapters=[(s, "/adapter", a.rank or 1) for a, s in served], extra_args=extra_args, extra_env=extra_env,
        allow_trust_remote_code=allow_trust_remote_code, model_files=model_files_of(base),
    )  # fmt: skip
    _check_runtime_arguments(node=node, extra_args=extra_args)

    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                workspace=workspace,
                name=name,
                base=base,
                node=node,
                device=device,
                accelerator_indices=list(accelerator_indices or []),
                settings=options,
                extra_args=extra_args,
                encrypted_env=Deployment.env_seal(extra_env),
                encrypted_api_key=seal({"api_key": "pbk_" + secrets.token_urlsafe(24)}),
                created_by=user,
            )
            for adapter, served_name in served:
                DeploymentAdapter.objects.create(deployment=deployment, adapter=adapter, served_name=served_name)
            revision_record(deployment=deployment, user=user)
            event_record(
                deployment=deployment, status=Deployment.Status.PENDING, message=f"Deployed {base.name} on {node.name}."
            )
            audit_record(
                action="deployment.create",
                target=deployment,
                detail={"base": base.name, "node": node.name, "adapters": [served for _, served in served]},
            )
            _nudge(deployment)
    except IntegrityError:
        raise DomainError(f"A deployment named “{name}” already exists; model ids must be unique.") from None
    return deployment


def accelerator_states(*, excluding: Deployment | None = None) -> list[placement.AcceleratorState]:
    """Every accelerator as placement sees it: a GPU is busy while a deployment
    that should run holds it (other than `excluding`, which is being moved)."""
    held: set[tuple[int, int]] = set()
    holders = Deployment.objects.filter(desired=Deployment.Desired.RUNNING, device="cuda")
    if excluding is not None:
        holders = holders.exclude(pk=excluding.pk)
    for node_id, indices in holders.values_list("node_id", "accelerator_indices"):
        held.update((node_id, i) for i in indices)
    return [
        placement.AcceleratorState(
            node=a.node.name,
            node_online=a.node.is_online,
            kind=a.kind,
            index=a.index,
            memory_total=a.memory_total_bytes,
            memory_free=a.memory_free_bytes,
            busy=a.kind == "gpu" and (a.node_id, a.index) in held,
        )
        for a in Accelerator.objects.select_related("node")
    ]


def device_for(node: Node | None, states: list[placement.AcceleratorState]) -> str:
    """GPUs where the node (or, for automatic placement, any online node) has them, else the CPU."""
    gpus = [s for s in states if s.kind == "gpu" and (s.node == node.name if node else s.node_online)]
    return "cuda" if gpus else "cpu"


def memory_estimate(*, base: Artifact, device: str, options: dict) -> memory.Estimate:
    """The preflight estimate of what the server needs per accelerator."""
    shape = memory.ModelShape.from_config(
        base.config, parameter_count=base.parameter_count or 0, weight_bytes=base.weight_bytes or 0,
        dtype=base.dtype, tensors=base.tensors,
    )  # fmt: skip
    return memory.estimate(
        shape, device=device, max_model_len=options.get("max_model_len"),
        gpu_memory_utilization=options.get("gpu_memory_utilization"),
        tensor_parallel_size=options.get("tensor_parallel_size", 1), max_loras=options["max_loras"],
        max_lora_rank=options["max_lora_rank"], max_cpu_loras=options.get("max_cpu_loras"),
        kv_cache_bytes=options.get("kv_cache_bytes"), dtype=options.get("dtype", "auto"),
    )  # fmt: skip


def server_command(
    *, name: str, device: str, indices, options: dict, extra_args: str, extra_env: str,
    allow_trust_remote_code: bool | None = None, model_files=None, model_path: str = "/model", adapters=(),
    host: str = "127.0.0.1", port: int = 8000, api_key: str = "check",
) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """The one way a deployment's server command is made, for the checks at creation and edit,
    the wizard's review, the node's launch and the benchmark: the extra arguments and
    environment (plain text) parsed once, the whole spec validated, then the argv and the
    environment the server gets on top of its own. `adapters` are (served name, path, rank).

    The extra arguments and environment are checked under the administrator's settings in
    force now (PLUGBOARD_ALLOWED_FLAGS, PLUGBOARD_ALLOWED_ENV, and PLUGBOARD_ALLOW_TRUST_REMOTE_CODE
    unless `allow_trust_remote_code` is given), so a relaunch is refused when a setting no longer
    allows what a deployment was saved with. `model_files` (the base model's files, model_files_of)
    are what a path flag may name. Raises DomainError listing every problem."""
    if allow_trust_remote_code is None:
        allow_trust_remote_code = django_settings.PLUGBOARD_ALLOW_TRUST_REMOTE_CODE
    policy = {
        "allow_trust_remote_code": allow_trust_remote_code,
        "allowed_flags": frozenset(django_settings.PLUGBOARD_ALLOWED_FLAGS),
        "allowed_env": frozenset(django_settings.PLUGBOARD_ALLOWED_ENV),
        "model_files": None if model_files is None else frozenset(model_files),
    }
    try:
        spec = vllm_args.ServerSpec(
            model_path=model_path,
            served_name=name,
            host=host,
            port=port,
            api_key=api_key,
            adapters=tuple(
                vllm_args.AdapterSpec(served_name=f"{name}:{s}", path=p, rank=r or 1) for s, p, r in adapters
            ),
            device=device,
            gpu_indices=tuple(indices) if device == "cuda" else (),
            dtype=options.get("dtype", "auto"),
            max_model_len=options.get("max_model_len"),
            gpu_memory_utilization=options.get("gpu_memory_utilization"),
            tensor_parallel_size=options.get("tensor_parallel_size", max(1, len(indices)) if device == "cuda" else 1),
            max_loras=options["max_loras"],
            max_lora_rank=options["max_lora_rank"],
            max_cpu_loras=options.get("max_cpu_loras"),
            enable_prefix_caching=options.get("enable_prefix_caching"),
            enforce_eager=options.get("enforce_eager", False),
            kv_cache_bytes=options.get("kv_cache_bytes"),
            cpu_threads=options.get("cpu_threads"),
            extra_args=tuple(
                vllm_args.parse_extra_args(
                    extra_args, allow_trust_remote_code=allow_trust_remote_code,
                    allowed_flags=policy["allowed_flags"], model_files=policy["model_files"],
                )
            ),
            extra_env=vllm_args.parse_env(extra_env, allowed_env=policy["allowed_env"]),
            **policy,
        )  # fmt: skip
        vllm_args.validate(spec)
    except vllm_args.ArgumentError as exc:
        raise DomainError(str(exc)) from None
    return vllm_args.build_command(str(django_settings.PLUGBOARD_VLLM_PYTHON), spec)


def model_files_of(base: Artifact) -> frozenset[str] | None:
    """The files of `base`'s manifest (paths relative to its folder), which path flags such as
    --chat-template may name; None when the registry listed none (only the form is checked then)."""
    return frozenset(base.files.values_list("path", flat=True)) or None


def max_model_len_problem(*, base: Artifact, max_model_len) -> str | None:
    """Why vLLM would refuse this max model length for `base` (longer than the model's own context, as
    its config says), or None. vLLM only says so when the server starts, after the model loaded."""
    limit = base.context_length
    if isinstance(max_model_len, int) and limit and max_model_len > limit:
        return (
            f"{base.name} allows at most {limit} tokens (its max_position_embeddings); "
            f"choose {limit} or fewer, or leave it blank."
        )
    return None


def _check_context(*, base: Artifact, options: dict) -> None:
    problem = max_model_len_problem(base=base, max_model_len=options.get("max_model_len"))
    if problem:
        raise DomainError(problem)


def _check_runtime_arguments(*, node: Node, extra_args: str) -> None:
    problem = runtime_argument_problem(node=node, extra_args=extra_args)
    if problem:
        raise DomainError(problem)


def runtime_argument_problem(*, node: Node, extra_args: str) -> str | None:
    """Why the model server installed on `node` would refuse these extra arguments (a flag it does not
    know, a value of the wrong type), from the flags its agent reports; None when it would take them,
    or when the node has not reported its flags (yet)."""
    runtime = next((r for r in node.vllm_runtimes if r.get("flags")), None)
    if runtime is None or not extra_args.strip():
        return None
    try:
        tokens = shlex.split(extra_args)  # what is allowed is checked elsewhere (server_command)
    except ValueError:
        return None  # server_command says why it cannot be read
    try:
        vllm_args.check_against_runtime(
            tokens, runtime["flags"], runtime=f"vLLM {runtime.get('version', '')} on {node.name}"
        )
    except vllm_args.ArgumentError as exc:
        return str(exc)
    return None


def adapter_attach(*, deployment: Deployment, adapter: Artifact, served_name: str = "") -> DeploymentAdapter:
    """Adds an adapter to a running deployment's desired set; the supervisor
    fetches it and loads it into the live server, without a restart.

    The checks and the insert run with the deployment's row locked, so two
    attaches at once are judged one after the other: the second sees the first
    (its slot, its served name) and is refused with a message, never a 500."""
    _check_adapter(base=deployment.base, adapter=adapter, workspace=deployment.workspace)
    name = _served_name(served_name or adapter.name)
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
        _check_attach(deployment=deployment, adapter=adapter, name=name)
        try:
            with transaction.atomic():
                attached = DeploymentAdapter.objects.create(deployment=deployment, adapter=adapter, served_name=name)
        except IntegrityError:  # SQLite has no row locks: the unique constraints are the last word there
            raise DomainError(f"{adapter.name} or the served name “{name}” was attached meanwhile.") from None
        event_record(deployment=deployment, message=f"Attaching {adapter.name} as {attached.model_id}.")
        audit_record(action="deployment.attach", target=deployment, detail={"adapter": adapter.name, "as": name})
    changes.announce()
    _nudge(deployment)
    return attached


def _check_attach(*, deployment: Deployment, adapter: Artifact, name: str) -> None:
    """Raises DomainError when `adapter` cannot join `deployment` (read with its row locked) as `name`."""
    if deployment.desired != Deployment.Desired.RUNNING:
        raise DomainError("Start the deployment first; adapters attach to a running server.")
    max_rank = deployment.settings["max_lora_rank"]
    if (adapter.rank or 0) > max_rank:
        raise DomainError(
            f"{adapter.name} has rank {adapter.rank}, above this deployment's max LoRA rank {max_rank}. "
            "Redeploy with a larger max LoRA rank to use it."
        )
    current = deployment.adapters.exclude(state=DeploymentAdapter.State.DETACHING).count()
    if current >= deployment.max_adapters:
        raise DomainError(
            f"This deployment holds {current} adapter(s), its limit. Detach one, or raise its adapter limit "
            "(max_adapters) if the node's cache has room for more."
        )
    if deployment.adapters.filter(adapter=adapter).exists():
        raise DomainError(f"{adapter.name} is already attached.")
    if name == deployment.name or deployment.adapters.filter(served_name=name).exists():
        raise DomainError(f"The served name “{name}” is taken in this deployment; choose another.")


def deployment_set_max_adapters(*, deployment: Deployment, max_adapters: int) -> Deployment:
    """Sets how many adapters may be attached. The server is not restarted: the limit guards the node's
    cache, while vLLM swaps any number of adapters through its slots."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
        current = deployment.adapters.exclude(state=DeploymentAdapter.State.DETACHING).count()
        if max_adapters < max(1, current):
            raise DomainError(
                f"{current} adapter(s) are attached: detach some first, or keep the limit at {max(1, current)} or more."
            )
        Deployment.objects.filter(pk=deployment.pk).update(max_adapters=max_adapters)
        deployment.max_adapters = max_adapters
        event_record(deployment=deployment, message=f"Adapter limit set to {max_adapters}.")
        audit_record(action="deployment.update", target=deployment, detail={"max_adapters": max_adapters})
    return deployment


def adapter_detach(*, attached: DeploymentAdapter) -> None:
    """Marks an adapter to be unloaded from the live server; the supervisor unloads it and forgets it."""
    with transaction.atomic():
        DeploymentAdapter.objects.filter(pk=attached.pk).update(state=DeploymentAdapter.State.DETACHING)
        event_record(deployment=attached.deployment, message=f"Detaching {attached.model_id}.")
        audit_record(
            action="deployment.detach",
            target=attached.deployment,
            detail={"adapter": attached.adapter.name, "as": attached.served_name},
        )
    changes.announce()  # the gateway stops routing to it at once
    _nudge(attached.deployment)


def adapter_mark(*, attached: list[DeploymentAdapter], state: str, error: str = "") -> None:
    """Records what the supervisor found or did to attached adapters (fetching, loaded, failed)."""
    DeploymentAdapter.objects.filter(pk__in=[a.pk for a in attached]).update(state=state, error=error)
    changes.announce()


def adapter_fetch_failed(*, attached: DeploymentAdapter, failed_at, error: str, retry_in: int) -> None:
    """Counts a failed fetch of an attached adapter (the one that ended at `failed_at`) and says on the
    deployment's timeline when the supervisor asks for it again. The adapter shows the error, and as fetching
    unless its server has it loaded already (from an earlier copy)."""
    failures = attached.fetch_failures + 1
    DeploymentAdapter.objects.filter(pk=attached.pk).update(
        error=error, fetch_failures=failures, fetch_failed_at=failed_at
    )
    DeploymentAdapter.objects.filter(pk=attached.pk, state=DeploymentAdapter.State.PENDING).update(
        state=DeploymentAdapter.State.FETCHING
    )
    attached.refresh_from_db()
    name = attached.adapter.name
    event_record(
        deployment=attached.deployment,
        message=f"Fetching {name} failed: {error.rstrip('.')}. Retrying the fetch of {name} in {retry_in} s "
        f"(attempt {failures + 1}).",
    )
    changes.announce()


def adapter_fetch_succeeded(*, attached: DeploymentAdapter) -> None:
    """Forgets the failed fetches of an adapter now in the node's cache: a later failure backs off afresh."""
    DeploymentAdapter.objects.filter(pk=attached.pk).update(fetch_failures=0, fetch_failed_at=None, error="")
    attached.fetch_failures, attached.fetch_failed_at, attached.error = 0, None, ""


def adapter_forget(*, attached: DeploymentAdapter) -> None:
    """Forgets an adapter the supervisor has unloaded after a detach, and lets go of its cached copy
    (which the node may then evict, and the Cluster page no longer shows in use)."""
    deployment = attached.deployment
    event_record(deployment=deployment, message=f"Detached {attached.model_id}.")
    cluster_services.cache_release(holder=deployment, artifact=attached.adapter, node=deployment.node)
    attached.delete()


def deployment_stop(*, deployment: Deployment) -> Deployment:
    """Asks the supervisor to stop the server; its port and accelerators are freed."""
    if deployment.desired == Deployment.Desired.STOPPED:
        raise DomainError("It is already stopped or stopping.")
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(desired=Deployment.Desired.STOPPED)
        audit_record(action="deployment.stop", target=deployment)
        _nudge(deployment)
        return _move(deployment=deployment, to=lifecycle.STOPPING, reason="Stop requested.")


def deployment_start(*, deployment: Deployment) -> Deployment:
    if deployment.desired == Deployment.Desired.RUNNING and not deployment.is_terminal:
        raise DomainError("It is already running or starting.")
    with transaction.atomic():
        _refetch_failed_base(deployment)
        Deployment.objects.filter(pk=deployment.pk).update(
            desired=Deployment.Desired.RUNNING, failures=0, next_start_at=None
        )
        audit_record(action="deployment.start", target=deployment)
        _nudge(deployment)
        return _move(deployment=deployment, to=lifecycle.PENDING, reason="Start requested.")


def _refetch_failed_base(deployment: Deployment) -> None:
    """Asks again for the base model when its fetch to the deployment's node failed: the supervisor fails a
    deployment whose base could not be fetched, so without a new fetch a Start would fail at once with the old
    reason. Raises DomainError (the node is offline, the model is no longer ready) for the person to act on."""
    if deployment.node is None:
        return
    failed = CachedArtifact.objects.filter(
        node=deployment.node, artifact=deployment.base, status=CachedArtifact.Status.FAILED
    ).exists()
    if failed:
        cluster_services.artifact_fetch_request(artifact=deployment.base, node=deployment.node)


def deployment_delete(*, deployment: Deployment) -> None:
    """Deletes a stopped deployment and releases its cached artifacts."""
    if deployment.desired != Deployment.Desired.STOPPED or deployment.status != Deployment.Status.STOPPED:
        raise DomainError("Stop the deployment and wait until it has stopped before deleting it.")
    with transaction.atomic():
        audit_record(action="deployment.delete", target=deployment)
        cluster_services.cache_release(holder=deployment)
        deployment.delete()
        changes.announce()


def deployment_restart(*, deployment: Deployment) -> Deployment:
    """Restarts the server (same revision); the adapter set comes back as it is."""
    if deployment.desired != Deployment.Desired.RUNNING or deployment.status not in (
        Deployment.Status.READY,
        Deployment.Status.DEGRADED,
        Deployment.Status.STARTING,
    ):
        raise DomainError("Only a running server can be restarted; start it instead.")
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(restart_requested=True)
        event_record(deployment=deployment, message="Restart requested.")
        audit_record(action="deployment.restart", target=deployment)
    _nudge(deployment)
    deployment.refresh_from_db()
    return deployment


def deployment_update(
    *,
    deployment: Deployment,
    settings: dict | None = None,
    extra_args: str | None = None,
    extra_env: str | None = None,
    node: Node | None = None,
    accelerator_indices: list[int] | None = None,
    allow_trust_remote_code: bool = False,
    user=None,
) -> Deployment:
    """Changes the server's arguments or its resources (node, GPUs): a new
    revision, recorded in its history as made by `user`, which is redeployed.
    A deployment that moves to another node is stopped on the old one first.
    Checked like a new deployment; refused changes leave everything as it was.
    `extra_env` is plain "NAME=value" lines; a "NAME=****" line (the value as pages
    show it) keeps NAME's stored value, and a name left out is removed."""
    new_node = node or deployment.node
    indices = list(deployment.accelerator_indices if accelerator_indices is None else accelerator_indices)
    moved = new_node.pk != deployment.node_id or indices != list(deployment.accelerator_indices)
    given = {k: v for k, v in (settings or {}).items() if k in vllm_args.SETTINGS and k != "device"}
    options = {k: v for k, v in {**deployment.settings, **given}.items() if v not in (None, "")}
    _check_context(base=deployment.base, options=options)
    extra_args = deployment.extra_args if extra_args is None else extra_args
    stored_env = deployment.env_text
    try:
        extra_env = stored_env if extra_env is None else vllm_args.env_keep(extra_env, stored_env)
    except vllm_args.ArgumentError as exc:
        raise DomainError(str(exc)) from None
    attached = list(deployment.adapters.exclude(state=DeploymentAdapter.State.DETACHING).select_related("adapter"))
    # Blank means the default, as at creation.
    options.setdefault("max_lora_rank", vllm_args.default_max_lora_rank([a.adapter.rank or 1 for a in attached]))
    device = deployment.device
    if moved:
        device, indices = _check_move(
            deployment=deployment, node=new_node, indices=indices, options=options, given=given, adapters=len(attached)
        )
    options.setdefault("max_loras", vllm_args.default_max_loras(len(attached), device=device))
    server_command(
        name=deployment.name, device=device, indices=tuple(indices), options=options,
        adapters=[(a.served_name, "/adapter", a.adapter.rank or 1) for a in attached], extra_args=extra_args,
        extra_env=extra_env, allow_trust_remote_code=allow_trust_remote_code, model_files=model_files_of(deployment.base),
    )  # fmt: skip
    _check_runtime_arguments(node=new_node, extra_args=extra_args)
    changed = [
        k for k in sorted(set(options) | set(deployment.settings)) if options.get(k) != deployment.settings.get(k)
    ]
    changed += [
        label
        for label, old, new in (
            ("node", deployment.node.name, new_node.name),
            ("GPUs", list(deployment.accelerator_indices), indices),
            ("extra arguments", deployment.extra_args, extra_args),
            ("environment", _env_items(stored_env), _env_items(extra_env)),
        )
        if old != new
    ]
    if not changed:
        raise DomainError("Nothing changed.")
    old_node = deployment.node
    with transaction.atomic():
        updated = Deployment.objects.filter(pk=deployment.pk, revision=deployment.revision).update(
            settings=options, extra_args=extra_args, encrypted_env=Deployment.env_seal(extra_env),
            revision=deployment.revision + 1,
            node=new_node, device=device, accelerator_indices=indices,
        )  # fmt: skip
        if updated != 1:  # another change was saved meanwhile; this one was checked against what it replaced
            raise DomainError("It was changed meanwhile: look at it again, then make your change.")
        where = f" on {new_node.name}" if new_node != old_node else ""
        event_record(
            deployment=deployment,
            message=f"Revision {deployment.revision + 1}: changed {', '.join(changed)}; redeploying{where}.",
        )
        deployment.refresh_from_db()
        revision_record(deployment=deployment, user=user)
        audit_record(
            action="deployment.update", target=deployment, detail={"revision": deployment.revision, "changed": changed}
        )
        _nudge(deployment)
        if new_node != old_node:
            _nudge_node(old_node)
    return deployment


def _env_items(text: str) -> list[tuple[str, str | None]]:
    """The variables `text` sets, as they would reach the server: what tells an edit from "nothing changed"."""
    return [(name, value) for _, name, value in vllm_args.env_lines(text)]


def deployment_rollback(
    *, deployment: Deployment, revision_number: int, user=None, allow_trust_remote_code: bool = False
) -> Deployment:
    """Makes a new revision with the arguments and resources of revision `revision_number`, through
    `deployment_update` (so checked like any change: the node online, the model fitting), and records
    the rollback on the timeline. The server restarts with it, as for any new revision. Raises
    DomainError for the current revision, an unknown one, or one the deployment has now in all but number."""
    if revision_number == deployment.revision:
        raise DomainError(f"Revision {revision_number} is the current one: there is nothing to roll back.")
    chosen = deployment.revisions.select_related("node").filter(number=revision_number).first()
    if chosen is None:
        raise DomainError(f"{deployment.name} has no revision {revision_number}.")
    if chosen.node is None:
        raise DomainError(f"The node revision {revision_number} ran on was removed; edit the deployment instead.")
    if not revisions.describe(revisions.snapshot_of(deployment), revisions.snapshot_of(chosen)):
        raise DomainError(
            f"Revision {revision_number} has the arguments and resources the deployment has now: nothing to roll back."
        )
    # Settings the chosen revision did not state go back to their defaults (None drops them).
    settings = {key: None for key in deployment.settings} | chosen.settings
    with transaction.atomic():
        deployment = deployment_update(
            deployment=deployment, settings=settings, extra_args=chosen.extra_args, extra_env=chosen.env_text,
            node=chosen.node, accelerator_indices=list(chosen.accelerator_indices),
            allow_trust_remote_code=allow_trust_remote_code, user=user,
        )  # fmt: skip
        DeploymentRevision.objects.filter(deployment=deployment, number=deployment.revision).update(
            restores=revision_number
        )
        event_record(
            deployment=deployment,
            message=f"Rolled back to revision {revision_number} as revision {deployment.revision}.",
        )
        audit_record(
            action="deployment.rollback", target=deployment, detail={"to": revision_number, "as": deployment.revision}
        )
    return deployment


def _check_move(*, deployment: Deployment, node: Node, indices: list[int], options: dict, given: dict, adapters: int):
    """Checks new resources as a new deployment's manual placement would be
    checked, fitting `options` to the device found there; returns (device, indices)."""
    if not node.is_online:
        raise DomainError(f"The node {node.name} is offline: its agent has not reported for a while.")
    states = accelerator_states(excluding=deployment)
    device = device_for(node, states)
    for key in vllm_args.CPU_ONLY_SETTINGS if device == "cuda" else vllm_args.GPU_ONLY_SETTINGS:
        options.pop(key, None)
    if device == "cuda":
        if given.get("tensor_parallel_size") is None:
            options["tensor_parallel_size"] = max(1, len(indices))
    else:
        indices = []
    if "max_loras" not in options or (device != deployment.device and "max_loras" not in given):
        options["max_loras"] = vllm_args.default_max_loras(adapters, device=device)
    need = memory_estimate(base=deployment.base, device=device, options=options)
    try:
        placement.decide(
            states, device=device, node=node.name, indices=indices, need_bytes=need.needed,
            gpu_memory_utilization=options.get("gpu_memory_utilization"),
        )  # fmt: skip
    except placement.PlacementError as exc:
        raise DomainError(str(exc)) from None
    return device, indices


def deployment_release(*, deployment: Deployment, node: Node, reason: str) -> Deployment:
    """Records that `node` no longer runs a server for a deployment that moved
    away (its supervisor stopped it, or the node is offline): its cached
    artifacts there are released and the node it moved to may start it."""
    with transaction.atomic():
        cluster_services.cache_release(holder=deployment, node=node)
        if deployment.desired == Deployment.Desired.STOPPED:
            to = lifecycle.STOPPED
        else:
            # A failed deployment stays failed wherever it is; anything else restarts on its new node.
            to = None if deployment.status == lifecycle.FAILED else lifecycle.RESTARTING
        # The timeline shows the hand-over even when the new node marked it restarting already.
        deployment = _move(
            deployment=deployment, to=to, reason=reason, always_noted=True, pid=None, port=None, launched_node=None
        )
        _nudge(deployment)
    return deployment
