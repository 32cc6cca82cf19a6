"""Rate limits: fixed-window counters in Redis, shared by every web process.

A limit is "at most `count` requests per `window` seconds" for one identity
(an address, a token, a key); `settings.PLUGBOARD_RATE_LIMITS` names them.
A fixed window lets a burst of twice the limit straddle a window's edge; for
abuse protection that is fine, and it costs one round trip to Redis (INCR and
EXPIRE in one pipeline) per check, with no per-request bookkeeping to store.

Failed sign-ins work differently: after `PLUGBOARD_SIGNIN_FREE_FAILURES`
failures for a username or an address, each further failure locks it for
twice as long as the one before (up to `PLUGBOARD_SIGNIN_MAX_LOCK_SECONDS`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import redis
from django.conf import settings

from config import redis_client

log = logging.getLogger(__name__)

PREFIX = "plugboard:rl:"
# A failure is forgotten this long after the last one, so a typo a week ago does not count today.
FAILURE_MEMORY_SECONDS = 3600


@dataclass(frozen=True)
class Limit:
    name: str
    count: int  # 0: no limit
    window: int  # seconds


def limit(name: str) -> Limit:
    """Returns the limit `name` from settings.PLUGBOARD_RATE_LIMITS ("signin", "api.address", ...)."""
    count, window = settings.PLUGBOARD_RATE_LIMITS[name]
    return Limit(name, count, window)


def _window_key(limit: Limit, identity: str, now: float) -> tuple[str, int]:
    """The counter's key for the window `now` falls in, and the seconds left in that window."""
    window_index = int(now // limit.window)
    left = math.ceil((window_index + 1) * limit.window - now)
    return f"{PREFIX}{limit.name}:{identity}:{window_index}", max(left, 1)


def _uncounted(limit: Limit, client, exc: Exception | None) -> None:
    """A limit that cannot count lets the request through (and says so in the log): refusing everyone, or
    answering 500, while Redis is away would turn a broker outage into a console outage. The request does
    not wait for Redis either (config/redis_client.py: a quarter of a second at most, then a few seconds of
    not asking)."""
    if exc is not None:
        redis_client.failed(client, exc)
    log.debug("rate limit %s not counted: Redis is not answering", limit.name)


def hit(limit: Limit, identity: str) -> int | None:
    """Counts one request of `identity` against `limit`; returns None when it
    is within the limit (or cannot be counted), else the seconds until the window ends (Retry-After)."""
    if not limit.count:
        return None
    client = redis_client.client()
    if not redis_client.available(client):
        _uncounted(limit, client, None)
        return None
    key, left = _window_key(limit, identity, time.time())
    pipe = client.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, left + 1)
    try:
        count, _ = pipe.execute()
    except redis.RedisError as exc:
        _uncounted(limit, client, exc)
        return None
    return left if count > limit.count else None


async def ahit(limit: Limit, identity: str) -> int | None:
    """`hit` for the gateway's event loop."""
    if not limit.count:
        return None
    client = redis_client.aclient()
    if not redis_client.available(client):
        _uncounted(limit, client, None)
        return None
    key, left = _window_key(limit, identity, time.time())
    pipe = client.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, left + 1)
    try:
        count, _ = await pipe.execute()
    except (redis.RedisError, OSError) as exc:
        _uncounted(limit, client, exc)
        return None
    return left if count > limit.count else None


def _lock_key(kind: str, identity: str) -> str:
    return f"{PREFIX}signin-lock:{kind}:{identity}"


def _failures_key(kind: str, identity: str) -> str:
    return f"{PREFIX}signin-failures:{kind}:{identity}"


def _signin_unguarded(client, exc: Exception | None) -> None:
    """Sign-in lockouts, like the rate limits, let people in while Redis is away rather than lock everyone
    out or answer 500; the failure is logged (config/redis_client.py)."""
    if exc is not None:
        redis_client.failed(client, exc)
    log.warning("sign-in failures not counted: Redis is not answering")


def signin_locked(*, username: str, address: str) -> int | None:
    """Returns the seconds until `username` or `address` may try to sign in
    again, or None when neither is locked (or Redis cannot say)."""
    client = redis_client.client()
    if not redis_client.available(client):
        _signin_unguarded(client, None)
        return None
    pipe = client.pipeline(transaction=False)
    pipe.pttl(_lock_key("user", username.lower()))
    pipe.pttl(_lock_key("address", address))
    try:
        remaining = [ms for ms in pipe.execute() if ms and ms > 0]
    except redis.RedisError as exc:
        _signin_unguarded(client, exc)
        return None
    return math.ceil(max(remaining) / 1000) if remaining else None


def signin_failed(*, username: str, address: str) -> int | None:
    """Counts a failed sign-in for `username` and `address`; past the free
    failures, locks each for a doubling time. Returns the longest lock set, if any."""
    client = redis_client.client()
    if not redis_client.available(client):
        _signin_unguarded(client, None)
        return None
    free = settings.PLUGBOARD_SIGNIN_FREE_FAILURES
    longest = None
    try:
        for kind, identity in (("user", username.lower()), ("address", address)):
            pipe = client.pipeline(transaction=False)
            pipe.incr(_failures_key(kind, identity))
            pipe.expire(_failures_key(kind, identity), FAILURE_MEMORY_SECONDS)
            failures, _ = pipe.execute()
            if failures > free:
                seconds = min(2 ** (failures - free), settings.PLUGBOARD_SIGNIN_MAX_LOCK_SECONDS)
                client.set(_lock_key(kind, identity), 1, ex=seconds)
                longest = max(longest or 0, seconds)
    except redis.RedisError as exc:
        _signin_unguarded(client, exc)
    return longest


def signin_succeeded(*, username: str) -> None:
    """Forgets the failures of `username`. Not those of the address: one account
    of an attacker's own must not reset their guessing at others."""
    client = redis_client.client()
    if not redis_client.available(client):
        return
    try:
        client.delete(_failures_key("user", username.lower()), _lock_key("user", username.lower()))
    except redis.RedisError as exc:
        _signin_unguarded(client, exc)
