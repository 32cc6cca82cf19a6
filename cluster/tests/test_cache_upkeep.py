"""What keeps a node's cache from growing without bound: failed and cancelled fetches delete their partial files,
lock files of what is gone are removed (never one in use), and usage is kept as a running total instead of a walk
of the whole cache on every report."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from cluster.cache import ArtifactCache, FetchCancelled, FetchError, evict_lru, locks
from cluster.cache.locks import FileLock
from cluster.tests.test_cache import (
    KiB,
    MemorySource,
    MiB,
    SourceBroken,
    blob_files,
    fill,
    partial_files,
    sha256,
    wanted,
)


@pytest.fixture
def cache(tmp_path) -> ArtifactCache:
    return ArtifactCache(tmp_path / "cache", chunk_size=256 * KiB, parallel=4)


def walked_usage(root: Path) -> int:
    """The cache's usage counted the slow way, independently of the cache's own code: every inode once."""
    seen = {}
    for sub in ("blobs", "partial", "artifacts", "staging"):
        for folder, _, names in os.walk(root / sub):
            for name in names:
                st = os.lstat(os.path.join(folder, name))
                seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(seen.values())


def lock_names(cache: ArtifactCache) -> set[str]:
    return {p.name for p in (cache.root / "locks").iterdir()}


# Partial files of failed and cancelled fetches ---------------------------------


def test_a_cancelled_fetch_leaves_the_partial_file_another_fetch_is_writing(cache):
    data = os.urandom(4 * MiB)
    slow = MemorySource({"model.bin": data}, piece=32 * KiB, delay=0.02)  # about 0.7 s on 4 threads
    first: dict = {}

    def fetch_first() -> None:
        first["report"] = cache.fetch("one", [wanted("model.bin", data)], slow, scope="workspace:1")

    downloading = threading.Thread(target=fetch_first)
    downloading.start()
    deadline = time.monotonic() + 10
    while not partial_files(cache.root) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert partial_files(cache.root), "the first fetch did not start"
    calls = []

    def cancel_while_waiting(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:  # the first call comes at the start; the second while it waits for the blob's lock
            raise FetchCancelled()

    # The same content under another key: this fetch waits for the first one's blob lock, then is cancelled.
    with pytest.raises(FetchCancelled):
        cache.fetch(
            "two",
            [wanted("model.bin", data)],
            MemorySource({"model.bin": data}),
            scope="workspace:1",  # the same workspace: the first fetch's download is this one's to wait for
            progress=cancel_while_waiting,
        )
    assert downloading.is_alive(), "the first fetch ended before the second was cancelled: the test proves nothing"
    assert partial_files(cache.root), "a cancelled fetch deleted a partial file it was not writing"
    downloading.join(30)

    assert sha256((first["report"].path / "model.bin").read_bytes()) == sha256(data)
    assert slow.bytes_read == len(data), "the first fetch had to start over"
    assert partial_files(cache.root) == []


def test_a_checksum_mismatch_after_a_resume_deletes_what_the_killed_run_left(cache):
    data = os.urandom(MiB)
    with pytest.raises(SystemExit):
        cache.fetch("resumed", [wanted("model.bin", data)], MemorySource({"model.bin": data}, down_after=MiB // 2))
    assert partial_files(cache.root)
    changed = bytearray(data)
    changed[-1] ^= 0xFF

    with pytest.raises(FetchError, match="checksum mismatch"):
        cache.fetch("resumed", [wanted("model.bin", data)], MemorySource({"model.bin": bytes(changed)}))

    assert list((cache.root / "partial").iterdir()) == []


# Stale lock files --------------------------------------------------------------


def test_lock_files_of_removed_artifacts_and_stored_blobs_are_removed_and_live_ones_kept(cache):
    fill(cache, "kept", os.urandom(300 * KiB))
    fill(cache, "gone", os.urandom(300 * KiB))
    assert {"artifact.kept.lock", "artifact.gone.lock"} <= lock_names(cache)
    assert any(name.startswith("blob.") for name in lock_names(cache))

    cache.remove_artifact("gone")

    # The stored blobs' download locks and the removed key's lock went with the garbage collection.
    assert lock_names(cache) == {"artifact.kept.lock", "gc.lock"}
    fill(cache, "gone", os.urandom(300 * KiB))  # the names are made again as needed
    assert cache.has_artifact("gone")


def test_a_held_lock_file_is_never_removed(cache):
    fill(cache, "x", b"data")
    cache.remove_artifact("x")
    held = FileLock(cache.lock_path("artifact.busy"))
    held.acquire()
    try:
        cache.tidy()
        assert held.path.exists()
    finally:
        held.release()
    cache.tidy()
    assert not held.path.exists()


def test_a_lock_removed_between_an_acquirers_open_and_its_flock_is_taken_again_on_the_new_file(tmp_path, monkeypatch):
    path = tmp_path / "artifact.k.lock"
    path.touch()
    real_flock = locks.fcntl.flock
    raced = []

    def flock_after_a_removal(fd, operation):
        if not raced:  # between this acquirer's open and its flock, tidy removes the file
            raced.append(True)
            assert FileLock(path).remove_if_free()
        return real_flock(fd, operation)

    monkeypatch.setattr(locks.fcntl, "flock", flock_after_a_removal)
    late = FileLock(path)
    late.acquire()
    monkeypatch.setattr(locks.fcntl, "flock", real_flock)
    try:
        assert raced
        # It holds the lock on the file the path names now, so nobody else can take it.
        assert os.fstat(late.fd).st_ino == os.stat(path).st_ino
        assert not FileLock(path).try_acquire()
    finally:
        late.release()


# Abandoned partial files -------------------------------------------------------


def test_tidying_deletes_partial_files_nobody_wrote_for_a_week_unless_their_lock_is_held(tmp_path):
    root = tmp_path / "cache"
    for key in ("old", "busy", "young"):
        data = os.urandom(MiB)
        with pytest.raises(SystemExit):  # killed, never resumed
            ArtifactCache(root).fetch(key, [wanted("model.bin", data)], MemorySource({"model.bin": data}, down_after=1))
    parts = {p.name: p for p in partial_files(root)}
    assert len(parts) == 3
    old, busy, young = sorted(parts.values(), key=lambda p: p.stat().st_mtime)
    week = time.time() - 8 * 24 * 3600
    for part in (old, busy):
        os.utime(part, (week, week))
    holder = FileLock(root / "locks" / f"blob.{busy.name.removesuffix('.part')}.lock")
    holder.acquire()
    try:
        ArtifactCache(root).tidy()
    finally:
        holder.release()

    assert not old.exists() and not old.with_name(old.name + ".json").exists()
    assert busy.exists() and young.exists()


# Usage -------------------------------------------------------------------------


def test_usage_is_a_running_total_that_matches_a_walk_through_stores_failures_removals_and_evictions(cache):
    assert cache.usage_bytes() == walked_usage(cache.root) == 0
    shared = os.urandom(MiB)
    fill(cache, "a", shared, os.urandom(512 * KiB))
    fill(cache, "b", shared, os.urandom(700 * KiB))
    fill(cache, "c", os.urandom(MiB))
    assert cache.usage_bytes() == walked_usage(cache.root) > 3 * MiB

    data = os.urandom(MiB)
    with pytest.raises(SystemExit):  # a killed fetch's partial file counts while it is there
        cache.fetch("d", [wanted("model.bin", data)], MemorySource({"model.bin": data}, down_after=MiB // 2))
    assert cache.usage_bytes() == walked_usage(cache.root)
    with pytest.raises(SourceBroken):  # the same content resumed, then failed: its partial file is gone
        cache.fetch("d", [wanted("model.bin", data)], MemorySource({"model.bin": data}, fail_after=MiB // 4))
    assert cache.usage_bytes() == walked_usage(cache.root)

    cache.remove_artifact("a")
    assert cache.usage_bytes() == walked_usage(cache.root)
    removed = evict_lru(cache, quota=2 * MiB, last_used={"b": 1.0, "c": 2.0}, in_use=set())
    assert removed == ["b"]
    assert cache.usage_bytes() == walked_usage(cache.root)
    fill(cache, "c2", os.urandom(100 * KiB))
    second = ArtifactCache(cache.root, chunk_size=MiB, parallel=1)  # as the service makes for non-ranged sources
    fill(second, "e", os.urandom(200 * KiB))
    assert cache.usage_bytes() == second.usage_bytes() == walked_usage(cache.root)

    assert cache.usage_walks == 1, "usage walked the whole cache more than once"


def test_usage_is_counted_again_by_a_walk_once_the_recount_interval_passed(tmp_path):
    cache = ArtifactCache(tmp_path / "cache", recount_seconds=0.2)
    fill(cache, "a", os.urandom(MiB))
    cache.usage_bytes()
    walks = cache.usage_walks
    # A file the running total cannot see: another process (or a person) put it there.
    outsider = cache.root / "blobs" / "sha256" / ("0" * 64)
    outsider.write_bytes(os.urandom(MiB))
    assert cache.usage_bytes() < walked_usage(cache.root)

    time.sleep(0.3)

    assert cache.usage_bytes() == walked_usage(cache.root)
    assert cache.usage_walks == walks + 1
    assert blob_files(cache.root)
