"""Fetching from a local folder through the cluster's service onto a real cache: the node copies (never
hard-links) the files, and a folder changed since registration fails the fetch. Also the sharing scope
each kind of connection gets."""

from __future__ import annotations

import os

import pytest

from cluster import services
from cluster.cache import ArtifactCache
from registry import services as registry_services
from registry.tests.helpers import register_and_inspect
from tests.support import artifacts as build
from tests.support.nodes import online_cpu_node


@pytest.fixture
def shelf(cast, tmp_path):
    folder = tmp_path / "shelf" / "tiny"
    folder.mkdir(parents=True)
    for name, data in build.base_model_files().items():
        (folder / name).write_bytes(data)
    return registry_services.connection_create(
        workspace=cast.team, name="nfs", kind="local", root_path=str(tmp_path / "shelf")
    )


def fetch(artifact, tmp_path):
    node = online_cpu_node(tmp_path)
    cache = ArtifactCache(tmp_path / "cache")
    cached = services.artifact_fetch_request(artifact=artifact, node=node)
    return services.artifact_fetch_run(cached_id=cached.pk, cache=cache), cache


def test_a_local_file_is_copied_and_editing_the_original_changes_nothing_cached(cast, shelf, tmp_path):
    artifact = register_and_inspect(cast.team, shelf, name="tiny", kind="base", location="tiny")
    original = tmp_path / "shelf" / "tiny" / "model.safetensors"
    before = original.read_bytes()

    fetched, cache = fetch(artifact, tmp_path)
    with open(original, "r+b") as f:
        f.seek(len(before) - 64)
        f.write(b"\xff" * 64)

    assert fetched.status == "ready", fetched.error
    cached = cache.artifact_path(fetched.key) / "model.safetensors"
    assert not os.path.samefile(cached, original)
    assert cached.read_bytes() == before
    assert fetched.bytes_transferred == artifact.total_bytes


def test_a_local_file_changed_between_inspection_and_fetch_fails_the_fetch(cast, shelf, tmp_path):
    artifact = register_and_inspect(cast.team, shelf, name="tiny", kind="base", location="tiny")
    original = tmp_path / "shelf" / "tiny" / "model.safetensors"
    data = bytearray(original.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    original.write_bytes(bytes(data))
    os.utime(original, ns=(0, original.stat().st_mtime_ns + 1_000_000))  # as a later write would

    fetched, cache = fetch(artifact, tmp_path)

    assert fetched.status == "failed"
    assert "Files of tiny in the local folder changed since registration" in fetched.error
    assert "Inspect the artifact again" in fetched.error
    assert not cache.has_artifact(fetched.key)


def test_a_local_file_edited_while_it_is_copied_fails_the_fetch_and_leaves_nothing(cast, shelf, tmp_path, monkeypatch):
    artifact = register_and_inspect(cast.team, shelf, name="tiny", kind="base", location="tiny")
    original = tmp_path / "shelf" / "tiny" / "model.safetensors"
    copy = ArtifactCache.fetch

    def copy_then_edit(self, *args, **kwargs):
        report = copy(self, *args, **kwargs)
        with open(original, "r+b") as f:  # lands just after the copy read those bytes
            f.write(b"\xff")
        os.utime(original, ns=(0, original.stat().st_mtime_ns + 1_000_000))
        return report

    monkeypatch.setattr(ArtifactCache, "fetch", copy_then_edit)

    fetched, cache = fetch(artifact, tmp_path)

    assert fetched.status == "failed"
    assert "changed since registration" in fetched.error
    assert not cache.has_artifact(fetched.key)


def test_each_connection_gets_the_sharing_scope_of_who_may_read_its_files(cast, s3_server):
    hub_url = s3_server.url  # any server: nothing is read
    public_hub = registry_services.connection_create(
        workspace=cast.team, name="hub", kind="hf", endpoint_url=hub_url + "/"
    )
    private_hub = registry_services.connection_create(
        workspace=cast.team, name="hub-token", kind="hf", endpoint_url=hub_url, secrets={"token": "hf_x"}
    )
    store = registry_services.connection_create(
        workspace=cast.other, name="store", kind="s3", endpoint_url=s3_server.url, bucket="models"
    )

    assert services.fetch_scope(public_hub) == f"hub:{hub_url}"
    assert services.fetch_scope(private_hub) == f"workspace:{cast.team.pk}"
    assert services.fetch_scope(store) == f"workspace:{cast.other.pk}"
