"""The console's own Redis client never holds a request: a frozen Redis (it keeps its connections and answers
nothing) costs the first request a quarter of a second, and the ones after it nothing while the breaker is
open; once the breaker closes, a Redis that answers again counts again. Against a real, frozen redis-server."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from config import ratelimit, redis_client
from tests.support.agents import wait_for
from tests.support.servers import RedisServer

LIMIT = ratelimit.Limit("test", 1, 3600)  # one request an hour: the second one counted is refused


@pytest.fixture
def frozen_redis(settings, monkeypatch):
    monkeypatch.setattr(redis_client, "BREAKER_SECONDS", 0.5)
    server = RedisServer().start()
    settings.REDIS_URL = server.url(0)
    server.process.send_signal(signal.SIGSTOP)
    yield server
    server.process.send_signal(signal.SIGCONT)
    server.destroy()


def timed(call):
    started = time.monotonic()
    return call(), time.monotonic() - started


def test_a_frozen_redis_costs_one_request_a_quarter_second_and_the_next_nothing(frozen_redis):
    (first, first_seconds), (second, second_seconds) = (timed(lambda: ratelimit.hit(LIMIT, "x")) for _ in range(2))
    assert (first, second) == (None, None), "requests that cannot be counted go through"
    assert first_seconds < redis_client.TIMEOUT + 0.2 and second_seconds < 0.01, (first_seconds, second_seconds)
    assert timed(lambda: ratelimit.signin_locked(username="u", address="a"))[1] < 0.01

    frozen_redis.process.send_signal(signal.SIGCONT)
    wait_for(lambda: redis_client.available(redis_client.client()), timeout=5, what="the breaker to close")
    assert [ratelimit.hit(LIMIT, "y") for _ in range(2)][1] is not None, "counted again: the second is refused"


def test_the_gateway_limits_fail_as_fast(frozen_redis):
    async def twice():
        return [await ratelimit.ahit(LIMIT, "x"), await ratelimit.ahit(LIMIT, "x")]

    answers, seconds = timed(lambda: asyncio.run(twice()))
    assert answers == [None, None] and seconds < redis_client.TIMEOUT + 0.2, seconds
