"""The console's one Redis client for its own keys (change counters, live
server figures); Celery and Django's cache keep their own connections."""

from __future__ import annotations

import redis
from django.conf import settings

_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return _client
