"""All writes of the inference app: gateway keys and usage records."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Sum
from django.db.models.functions import Greatest, TruncDay, TruncHour
from django.utils import timezone

from accounts.models import Workspace
from accounts.services import token_digest
from audit.services import audit_record
from config import changes
from config.errors import DomainError
from deployments.models import Deployment
from inference import selectors
from inference.models import InferenceKey, UsageRecord, UsageTotal

KEY_PREFIX = "pbi_"


def inference_key_create(
    *,
    workspace,
    name: str,
    user=None,
    deployments: Iterable[Deployment] | None = None,
    expires_at: datetime | None = None,
) -> tuple[InferenceKey, str]:
    """Creates a gateway key for `workspace`, for every deployment of it (when
    `deployments` is None) or only those given. Returns the row and the raw
    key, which is never stored and cannot be shown again."""
    name = name.strip()
    if not name:
        raise DomainError("Give the key a name, such as the application that will use it.")
    if expires_at is not None and expires_at <= timezone.now():
        raise DomainError("The expiry must be in the future.")
    chosen = list(deployments) if deployments is not None else None
    if chosen is not None:
        if not chosen:
            raise DomainError("Choose at least one deployment, or let the key use every deployment of the workspace.")
        if any(d.workspace_id != workspace.pk for d in chosen):
            raise DomainError("A key can only reach deployments of its own workspace.", status=404)
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        key = InferenceKey.objects.create(
            workspace=workspace, name=name, prefix=raw[:12], digest=token_digest(raw),
            all_deployments=chosen is None, expires_at=expires_at, created_by=user,
        )  # fmt: skip
        if chosen is not None:
            key.deployments.set(chosen)
        audit_record(
            action="inference_key.create",
            target=key,
            detail={"deployments": "all" if chosen is None else sorted(d.name for d in chosen)},
        )
    return key, raw


def inference_key_revoke(*, key: InferenceKey) -> InferenceKey:
    """Revokes a key: the gateway refuses it from its next request on (every
    gateway process drops its cached copy once this commits)."""
    if key.revoked_at is not None:
        raise DomainError("This key is already revoked.")
    with transaction.atomic():
        InferenceKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        audit_record(action="inference_key.revoke", target=key)
    changes.announce()
    key.refresh_from_db()
    return key


def usage_record_many(*, records: list[UsageRecord]) -> None:
    """Writes a batch of usage records in one statement and notes when each key
    was last used. The gateway writes a second or more after the requests, so a
    workspace may be gone by then (its records are dropped), or a key or a
    deployment (the record keeps the rest, as their deletion would have left it)."""
    workspaces = set(Workspace.objects.filter(pk__in={r.workspace_id for r in records}).values_list("pk", flat=True))
    keys = set(InferenceKey.objects.filter(pk__in={r.key_id for r in records}).values_list("pk", flat=True))
    deployments = set(Deployment.objects.filter(pk__in={r.deployment_id for r in records}).values_list("pk", flat=True))
    records = [r for r in records if r.workspace_id in workspaces]
    for r in records:
        r.key_id = r.key_id if r.key_id in keys else None
        r.deployment_id = r.deployment_id if r.deployment_id in deployments else None
    if not records:
        return
    with transaction.atomic():
        UsageRecord.objects.bulk_create(records)
        last_used: dict[int, datetime] = {}
        for r in records:
            if r.key_id is not None:
                last_used[r.key_id] = max(r.created_at, last_used.get(r.key_id, r.created_at))
        for key_id, when in last_used.items():
            InferenceKey.objects.filter(pk=key_id, last_used_at__isnull=True).update(last_used_at=when)
            InferenceKey.objects.filter(pk=key_id).update(last_used_at=Greatest(F("last_used_at"), when))


ROLLUP_HOURS = 24  # each rollup recomputes this many hours: a request is recorded at its start, however long it ran


def usage_rollup(*, now: datetime | None = None) -> int:
    """Sums the raw usage of the last ROLLUP_HOURS hours into hourly totals and those into daily ones
    (replacing what an earlier run wrote for them, so a run may repeat or overlap another), then deletes
    raw records older than PLUGBOARD_USAGE_RAW_DAYS and hourly totals older than
    PLUGBOARD_USAGE_HOURLY_DAYS. Returns how many raw records it deleted."""
    now = now or timezone.now()
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=ROLLUP_HOURS - 1)
    first_day = first.replace(hour=0)
    hours = (
        UsageRecord.objects.filter(created_at__gte=first)
        .annotate(
            start=TruncHour("created_at"),
            group_deployment=selectors.GROUPS["deployment"],
            group_caller=selectors.GROUPS["key"],
        )
        .values("start", "workspace_id", "group_deployment", "model", "group_caller")
        .annotate(**selectors.RECORD_SUMS, duration=Sum("duration_ms"), ttft=Sum("ttft_ms"), n_ttft=Count("ttft_ms"))
    )
    with transaction.atomic():
        UsageTotal.objects.filter(period=UsageTotal.Period.HOUR, start__gte=first).delete()
        UsageTotal.objects.bulk_create(
            _usage_total(
                UsageTotal.Period.HOUR, h, start=h["start"], deployment=h["group_deployment"], caller=h["group_caller"]
            )
            for h in hours
        )
        days = (
            UsageTotal.objects.filter(period=UsageTotal.Period.HOUR, start__gte=first_day)
            .annotate(day=TruncDay("start"))
            .values("day", "workspace_id", "deployment", "model", "caller")
            .annotate(
                **selectors.TOTAL_SUMS,
                duration=Sum("duration_ms_sum"),
                ttft=Sum("ttft_ms_sum"),
                n_ttft=Sum("ttft_count"),
            )
        )
        UsageTotal.objects.filter(period=UsageTotal.Period.DAY, start__gte=first_day).delete()
        UsageTotal.objects.bulk_create(
            _usage_total(UsageTotal.Period.DAY, d, start=d["day"], deployment=d["deployment"], caller=d["caller"])
            for d in days
        )
    UsageTotal.objects.filter(
        period=UsageTotal.Period.HOUR, start__lt=now - timedelta(days=settings.PLUGBOARD_USAGE_HOURLY_DAYS)
    ).delete()
    deleted = 0
    expired = UsageRecord.objects.filter(created_at__lt=now - timedelta(days=settings.PLUGBOARD_USAGE_RAW_DAYS))
    while batch := list(expired.values_list("pk", flat=True)[:5000]):  # in batches: no table-long lock
        deleted += UsageRecord.objects.filter(pk__in=batch).delete()[0]
    return deleted


def _usage_total(period: str, row: dict, *, start, deployment: str, caller: str) -> UsageTotal:
    """A UsageTotal from a row of sums (selectors.RECORD_SUMS or TOTAL_SUMS, with duration, ttft and n_ttft)."""
    return UsageTotal(
        period=period,
        start=start,
        workspace_id=row["workspace_id"],
        deployment=deployment[:63],
        model=row["model"],
        caller=caller[:200],
        requests=row["n"],
        errors=row["n_errors"],
        prompt_tokens=row["prompt"] or 0,
        completion_tokens=row["completion"] or 0,
        duration_ms_sum=row["duration"] or 0.0,
        ttft_ms_sum=row["ttft"] or 0.0,
        ttft_count=row["n_ttft"],
    )
