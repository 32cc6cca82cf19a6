"""Unit tests of the artifact cache engine (cluster/cache/): pure logic over
in-memory and local-file sources, no Django. The S3 path is measured by
bench/fetch_s3.py against a real S3-protocol server."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cluster.cache import ArtifactCache, FetchCancelled, FetchError, Wanted, evict_lru, store

REPO = Path(__file__).resolve().parents[2]
KiB = 1024
MiB = 1024 * 1024


class SourceBroken(Exception):
    """What a source raises when its connection drops."""


class MemorySource:
    """A RangeReader over in-memory files that counts what it hands out; it can be slowed down, made to break
    after a number of bytes, or to take the process down (SystemExit, as a worker's shutdown raises: the
    fetch is interrupted as by a kill, leaving its partial files to resume)."""

    def __init__(
        self,
        files: dict[str, bytes],
        *,
        piece: int = 64 * KiB,
        delay: float = 0.0,
        fail_after: int | None = None,
        down_after: int | None = None,
    ) -> None:
        self.files = files
        self.piece = piece
        self.delay = delay
        self.fail_after = fail_after
        self.down_after = down_after
        self.bytes_read = 0
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, path: str, start: int, end: int):
        with self._lock:
            self.calls += 1
        data = self.files[path]
        pos = start
        while pos < end:
            with self._lock:
                if self.fail_after is not None and self.bytes_read >= self.fail_after:
                    raise SourceBroken("connection reset by peer")
                if self.down_after is not None and self.bytes_read >= self.down_after:
                    raise SystemExit(1)
                piece = data[pos : min(end, pos + self.piece)]
                self.bytes_read += len(piece)
            if not piece:
                return  # the file is shorter than asked for
            if self.delay:
                time.sleep(self.delay)
            pos += len(piece)
            yield piece


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def multipart_etag(data: bytes, part_size: int) -> str:
    digests = [hashlib.md5(data[i : i + part_size]).digest() for i in range(0, len(data), part_size)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def wanted(path: str, data: bytes, kind: str = "sha256") -> Wanted:
    checksum = {"sha256": sha256, "git-sha1": git_sha1, "etag": md5, "": lambda _: ""}[kind](data)
    return Wanted(path=path, size=len(data), checksum=checksum, checksum_kind=kind)


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blobs").rglob("*") if p.is_file())


def partial_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "partial").glob("*.part"))


@pytest.fixture
def cache(tmp_path) -> ArtifactCache:
    return ArtifactCache(tmp_path / "cache", chunk_size=256 * KiB, parallel=4)


# Fetching and verifying -------------------------------------------------------


@pytest.mark.parametrize("kind", ["sha256", "git-sha1", "etag"])
def test_a_file_is_fetched_verified_and_linked_to_its_blob(cache, kind):
    data = os.urandom(MiB + 123)
    files = [wanted("weights/model.safetensors", data, kind), wanted("config.json", b'{"a": 1}', kind)]
    source = MemorySource({"weights/model.safetensors": data, "config.json": b'{"a": 1}'})

    report = cache.fetch("base", files, source)

    assert report.path == cache.root / "artifacts" / "base"
    assert (report.path / "weights/model.safetensors").read_bytes() == data
    assert report.bytes_transferred == len(data) + 8
    assert report.bytes_reused == 0
    assert report.unverified == []
    assert cache.has_artifact("base")
    # Named by the sha256 the node computed, whatever the manifest's kind of checksum.
    assert blob_files(cache.root) == sorted(cache.root / "blobs" / "sha256" / sha256(d) for d in (data, b'{"a": 1}'))
    assert os.path.samefile(cache.root / "blobs" / "sha256" / sha256(data), report.path / "weights/model.safetensors")
    assert partial_files(cache.root) == []


def test_a_multipart_etag_is_verified_by_guessing_the_part_size(cache):
    data = os.urandom(12 * MiB)
    etag = multipart_etag(data, 5 * MiB)  # 3 parts of 5, 5 and 2 MiB
    files = [Wanted("model.bin", len(data), f'"{etag}"', "etag")]  # S3 hands ETags out quoted

    report = cache.fetch("multi", files, MemorySource({"model.bin": data}, piece=MiB))

    assert report.unverified == []
    assert blob_files(cache.root) == [cache.root / "blobs" / "sha256" / sha256(data)]


def test_a_multipart_etag_whose_part_size_cannot_be_guessed_is_accepted_by_size_and_reported(cache):
    data = os.urandom(4 * MiB)
    etag = multipart_etag(data, 3 * MiB // 2)  # 1.5 MiB parts: no uploader default, and not size/3 rounded to a MiB
    files = [Wanted("model.bin", len(data), etag, "etag")]

    report = cache.fetch("odd-parts", files, MemorySource({"model.bin": data}))

    assert report.unverified == ["model.bin"]
    assert (report.path / "model.bin").read_bytes() == data
    # Fetched again, it is still reported as checked by size only.
    assert cache.fetch("odd-parts", files, MemorySource({})).unverified == ["model.bin"]


def test_a_file_without_a_checksum_is_stored_under_its_sha256_and_reported_unverified(cache):
    data = b"tokenizer " * 1000
    report = cache.fetch("plain", [wanted("tokenizer.json", data, "")], MemorySource({"tokenizer.json": data}))

    assert report.unverified == ["tokenizer.json"]
    assert blob_files(cache.root) == [cache.root / "blobs" / "sha256" / sha256(data)]


def test_an_empty_file_is_fetched_without_reading_the_source(cache):
    source = MemorySource({"empty": b""})
    report = cache.fetch("empty", [wanted("empty", b"")], source)

    assert (report.path / "empty").read_bytes() == b""
    assert source.calls == 0


def test_the_same_content_under_two_paths_of_one_artifact_is_downloaded_once(cache):
    data = os.urandom(300 * KiB)
    source = MemorySource({"a.bin": data, "copy/a.bin": data})

    report = cache.fetch("twins", [wanted("a.bin", data), wanted("copy/a.bin", data)], source)

    assert report.bytes_transferred == len(data)
    assert report.bytes_reused == len(data)
    assert os.path.samefile(report.path / "a.bin", report.path / "copy/a.bin")


# Sharing between artifacts --------------------------------------------------


def test_a_file_already_cached_in_the_same_scope_is_not_downloaded_again(cache):
    shared = os.urandom(MiB)
    own = os.urandom(200 * KiB)
    source = MemorySource({"base.bin": shared, "adapter.bin": own})
    cache.fetch("first", [wanted("base.bin", shared)], source, scope="workspace:1")

    report = cache.fetch(
        "second", [wanted("base.bin", shared), wanted("adapter.bin", own)], source, scope="workspace:1"
    )

    assert report.bytes_transferred == len(own)
    assert report.bytes_reused == len(shared)
    assert os.path.samefile(cache.artifact_path("first") / "base.bin", report.path / "base.bin")


def test_a_file_known_by_etag_in_one_artifact_and_by_sha256_in_another_is_stored_once(cache):
    data = os.urandom(MiB)
    source = MemorySource({"model.bin": data})
    cache.fetch("from-s3", [wanted("model.bin", data, "etag")], source, scope="workspace:1")

    report = cache.fetch("from-hub", [wanted("model.bin", data, "sha256")], source, scope="workspace:1")

    assert report.bytes_transferred == 0
    assert os.path.samefile(cache.artifact_path("from-s3") / "model.bin", report.path / "model.bin")
    assert blob_files(cache.root) == [cache.root / "blobs" / "sha256" / sha256(data)]


def test_two_fetches_of_the_same_file_at_once_download_it_once(tmp_path):
    data = os.urandom(MiB)
    source = MemorySource({"model.bin": data}, piece=32 * KiB, delay=0.005)
    reports = {}

    def fetch(key: str) -> None:
        # Two cache objects on one folder behave like two processes: separate lock descriptors.
        cache = ArtifactCache(tmp_path / "cache", chunk_size=256 * KiB, parallel=2)
        reports[key] = cache.fetch(key, [wanted("model.bin", data)], source, scope="workspace:1")

    threads = [threading.Thread(target=fetch, args=(key,)) for key in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(r.bytes_transferred for r in reports.values()) == len(data)
    assert source.bytes_read == len(data)
    assert os.path.samefile(reports["one"].path / "model.bin", reports["two"].path / "model.bin")
    assert hashlib.sha256((reports["two"].path / "model.bin").read_bytes()).hexdigest() == sha256(data)


def test_fetching_a_complete_artifact_again_transfers_nothing(cache):
    data = os.urandom(300 * KiB)
    cache.fetch("done", [wanted("model.bin", data)], MemorySource({"model.bin": data}))
    source = MemorySource({"model.bin": data})

    report = cache.fetch("done", [wanted("model.bin", data)], source)

    assert (report.bytes_transferred, report.bytes_reused, source.calls) == (0, len(data), 0)


def test_an_artifact_that_lost_a_file_is_rebuilt_from_the_blobs(cache):
    data = os.urandom(300 * KiB)
    files = [wanted("model.bin", data), wanted("config.json", b"{}")]
    source = MemorySource({"model.bin": data, "config.json": b"{}"})
    cache.fetch("damaged", files, source)
    (cache.artifact_path("damaged") / "config.json").unlink()

    report = cache.fetch("damaged", files, source)

    assert report.bytes_transferred == 0
    assert (report.path / "config.json").read_bytes() == b"{}"


# Interruptions ------------------------------------------------------------------


def kill_mid_fetch(root: Path, data: bytes, *, key: str, chunk: int, source_file: Path, chunks: int = 4) -> int:
    """Runs a fetch of `data` (as model.bin) in a child process with a slow source, SIGKILLs it once its sidecar
    records `chunks` chunks on disk, and returns how many the sidecar records: what a killed node agent leaves."""
    source_file.write_bytes(data)
    child = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from cluster import cache
        from cluster.cache import partial

        partial.SIDECAR_INTERVAL = 0  # record every chunk, so the kill lands after some are recorded

        def read(path, start, end):  # a slow source: about 3 MB/s per thread
            with open({str(source_file)!r}, "rb") as f:
                f.seek(start)
                pos = start
                while pos < end:
                    data = f.read(min(16 * 1024, end - pos))
                    pos += len(data)
                    time.sleep(0.005)
                    yield data

        files = [cache.Wanted("model.bin", {len(data)}, {sha256(data)!r}, "sha256")]
        cache.ArtifactCache(Path({str(root)!r}), chunk_size={chunk}, parallel=2).fetch({key!r}, files, read)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", child], cwd=REPO)

    def sidecar() -> Path:
        return next((root / "partial").glob(f"sha256.{sha256(data)}.*.part.json"))

    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if len(json.loads(sidecar().read_text())["done"]) >= chunks:
                    break
            except (OSError, ValueError, StopIteration):
                pass
            time.sleep(0.02)
        assert process.poll() is None, "the child finished (or died) before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    return len(json.loads(sidecar().read_text())["done"])


def test_a_fetch_broken_by_the_source_removes_its_partial_file(cache):
    data = os.urandom(2 * MiB)
    files = [wanted("model.bin", data)]
    broken = MemorySource({"model.bin": data}, fail_after=MiB)

    with pytest.raises(SourceBroken):  # the source's own error, untouched
        cache.fetch("flaky", files, broken)

    assert not cache.has_artifact("flaky")
    assert blob_files(cache.root) == []
    assert list((cache.root / "partial").iterdir()) == [], "a failed fetch leaves nothing to resume"
    report = cache.fetch("flaky", files, MemorySource({"model.bin": data}))
    assert report.bytes_transferred == len(data)
    assert sha256((report.path / "model.bin").read_bytes()) == sha256(data)


def test_a_resume_keeps_the_chunking_of_the_killed_run(tmp_path):
    data = os.urandom(4 * MiB)
    root = tmp_path / "cache"
    kill_mid_fetch(root, data, key="rechunked", chunk=256 * KiB, source_file=tmp_path / "source.bin")
    bigger = ArtifactCache(root, chunk_size=MiB, parallel=2)

    report = bigger.fetch("rechunked", [wanted("model.bin", data)], MemorySource({"model.bin": data}))

    assert report.bytes_transferred < len(data)
    assert sha256((report.path / "model.bin").read_bytes()) == sha256(data)


def test_a_fetch_killed_mid_way_resumes_without_downloading_everything_again(tmp_path):
    data = os.urandom(8 * MiB)
    root = tmp_path / "cache"
    chunk = 512 * KiB

    recorded = kill_mid_fetch(root, data, key="crash", chunk=chunk, source_file=tmp_path / "source.bin")

    assert not (root / "artifacts" / "crash").exists()
    assert blob_files(root) == [], "nothing partial under a final name"
    assert partial_files(root), "a killed fetch leaves its partial file to resume from"
    source = MemorySource({"model.bin": data})
    report = ArtifactCache(root, chunk_size=chunk, parallel=2).fetch("crash", [wanted("model.bin", data)], source)

    assert report.bytes_transferred <= len(data) - recorded * chunk
    assert report.bytes_reused >= recorded * chunk
    assert sha256((report.path / "model.bin").read_bytes()) == sha256(data)
    assert partial_files(root) == []


def test_a_process_going_down_keeps_its_partial_file_as_a_kill_does(cache):
    data = os.urandom(2 * MiB)
    files = [wanted("model.bin", data)]

    with pytest.raises(SystemExit):
        cache.fetch("stopped", files, MemorySource({"model.bin": data}, down_after=MiB))

    assert partial_files(cache.root)
    report = cache.fetch("stopped", files, MemorySource({"model.bin": data}))
    assert report.bytes_transferred < len(data)
    assert sha256((report.path / "model.bin").read_bytes()) == sha256(data)


def test_cancelling_from_progress_stops_promptly_and_removes_the_partial_file(cache):
    data = os.urandom(2 * MiB)
    files = [wanted("model.bin", data)]
    cancelled_at = []

    def progress(done: int, total: int) -> None:
        if done >= MiB // 2:
            cancelled_at.append(time.monotonic())
            raise FetchCancelled()

    slow = MemorySource({"model.bin": data}, piece=16 * KiB, delay=0.01)
    with pytest.raises(FetchCancelled):
        cache.fetch("cancelled", files, slow, progress=progress)
    stopped_at = time.monotonic()
    bytes_when_stopped = slow.bytes_read
    time.sleep(0.1)

    assert stopped_at - cancelled_at[0] < 1.0
    assert slow.bytes_read == bytes_when_stopped  # no thread is still reading
    assert list((cache.root / "partial").iterdir()) == []
    assert not cache.has_artifact("cancelled")
    report = cache.fetch("cancelled", files, MemorySource({"model.bin": data}))
    assert report.bytes_transferred == len(data)
    assert sha256((report.path / "model.bin").read_bytes()) == sha256(data)


def test_progress_rises_and_ends_at_the_total(cache):
    data = os.urandom(MiB)
    calls: list[tuple[int, int]] = []
    started = time.monotonic()

    cache.fetch(
        "watched",
        [wanted("model.bin", data), wanted("config.json", b"{}")],
        MemorySource({"model.bin": data, "config.json": b"{}"}, piece=16 * KiB, delay=0.05),
        progress=lambda done, total: calls.append((done, total)),
    )
    elapsed = time.monotonic() - started

    total = len(data) + 2
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert {t for _, t in calls} == {total}
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) >= 3  # some in between: the fetch takes about a second
    assert len(calls) <= elapsed * 4 + 3  # throttled


# Failures ---------------------------------------------------------------------


def test_a_checksum_mismatch_fails_and_leaves_no_blob_or_partial_file(cache):
    data = os.urandom(600 * KiB)
    registered = wanted("model.bin", b"x" * len(data))  # the manifest describes other bytes of the same size

    with pytest.raises(FetchError) as failure:
        cache.fetch("tampered", [registered], MemorySource({"model.bin": data}))

    message = str(failure.value)
    assert "model.bin" in message and registered.checksum in message and sha256(data) in message
    assert "changed or is corrupt" in message
    assert blob_files(cache.root) == []
    assert list((cache.root / "partial").iterdir()) == []
    assert not cache.has_artifact("tampered")


def test_a_source_shorter_than_registered_fails_as_a_size_mismatch(cache):
    data = os.urandom(300 * KiB)
    registered = Wanted("model.bin", len(data) + 1000, sha256(data), "sha256")

    with pytest.raises(FetchError, match="size mismatch"):
        cache.fetch("truncated", [registered], MemorySource({"model.bin": data}))

    assert blob_files(cache.root) == []
    assert partial_files(cache.root) == []


def test_a_fetch_that_cannot_fit_on_disk_is_refused_before_transferring(cache):
    source = MemorySource({"huge.bin": b""})
    huge = Wanted("huge.bin", 1 << 60, "ab" * 32, "sha256")

    with pytest.raises(FetchError, match=r"Not enough disk space in .*needed, .* free"):
        cache.fetch("huge", [huge], source)

    assert source.calls == 0
    assert partial_files(cache.root) == []


def test_the_space_check_counts_chunks_a_killed_fetch_left(tmp_path, monkeypatch):
    data = os.urandom(4 * MiB)
    root = tmp_path / "cache"
    recorded = kill_mid_fetch(root, data, key="tight", chunk=256 * KiB, source_file=tmp_path / "source.bin")
    left = len(data) - recorded * 256 * KiB
    monkeypatch.setattr(ArtifactCache, "free_bytes", lambda self: store.SPACE_MARGIN + left)

    cache = ArtifactCache(root, chunk_size=256 * KiB, parallel=2)
    report = cache.fetch("tight", [wanted("model.bin", data)], MemorySource({"model.bin": data}))

    assert report.bytes_transferred <= left


def test_a_full_disk_while_writing_becomes_a_fetch_error(cache, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    data = os.urandom(300 * KiB)

    with pytest.raises(FetchError, match="Disk full") as failure:
        cache.fetch("full", [wanted("model.bin", data)], MemorySource({"model.bin": data}))

    assert str(cache.root) in str(failure.value) and " free, too little to write model.bin" in str(failure.value)
    assert list((cache.root / "partial").iterdir()) == []


@pytest.mark.parametrize("key", ["", "..", "../escape", "a/b", "a..b", ".hidden"])
def test_a_bad_key_is_refused(cache, key):
    with pytest.raises(ValueError, match="Invalid artifact key"):
        cache.fetch(key, [], MemorySource({}))
    assert not (cache.root / "artifacts").exists() or list((cache.root / "artifacts").iterdir()) == []


def test_an_unsafe_path_in_the_manifest_is_refused(cache):
    with pytest.raises(ValueError, match="Unsafe path"):
        cache.fetch("unsafe", [Wanted("../outside", 1, "", "")], MemorySource({}))


# Local sources ------------------------------------------------------------------


def test_a_local_file_is_copied_so_editing_the_original_changes_nothing_cached(cache, tmp_path):
    data = os.urandom(700 * KiB)
    source_file = tmp_path / "store" / "model.bin"
    source_file.parent.mkdir()
    source_file.write_bytes(data)
    source = MemorySource({})

    report = cache.fetch(
        "local", [wanted("model.bin", data, "")], source, local_file=lambda w: source_file.parent / w.path
    )
    with open(source_file, "r+b") as f:  # edited in place, as an editor or a training run would
        f.write(b"\0" * 1024)

    assert source.calls == 0
    assert report.bytes_transferred == len(data)
    assert not os.path.samefile(report.path / "model.bin", source_file)
    assert os.stat(source_file).st_nlink == 1
    assert (report.path / "model.bin").read_bytes() == data
    assert os.path.samefile(cache.root / "blobs" / "sha256" / sha256(data), report.path / "model.bin")


def test_a_local_file_that_no_longer_matches_its_checksum_fails_the_copy(cache, tmp_path):
    data = os.urandom(700 * KiB)
    source_file = tmp_path / "model.bin"
    source_file.write_bytes(b"x" * len(data))  # changed after inspection: same size, other bytes

    with pytest.raises(FetchError, match="checksum mismatch: expected sha256") as failure:
        cache.fetch("changed", [wanted("model.bin", data)], MemorySource({}), local_file=lambda w: source_file)

    assert "re-register the artifact" in str(failure.value)
    assert not cache.has_artifact("changed")
    assert blob_files(cache.root) == []


def test_a_local_file_whose_size_changed_fails_before_copying(cache, tmp_path):
    data = os.urandom(300 * KiB)
    source_file = tmp_path / "model.bin"
    source_file.write_bytes(data + b"more")

    with pytest.raises(FetchError, match=r"size mismatch: expected 307200 bytes, .*model.bin has 307204"):
        cache.fetch("grown", [wanted("model.bin", data)], MemorySource({}), local_file=lambda w: source_file)


# Removal and eviction -------------------------------------------------------------


def fill(cache: ArtifactCache, key: str, *contents: bytes) -> None:
    files = {f"f{i}.bin": data for i, data in enumerate(contents)}
    cache.fetch(key, [wanted(path, data) for path, data in files.items()], MemorySource(files))


def test_removing_an_artifact_frees_its_blobs_but_keeps_shared_ones(cache):
    shared, own = os.urandom(MiB), os.urandom(512 * KiB)
    fill(cache, "a", shared, own)
    fill(cache, "b", shared)
    assert cache.artifact_bytes("a") == len(own)
    assert cache.artifact_bytes("b") == 0
    before = cache.usage_bytes()

    freed = cache.remove_artifact("a")

    assert freed == len(own)
    assert cache.usage_bytes() == before - freed
    assert not cache.has_artifact("a")
    assert (cache.artifact_path("b") / "f0.bin").read_bytes() == shared
    assert (cache.root / "blobs" / "sha256" / sha256(shared)).is_file()
    assert not (cache.root / "blobs" / "sha256" / sha256(own)).exists()
    assert cache.remove_artifact("b") == len(shared)
    assert blob_files(cache.root) == []


def test_eviction_removes_the_oldest_artifacts_until_under_quota(cache):
    for key in ("old", "middle", "new"):
        fill(cache, key, os.urandom(MiB))

    removed = evict_lru(cache, quota=int(1.5 * MiB), last_used={"new": 3.0, "old": 1.0, "middle": 2.0}, in_use=set())

    assert removed == ["old", "middle"]
    assert cache.usage_bytes() <= 1.5 * MiB
    assert cache.has_artifact("new")


def test_eviction_never_removes_an_artifact_in_use(cache):
    for key in ("old", "middle", "new"):
        fill(cache, key, os.urandom(MiB))

    removed = evict_lru(cache, quota=0, last_used={"old": 1.0, "middle": 2.0, "new": 3.0}, in_use={"old"})

    assert removed == ["middle", "new"]
    assert cache.has_artifact("old")
    assert cache.usage_bytes() >= MiB


def test_eviction_keeps_a_shared_blob_while_another_artifact_links_it(cache):
    shared = os.urandom(MiB)
    fill(cache, "base-a", shared, os.urandom(MiB))
    fill(cache, "base-b", shared)

    removed = evict_lru(cache, quota=int(1.5 * MiB), last_used={"base-a": 1.0, "base-b": 2.0}, in_use=set())

    assert removed == ["base-a"]
    assert sha256((cache.artifact_path("base-b") / "f0.bin").read_bytes()) == sha256(shared)


def test_a_staging_folder_left_by_a_killed_fetch_does_not_keep_blobs_alive(cache):
    data = os.urandom(MiB)
    fill(cache, "kept", data)
    abandoned = cache.root / "staging" / "killed" / "0123abcd"
    abandoned.mkdir(parents=True)
    os.link(cache.artifact_path("kept") / "f0.bin", abandoned / "f0.bin")

    assert cache.remove_artifact("kept") == len(data)

    assert not abandoned.exists()
    assert blob_files(cache.root) == []
