"""Change announcements between processes: a counter in Redis that a service
bumps, once its transaction commits, when something a long-lived in-process
cache holds has changed (the gateway's keys and routes). Readers poll the
counter and drop their cache when it moves; polling one key costs one round
trip, where a pub/sub subscription would have to be re-established by every
reader after every Redis restart."""

from __future__ import annotations

import logging

import redis
from django.db import transaction

from config.redis_client import client

log = logging.getLogger(__name__)

ROUTES = "plugboard:changes:routes"


def announce(topic: str = ROUTES) -> None:
    """Bumps `topic`'s counter once the current transaction commits (at once outside one).
    A Redis that cannot be reached is logged, not raised: readers also expire
    what they hold when they cannot read the counter."""

    def bump() -> None:
        try:
            client().incr(topic)
        except redis.RedisError as exc:
            log.warning("could not announce a change of %s: %s", topic, exc)

    transaction.on_commit(bump)
