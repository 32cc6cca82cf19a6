"""A source that stalls mid-download (a store that drips a byte now and then, or goes silent without closing)
fails its fetch with the reason within the configured time, its partial file removed, while the node goes on
fetching other artifacts: a stalled source never holds one of the node's fetch threads for good."""

from __future__ import annotations

import hashlib
import time

import pytest

from cluster import services
from registry import services as registry_services
from registry.sources import open_source
from registry.sources.base import StalledError, StallGuard, StallLimits
from registry.tests.helpers import register_and_inspect, s3_connection
from tests.support import artifacts as build
from tests.support.agents import fetch_settled, online_node, wait_for
from tests.support.counting_proxy import CountingProxy

KiB = 1024
MiB = 1024 * 1024
# What the agent is told: small, so that the test takes seconds (the defaults are a minute each).
READ_TIMEOUT = 4.0
MIN_BYTES_PER_SECOND = 4096
WINDOW = 6.0
SLACK = 8.0  # the agent's own work around a failure: closing streams, writing the outcome


# The guard itself, counting reads (pure logic, real clock) ----------------------------------------


def guard_stalls(pieces, *, what: str, limits: StallLimits):
    """Yields `pieces`, counting each as one network read (its size, and the time spent waiting for it)."""
    guard = StallGuard(what, limits)
    while True:
        began = time.monotonic()
        data = next(pieces, None)
        if data is None:
            return
        guard.took(len(data), time.monotonic() - began)
        yield data


def dripping(pieces: int, every: float, size: int = 1):
    for _ in range(pieces):
        time.sleep(every)
        yield b"x" * size


def test_a_drip_under_the_minimum_rate_fails_after_one_window_although_no_read_times_out():
    limits = StallLimits(read_timeout=10, min_bytes_per_second=1000, window=0.3)
    started = time.monotonic()

    with pytest.raises(StalledError) as failure:
        for _ in guard_stalls(dripping(1000, 0.02), what="s3://models/x.bin from http://store", limits=limits):
            pass

    assert 0.3 <= time.monotonic() - started < 0.6
    message = str(failure.value)
    assert "s3://models/x.bin from http://store stalled" in message
    assert "PLUGBOARD_FETCH_MIN_BYTES_PER_SECOND" in message and "0.3 s" in message


def test_time_the_reader_holds_a_stream_back_is_not_counted_against_the_source():
    limits = StallLimits(read_timeout=10, min_bytes_per_second=1000, window=0.2)
    got = 0
    for data in guard_stalls(dripping(4, 0.0, size=100), what="x", limits=limits):
        time.sleep(0.15)  # a bandwidth cap or a slow disk: 0.6 s in all, three windows
        got += len(data)

    assert got == 400


def test_a_stream_that_keeps_the_minimum_rate_is_never_cut():
    limits = StallLimits(read_timeout=10, min_bytes_per_second=1000, window=0.1)

    assert sum(map(len, guard_stalls(dripping(30, 0.01, size=200), what="x", limits=limits))) == 6000


