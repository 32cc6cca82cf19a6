"""Reads of the inference app: for the gateway, a key's grant and a
workspace's routes, as plain frozen values it can hold in memory between
requests; for pages and the API, usage summed per deployment, adapter or key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib import auth
from django.db.models import Avg, Count, ExpressionWrapper, F, FloatField, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, Concat, NullIf, TruncHour, TruncMinute
from django.utils import timezone

from accounts.models import Membership
from accounts.services import token_digest
from deployments.models import Deployment, DeploymentAdapter
from inference.models import InferenceKey, UsageRecord, UsageTotal

# Seconds a client is told to wait before asking a deployment that is not ready again
# (RETRY_AFTER_DEFAULT for one that waits for a person: stopped or failed).
RETRY_AFTER_DEFAULT = 60
RETRY_AFTER = {
    Deployment.Status.PENDING: 30,
    Deployment.Status.FETCHING: 30,
    Deployment.Status.STARTING: 10,
    Deployment.Status.RESTARTING: 10,
    Deployment.Status.DEGRADED: 5,
}


@dataclass(frozen=True)
class KeyGrant:
    """What a gateway key may reach."""

    key_id: int
    workspace_id: int
    all_deployments: bool
    deployment_ids: frozenset[int]
    expires_at: datetime | None
    revoked_at: datetime | None

    def allows(self, deployment_id: int) -> bool:
        return self.all_deployments or deployment_id in self.deployment_ids


@dataclass(frozen=True)
class Route:
    """Where a model id is served, or why it cannot be now."""

    model_id: str
    deployment_id: int
    workspace_id: int
    owned_by: str  # the workspace's slug
    adapter: str  # the served name; "" for the base model
    parent: str | None  # an adapter's base model id
    created: int
    upstream: str | None  # the server's base URL while it serves this model
    upstream_key: str | None
    unavailable: str = ""  # why it cannot answer now, for a 503
    retry_after: int | None = None

    @property
    def available(self) -> bool:
        return self.upstream is not None


def key_grant(raw: str) -> KeyGrant | None:
    """The grant of the gateway key `raw`, revoked and expired ones included (the
    gateway says which); None for a key that was never issued."""
    key = InferenceKey.objects.filter(digest=token_digest(raw)).first()
    if key is None:
        return None
    ids = frozenset() if key.all_deployments else frozenset(key.deployments.values_list("pk", flat=True))
    return KeyGrant(
        key_id=key.pk, workspace_id=key.workspace_id, all_deployments=key.all_deployments, deployment_ids=ids,
        expires_at=key.expires_at, revoked_at=key.revoked_at,
    )  # fmt: skip


def session_member(session_key: str) -> tuple[int, tuple[int, ...]] | None:
    """The signed-in user of the session `session_key` and the workspaces they
    belong to, or None when the session is not a valid sign-in (as Django's own
    check decides: expired, signed out, or the password changed since)."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(SimpleNamespace(session=store))
    if not user.is_authenticated or not user.is_active:
        return None
    return user.pk, tuple(Membership.objects.filter(user=user).values_list("workspace_id", flat=True))


def workspace_routes(workspace_id: int) -> dict[str, Route]:
    """Every model id of the workspace's deployments (base models and adapters
    not being detached), each with its upstream when it can answer now. Two queries."""
    deployments = (
        Deployment.objects.filter(workspace_id=workspace_id)
        .select_related("node", "workspace")
        .prefetch_related("adapters")
    )
    routes: dict[str, Route] = {}
    for d in deployments:
        serving = d.status == Deployment.Status.READY and d.port is not None
        upstream = d.base_url if serving else None
        upstream_key = d.api_key if serving else None
        why = "" if serving else _why_not_ready(d)
        wait = RETRY_AFTER.get(d.status, RETRY_AFTER_DEFAULT) if why else None
        common = dict(
            deployment_id=d.pk, workspace_id=d.workspace_id, owned_by=d.workspace.slug,
            created=int(d.created_at.timestamp()),
        )  # fmt: skip
        routes[d.name] = Route(
            model_id=d.name, adapter="", parent=None, upstream=upstream, upstream_key=upstream_key,
            unavailable=why, retry_after=wait, **common,
        )  # fmt: skip
        for a in d.adapters.all():
            if a.state == DeploymentAdapter.State.DETACHING:
                continue
            loaded = serving and a.state == DeploymentAdapter.State.LOADED
            adapter_why = why or _why_adapter_not_loaded(a)
            adapter_wait = wait or (RETRY_AFTER_DEFAULT if a.state == DeploymentAdapter.State.FAILED else 10)
            routes[a.model_id] = Route(
                model_id=a.model_id, adapter=a.served_name, parent=d.name,
                upstream=upstream if loaded else None, upstream_key=upstream_key if loaded else None,
                unavailable="" if loaded else adapter_why,
                retry_after=None if loaded else adapter_wait, **common,
            )  # fmt: skip
    return routes


