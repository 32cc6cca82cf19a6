from __future__ import annotations

from django.db import models
from django.urls import reverse

from accounts.models import Workspace
from registry.safetensors import Tensor

# Limits of fields whose columns have none (text, JSON, sealed secrets), for forms and the API: what a real
# value needs, many times over.
MAX_DESCRIPTION = 10_000
MAX_TAGS = 50
MAX_CA_BUNDLE = 64 * 1024  # a chain of a few dozen certificates
MAX_SECRET = 4096  # access keys are 20-128 characters, secrets 40, hub tokens under 100


class ConnectionKind(models.TextChoices):
    S3 = "s3", "S3 or S3-compatible store"
    HF = "hf", "Hugging Face hub"
    LOCAL = "local", "Local or NFS path"


class Connection(models.Model):
    """Where artifacts are read from. Secrets (S3 keys, the hub token) are
    encrypted in `encrypted_secrets` and never leave the server again."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="connections")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=ConnectionKind.choices)
    # S3: the store's endpoint (blank for AWS); Hugging Face: the hub or a mirror (blank for the public hub).
    endpoint_url = models.URLField(max_length=500, blank=True)
    region = models.CharField(max_length=50, blank=True)
    bucket = models.CharField(max_length=255, blank=True)
    addressing_style = models.CharField(
        max_length=10, choices=[("path", "Path-style"), ("virtual", "Virtual-host")], default="path"
    )
    verify_tls = models.BooleanField(default=True)
    ca_bundle = models.TextField(blank=True, help_text="PEM certificates of a private CA, for an intranet store.")
    root_path = models.CharField(max_length=500, blank=True, help_text="Local path: a folder under an allowed root.")
    encrypted_secrets = models.BinaryField(default=b"", editable=False)
    # Without secrets a connection reads anonymously; with this, the console's own credentials (an instance
    # role, AWS_* or HF_TOKEN in its environment, ~/.aws) apply. Only an administrator may set it.
    use_ambient_credentials = models.BooleanField(default=False)
    created_by = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_check_ok = models.BooleanField(null=True)
    last_check_message = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="connection_name_unique")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("registry:connection_detail", args=[self.pk])

    @property
    def has_secrets(self) -> bool:
        return bool(self.encrypted_secrets)

    def describe_location(self, location: str) -> str:
        """A location as a person would write it: s3://bucket/prefix, hf://repo, a path."""
        if self.kind == ConnectionKind.S3:
            return f"s3://{self.bucket}/{location.strip('/')}"
        if self.kind == ConnectionKind.HF:
            return f"hf://{location}"
        return f"{self.root_path.rstrip('/')}/{location.strip('/')}"


class ArtifactKind(models.TextChoices):
    BASE = "base", "Base model"
    ADAPTER = "adapter", "LoRA adapter"


class ArtifactStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    INSPECTING = "inspecting", "Inspecting"
    READY = "ready", "Ready"
    INVALID = "invalid", "Invalid"


