"""The deployment page's edit form: arguments and resources, saved as a new revision."""

from __future__ import annotations

from deployments import vllm_args
from deployments.models import Deployment
from deployments.wizard import GiB, ResourcesForm, ServerForm

SETTING_FIELDS = (
    "dtype", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "max_loras", "max_lora_rank",
    "max_cpu_loras", "enforce_eager", "cpu_threads",
)  # fmt: skip


# What a setting the deployment does not state means, as the form shows it.
UNSTATED = {"dtype": "auto", "enforce_eager": False}


class DeploymentEditForm(ResourcesForm, ServerForm):
    """The wizard's resources and server fields, less the choice of automatic
    placement: an edit names the node (and GPUs) it should run on."""

    placement = None

    field_order = ["node", "gpus", *SETTING_FIELDS, "kv_cache_gib", "enable_prefix_caching", "extra_args", "extra_env"]

    def __init__(self, *args, base=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.base = base
        self.fields["node"].required = True
        self.fields["node"].empty_label = None
        self.fields["gpus"].help_text = "GPU nodes: the GPU indices, e.g. 0,1. Ignored on a CPU node."
        self.fields["max_loras"].help_text = (
            "How many different adapters one batch of requests may use (vLLM's --max-loras); more can be attached, "
            f"they take turns. Blank for the number attached, at most {vllm_args.DEFAULT_MAX_LORAS}."
        )
        # Stored values are never shown (they can be secrets): the box starts with NAME=****, which keeps one.
        self.fields["extra_env"].help_text = (
            f"KEY=value, one per line. Values are not shown: leave a line as KEY={vllm_args.ENV_MASK} to keep its "
            "value, type a new value to change it, remove the line to unset it."
        )

    @staticmethod
    def initial_for(deployment: Deployment) -> dict:
        settings = deployment.settings
        initial = {k: settings.get(k) for k in SETTING_FIELDS}
        kv_cache_bytes = settings.get("kv_cache_bytes")
        initial.update(
            node=deployment.node_id,
            gpus=",".join(map(str, deployment.accelerator_indices)),
            gpu_indices=list(deployment.accelerator_indices),  # not a field: what the GPUs were
            kv_cache_gib=kv_cache_bytes / GiB if kv_cache_bytes else None,
            enable_prefix_caching=bool(settings.get("enable_prefix_caching")),
            extra_args=deployment.extra_args,
            extra_env=deployment.env_masked,
        )
        return initial

    def update_arguments(self) -> dict:
        """The keyword arguments of `deployment_update` this form's answers give."""
        data = self.cleaned_data
        settings = {k: data.get(k) for k in SETTING_FIELDS}
        settings["kv_cache_bytes"] = int(data["kv_cache_gib"] * GiB) if data.get("kv_cache_gib") else None
        # Unticked means vLLM's own default, as in the wizard.
        settings["enable_prefix_caching"] = True if data.get("enable_prefix_caching") else None
        for key, default in UNSTATED.items():
            if settings[key] == default and self.initial.get(key) is None:
                settings[key] = None  # the form shows the default; the deployment never set it
        moved_gpus = data.get("gpu_indices") != self.initial.get("gpu_indices")
        if moved_gpus and settings["tensor_parallel_size"] == self.initial.get("tensor_parallel_size"):
            settings["tensor_parallel_size"] = None  # left as it was: one per GPU chosen now
        return {
            "node": data["node"],
            "accelerator_indices": data.get("gpu_indices", []),
            "settings": settings,
            "extra_args": data.get("extra_args", ""),
            "extra_env": data.get("extra_env", ""),
        }
