from __future__ import annotations

from django.contrib.contenttypes.fields import GenericRelation
from django.db import models
from django.urls import reverse

from accounts.models import Workspace
from cluster.models import CacheLease, Node
from config.vault import seal, unseal
from deployments import lifecycle
from deployments.vllm_args import DEFAULT_MAX_ADAPTERS, env_masked, env_names
from registry.models import Artifact

TIMELINE_EVENTS = 50  # events a deployment's page shows


class SealedEnvironment(models.Model):
    """The environment variables a server gets ("NAME=value" lines, as typed), sealed at rest: values
    can be secrets (a token, a password). Pages and the API show the names with values masked
    (`env_masked`); only the services that check and launch the server read `env_text`."""

    encrypted_env = models.BinaryField(default=b"", editable=False)

    class Meta:
        abstract = True

    @staticmethod
    def env_seal(text: str) -> bytes:
        """Returns `text` sealed as `encrypted_env` holds it (b"" when it is blank)."""
        return seal({"env": text}) if text.strip() else b""

    @property
    def env_text(self) -> str:
        return unseal(self.encrypted_env).get("env", "")

    @property
    def env_names(self) -> list[str]:
        return env_names(self.env_text)

    @property
    def env_masked(self) -> str:
        """The names, one "NAME=****" a line: what pages show, and what an edit form starts from."""
        return env_masked(self.env_text)


class Deployment(SealedEnvironment):
    """What should run: a base model with adapters on a node's accelerators,
    through a model server with these arguments. The node agent reconciles
    what runs with it."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        FETCHING = "fetching", "Fetching"
        STARTING = "starting", "Starting"
        READY = "ready", "Ready"
        DEGRADED = "degraded", "Degraded"
        RESTARTING = "restarting", "Restarting"
        STOPPING = "stopping", "Stopping"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    class Desired(models.TextChoices):
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    TERMINAL = (Status.STOPPED, Status.FAILED)

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="deployments")
    # Also the base model's id on the gateway; adapters are "<name>:<served name>".
    name = models.SlugField(max_length=63, unique=True)
    base = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="deployments")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="deployments")
    device = models.CharField(max_length=4, choices=[("cpu", "CPU"), ("cuda", "GPU")])
    accelerator_indices = models.JSONField(default=list, blank=True)
    runtime = models.CharField(max_length=20, default="vllm")
    # dtype, max_model_len, gpu_memory_utilization, tensor_parallel_size, max_loras, max_lora_rank,
    # max_cpu_loras, enable_prefix_caching, enforce_eager, kv_cache_bytes, cpu_threads
    settings = models.JSONField(default=dict, blank=True)
    extra_args = models.TextField(blank=True)
    # How many adapters may be attached. The server keeps max_loras of them in a batch and max_cpu_loras in
    # memory, and loads the others from disk on first use, so this is a guard on the node's cache, not a slot count.
    max_adapters = models.PositiveIntegerField(
        default=DEFAULT_MAX_ADAPTERS, help_text="How many adapters may be attached to this deployment."
    )
    revision = models.PositiveIntegerField(default=1)
    # The revision the running server was started with; a newer revision means "redeploy".
    launched_revision = models.PositiveIntegerField(null=True, blank=True)
    # The node whose supervisor owns `pid` and `port`. It differs from `node`
    # while a deployment moves: the old node stops its server, then clears it.
    launched_node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    restart_requested = models.BooleanField(default=False)

    desired = models.CharField(max_length=8, choices=Desired.choices, default=Desired.RUNNING)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    status_reason = models.TextField(blank=True)

    encrypted_api_key = models.BinaryField(default=b"", editable=False)
    port = models.IntegerField(null=True, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    # "<boot id>:<start time>" of `pid` (deployments/processes.py): a pid alone may name another process.
    process_identity = models.CharField(max_length=80, blank=True)
    # Set just before a server is launched and cleared once its pid is recorded: the server carries it in its
    # environment, so an agent that died between the two finds that server again instead of starting a second.
    launch_token = models.CharField(max_length=64, blank=True)
    command = models.TextField(blank=True, help_text="The command line, secrets masked.")
    log_path = models.CharField(max_length=500, blank=True)
    log_tail = models.TextField(blank=True)
    failures = models.PositiveIntegerField(default=0, help_text="Crashes in a row; reset once ready.")
    next_start_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)

    created_by = models.ForeignKey("auth.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The node caches' leases it holds on its base model and adapters; deleting it ends them.
    leases = GenericRelation(CacheLease, content_type_field="holder_type", object_id_field="holder_id")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("deployments:detail", args=[self.pk])

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def api_key(self) -> str:
        """The key its server answers to (sealed at rest): for the node that starts and calls the server,
        and to mask it wherever the server's log is shown."""
        return unseal(self.encrypted_api_key).get("api_key", "")

    @property
    def latest_events(self) -> list:
        """The newest events first, as many as the page shows: the timeline of a server that crashed all
        night must not grow the page without end (the API's detail gives them all)."""
        return list(self.events.order_by("-created_at", "-pk")[:TIMELINE_EVENTS])

    @property
    def base_url(self) -> str | None:
        """Where its server answers (node address and port), while it has one."""
        return f"http://{self.node.address}:{self.port}" if self.port else None


class DeploymentAdapter(models.Model):
    """An adapter that should be loaded in a deployment, and what became of it."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        FETCHING = "fetching", "Fetching"
        LOADED = "loaded", "Loaded"
        FAILED = "failed", "Failed"
        DETACHING = "detaching", "Detaching"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="adapters")
    adapter = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="deployed_as")
    served_name = models.CharField(max_length=63)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    error = models.TextField(blank=True)
    # Failed fetches of the adapter in a row, and when the last one failed: the next is asked for only after a
    # backoff (supervisor.fetch_retry_seconds), not at every tick.
    fetch_failures = models.PositiveIntegerField(default=0)
    fetch_failed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["served_name"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "served_name"], name="served_name_unique_in_deployment"),
            models.UniqueConstraint(fields=["deployment", "adapter"], name="adapter_once_per_deployment"),
        ]

    def __str__(self) -> str:
        return self.model_id

    @property
    def model_id(self) -> str:
        """The adapter's id on the model server and the gateway."""
        return f"{self.deployment.name}:{self.served_name}"

    @property
    def shown_state(self) -> str:
        """The state as a person should read it: "loaded" only while its server serves; the adapters
        of a server that is starting, restarting or stopped are "waiting" for it."""
        serving = self.deployment.status in lifecycle.SERVING
        return "waiting" if self.state == self.State.LOADED and not serving else self.state

    @property
    def shown_state_display(self) -> str:
        shown = self.shown_state
        return "Waiting for the server" if shown == "waiting" else self.State(shown).label


class DeploymentEvent(models.Model):
    """A change of a deployment's state, with when and why: the status timeline."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    status = models.CharField(max_length=10, blank=True)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.deployment}: {self.message}"


class DeploymentRevision(SealedEnvironment):
    """A deployment's arguments and resources as one revision had them, who made it and when:
    the history the page lists, and what a rollback restores."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    # A node may be removed long after a revision used it; the history stays.
    node = models.ForeignKey(Node, null=True, on_delete=models.SET_NULL, related_name="+")
    accelerator_indices = models.JSONField(default=list, blank=True)
    settings = models.JSONField(default=dict, blank=True)
    extra_args = models.TextField(blank=True)
    restores = models.PositiveIntegerField(null=True, blank=True, help_text="The revision this one rolled back to.")
    created_by = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["deployment", "number"], name="revision_number_unique")]

    def __str__(self) -> str:
        return f"{self.deployment} revision {self.number}"
