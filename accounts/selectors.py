from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Membership, Role, Workspace


def workspaces_for(user) -> QuerySet[Workspace]:
    """The workspaces `user` is a member of."""
    return Workspace.objects.filter(memberships__user=user)


def writable_workspaces_for(user) -> QuerySet[Workspace]:
    """The workspaces where `user` may create and change things."""
    return Workspace.objects.filter(memberships__user=user, memberships__role__in=[Role.OWNER, Role.EDITOR])


def role_in(user, workspace: Workspace) -> str | None:
    return Membership.objects.filter(user=user, workspace=workspace).values_list("role", flat=True).first()
