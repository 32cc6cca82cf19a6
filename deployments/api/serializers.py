from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import Workspace
from cluster.models import Node
from config.api import SlugLookupField
from deployments.models import Deployment, DeploymentAdapter, DeploymentEvent
from deployments.vllm_args import DEFAULT_MAX_ADAPTERS, ENV_MASK

# Longest extra arguments and environment a request may carry: dozens of flags or variables, not a file.
MAX_EXTRA_ARGS = 8192
MAX_EXTRA_ENV = 32768
ENV_READ_HELP = (
    f'The environment variables the server gets, by name, each value masked as "{ENV_MASK}": values are write-only '
    "(they can be secrets, and are stored encrypted). Write them as extra_env text, one NAME=value a line."
)
ENV_WRITE_HELP = (
    "The environment variables, one NAME=value a line, from the console's list (or PLUGBOARD_ALLOWED_ENV). "
    "Values are stored encrypted and never returned."
)


@extend_schema_field(serializers.DictField(child=serializers.CharField(), help_text=ENV_READ_HELP))
class MaskedEnvField(serializers.Field):
    """A sealed environment as {NAME: "****"}: the names, never a value."""

    def __init__(self, **kwargs):
        super().__init__(read_only=True, help_text=ENV_READ_HELP, **kwargs)

    def to_representation(self, row) -> dict[str, str]:
        return dict.fromkeys(row.env_names, ENV_MASK)


class DeploymentAdapterSerializer(serializers.ModelSerializer):
    adapter_name = serializers.CharField(source="adapter.name", read_only=True)
    model_id = serializers.CharField(read_only=True)
    state = serializers.ChoiceField(
        source="shown_state", read_only=True, choices=[*DeploymentAdapter.State.values, "waiting"],
        help_text="“loaded” only while the server serves; “waiting” while it starts, restarts or is stopped.",
    )  # fmt: skip

    class Meta:
        model = DeploymentAdapter
        fields = ["id", "adapter", "adapter_name", "served_name", "model_id", "state", "error", "created_at"]
        read_only_fields = fields


class DeploymentEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeploymentEvent
        fields = ["status", "message", "created_at"]


class DeploymentSerializer(serializers.ModelSerializer):
    workspace = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)
    base_name = serializers.CharField(source="base.name", read_only=True)
    adapters = DeploymentAdapterSerializer(many=True, read_only=True)
    base_url = serializers.CharField(
        read_only=True, allow_null=True, help_text="Where its server answers on its node; null while it has none."
    )
    extra_env = MaskedEnvField(source="*")

    class Meta:
        model = Deployment
        fields = [
            "id", "workspace", "name", "base", "base_name", "node", "device", "accelerator_indices", "runtime",
            "settings", "max_adapters", "extra_args", "extra_env", "revision", "launched_revision", "desired", "status",
            "status_reason", "port",
            "base_url", "pid", "command", "failures", "started_at", "ready_at", "created_at", "adapters",
        ]  # fmt: skip
        read_only_fields = fields


class DeploymentDetailSerializer(DeploymentSerializer):
    events = DeploymentEventSerializer(
        source="latest_events", many=True, read_only=True,
        help_text="The newest events, newest first, as many as the page shows; `events/` pages through all.",
    )  # fmt: skip
    log_tail = serializers.CharField(read_only=True)

    class Meta(DeploymentSerializer.Meta):
        fields = [*DeploymentSerializer.Meta.fields, "log_tail", "events"]
        read_only_fields = fields


class AdapterChoiceSerializer(serializers.Serializer):
    adapter = serializers.IntegerField()
    served_name = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=DeploymentAdapter._meta.get_field("served_name").max_length,
    )


class DeploymentCreateSerializer(serializers.Serializer):
    workspace = SlugLookupField(slug_field="slug", queryset=Workspace.objects.all(), required=False)
    name = serializers.CharField(max_length=63)
    base = serializers.IntegerField()
    node = SlugLookupField(
        slug_field="name",
        queryset=Node.objects.all(),
        required=False,
        allow_null=True,
        default=None,
        help_text="The node to run on; leave it out to place the deployment automatically where it fits.",
    )
    accelerator_indices = serializers.ListField(
        child=serializers.IntegerField(min_value=0),
        required=False,
        default=list,
        max_length=64,
        help_text="GPU numbers on the named node (ignored on a CPU node); leave out with automatic placement.",
    )
    adapters = serializers.ListField(
        child=AdapterChoiceSerializer(), required=False, default=list, max_length=DEFAULT_MAX_ADAPTERS
    )
    settings = serializers.DictField(required=False, default=dict)
    extra_args = serializers.CharField(required=False, allow_blank=True, default="", max_length=MAX_EXTRA_ARGS)
    extra_env = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=MAX_EXTRA_ENV, help_text=ENV_WRITE_HELP
    )

    def validate(self, attrs):
        if attrs["accelerator_indices"] and attrs.get("node") is None:
            raise serializers.ValidationError(
                {"accelerator_indices": "GPU numbers need the node they are on: name the node, or leave both out."}
            )
        return attrs


class DeploymentUpdateSerializer(serializers.Serializer):
    """Any of these; what is left out stays. A new node or new GPUs move the deployment there."""

    node = SlugLookupField(slug_field="name", queryset=Node.objects.all(), required=False)
    accelerator_indices = serializers.ListField(
        child=serializers.IntegerField(min_value=0), required=False, max_length=64
    )
    settings = serializers.DictField(required=False)
    extra_args = serializers.CharField(required=False, allow_blank=True, max_length=MAX_EXTRA_ARGS)
    extra_env = serializers.CharField(
        required=False, allow_blank=True, max_length=MAX_EXTRA_ENV,
        help_text=f"{ENV_WRITE_HELP} The whole environment is replaced: a NAME={ENV_MASK} line keeps NAME's stored "
        "value, and a name left out is removed.",
    )  # fmt: skip
    max_adapters = serializers.IntegerField(
        required=False, min_value=1, max_value=10_000,
        help_text="How many adapters may be attached. Changing only this makes no new revision: the server keeps "
        "max_loras adapters in a batch and loads the others from disk when asked for them.",
    )  # fmt: skip


class DeploymentRevisionSerializer(serializers.Serializer):
    """A revision as the history lists it (a deployments.revisions.Entry): its arguments and resources,
    who made it and when, and what changed since the revision before it."""

    number = serializers.IntegerField(source="revision.number")
    current = serializers.BooleanField(help_text="Whether this is the revision the deployment has now.")
    node = serializers.CharField(source="revision.node.name", allow_null=True, help_text="Null if it was removed.")
    accelerator_indices = serializers.ListField(child=serializers.IntegerField(), source="revision.accelerator_indices")
    settings = serializers.DictField(source="revision.settings")
    extra_args = serializers.CharField(source="revision.extra_args")
    extra_env = MaskedEnvField(source="revision")
    restores = serializers.IntegerField(
        source="revision.restores", allow_null=True, help_text="The revision this one rolled back to, if it did."
    )
    created_by = serializers.CharField(source="revision.created_by.username", allow_null=True)
    created_at = serializers.DateTimeField(source="revision.created_at")
    changes = serializers.ListField(
        child=serializers.CharField(), help_text="What changed since the revision before, one phrase per change."
    )


class RollbackSerializer(serializers.Serializer):
    revision = serializers.IntegerField(min_value=1, help_text="The number of the revision to roll back to.")
