"""A node's cache disk fills up while a fetch writes to it (a real, small file system: tmpfs, or a loopback
ext4 where tmpfs cannot be mounted): the fetch fails with "disk full", naming the cache folder and its free
space, its partial file is removed, the artifacts already cached stay whole, and once space is freed the same
fetch succeeds."""

from __future__ import annotations

import errno
import hashlib
import subprocess
from pathlib import Path

import pytest

from cluster import services
from cluster.models import CachedArtifact
from deployments.models import Deployment
from deployments.services import deployment_create
from deployments.supervisor import Supervisor
from registry.tests.helpers import register_and_inspect, s3_connection
from tests.support import artifacts as build
from tests.support.agents import fetch_settled, online_node, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024
DISK = 128 * MiB  # the fetch's space check keeps 64 MiB free on top of what it needs: this leaves room for 24 MiB


def _run(*argv: str) -> str:
    """Runs a command; returns "" when it worked, else what it said."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if done.returncode == 0 else (done.stderr or done.stdout).strip() or f"exit {done.returncode}"


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """The folder the node agent "alpha" will use as its cache, made a file system of DISK bytes of its own.
    Requested before `agents`, so it is unmounted after the agent is gone."""
    folder = tmp_path / "cache-alpha"
    folder.mkdir()
    tried = _run("mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(folder))
    if tried:
        image = tmp_path / "disk.img"
        loop = _run("truncate", "-s", str(DISK), str(image)) or _run("mkfs.ext4", "-q", "-F", str(image))
        loop = loop or _run("mount", "-o", "loop", str(image), str(folder))
        if loop:
            pytest.skip(f"cannot mount a small file system here (tmpfs: {tried}; loopback ext4: {loop})")
    yield folder
    _run("umount", "-l", str(folder))


def fill(disk: Path) -> Path:
    """Writes a file until the file system is full (as a log or another program on the node would)."""
    filler = disk / "filler"
    block = b"\0" * MiB
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_disk_that_fills_during_a_fetch_fails_it_clearly_and_keeps_the_other_artifacts(
    cast, s3_server, small_disk, agents
):
    kept_files = build.base_model_files(hidden=96)
    s3_server.put_files("models", "full/kept", kept_files)
    payload = build.random_safetensors(24 * MiB)
    s3_server.put_files("models", "full/big", {**build.base_model_files(), "extra.safetensors": payload})
    store = s3_connection(cast.team, s3_server)
    kept = register_and_inspect(cast.team, store, name="kept", kind="base", location="full/kept")
    big = register_and_inspect(cast.team, store, name="big", kind="base", location="full/big")
    assert kept.status == big.status == "ready", (kept.problems, big.problems)
    # 8 MB/s: three seconds for the big file, time enough to fill the disk under it.
    agents("alpha", env={"PLUGBOARD_FETCH_MAX_BYTES_PER_SECOND": str(8 * MiB)})
    kept_entry = fetch_settled(services.artifact_fetch_request(artifact=kept, node=online_node("alpha")))
    assert kept_entry.status == "ready", kept_entry.error

    # A deployment of the big model on the node: its supervisor asks for the fetch (as the agent's own does too).
    deployment = deployment_create(
        workspace=cast.team, name="big", base=big, node=online_node("alpha"), settings={"kv_cache_bytes": 1 << 30}
    )
    supervisor = Supervisor("alpha", None, small_disk.parent / "runs")
    assert supervisor.ensure_fetched(Deployment.objects.get(pk=deployment.pk)) is None  # waiting for the fetch
    cached = CachedArtifact.objects.get(node=online_node("alpha"), artifact=big)
    wait_for(
        lambda: list((small_disk / "partial").glob("*.part")), timeout=60, every=0.02, what="the big fetch to start"
    )
    filler = fill(small_disk)
    cached = fetch_settled(cached)

    assert cached.status == "failed"
    error = cached.error
    assert error.startswith("Disk full: the artifact cache "), error
    assert str(small_disk) in error and " free, too little to write " in error, error
    assert "Free space on that disk" in error
    assert not list((small_disk / "partial").iterdir()), "the failed fetch left its partial file"
    assert not (small_disk / "artifacts" / cached.key).exists()
    # The node's supervisor (the agent's own, on its next tick) fails the deployment with the fetch's reason.
    wait_for(
        lambda: Deployment.objects.filter(pk=deployment.pk, status="failed").exists(),
        timeout=60,
        what="the deployment to fail",
    )
    assert deployment.events.filter(message__startswith="Fetching big failed: Disk full: the artifact cache ").exists()
    # What was cached before is whole, and still what the node says it has.
    kept_entry.refresh_from_db()
    assert kept_entry.status == "ready"
    folder = small_disk / "artifacts" / kept_entry.key
    assert {p.name for p in folder.iterdir()} == set(kept_files)
    for name, data in kept_files.items():
        assert sha256((folder / name).read_bytes()) == sha256(data)

    filler.unlink()
    cached = fetch_settled(services.artifact_fetch_request(artifact=big, node=online_node("alpha")))
    assert cached.status == "ready", cached.error
    assert sha256((small_disk / "artifacts" / cached.key / "extra.safetensors").read_bytes()) == sha256(payload)