# A real store behind a proxy that turns slow, and a real node agent ----------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stall", ["drips", "goes silent"])
def test_a_stalled_store_fails_its_fetch_in_time_while_the_node_fetches_another(
    cast, s3_server, agents, tmp_path, stall
):
    payload = build.random_safetensors(4 * MiB)
    s3_server.put_files("models", "stalls/slow", {**build.base_model_files(), "extra.safetensors": payload})
    fine_files = build.base_model_files(hidden=96)
    s3_server.put_files("models", "stalls/fine", fine_files)
    proxy = CountingProxy("127.0.0.1", s3_server.port)
    slow_store = s3_connection(cast.team, s3_server, name="via-proxy")
    slow_store.endpoint_url = proxy.url
    slow_store.save()
    slow = register_and_inspect(cast.team, slow_store, name="slow", kind="base", location="stalls/slow")
    fine = register_and_inspect(
        cast.team, s3_connection(cast.team, s3_server), name="fine", kind="base", location="stalls/fine"
    )
    assert slow.status == fine.status == "ready", (slow.problems, fine.problems)
    agents(
        "alpha",
        env={
            "PLUGBOARD_FETCH_READ_TIMEOUT": str(READ_TIMEOUT),
            "PLUGBOARD_FETCH_MIN_BYTES_PER_SECOND": str(MIN_BYTES_PER_SECOND),
            "PLUGBOARD_FETCH_RATE_WINDOW": str(WINDOW),
        },
    )
    # A drip of two bytes a second: every read returns well within the read timeout, only the rate tells. Only
    # the big file's body can take the store past 2 MiB, so the stall comes mid-body, as from a failing link.
    proxy.slow_down(after=2 * MiB, drip_every=0.5 if stall == "drips" else None)

    stalled = services.artifact_fetch_request(artifact=slow, node=online_node("alpha"))
    wait_for(lambda: proxy.slowed_at, timeout=60, what="the store to stall mid-download")
    other = fetch_settled(services.artifact_fetch_request(artifact=fine, node=online_node("alpha")))
    stalled = fetch_settled(stalled)
    proxy.close()

    assert other.status == "ready", other.error
    assert other.started_at < stalled.finished_at, "the other fetch waited for the stalled one to end"
    folder = tmp_path / "cache-alpha" / "artifacts" / other.key
    for name, data in fine_files.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()

    assert stalled.status == "failed"
    error = stalled.error
    assert "s3://models/stalls/slow/" in error and proxy.url in error and "stalled" in error, error
    limit = WINDOW if stall == "drips" else READ_TIMEOUT
    setting = "PLUGBOARD_FETCH_MIN_BYTES_PER_SECOND" if stall == "drips" else "PLUGBOARD_FETCH_READ_TIMEOUT"
    assert setting in error and f"{limit:g} s" in error, error
    took = stalled.finished_at.timestamp() - proxy.slowed_at
    assert took < limit + SLACK, f"the fetch failed {took:.1f} s after the store stalled (limit {limit:g} s)"
    assert not list((tmp_path / "cache-alpha" / "partial").iterdir()), "the failed fetch left its partial files"
    assert not (tmp_path / "cache-alpha" / "artifacts" / stalled.key).exists()
    print(f"\n{stall}: failed {took:.1f} s after the store stalled; the other fetch ended ready meanwhile")


# The hub's protocol, read by the hub source itself -----------------------------------------------------------


@pytest.mark.django_db
def test_a_hub_that_drips_mid_file_is_cut_by_the_minimum_rate(cast, hub_server, settings):
    settings.PLUGBOARD_FETCH_READ_TIMEOUT = 2.0
    settings.PLUGBOARD_FETCH_MIN_BYTES_PER_SECOND = 4096
    settings.PLUGBOARD_FETCH_RATE_WINDOW = 2.0
    files = {**build.base_model_files(), "extra.safetensors": build.random_safetensors(2 * MiB)}
    hub_server.make_repo("acme/drips", files, lfs={"extra.safetensors"})
    proxy = CountingProxy("127.0.0.1", hub_server.port)
    hub = registry_services.connection_create(workspace=cast.team, name="hub", kind="hf", endpoint_url=proxy.url)
    source = open_source(hub, location="acme/drips")
    source.resolve()
    proxy.slow_down(after=256 * KiB, drip_every=0.5)
    started = time.monotonic()

    with pytest.raises(StalledError) as failure:
        for _ in source.stream_range("extra.safetensors", 0, len(files["extra.safetensors"])):
            pass
    proxy.close()

    assert time.monotonic() - started < 2.0 + SLACK
    message = str(failure.value)
    assert "extra.safetensors of acme/drips from " + proxy.url in message
    assert "PLUGBOARD_FETCH_MIN_BYTES_PER_SECOND" in message
