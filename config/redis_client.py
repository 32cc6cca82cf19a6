"""The console's Redis clients for its own keys (change counters, rate limits); Celery and Django's cache keep
their own connections.

What the console keeps here sits on a request's path (a rate limit is counted on every API and gateway
request) or is best effort (a change announcement), so no caller may wait on a Redis that is down, restarting
or frozen: the clients give up after a quarter of a second and never retry. On top of that, a caller on the
request path asks `available(client)` first and reports a failure with `failed(client, exc)`: after a failure
the breaker skips Redis for a few seconds, so that a frozen Redis costs one request a quarter of a second
rather than every request its timeout."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

import redis
import redis.asyncio
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

# A Redis on the same host or network answers INCR in well under a millisecond: one that has not in this long
# is down, frozen or drowning, and the request goes on without it.
TIMEOUT = 0.25
# After a failure, Redis is left alone this long before a request tries it again.
BREAKER_SECONDS = 5.0

_client: redis.Redis | None = None
# One asyncio client per event loop: a redis.asyncio connection belongs to the loop it was opened in (a server
# has one loop; tests start several).
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, **_options(Retry(NoBackoff(), 0)))
    return _client


def aclient() -> redis.asyncio.Redis:
    """`client()` for the running event loop (the gateway's)."""
    loop = asyncio.get_running_loop()
    found = _async_clients.get(loop)
    if found is None:
        found = redis.asyncio.Redis.from_url(settings.REDIS_URL, **_options(AsyncRetry(NoBackoff(), 0)))
        _async_clients[loop] = found
    return found


def _options(retry) -> dict:
    return dict(socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, retry=retry, retry_on_error=[])


# The breaker's state lives on the client it guards: a client swapped in (a test's) starts closed.
_OPEN_UNTIL = "_plugboard_open_until"


def available(of) -> bool:
    """False for BREAKER_SECONDS after a failure of the client `of`: skip Redis meanwhile."""
    return time.monotonic() >= getattr(of, _OPEN_UNTIL, 0.0)


def failed(of, exc: Exception) -> None:
    """Records a failure of the client `of`: Redis is skipped for BREAKER_SECONDS (logged once per opening)."""
    if available(of):
        log.warning("Redis did not answer (%s); skipping it for %.0f s", type(exc).__name__, BREAKER_SECONDS)
    setattr(of, _OPEN_UNTIL, time.monotonic() + BREAKER_SECONDS)


@receiver(setting_changed)
def _forget_clients(*, setting: str, **_) -> None:
    """Tests that point REDIS_URL elsewhere (a private server) get clients of that server, and the suite's back
    afterwards, instead of a client still bound to whichever URL was current when it was made."""
    global _client
    if setting == "REDIS_URL":
        _client = None
        _async_clients.clear()
