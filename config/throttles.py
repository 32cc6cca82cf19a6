"""DRF's throttle for the REST API's per-caller rate limit (config/ratelimit.py)."""

from __future__ import annotations

from rest_framework import throttling

from config import ratelimit


class CallerThrottle(throttling.BaseThrottle):
    """Limits the REST API per caller: a personal token, or a signed-in user (config/ratelimit.py, the
    "api.caller" limit); 429 with Retry-After over it. Anonymous requests are left to the per-address limit."""

    def allow_request(self, request, view) -> bool:
        token = getattr(request, "auth", None)
        if token is not None and getattr(token, "pk", None) is not None:
            identity = f"token:{token.pk}"
        elif request.user and request.user.is_authenticated:
            identity = f"user:{request.user.pk}"
        else:
            return True
        self.retry_after = ratelimit.hit(ratelimit.limit("api.caller"), identity)
        return self.retry_after is None

    def wait(self) -> float | None:
        return self.retry_after
