from __future__ import annotations

from rest_framework import serializers

from accounts.models import Workspace
from config.api import SlugLookupField
from registry.models import (
    MAX_CA_BUNDLE,
    MAX_DESCRIPTION,
    MAX_SECRET,
    MAX_TAGS,
    Artifact,
    ArtifactFile,
    ArtifactKind,
    Compatibility,
    Connection,
    ConnectionKind,
)
from registry.sources.network import endpoint_problem

LOCATION_HELP = (
    "Where the artifact is, through its connection. S3: a key prefix in the connection's bucket; every "
    "object under `<prefix>/` is one of its files (slashes around it are ignored). Hugging Face hub: a "
    "repository id, `name` or `owner/name` (letters, digits, `-`, `_`, `.`; no `--` or `..`), its branch, "
    "tag or commit going in `revision`. Local path: a folder under the connection's `root_path`, relative "
    "to it; it may not lead outside."
)
REVISION_HELP = (
    "Hugging Face hub only: a branch, tag or commit (blank: the default branch). S3 and local paths ignore it."
)
CA_BUNDLE_HELP = (
    "PEM text (`-----BEGIN CERTIFICATE-----` …), not a file path: the certificates of the private CA that "
    "signed the store's TLS certificate. Used while `verify_tls` is true."
)


class ConnectionSerializer(serializers.ModelSerializer):
    """What anyone may see of a connection: never its secrets, only whether they are set."""

    workspace = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    # A string, not a URI: blank is the store's or hub's public default (AWS, huggingface.co).
    endpoint_url = serializers.CharField(
        read_only=True, help_text="The store's or hub's URL; blank for AWS or huggingface.co."
    )
    has_secrets = serializers.BooleanField(read_only=True)

    class Meta:
        model = Connection
        fields = [
            "id", "workspace", "name", "kind", "endpoint_url", "region", "bucket", "addressing_style",
            "verify_tls", "ca_bundle", "root_path", "has_secrets", "use_ambient_credentials", "created_at",
            "last_checked_at", "last_check_ok", "last_check_message",
        ]  # fmt: skip
        read_only_fields = fields
        extra_kwargs = {"ca_bundle": {"help_text": CA_BUNDLE_HELP}}


class ConnectionTestSerializer(ConnectionSerializer):
    """The connection after a test, with the test's outcome on top."""

    ok = serializers.BooleanField(read_only=True, help_text="Whether the test passed. A failed test still answers 200.")
    message = serializers.CharField(
        read_only=True, help_text="What was checked (when it passed) or exactly what failed, in words to act on."
    )

    class Meta(ConnectionSerializer.Meta):
        fields = ["ok", "message", *ConnectionSerializer.Meta.fields]
        read_only_fields = fields


class ConnectionWriteSerializer(serializers.Serializer):
    workspace = SlugLookupField(slug_field="slug", queryset=Workspace.objects.all(), required=False)
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=ConnectionKind.choices)
    endpoint_url = serializers.URLField(
        max_length=500,
        required=False,
        allow_blank=True,
        default="",
        help_text="S3: the store's URL (blank for AWS). Hub: a private hub or mirror (blank for huggingface.co). "
        "http or https, no user:password@. Refused: metadata and link-local addresses, the console's own "
        "services, and, when an administrator set PLUGBOARD_FETCH_ALLOWLIST, anything outside it.",
    )
    region = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")
    bucket = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    addressing_style = serializers.ChoiceField(
        choices=Connection._meta.get_field("addressing_style").choices, required=False, default="path"
    )
    verify_tls = serializers.BooleanField(required=False, default=True)
    ca_bundle = serializers.CharField(
        max_length=MAX_CA_BUNDLE, required=False, allow_blank=True, default="", help_text=CA_BUNDLE_HELP
    )
    root_path = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        default="",
        help_text="Local path only: a folder on the console's hosts, under a root an administrator gives this "
        "workspace.",
    )
    use_ambient_credentials = serializers.BooleanField(
        required=False,
        help_text="Administrators only. Without keys of its own a connection reads anonymously; with this, the "
        "console's own credentials (instance role, environment) apply. Changing `endpoint_url` (or a "
        "virtual-host bucket) without sending the secrets again drops the saved secrets and this option.",
    )
    # Write-only: accepted, encrypted, never answered.
    access_key_id = serializers.CharField(max_length=MAX_SECRET, required=False, allow_blank=True, write_only=True)
    secret_access_key = serializers.CharField(max_length=MAX_SECRET, required=False, allow_blank=True, write_only=True)
    token = serializers.CharField(max_length=MAX_SECRET, required=False, allow_blank=True, write_only=True)

    SECRET_KEYS = ("access_key_id", "secret_access_key", "token")

    def validate_endpoint_url(self, value: str) -> str:
        if problem := endpoint_problem(value):
            raise serializers.ValidationError(problem)
        return value

    def split(self) -> tuple[dict, dict]:
        """Returns (plain fields, secrets) of the validated data."""
        data = dict(self.validated_data)
        secrets = {k: data.pop(k) for k in self.SECRET_KEYS if k in data}
        return data, secrets


