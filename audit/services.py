"""Writing the audit log: one call from each service that changes what a workspace holds."""

from __future__ import annotations

import logging

from audit.context import current_actor
from audit.models import AuditEntry

log = logging.getLogger(__name__)


def audit_record(*, action: str, target, workspace=None, detail: dict | None = None) -> AuditEntry:
    """Records that the current actor did `action` ("deployment.stop") to `target` (a model instance) in
    `workspace` (default: the target's own). `detail` holds names, never a secret's value."""
    if workspace is None:
        workspace = getattr(target, "workspace", None)
    user, name, address = current_actor()
    entry = AuditEntry.objects.create(
        workspace=workspace,
        workspace_name=getattr(workspace, "name", ""),
        actor=user,
        actor_name=name,
        address=address,
        action=action,
        target_type=type(target)._meta.model_name,
        target_id=getattr(target, "pk", None),
        target_name=str(target)[:200],
        detail=detail or {},
    )
    log.info("audit: %s %s %s #%s", name, action, entry.target_type, entry.target_id)
    return entry
