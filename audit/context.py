"""Who is acting, for the audit log, without passing a request through every service.

The middleware keeps the current request in a context variable; audit_record reads its user when it
writes an entry (by then DRF has authenticated a token and set the request's user) and its address.
Outside a request (a Celery task, a management command) the actor is "system"."""

from __future__ import annotations

import contextvars

_request: contextvars.ContextVar = contextvars.ContextVar("audit_request", default=None)


def current_actor() -> tuple[object | None, str, str | None]:
    """Returns (user or None, the name to keep, the client's address or None)."""
    request = _request.get()
    if request is None:
        return None, "system", None
    user = getattr(request, "user", None)
    address = request.META.get("REMOTE_ADDR") or None
    if user is None or not user.is_authenticated:
        return None, "anonymous", address
    return user, user.get_username(), address


class AuditContextMiddleware:
    """Makes the request the audit log's source of who and from where, for the request's duration."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)
