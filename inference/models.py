from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import HashedSecret, Workspace
from deployments.models import Deployment


class InferenceKey(HashedSecret):
    """A key for the OpenAI-compatible gateway. It belongs to a workspace, not
    to a person, so an application keeps working when its author leaves."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="inference_keys")
    prefix = models.CharField(max_length=16, help_text="The key's first characters, to tell keys apart.")
    all_deployments = models.BooleanField(
        default=True, help_text="Every deployment of the workspace, now and later; otherwise only `deployments`."
    )
    deployments = models.ManyToManyField(Deployment, blank=True, related_name="+")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired


class UsageRecord(models.Model):
    """One request through the gateway or the playground: who asked (a key or a
    signed-in person), which model, the tokens vLLM counted, and how it went."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    key = models.ForeignKey(InferenceKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage")
    model = models.CharField(max_length=130, help_text="The model id asked for.")
    adapter = models.CharField(max_length=63, blank=True, help_text="The adapter's served name; blank for the base.")
    endpoint = models.CharField(max_length=20)
    stream = models.BooleanField(default=False)
    status = models.PositiveSmallIntegerField()
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True, help_text="Time to the first streamed token.")
    duration_ms = models.FloatField()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["workspace", "created_at"], name="usage_workspace_time")]

    def __str__(self) -> str:
        return f"{self.model} {self.status} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class UsageTotal(models.Model):
    """Usage summed over an hour or a day, per deployment, model id and caller, as the usage page groups it.
    Raw UsageRecords expire (PLUGBOARD_USAGE_RAW_DAYS); these stay, so usage stays known for months at a
    size that grows with time and groups, not with traffic. Written by services.usage_rollup."""

    class Period(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    period = models.CharField(max_length=4, choices=Period.choices)
    start = models.DateTimeField()
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    # The groups by their names at the time, as usage_summary shows them (a deleted key keeps its name here).
    deployment = models.CharField(max_length=63)
    model = models.CharField(max_length=130)
    caller = models.CharField(max_length=200)
    requests = models.PositiveIntegerField()
    errors = models.PositiveIntegerField()
    prompt_tokens = models.BigIntegerField()
    completion_tokens = models.BigIntegerField()
    duration_ms_sum = models.FloatField()
    ttft_ms_sum = models.FloatField()
    ttft_count = models.PositiveIntegerField()

    class Meta:
        ordering = ["-start"]
        indexes = [models.Index(fields=["workspace", "period", "start"], name="usage_total_time")]

    def __str__(self) -> str:
        return f"{self.model} {self.period} from {self.start:%Y-%m-%d %H:%M}: {self.requests} requests"