class Artifact(models.Model):
    """A registered base model or LoRA adapter, and what inspection learned of it."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=ArtifactKind.choices)
    connection = models.ForeignKey(Connection, on_delete=models.PROTECT, related_name="artifacts")
    # A bucket prefix, a Hugging Face repo id, or a path under the connection's folder.
    location = models.CharField(max_length=500)
    # What the user asked for (a branch, tag or commit on the hub); blank means the default.
    revision = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=list, blank=True)
    license = models.CharField(max_length=100, blank=True)
    created_by = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    status = models.CharField(max_length=12, choices=ArtifactStatus.choices, default=ArtifactStatus.PENDING)
    problems = models.JSONField(default=list, blank=True, help_text="Why inspection refused it.")
    warnings = models.JSONField(default=list, blank=True)
    inspected_at = models.DateTimeField(null=True, blank=True)
    # What the source said the content is: a hub commit, or a digest of S3 ETags / file stamps.
    resolved_revision = models.CharField(max_length=200, blank=True)
    inspection_bytes_read = models.BigIntegerField(default=0)
    # The inspection's claim (config/jobs.py): which worker runs it, since when, when its message last went
    # out, and how many workers took it (a stale claim is given to another a few times, then fails).
    claimed_by = models.CharField(max_length=100, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    inspection_attempts = models.PositiveSmallIntegerField(default=0)

    total_bytes = models.BigIntegerField(null=True, blank=True)
    weight_bytes = models.BigIntegerField(null=True, blank=True)
    parameter_count = models.BigIntegerField(null=True, blank=True)
    dtype = models.CharField(max_length=20, blank=True)
    # The parsed config.json or adapter_config.json (its tensor table lives in ArtifactTensors).
    config = models.JSONField(default=dict, blank=True)

    # Base models, from config.json.
    architecture = models.CharField(max_length=100, blank=True)
    hidden_size = models.IntegerField(null=True, blank=True)
    num_layers = models.IntegerField(null=True, blank=True)
    num_attention_heads = models.IntegerField(null=True, blank=True)
    num_kv_heads = models.IntegerField(null=True, blank=True)
    vocab_size = models.IntegerField(null=True, blank=True)
    context_length = models.IntegerField(null=True, blank=True)

    # Adapters, from adapter_config.json.
    peft_type = models.CharField(max_length=30, blank=True)
    rank = models.IntegerField(null=True, blank=True)
    lora_alpha = models.FloatField(null=True, blank=True)
    target_modules = models.JSONField(default=list, blank=True)
    base_model_name_or_path = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="artifact_name_unique")]
        indexes = [
            models.Index(fields=["workspace", "kind", "status"]),
            # The lists are ordered by name: a page of 25 reads 25 rows, not every row (bench/registry_list.py).
            models.Index(fields=["name"], name="artifact_name_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("registry:artifact_detail", args=[self.pk])

    @property
    def is_adapter(self) -> bool:
        return self.kind == ArtifactKind.ADAPTER

    @property
    def kind_noun(self) -> str:
        """ "model" or "adapter": how the audit log and messages name it."""
        return "adapter" if self.is_adapter else "model"

    @property
    def is_ready(self) -> bool:
        return self.status == ArtifactStatus.READY

    @property
    def is_settled(self) -> bool:
        """Inspection has ended, one way or the other: pages stop polling."""
        return self.status in (ArtifactStatus.READY, ArtifactStatus.INVALID)

    @property
    def where(self) -> str:
        return self.connection.describe_location(self.location)

    @property
    def tensors(self) -> dict:
        """{tensor name: [shape, dtype, bytes]}, from its own table: read only where shapes are compared."""
        try:
            return self.tensor_table.tensors
        except ArtifactTensors.DoesNotExist:
            return {}


class ArtifactTensors(models.Model):
    """An artifact's tensor table. A large model has thousands of tensors: the table lives apart from the
    artifact's row, which every list page and API list loads, so those never read it."""

    artifact = models.OneToOneField(Artifact, on_delete=models.CASCADE, primary_key=True, related_name="tensor_table")
    tensors = models.JSONField(default=dict)

    def __str__(self) -> str:
        return f"tensors of {self.artifact_id}"


class ArtifactFile(models.Model):
    """One file of an artifact's manifest, as the source listed it at inspection."""

    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=1000)
    size = models.BigIntegerField()
    # sha256 (hub LFS files), git-sha1 (hub small files), etag (S3), or blank (local paths).
    checksum = models.CharField(max_length=130, blank=True)
    checksum_kind = models.CharField(max_length=10, blank=True)

    class Meta:
        ordering = ["path"]
        constraints = [models.UniqueConstraint(fields=["artifact", "path"], name="artifact_file_unique")]

    def __str__(self) -> str:
        return self.path


class Compatibility(models.Model):
    """Whether an adapter can be served on a base model, and why (not)."""

    adapter = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="fits_bases")
    base = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="fitting_adapters")
    compatible = models.BooleanField()
    reasons = models.JSONField(default=list, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-compatible", "base__name", "adapter__name"]
        constraints = [models.UniqueConstraint(fields=["adapter", "base"], name="one_verdict_per_pair")]

    def __str__(self) -> str:
        return f"{self.adapter} on {self.base}: {'fits' if self.compatible else 'does not fit'}"


def tensors_from_json(data: dict) -> dict:
    """{name: [shape, dtype, nbytes]} as stored -> {name: Tensor}."""
    return {
        name: Tensor(name=name, shape=tuple(shape), dtype=dtype, nbytes=nbytes)
        for name, (shape, dtype, nbytes) in data.items()
    }


def tensors_to_json(tensors: dict) -> dict:
    return {name: [list(t.shape), t.dtype, t.nbytes] for name, t in tensors.items()}
