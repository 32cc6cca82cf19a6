"""Object access for views and the API: an object of another workspace is 404,
a read-only member trying to write is 403."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Model, QuerySet
from django.http import Http404

from accounts.models import Role, Workspace
from accounts.selectors import writable_workspaces_for
from config.errors import DomainError


def get_for(user, queryset: QuerySet, pk, *, write: bool = False, via: str = "workspace") -> Model:
    """Returns the row `pk` of `queryset` if `user` is a member of its workspace
    (the field path `via`, e.g. "artifact__workspace"); with `write`, only for
    owners and editors."""
    try:
        obj = queryset.filter(**{"pk": pk, f"{via}__memberships__user": user}).first()
    except (ValueError, TypeError, ValidationError):  # "x1" for a numeric id: no such object, not a 500
        raise Http404 from None
    if obj is None:
        raise Http404
    workspace = obj
    for attribute in via.split("__"):
        workspace = getattr(workspace, attribute)
    if write and not can_write(user, workspace):
        raise PermissionDenied("Viewers can look but not change anything in this workspace.")
    return obj


def can_write(user, workspace) -> bool:
    return workspace.memberships.filter(user=user, role__in=[Role.OWNER, Role.EDITOR]).exists()


def workspace_for_write(user, workspace=None):
    """Returns the workspace a new object goes into: the one named, if `user`
    may write there, or else their only writable workspace."""
    writable = writable_workspaces_for(user)
    if workspace is not None:
        if not writable.filter(pk=workspace.pk).exists():
            if workspace.memberships.filter(user=user).exists():
                raise PermissionDenied("Viewers can look but not change anything in this workspace.")
            raise Http404
        return workspace
    choices = list(writable[:2])
    if not choices:
        raise PermissionDenied("You may not create anything: you are not an owner or editor of any workspace.")
    if len(choices) > 1:
        raise DomainError("You belong to several workspaces; say which one (`workspace`: its slug).")
    return choices[0]


def get_workspace_for(user, pk, *, manage: bool = False) -> Workspace:
    """Returns workspace `pk` if `user` is a member of it (else 404); with
    `manage` (its members, its name), only for its owners (else 403)."""
    workspace = Workspace.objects.filter(pk=pk, memberships__user=user).first()
    if workspace is None:
        raise Http404
    if manage and not workspace.memberships.filter(user=user, role=Role.OWNER).exists():
        raise PermissionDenied("Only the workspace's owners may manage its members.")
    return workspace
