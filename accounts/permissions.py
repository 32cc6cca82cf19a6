"""What a personal API token's scope allows (accounts.models.TokenScope)."""

from __future__ import annotations

from rest_framework import permissions

from accounts.models import ApiToken
from accounts.models import TokenScope as Scope


def needed_scope(request, view) -> str:
    """The scope a request needs: read for GET, HEAD and OPTIONS; for other
    methods, write, or admin on views that declare `admin_scope_for_writes`
    (tokens, workspaces, members)."""
    if request.method in permissions.SAFE_METHODS:
        return Scope.READ
    return Scope.ADMIN if getattr(view, "admin_scope_for_writes", False) else Scope.WRITE


class TokenScope(permissions.BasePermission):
    """Refuses (403) a request whose personal API token lacks the scope it
    needs. Sessions (the console's own pages, Swagger UI) are not limited."""

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            return True
        needed = needed_scope(request, view)
        if Scope.covers(token.scope, needed):
            return True
        self.message = (
            f"This token's scope is “{token.scope}”; this request needs “{needed}”. Create a token with that "
            "scope under Settings."
        )
        return False
