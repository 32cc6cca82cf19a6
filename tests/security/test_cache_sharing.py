"""A node's artifact cache never hands one workspace another's bytes: a hub repository that claims the sha256
(and size) of a file another workspace fetched from its private store gets its own source's bytes or
nothing. Real path: a private loopback S3 store, olah serving a git repository, a real node agent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cluster import services
from cluster.models import CachedArtifact, Node
from registry import services as registry_services
from registry.tests.helpers import register_and_inspect, s3_connection
from tests.support import artifacts as build
from tests.support.agents import wait_for
from tests.support.hub_server import make_repo, repo_path

pytestmark = pytest.mark.django_db(transaction=True)

SECRET_SIZE = 1024 * 1024


@pytest.fixture(autouse=True)
def _heartbeat(settings):
    settings.PLUGBOARD_NODE_HEARTBEAT_SECONDS = 1  # as the agents are told


def alpha() -> Node:
    return Node.objects.get(name="alpha")  # fresh: the agent's reports keep it online


def settled(cached: CachedArtifact) -> CachedArtifact:
    def done():
        cached.refresh_from_db()
        return cached.status not in CachedArtifact.ACTIVE

    wait_for(done, timeout=120, what=f"the fetch of {cached.artifact.name} to end")
    return cached


def holds(folder: Path, data: bytes) -> list[Path]:
    """Returns the files under `folder` whose bytes are `data`."""
    return [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size == len(data) and p.read_bytes() == data]


def claiming_repo(hub_server, hub_root, repo_id: str, *, claimed: bytes, served: bytes) -> Path:
    """A hub repository whose LFS pointer for secret.safetensors states the sha256 and size of `claimed`, a file
    its author does not have; the hub serves `served` (other bytes of the same size, so that inspection reads
    a valid header) under that object id. Returns the object's path."""
    oid = hashlib.sha256(claimed).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(claimed)}\n"
    make_repo(hub_root, repo_id, {**build.base_model_files(), "secret.safetensors": pointer})
    obj = repo_path(hub_root, repo_id) / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(served)
    hub_server.refresh()
    return obj


@pytest.mark.parametrize("hub_serves", ["other bytes", "nothing"])
def test_a_hub_repository_claiming_another_workspaces_private_blob_downloads_and_fails(
    cast, s3_server, hub_server, hub_root, agents, tmp_path, hub_serves
):
    agents("alpha")
    # Workspace A: a model with a private file, from its private store, fetched onto the node.
    secret = build.random_safetensors(SECRET_SIZE)
    s3_server.put_files("models", f"private/{hub_serves}", {**build.base_model_files(), "secret.safetensors": secret})
    store = s3_connection(cast.team, s3_server)
    mine = register_and_inspect(cast.team, store, name="mine", kind="base", location=f"private/{hub_serves}")
    assert mine.files.get(path="secret.safetensors").checksum_kind == "etag"
    fetched = settled(services.artifact_fetch_request(artifact=mine, node=alpha()))
    assert fetched.status == "ready", fetched.error
    cache_dir = tmp_path / "cache-alpha"
    assert holds(cache_dir / "artifacts" / fetched.key, secret)

    # Workspace B: a public hub repository whose pointer claims A's file.
    repo_id = f"mallory/claims-{hub_serves.replace(' ', '-')}"
    served = build.random_safetensors(SECRET_SIZE)
    obj = claiming_repo(hub_server, hub_root, repo_id, claimed=secret, served=served)
    assert len(served) == len(secret) and served != secret
    hub = registry_services.connection_create(workspace=cast.other, name="hub", kind="hf", endpoint_url=hub_server.url)
    theirs = register_and_inspect(cast.other, hub, name="theirs", kind="base", location=repo_id)
    assert theirs.status == "ready", theirs.problems
    claim = theirs.files.get(path="secret.safetensors")
    assert (claim.checksum_kind, claim.checksum, claim.size) == (
        "sha256",
        hashlib.sha256(secret).hexdigest(),
        len(secret),
    )
    if hub_serves == "nothing":
        obj.unlink()

    attempt = settled(services.artifact_fetch_request(artifact=theirs, node=alpha()))

    assert attempt.status == "failed", "B's fetch must download from B's hub, never link A's blob"
    assert "secret.safetensors" in attempt.error
    if hub_serves == "other bytes":
        assert "checksum mismatch: expected sha256" in attempt.error
    assert not (cache_dir / "artifacts" / attempt.key).exists()
    everything_but_a = [p for p in cache_dir.iterdir() if p.name not in ("artifacts", "blobs")]
    assert not [hit for folder in everything_but_a for hit in holds(folder, secret)]
    assert holds(cache_dir / "artifacts", secret) == holds(cache_dir / "artifacts" / fetched.key, secret)
