"""The Cluster page, the model page's "On nodes" part and the cluster API."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from cluster import services
from cluster.cache import ArtifactCache
from cluster.inventory import Inventory
from cluster.models import CachedArtifact, Node
from cluster.nvml import Gpu
from config.errors import DomainError
from registry.models import Artifact, ArtifactKind, Connection
from registry.tests.helpers import register_and_inspect, s3_connection
from tests.support import artifacts as build


def report(name: str, tmp_path, *, gpus=(), runtimes=None) -> Node:
    node = services.node_register(
        name=name, address="10.0.0.9", cache_dir=str(tmp_path / name), cache_quota_bytes=10**9
    )
    inventory = Inventory(
        hostname=f"{name}.example", cpu_count=16, memory_total_bytes=64 * 2**30, memory_available_bytes=60 * 2**30,
        gpus=list(gpus), runtimes=runtimes if runtimes is not None else [{"name": "vllm", "package": "vllm", "version": "0.32.0", "device": "cuda", "python": "/opt/vllm/bin/python"}],
    )  # fmt: skip
    return services.node_report(node=node, inventory=inventory, cache=ArtifactCache(tmp_path / name))


H200 = Gpu(
    index=0,
    name="NVIDIA H200",
    uuid="GPU-1234",
    memory_total_bytes=141 * 2**30,
    memory_free_bytes=100 * 2**30,
    utilization_percent=7,
)


def test_a_gpu_host_reports_its_gpus_and_no_cpu_accelerator(db, tmp_path):
    node = report("gpu-1", tmp_path, gpus=[H200, Gpu(1, "NVIDIA H200", "GPU-5678", 141 * 2**30, 141 * 2**30, 0)])

    assert [(a.kind, a.index, a.uuid) for a in node.accelerators.all()] == [
        ("gpu", 0, "GPU-1234"),
        ("gpu", 1, "GPU-5678"),
    ]
    assert node.accelerators.get(index=0).memory_used_percent == 29


def test_a_host_without_gpus_offers_its_cpu(db, tmp_path):
    node = report("cpu-1", tmp_path)

    cpu = node.accelerators.get()
    assert (cpu.kind, cpu.cores, cpu.memory_total_bytes) == ("cpu", 16, 64 * 2**30)


def test_a_node_is_offline_after_three_missed_reports(db, tmp_path, settings):
    node = report("n", tmp_path)
    assert node.is_online
    Node.objects.filter(pk=node.pk).update(
        last_seen_at=timezone.now() - timedelta(seconds=3 * settings.PLUGBOARD_NODE_HEARTBEAT_SECONDS + 1)
    )
    node.refresh_from_db()
    assert not node.is_online and node.status == "offline"


def test_the_cluster_page_shows_nodes_accelerators_runtimes_and_cache(cast, client, tmp_path):
    report("gpu-1", tmp_path, gpus=[H200])
    client.force_login(cast.member)

    page = client.get(reverse("cluster:cluster")).content.decode()

    assert 'data-node="gpu-1"' in page and 'data-status="online"' in page
    assert "NVIDIA H200" in page and "141.0\xa0GB memory" in page
    assert 'data-runtime="vllm"' in page and "0.32.0" in page
    assert "of 953.7\xa0MB" in page  # the cache quota


@pytest.fixture
def tiny(cast, s3_server):
    s3_server.put_files("models", "c/tiny", build.base_model_files())
    return register_and_inspect(
        cast.team, s3_connection(cast.team, s3_server), name="tiny", kind="base", location="c/tiny"
    )


def test_a_fetch_to_an_offline_node_is_refused(cast, tiny, tmp_path):
    node = report("n", tmp_path)
    Node.objects.filter(pk=node.pk).update(last_seen_at=timezone.now() - timedelta(hours=1))
    node.refresh_from_db()

    with pytest.raises(DomainError, match="offline"):
        services.artifact_fetch_request(artifact=tiny, node=node)
    assert not CachedArtifact.objects.exists()


def test_two_requests_for_the_same_artifact_share_one_fetch(cast, tiny, tmp_path):
    node = report("n", tmp_path)
    first = services.artifact_fetch_request(artifact=tiny, node=node)
    second = services.artifact_fetch_request(artifact=tiny, node=node)

    assert first.pk == second.pk and second.status == "queued"
    assert CachedArtifact.objects.count() == 1


def test_the_api_requests_fetches_for_members_only(cast, tiny, tmp_path):
    report("n", tmp_path)
    api = APIClient()

    api.force_authenticate(cast.outsider)
    assert api.post("/api/v1/cache/", {"artifact": tiny.pk, "node": "n"}, format="json").status_code == 404
    api.force_authenticate(cast.viewer)
    assert api.post("/api/v1/cache/", {"artifact": tiny.pk, "node": "n"}, format="json").status_code == 403
    api.force_authenticate(cast.member)
    response = api.post("/api/v1/cache/", {"artifact": tiny.pk, "node": "n"}, format="json")
    assert response.status_code == 202 and response.json()["status"] == "queued"
    cached_id = response.json()["id"]

    api.force_authenticate(cast.outsider)
    assert api.get("/api/v1/cache/").json()["results"] == []
    assert api.post(f"/api/v1/cache/{cached_id}/cancel/").status_code == 404
    assert [n["name"] for n in api.get("/api/v1/nodes/").json()["results"]] == ["n"]

    api.force_authenticate(cast.member)
    cancelled = api.post(f"/api/v1/cache/{cached_id}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_the_model_page_offers_a_fetch_and_shows_progress(cast, client, tiny, tmp_path):
    node = report("n", tmp_path)
    client.force_login(cast.member)
    client.post(reverse("cluster:artifact_fetch", args=[tiny.pk]), {"node": node.pk})
    CachedArtifact.objects.filter(artifact=tiny).update(
        status="fetching", bytes_total=1000, bytes_done=420, rate_bytes_per_second=100, eta_seconds=6
    )

    part = client.get(reverse("cluster:artifact_nodes", args=[tiny.pk])).content.decode()

    assert 'data-cache-status="fetching"' in part and 'aria-valuenow="42"' in part and "6 s left" in part
    assert "Cancel" in part


def test_an_artifact_in_use_on_a_node_cannot_be_deleted(cast, client, tiny, tmp_path):
    node = report("n", tmp_path)
    cached = services.artifact_fetch_request(artifact=tiny, node=node)
    services.cache_lease(cached=cached, holder=cast.member)  # anything can hold a lease; deployments do
    api = APIClient()
    api.force_authenticate(cast.member)

    response = api.delete(f"/api/v1/models/{tiny.pk}/")
    assert response.status_code == 409
    assert response.json()["detail"] == "tiny is in use (user member on n); stop what uses it before deleting it."
    client.force_login(cast.member)
    assert "user member on n" in client.get(tiny.get_absolute_url()).content.decode()

    services.cache_release(cached=cached, holder=cast.member)
    assert api.delete(f"/api/v1/models/{tiny.pk}/").status_code == 204


def test_the_polled_cluster_fragment_costs_the_same_queries_for_one_row_or_many(cast, client, tmp_path):
    store = Connection.objects.create(workspace=cast.team, name="c", kind="local", root_path="/")
    client.force_login(cast.member)

    def fragment_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(reverse("cluster:cluster"), headers={"HX-Request": "true"}).status_code == 200
        return len(queries)

    def grow(n: int) -> None:
        node = report(f"gpu-{n}", tmp_path, gpus=[replace(H200, index=i, uuid=f"GPU-{n}-{i}") for i in range(4)])
        for i in range(3):
            artifact = Artifact.objects.create(
                workspace=cast.team, name=f"m-{n}-{i}", kind=ArtifactKind.BASE, connection=store, location="m"
            )
            cached = CachedArtifact.objects.create(node=node, artifact=artifact, status="ready")
            if i == 0:
                services.cache_lease(cached=cached, holder=cast.team)

    grow(1)
    one = fragment_queries()
    grow(2)
    grow(3)
    assert fragment_queries() == one, "no query per node, accelerator or cache entry"