def _why_not_ready(d: Deployment) -> str:
    if d.desired == Deployment.Desired.STOPPED or d.status == Deployment.Status.STOPPED:
        return f"The deployment {d.name} is stopped; start it to use its models."
    if d.status == Deployment.Status.FAILED:
        return f"The deployment {d.name} failed; see its page for the reason."
    return f"The deployment {d.name} is {d.get_status_display().lower()}, not ready yet; retry shortly."


def _why_adapter_not_loaded(a: DeploymentAdapter) -> str:
    if a.state == DeploymentAdapter.State.FAILED:
        return f"The adapter {a.model_id} failed to load: {a.error[:200]}"
    return f"The adapter {a.model_id} is {a.get_state_display().lower()}, not loaded yet; retry shortly."


# Usage -----------------------------------------------------------------------

# period -> (span, bucket, bucket seconds). A month is read from the daily totals (UsageTotal): raw records
# are kept only PLUGBOARD_USAGE_RAW_DAYS, which must cover a week.
PERIODS = {"hour": (timedelta(hours=1), TruncMinute, 60), "day": (timedelta(days=1), TruncHour, 3600),
           "week": (timedelta(weeks=1), TruncHour, 3600), "month": (timedelta(days=30), None, 86400)}  # fmt: skip
GROUPS = {
    "deployment": Coalesce(F("deployment__name"), Value("(deleted deployment)")),
    # The model id asked for: the deployment's name for its base model, "<deployment>:<served name>" for an adapter.
    "adapter": F("model"),
    # A key by its name and prefix; the playground's requests by the person who sent them.
    "key": Coalesce(
        Concat(F("key__name"), Value(" ("), F("key__prefix"), Value("…)")),
        Concat(Value("playground: "), F("user__username")),
        Value("(deleted key)"),
    ),
}


# The column of UsageTotal that holds each grouping's name.
TOTAL_GROUPS = {"deployment": "deployment", "adapter": "model", "key": "caller"}
# What a group (or a time bucket) of raw usage records sums to; usage_rollup stores the same sums.
RECORD_SUMS = {
    "n": Count("pk"),
    "n_errors": Count("pk", filter=Q(status__gte=400)),
    "prompt": Sum("prompt_tokens"),
    "completion": Sum("completion_tokens"),
}
# The same, from UsageTotal rows (whose own columns are named "requests" and so on).
TOTAL_SUMS = {
    "n": Sum("requests"),
    "n_errors": Sum("errors"),
    "prompt": Sum("prompt_tokens"),
    "completion": Sum("completion_tokens"),
}


def usage_summary(
    *,
    records: QuerySet[UsageRecord],
    totals: QuerySet[UsageTotal],
    period: str,
    by: str,
    now: datetime | None = None,
) -> dict:
    """Usage over the last `period` ("hour", "day", "week" from `records`; "month"
    from the daily `totals`), per `by` ("deployment", "adapter", "key"): totals
    per group and a series per time bucket (minutes for an hour, days for a
    month, hours otherwise). Two queries."""
    span, trunc, bucket_seconds = PERIODS[period]
    now = now or timezone.now()
    if trunc is None:
        since = now.replace(hour=0, minute=0, second=0, microsecond=0) - span + timedelta(days=1)
        days = totals.filter(period=UsageTotal.Period.DAY, start__gte=since).annotate(group=F(TOTAL_GROUPS[by]))
        means = {
            "mean_ttft": _ratio(Sum("ttft_ms_sum"), Sum("ttft_count")),
            "mean_duration": _ratio(Sum("duration_ms_sum"), Sum("requests")),
        }
        groups = days.values("group").annotate(**TOTAL_SUMS, **means)
        series = days.values("start", "group").annotate(**TOTAL_SUMS)
    else:
        since = now - span
        recent = records.filter(created_at__gte=since).annotate(group=GROUPS[by])
        groups = recent.values("group").annotate(
            **RECORD_SUMS, mean_ttft=Avg("ttft_ms"), mean_duration=Avg("duration_ms")
        )
        series = recent.annotate(start=trunc("created_at")).values("start", "group").annotate(**RECORD_SUMS)
    return {
        "period": period, "by": by, "since": since, "bucket_seconds": bucket_seconds,
        "groups": [
            {"name": t["group"], "requests": t["n"], "errors": t["n_errors"], "prompt_tokens": t["prompt"] or 0,
             "completion_tokens": t["completion"] or 0, "mean_ttft_ms": t["mean_ttft"],
             "mean_duration_ms": t["mean_duration"]}
            for t in groups.order_by("-n", "group")
        ],
        "series": [
            {"start": b["start"], "name": b["group"], "requests": b["n"], "prompt_tokens": b["prompt"] or 0,
             "completion_tokens": b["completion"] or 0}
            for b in series.order_by("start", "group")
        ],
    }  # fmt: skip


def _ratio(numerator, denominator):
    """numerator / denominator in the database, None where the denominator is 0."""
    return ExpressionWrapper(numerator / NullIf(denominator, 0), output_field=FloatField())
