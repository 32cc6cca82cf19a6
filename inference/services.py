"""All writes of the inference app: gateway keys and usage records."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.models import Workspace
from accounts.services import token_digest
from config import changes
from config.errors import DomainError
from deployments.models import Deployment
from inference.models import InferenceKey, UsageRecord

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
    return key, raw


def inference_key_revoke(*, key: InferenceKey) -> InferenceKey:
    """Revokes a key: the gateway refuses it from its next request on (every
    gateway process drops its cached copy once this commits)."""
    if key.revoked_at is not None:
        raise DomainError("This key is already revoked.")
    InferenceKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
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
