from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.models import Membership, Role, Workspace
from audit.models import AuditEntry


def workspaces_for(user) -> QuerySet[Workspace]:
    """The workspaces `user` is a member of."""
    return Workspace.objects.filter(memberships__user=user)


def writable_workspaces_for(user) -> QuerySet[Workspace]:
    """The workspaces where `user` may create and change things."""
    return Workspace.objects.filter(memberships__user=user, memberships__role__in=[Role.OWNER, Role.EDITOR])


def role_in(user, workspace: Workspace) -> str | None:
    return Membership.objects.filter(user=user, workspace=workspace).values_list("role", flat=True).first()


def audit_entries_for(user) -> QuerySet[AuditEntry]:
    """The audit log `user` may read: all of it for an administrator; otherwise the entries of the
    workspaces they own, and those about their own personal tokens."""
    if user.is_staff:
        return AuditEntry.objects.all()
    owned = Membership.objects.filter(user=user, role=Role.OWNER).values("workspace_id")
    return AuditEntry.objects.filter(Q(workspace__in=owned) | Q(workspace=None, actor=user))