class ArtifactFileSerializer(serializers.ModelSerializer):
    class Meta:
        model = ArtifactFile
        fields = ["path", "size", "checksum", "checksum_kind"]


class ArtifactSerializer(serializers.ModelSerializer):
    workspace = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    connection = serializers.PrimaryKeyRelatedField(read_only=True)
    where = serializers.CharField(read_only=True)

    class Meta:
        model = Artifact
        fields = [
            "id", "workspace", "name", "kind", "connection", "location", "where", "revision", "description",
            "tags", "license", "status", "problems", "warnings", "created_at", "updated_at", "inspected_at",
            "resolved_revision", "inspection_bytes_read", "total_bytes", "weight_bytes", "parameter_count",
            "dtype", "architecture", "hidden_size", "num_layers", "num_attention_heads", "num_kv_heads",
            "vocab_size", "context_length", "peft_type", "rank", "lora_alpha", "target_modules",
            "base_model_name_or_path",
        ]  # fmt: skip
        read_only_fields = fields
        extra_kwargs = {"location": {"help_text": LOCATION_HELP}, "revision": {"help_text": REVISION_HELP}}


class ArtifactDetailSerializer(ArtifactSerializer):
    files = ArtifactFileSerializer(many=True, read_only=True)
    config = serializers.JSONField(read_only=True)

    class Meta(ArtifactSerializer.Meta):
        fields = [*ArtifactSerializer.Meta.fields, "config", "files"]
        read_only_fields = fields


class ArtifactWriteSerializer(serializers.Serializer):
    workspace = SlugLookupField(slug_field="slug", queryset=Workspace.objects.all(), required=False)
    name = serializers.CharField(max_length=100)
    # An id, not a related field: an unknown id and another workspace's must both answer 404.
    connection = serializers.IntegerField(help_text="The id of a connection in the same workspace.")
    location = serializers.CharField(max_length=500, help_text=LOCATION_HELP)
    revision = serializers.CharField(
        max_length=200, required=False, allow_blank=True, default="", help_text=REVISION_HELP
    )
    description = serializers.CharField(max_length=MAX_DESCRIPTION, required=False, allow_blank=True, default="")
    tags = serializers.ListField(
        child=serializers.CharField(max_length=50), max_length=MAX_TAGS, required=False, default=list
    )
    license = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")


class ArtifactUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    location = serializers.CharField(
        max_length=500, required=False, help_text=LOCATION_HELP + " Changing it, or `revision`, inspects again."
    )
    revision = serializers.CharField(max_length=200, required=False, allow_blank=True, help_text=REVISION_HELP)
    description = serializers.CharField(max_length=MAX_DESCRIPTION, required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=50), max_length=MAX_TAGS, required=False)
    license = serializers.CharField(max_length=100, required=False, allow_blank=True)


class CompatibilitySerializer(serializers.ModelSerializer):
    adapter_name = serializers.CharField(source="adapter.name", read_only=True)
    base_name = serializers.CharField(source="base.name", read_only=True)

    class Meta:
        model = Compatibility
        fields = ["adapter", "adapter_name", "base", "base_name", "compatible", "reasons", "warnings", "computed_at"]
        read_only_fields = fields


KIND_OF_ENDPOINT = {"models": ArtifactKind.BASE, "adapters": ArtifactKind.ADAPTER}
