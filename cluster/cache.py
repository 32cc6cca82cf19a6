"""The node-local artifact cache: content-addressed, verified, resumable.

Pure Python and the standard library, with no Django and no project import,
so the node agent can wrap it and its tests can run it alone.

On disk, under `root`:

    blobs/<kind>/<checksum>            one verified file per content; kind is sha256, git-sha1 or etag
    blobs/etag/<etag>.unverified       a multipart ETag whose part size could not be guessed (size-checked only)
    blobs/sha256/<sha256>              every stored content also has this name (a hard link to the same inode)
    artifacts/<key>/<path>             hard links to blobs; the folder appears by rename once it is complete
    partial/<kind>.<checksum>.part     a file being downloaded, written chunk by chunk at its offsets
    partial/<kind>.<checksum>.part.json   which chunks of the .part file are on disk (written after an fsync)
    staging/<key>/<random>/            an artifact folder being assembled, renamed into artifacts/ when whole
    locks/                             flock files: one per blob, one per artifact key, and gc.lock

A file has a final name under blobs/ only after its size and checksum were
verified, so nothing partial or corrupt is ever reachable from artifacts/.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
SPACE_MARGIN = 64 * MiB  # kept free on top of what a fetch needs, so the node does not fill its disk to the last byte
PROGRESS_INTERVAL = 0.25  # seconds between progress calls while bytes move
SIDECAR_INTERVAL = 1.0  # seconds between fsync+sidecar writes of one file: at most this much work is lost to a crash
LOCK_POLL = 0.1  # seconds between tries of a lock another process holds
HASH_READ = 4 * MiB
MULTIPART_PART_SIZES = (8 * MiB, 16 * MiB, 5 * MiB, 64 * MiB, 100 * MiB)  # common uploader defaults, most likely first
UNVERIFIED = ".unverified"

_HEX = re.compile(r"^[0-9a-f]+$")
_ETAG = re.compile(r"^([0-9a-f]{32})(?:-([1-9][0-9]{0,5}))?$")

RangeReader = Callable[[str, int, int], Iterator[bytes]]


@dataclass(frozen=True)
class Wanted:
    path: str  # relative path inside the artifact's folder, already checked safe by the caller ("a/b.json")
    size: int
    checksum: str  # sha256 hex, git blob sha1 hex, an S3 ETag (md5 hex or "<md5hex>-<N>"), or ""
    checksum_kind: str  # "sha256" | "git-sha1" | "etag" | ""


class FetchError(Exception):
    """A fetch failed for a reason a person can act on (checksum mismatch, disk full, ...)."""


class FetchCancelled(Exception):
    """Raised by a progress callback to stop a fetch; partial files are kept for a later resume."""


@dataclass
class FetchReport:
    path: Path  # root/artifacts/<key>/, holding every file of the artifact under its relative path
    bytes_transferred: int  # bytes read from the source (or copied from a local file) by this call
    bytes_reused: int  # bytes that needed no transfer: cached blobs, chunks of partial files, hard-linked local files
    unverified: list[str]  # paths checked by size only (no usable checksum, or an unguessable multipart ETag)


class ArtifactCache:
    """A cache folder shared by every deployment on a node. Safe to use from
    several threads and several processes at once (flock-based)."""

    def __init__(self, root: Path, *, chunk_size: int = 16 * MiB, parallel: int = 8) -> None:
        if chunk_size < 1 or parallel < 1:
            raise ValueError("chunk_size and parallel must be positive")
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.parallel = parallel

    # Layout ---------------------------------------------------------------

    def artifact_path(self, key: str) -> Path:
        """Returns root/artifacts/<key>/ (which may not exist); raises ValueError for a key that is not folder-safe."""
        _check_key(key)
        return self.root / "artifacts" / key

    def has_artifact(self, key: str) -> bool:
        """Returns whether the artifact is complete and present: its folder only appears once every file is linked."""
        return self.artifact_path(key).is_dir()

    def _ensure_layout(self) -> None:
        for sub in ("artifacts", "blobs/sha256", "blobs/git-sha1", "blobs/etag", "partial", "locks", "staging"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _lock_path(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    @contextmanager
    def _gc_lock(self, *, shared: bool) -> Iterator[None]:
        """Holds root/locks/gc.lock: shared while linking blobs into a folder, exclusive while deleting unlinked blobs,
        so garbage collection never deletes a blob between its lookup and its link."""
        lock = _FileLock(self._lock_path("gc"))
        lock.acquire(shared=shared)
        try:
            yield
        finally:
            lock.release()

    def _find_blob(self, ident: tuple[str, str] | None) -> Path | None:
        """Returns the blob holding this checksum's content, or None when the cache does not have it."""
        if ident is None:
            return None
        kind, name = ident
        candidates = [self.root / "blobs" / kind / name]
        if kind == "etag":
            candidates.append(self.root / "blobs" / kind / (name + UNVERIFIED))
        for path in candidates:
            if path.is_file():
                return path
        return None

    # Fetch ----------------------------------------------------------------

    def fetch(
        self,
        key: str,
        files: list[Wanted],
        read: RangeReader,
        *,
        progress: Callable[[int, int], None] | None = None,
        local_file: Callable[[Wanted], Path | None] | None = None,
    ) -> FetchReport:
        """Makes root/artifacts/<key>/ hold exactly `files`, verified, and returns what it took.

        Downloads only the blobs the cache lacks, and of those only the chunks no
        earlier (interrupted) run left on disk. Raises FetchError (checksum or
        size mismatch, disk full), FetchCancelled (from `progress`), ValueError
        (bad key or paths), or whatever `read` raises; partial files stay for a
        later resume except after a mismatch, which deletes them.
        """
        _check_key(key)
        _check_files(files)
        self._ensure_layout()
        run = _Run(sum(w.size for w in files), progress)
        run.tick(force=True)
        lock = _FileLock(self._lock_path(f"artifact.{key}"))
        lock.acquire(tick=run.tick)  # one fetch per key at a time, in any process
        try:
            final = self.artifact_path(key)
            if self._is_current(final, files):
                run.add_reused(run.total)
                run.tick(force=True)
                return FetchReport(final, 0, run.total, self._unverified_of(files))
            return self._build(key, files, read, local_file, run)
        finally:
            lock.release()

    def _is_current(self, final: Path, files: list[Wanted]) -> bool:
        """Returns whether the complete artifact folder holds exactly these files, each linked to its blob."""
        if not final.is_dir():
            return False
        try:
            if sum(1 for _ in _walk(final)) != len(files):
                return False
            for w in files:
                st = (final / w.path).stat()
                if st.st_size != w.size:
                    return False
                ident = _blob_ident(w)
                if ident is not None:
                    blob = self._find_blob(ident)
                    if blob is None or blob.stat().st_ino != st.st_ino:
                        return False
        except OSError:
            return False
        return True

    def _unverified_of(self, files: list[Wanted]) -> list[str]:
        """Returns the paths of an already complete artifact that were only checked by size."""
        unverified = []
        for w in files:
            blob = self._find_blob(_blob_ident(w))
            if blob is None or blob.name.endswith(UNVERIFIED):
                unverified.append(w.path)
        return sorted(unverified)

    def _build(
        self,
        key: str,
        files: list[Wanted],
        read: RangeReader,
        local_file: Callable[[Wanted], Path | None] | None,
        run: _Run,
    ) -> FetchReport:
        """Assembles the artifact in staging/, then renames it into place. The caller holds the key's lock."""
        final = self.artifact_path(key)
        key_staging = self.root / "staging" / key
        # Left by a killed run: nobody else may be using it while we hold the key's lock.
        shutil.rmtree(key_staging, ignore_errors=True)
        staging = key_staging / uuid.uuid4().hex
        staging.mkdir(parents=True)
        jobs = self._plan(key, files, read, local_file)
        try:
            with self._gc_lock(shared=True):
                missing = [job for job in jobs if not self._link_cached(job, staging, run)]
            self._check_space(missing)
            self._produce(missing, staging, run)
            old = None
            if final.exists():  # an older or damaged version of this key: swap the new one in
                old = key_staging / f"old-{uuid.uuid4().hex}"
                os.rename(final, old)
            os.rename(staging, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
                self._collect_garbage()
        finally:
            for job in jobs:
                job.close()
            shutil.rmtree(key_staging, ignore_errors=True)
        run.tick(force=True)
        unverified = sorted(path for job in jobs if job.unverified for path in job.paths)
        return FetchReport(final, run.transferred, run.reused, unverified)

    def _plan(
        self,
        key: str,
        files: list[Wanted],
        read: RangeReader,
        local_file: Callable[[Wanted], Path | None] | None,
    ) -> list[_Job]:
        """Returns one job per distinct content: paths of one artifact with the same checksum share a download."""
        jobs: dict[str, _Job] = {}
        for w in files:
            ident = _blob_ident(w)
            if ident is not None:
                name = f"{ident[0]}.{ident[1]}"
            else:
                # No checksum to name it by: a name stable across runs of this artifact, so a partial file resumes.
                name = "none." + hashlib.sha256(f"{key}\0{w.path}\0{w.size}".encode()).hexdigest()[:40]
            job = jobs.get(name)
            if job is not None:
                if job.size != w.size:
                    raise FetchError(
                        f"{w.path} and {job.paths[0]} have the same checksum but different sizes in the manifest "
                        f"({w.size} and {job.size} bytes): re-register the artifact."
                    )
                job.paths.append(w.path)
                continue
            source = local_file(w) if local_file is not None else None
            jobs[name] = _Job(
                cache=self,
                name=name,
                ident=ident,
                wanted=w,
                read=_bind(read, w.path),
                local_source=Path(source) if source is not None else None,
            )
        return list(jobs.values())

    def _link_cached(self, job: _Job, staging: Path, run: _Run) -> bool:
        """Links the job's blob into `staging` when the cache already holds it; returns whether it did.
        The caller holds the gc lock (shared)."""
        blob = self._find_blob(job.ident)
        if blob is None:
            return False
        size = blob.stat().st_size
        if size != job.size:
            raise FetchError(
                f"{job.paths[0]}: the manifest says {job.size} bytes, but the cached file with the same checksum "
                f"({job.wanted.checksum}) has {size}: the registration is inconsistent; re-register the artifact."
            )
        for path in job.paths:
            _link(blob, staging / path)
        job.finished = True
        job.unverified = blob.name.endswith(UNVERIFIED)
        run.add_reused(job.size * len(job.paths))
        return True

    def _check_space(self, jobs: list[_Job]) -> None:
        """Raises FetchError before any transfer when the cache's file system cannot hold what is missing."""
        need = sum(job.bytes_needed() for job in jobs)
        if need == 0:
            return
        free = self.free_bytes()
        if free < need + SPACE_MARGIN:
            raise FetchError(
                f"Not enough disk space in {self.root}: {_human(need)} needed, {_human(free)} free. "
                "Free space on the node or remove cached artifacts, then fetch again."
            )

    def _produce(self, jobs: list[_Job], staging: Path, run: _Run) -> None:
        """Downloads (or copies) every job's blob and links it into `staging`.

        A blob another process is downloading is waited for (its lock polled,
        progress kept alive), then reused once that process has stored it.
        """
        waiting = sorted(jobs, key=lambda job: job.name)
        while waiting:
            ready = [job for job in waiting if job.lock.try_acquire()]
            waiting = [job for job in waiting if not job.lock.held]
            batch = []
            with self._gc_lock(shared=True):
                for job in ready:
                    # Another process may have stored it while we were not holding its lock.
                    if self._link_cached(job, staging, run):
                        job.lock.release()
                    else:
                        batch.append(job)
            if batch:
                self._download(batch, staging, run)
            elif waiting:
                run.tick()
                time.sleep(LOCK_POLL)

    def _download(self, jobs: list[_Job], staging: Path, run: _Run) -> None:
        """Runs the chunks of `jobs` on `parallel` threads; each file is hashed in order as its chunks land,
        then verified, stored and linked into `staging`. Raises the first error any thread hit."""
        for job in jobs:
            job.open(self.chunk_size, run)
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="artifact-fetch") as pool:
            # The hashing tasks come first: they hash what an earlier run left on disk while the rest downloads.
            futures = [pool.submit(self._advance_hash, job, staging, run) for job in jobs]
            futures += [
                pool.submit(self._fetch_chunk, job, index, staging, run) for job in jobs for index in job.missing()
            ]
            run.wait(futures)
        for job in jobs:
            if not job.finished:  # cannot happen unless a thread died silently; never link an unverified file
                raise FetchError(f"{job.paths[0]}: the download ended without the whole file; fetch again.")

    def _fetch_chunk(self, job: _Job, index: int, staging: Path, run: _Run) -> None:
        """Reads one chunk from the source into the partial file at its offset, then records it."""
        if run.stop.is_set():
            return
        start = index * job.chunk_size
        end = min(job.size, start + job.chunk_size)
        pos = start
        pieces = job.read(start, end)
        try:
            for piece in pieces:
                if run.stop.is_set():
                    return
                if pos + len(piece) > end:
                    job.discard()
                    raise FetchError(
                        f"{job.paths[0]}: the source sent more than the {end - start} bytes asked for at offset "
                        f"{start}: it ignores ranged reads, or the file changed since it was registered."
                    )
                job.write(piece, pos)
                pos += len(piece)
                run.add_transferred(len(piece))
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # ends the source's stream (an HTTP response) if we stopped early
        if pos != end:
            job.discard()
            raise FetchError(
                f"{job.paths[0]}: size mismatch: expected {job.size} bytes, but the source ended at byte {pos}. "
                "The source changed or is corrupt since it was registered; re-register the artifact."
            )
        job.chunk_done(index)
        self._advance_hash(job, staging, run)

    def _advance_hash(self, job: _Job, staging: Path, run: _Run) -> None:
        """Hashes the job's chunks that are on disk, in order, as far as they go; the thread that hashes the last
        one verifies and stores the file. One thread hashes a file at a time; the others leave it to that one."""
        while not run.stop.is_set():
            if not job.hash_lock.acquire(blocking=False):
                return  # the holder re-checks for ready chunks after releasing, so ours is not lost
            try:
                while not run.stop.is_set() and job.next_ready():
                    if not job.hash_next(run.stop):
                        return
                if job.cursor == job.chunks and not job.finished and not run.stop.is_set():
                    self._finalize(job, staging)
                    return
            finally:
                job.hash_lock.release()
            if not job.next_ready():
                return

    def _finalize(self, job: _Job, staging: Path) -> None:
        """Verifies the finished partial file, gives it its final blob names and links it into `staging`.
        On a mismatch, deletes the partial file and raises FetchError."""
        verified, actual, sha256 = job.verifier.result()
        if verified is False:
            job.discard()
            kind, expected = job.ident or ("", "")
            raise FetchError(
                f"{job.paths[0]}: checksum mismatch: expected {kind} {expected}, got {actual}. "
                "The source changed or is corrupt since it was registered; re-register the artifact."
            )
        job.unverified = verified is None
        with job.save_lock:  # a sidecar write still running in another thread must not outlive the partial file
            job.sealed = True
        try:
            os.fsync(job.fd)  # the bytes must be durable before they carry a final name
        except OSError as exc:
            raise _write_error(exc, job) from None
        with self._gc_lock(shared=True):
            target = self._store(job, sha256)
            for path in job.paths:
                _link(target, staging / path)
        job.finished = True
        job.lock.release()  # a process waiting for this blob may link it now; the data fd closes after the pool

    def _store(self, job: _Job, sha256: str) -> Path:
        """Moves the verified partial file to its blob name(s) and returns the blob to link. The caller holds
        the job's blob lock and the gc lock (shared)."""
        blobs = self.root / "blobs"
        sha_path = blobs / "sha256" / sha256
        named: Path | None = None
        if job.ident is not None:
            kind, name = job.ident
            named = blobs / kind / (name + UNVERIFIED if job.unverified else name)
        if sha_path.exists():
            # These bytes are already stored (known by sha256 to another artifact): keep one copy.
            if named is not None and named != sha_path:
                _link_replace(sha_path, named)
            os.unlink(job.partial)
            job.forget_sidecar()
            return sha_path
        if named is None or named == sha_path:
            os.rename(job.partial, sha_path)
            job.forget_sidecar()
            return sha_path
        os.rename(job.partial, named)
        job.forget_sidecar()
        try:
            os.link(named, sha_path)
        except FileExistsError:  # another fetch stored the same bytes under sha256 just now: share its copy
            _link_replace(sha_path, named)
        return named

    # Disk accounting and removal ------------------------------------------

    def usage_bytes(self) -> int:
        """Returns the bytes the cache holds on disk (blobs, partial files, artifact folders), each inode once."""
        seen: dict[tuple[int, int], int] = {}
        for sub in ("blobs", "partial", "artifacts", "staging"):
            for _, st in _walk(self.root / sub):
                seen[(st.st_dev, st.st_ino)] = _disk(st)
        return sum(seen.values())

    def free_bytes(self) -> int:
        """Returns the bytes an unprivileged process may still write on the cache's file system."""
        where = self.root
        while not where.exists() and where != where.parent:
            where = where.parent
        st = os.statvfs(where)
        return st.f_bavail * st.f_frsize

    def artifact_bytes(self, key: str) -> int:
        """Returns the disk bytes removing this artifact would free: its files that no other artifact links
        (and that nothing outside the cache links either)."""
        final = self.artifact_path(key)
        if not final.is_dir():
            return 0
        mine: dict[tuple[int, int], tuple[os.stat_result, int]] = {}
        for _, st in _walk(final):
            ident = (st.st_dev, st.st_ino)
            mine[ident] = (st, mine[ident][1] + 1 if ident in mine else 1)
        elsewhere = self._referenced(exclude=final)
        blob_names: dict[tuple[int, int], int] = {}
        for _, st in _walk(self.root / "blobs"):
            ident = (st.st_dev, st.st_ino)
            blob_names[ident] = blob_names.get(ident, 0) + 1
        return sum(
            _disk(st)
            for ident, (st, count) in mine.items()
            if ident not in elsewhere and st.st_nlink == count + blob_names.get(ident, 0)
        )

    def remove_artifact(self, key: str) -> int:
        """Removes the artifact's folder, then every blob no artifact links any more; returns the bytes freed."""
        final = self.artifact_path(key)
        if not final.is_dir():
            return 0
        self._ensure_layout()
        lock = _FileLock(self._lock_path(f"artifact.{key}"))
        lock.acquire()
        try:
            if not final.is_dir():
                return 0
            key_staging = self.root / "staging" / key
            trash = key_staging / f"removed-{uuid.uuid4().hex}"
            key_staging.mkdir(parents=True, exist_ok=True)
            os.rename(final, trash)  # the artifact disappears at once, never half-removed
            counts: dict[tuple[int, int], tuple[os.stat_result, int]] = {}
            for _, st in _walk(trash):
                ident = (st.st_dev, st.st_ino)
                counts[ident] = (st, counts[ident][1] + 1 if ident in counts else 1)
            # Files no blob holds (should not exist, but a crash could leave some) are freed with the folder.
            freed = sum(_disk(st) for st, count in counts.values() if st.st_nlink == count)
            shutil.rmtree(key_staging, ignore_errors=True)
            return freed + self._collect_garbage()
        finally:
            lock.release()

    def _referenced(self, *, exclude: Path | None = None) -> set[tuple[int, int]]:
        """Returns the inodes linked from artifact folders and staging folders (except `exclude`)."""
        referenced = set()
        for sub in ("artifacts", "staging"):
            for path, st in _walk(self.root / sub):
                if exclude is not None and path.is_relative_to(exclude):
                    continue
                referenced.add((st.st_dev, st.st_ino))
        return referenced

    def _remove_abandoned_staging(self) -> None:
        """Deletes staging folders left by killed fetches (their key's lock is free), which would otherwise keep
        their blobs alive. Keys being fetched or removed right now hold their lock and are left alone."""
        for folder in list((self.root / "staging").glob("*")):
            lock = _FileLock(self._lock_path(f"artifact.{folder.name}"))
            if lock.try_acquire():
                try:
                    shutil.rmtree(folder, ignore_errors=True)
                finally:
                    lock.release()

    def _collect_garbage(self) -> int:
        """Deletes every blob (all its names) that no artifact or staging folder links; returns the bytes freed."""
        with self._gc_lock(shared=False):
            self._remove_abandoned_staging()
            referenced = self._referenced()
            blobs: dict[tuple[int, int], tuple[os.stat_result, list[Path]]] = {}
            for path, st in _walk(self.root / "blobs"):
                blobs.setdefault((st.st_dev, st.st_ino), (st, []))[1].append(path)
            freed = 0
            for ident, (st, names) in blobs.items():
                if ident in referenced:
                    continue
                for name in names:
                    with suppress(FileNotFoundError):
                        name.unlink()
                if st.st_nlink == len(names):  # otherwise a link outside the cache (a local source) keeps the bytes
                    freed += _disk(st)
            return freed


def evict_lru(cache: ArtifactCache, *, quota: int, last_used: dict[str, float], in_use: set[str]) -> list[str]:
    """Removes least-recently-used artifacts (keys of last_used, oldest first) that are not in in_use until
    usage_bytes() <= quota. Returns the removed keys. Never removes one in in_use."""
    removed: list[str] = []
    for key in sorted(last_used, key=lambda k: last_used[k]):
        if cache.usage_bytes() <= quota:
            break
        if key in in_use or not cache.has_artifact(key):
            continue
        cache.remove_artifact(key)
        removed.append(key)
    return removed


# Internals -----------------------------------------------------------------


class _Run:
    """The state of one fetch call shared by its threads: counters, the stop flag, progress throttling."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.total = total
        self.progress = progress
        self.stop = threading.Event()
        self.transferred = 0
        self.reused = 0
        self._lock = threading.Lock()
        self._last_call = 0.0
        self._last_done = 0

    def add_transferred(self, n: int) -> None:
        with self._lock:
            self.transferred += n

    def add_reused(self, n: int) -> None:
        with self._lock:
            self.reused += n

    def tick(self, *, force: bool = False) -> None:
        """Calls progress(done, total) if a quarter second passed since the last call (or `force`).
        Only the fetching thread calls this, so FetchCancelled surfaces there."""
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_call < PROGRESS_INTERVAL:
            return
        with self._lock:
            done = min(self.total, self.reused + self.transferred)
        self._last_done = max(self._last_done, done)  # never report going backwards
        self._last_call = now
        self.progress(self._last_done, self.total)

    def wait(self, futures: list[Future]) -> None:
        """Waits for `futures`, reporting progress; on the first error (or a cancel from progress) stops every
        thread, waits for them to let go, and raises it."""
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=PROGRESS_INTERVAL, return_when=FIRST_EXCEPTION)
                for future in finished:
                    error = future.exception()
                    if error is not None:
                        raise error
                self.tick()
        except BaseException:
            self.stop.set()
            for future in pending:
                future.cancel()
            wait(pending)  # threads stop at their next piece; their partial files must be quiet before we go
            raise


class _Job:
    """One content to produce: downloaded once even if several paths of the artifact hold it."""

    def __init__(
        self,
        *,
        cache: ArtifactCache,
        name: str,
        ident: tuple[str, str] | None,
        wanted: Wanted,
        read: Callable[[int, int], Iterator[bytes]],
        local_source: Path | None,
    ) -> None:
        self.root = cache.root
        self.name = name
        self.ident = ident
        self.wanted = wanted
        self.size = wanted.size
        self.paths = [wanted.path]
        self.read = read
        self.local_source = local_source
        self.partial = cache.root / "partial" / f"{name}.part"
        self.sidecar = cache.root / "partial" / f"{name}.part.json"
        self.lock = _FileLock(cache._lock_path(f"blob.{name}"))
        self.chunk_size = cache.chunk_size
        self.done: set[int] = set()
        self.cursor = 0  # chunks hashed so far
        self.fd = -1
        self.linked = False  # the partial file is a hard link to the local source (read-only to us)
        self.finished = False
        self.discarded = False
        self.unverified = False
        self.verifier = _Verifier(ident, wanted.size)
        self.state = threading.Lock()
        self.hash_lock = threading.Lock()
        self.save_lock = threading.Lock()  # serialises sidecar writes with sealing and discarding
        self.sealed = False  # verified and being stored: no more sidecar writes
        self._saving = False
        self._last_saved = 0.0

    @property
    def chunks(self) -> int:
        return math.ceil(self.size / self.chunk_size)

    def _chunk_bytes(self, indexes: Iterable[int]) -> int:
        return sum(min(self.chunk_size, self.size - i * self.chunk_size) for i in indexes)

    def bytes_needed(self) -> int:
        """Returns the bytes this job will still write to the cache's disk (an estimate taken without its lock)."""
        if self.local_source is not None:
            with suppress(OSError):
                if os.stat(self.local_source).st_dev == os.stat(self.root).st_dev:
                    return 0  # a hard link will do
        loaded = self._load_sidecar()
        if loaded is None:
            return self.size
        chunk_size, done = loaded
        return self.size - sum(min(chunk_size, self.size - i * chunk_size) for i in done)

    def _load_sidecar(self) -> tuple[int, set[int]] | None:
        """Returns (chunk_size, chunks done) from an earlier run's sidecar, or None when there is no usable one."""
        try:
            data = json.loads(self.sidecar.read_text())
            partial_size = self.partial.stat().st_size
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != 1 or data.get("name") != self.name:
            return None
        chunk_size = data.get("chunk_size")
        if data.get("size") != self.size or partial_size != self.size:
            return None
        if not isinstance(chunk_size, int) or chunk_size < 1 or not isinstance(data.get("done"), list):
            return None
        count = math.ceil(self.size / chunk_size)
        return chunk_size, {i for i in data["done"] if isinstance(i, int) and 0 <= i < count}

    def open(self, chunk_size: int, run: _Run) -> None:
        """Prepares the partial file (resuming an earlier run's chunks, or hard-linking a local source); the
        caller holds the blob lock."""
        source = self.local_source
        if source is not None:
            try:
                actual = os.stat(source).st_size
            except OSError as exc:
                raise FetchError(f"{self.paths[0]}: the local file {source} cannot be read: {exc.strerror}.") from None
            if actual != self.size:
                raise FetchError(
                    f"{self.paths[0]}: size mismatch: expected {self.size} bytes, {source} has {actual}. "
                    "The source changed since it was registered; re-register the artifact."
                )
        loaded = self._load_sidecar()
        if loaded is not None:
            self.chunk_size, self.done = loaded  # keep the earlier run's chunking so its chunks stay valid
            run.add_reused(self._chunk_bytes(self.done))
        else:
            self.forget_partial()
            self.chunk_size = chunk_size
            if source is not None:
                try:
                    os.link(source, self.partial)
                except OSError:
                    pass  # another file system, or hard links not allowed here: copy it chunk by chunk
                else:
                    self.linked = True
                    self.done = set(range(self.chunks))
                    run.add_reused(self.size)
        # Further paths with the same content are linked, not transferred.
        run.add_reused(self.size * (len(self.paths) - 1))
        if source is not None and not self.linked:
            self.read = _local_reader(source)
        try:
            if self.linked:
                self.fd = os.open(self.partial, os.O_RDONLY)  # the user's file: never write to it
            else:
                self.fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
                if loaded is None:
                    os.ftruncate(self.fd, self.size)  # sparse; chunks are written at their offsets
        except OSError as exc:
            raise _write_error(exc, self) from None
        self._last_saved = time.monotonic()

    def missing(self) -> list[int]:
        return [i for i in range(self.chunks) if i not in self.done]

    def write(self, data: bytes, offset: int) -> None:
        """Writes `data` at `offset` of the partial file, all of it; a full disk becomes a FetchError."""
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self.fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            raise _write_error(exc, self) from None

    def chunk_done(self, index: int) -> None:
        """Marks a chunk written; about once a second, fsyncs the file and records the done chunks in the sidecar."""
        with self.state:
            self.done.add(index)
            due = not self._saving and time.monotonic() - self._last_saved >= SIDECAR_INTERVAL
            if due:
                self._saving = True
                snapshot = set(self.done)
        if due:
            try:
                self._save(snapshot)
            finally:
                with self.state:
                    self._saving = False
                    self._last_saved = time.monotonic()

    def _save(self, done: set[int]) -> None:
        """Records `done` in the sidecar, after an fsync so that every chunk it names is on disk; the sidecar is
        replaced atomically (temp + rename), so a crash leaves the old one or the new one."""
        with self.save_lock:
            if self.discarded or self.sealed or self.linked or not done:
                return
            temp = self.sidecar.with_name(f"{self.sidecar.name}.tmp")
            try:
                os.fsync(self.fd)
                record = {"version": 1, "name": self.name, "size": self.size, "chunk_size": self.chunk_size}
                record["done"] = sorted(done)
                temp.write_text(json.dumps(record))
                os.replace(temp, self.sidecar)
            except OSError as exc:
                with suppress(OSError):
                    temp.unlink()
                raise _write_error(exc, self) from None

    def next_ready(self) -> bool:
        with self.state:
            return self.cursor < self.chunks and self.cursor in self.done

    def hash_next(self, stop: threading.Event) -> bool:
        """Feeds the next chunk (read back from disk) to the verifier; returns False if told to stop midway."""
        start = self.cursor * self.chunk_size
        end = min(self.size, start + self.chunk_size)
        pos = start
        while pos < end:
            if stop.is_set():
                return False
            data = os.pread(self.fd, min(HASH_READ, end - pos), pos)
            if not data:
                self.discard()
                raise FetchError(f"{self.paths[0]}: the file ended at byte {pos} of {self.size}; fetch again.")
            self.verifier.update(data)
            pos += len(data)
        with self.state:
            self.cursor += 1
        return True

    def forget_sidecar(self) -> None:
        with suppress(FileNotFoundError):
            self.sidecar.unlink()

    def forget_partial(self) -> None:
        for path in (self.partial, self.sidecar):
            with suppress(FileNotFoundError):
                path.unlink()

    def discard(self) -> None:
        """Deletes the partial file and its sidecar: what they hold does not match the registration."""
        with self.save_lock:
            self.discarded = True
            self.forget_partial()

    def close(self) -> None:
        """Saves an unfinished file's progress for a later resume, closes it and lets go of the blob lock."""
        if self.fd >= 0:
            if not self.finished:
                with self.state:
                    snapshot = set(self.done)
                with suppress(FetchError):  # a full disk must not hide the error that stopped the fetch
                    self._save(snapshot)
            os.close(self.fd)
            self.fd = -1
        if self.linked and not self.finished:
            with suppress(FileNotFoundError):
                self.partial.unlink()  # a link to the user's file; relinking next time is free
        self.lock.release()


class _Verifier:
    """Computes, in one sequential pass, the sha256 of a file and whatever its manifest checksum needs."""

    def __init__(self, ident: tuple[str, str] | None, size: int) -> None:
        self.ident = ident
        self.size = size
        self.sha256 = hashlib.sha256()
        self.check: hashlib._Hash | None = None
        self.parts: list[_PartHasher] = []
        self.part_count = 0
        self._side: ThreadPoolExecutor | None = None
        if ident is None:
            return
        kind, value = ident
        if kind == "git-sha1":
            self.check = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
        elif kind == "etag":
            match = _ETAG.match(value)
            assert match is not None
            if match.group(2) is None:
                self.check = hashlib.md5(usedforsecurity=False)
            else:
                self.part_count = int(match.group(2))
                self.parts = [_PartHasher(size) for size in _part_sizes(size, self.part_count)]

    def update(self, data: bytes) -> None:
        """Feeds `data` to every digest. The manifest's (md5 for an ETag, sha1 for a git blob) runs in a
        thread of its own beside the sha256, at the same time: hashlib lets go of the GIL on large
        blocks, so the two take as long as the slower one instead of their sum (md5 is the slower, at
        about 750 MB/s against sha256's 1.7 GB/s here)."""
        side = None
        if self.check is not None or self.parts:
            if self._side is None:
                self._side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify")
            side = self._side.submit(self._update_manifest_digest, data)
        self.sha256.update(data)
        if side is not None:
            side.result()

    def _update_manifest_digest(self, data: bytes) -> None:
        if self.check is not None:
            self.check.update(data)
        for part in self.parts:
            part.update(data)

    def result(self) -> tuple[bool | None, str, str]:
        """Returns (verified: True, False or None when it cannot tell, the actual checksum, the sha256 hex)."""
        if self._side is not None:
            self._side.shutdown()
            self._side = None
        sha256 = self.sha256.hexdigest()
        if self.ident is None:
            return None, "", sha256
        kind, expected = self.ident
        if kind == "sha256":
            return sha256 == expected, sha256, sha256
        if self.check is not None:
            actual = self.check.hexdigest()
            return actual == expected, actual, sha256
        if not self.parts:
            return None, "", sha256
        actuals = [part.etag() for part in self.parts]
        if expected in actuals:
            return True, expected, sha256
        # A wrong guess of the uploader's part size looks exactly like corruption, so this cannot fail the file.
        return None, " or ".join(actuals), sha256


class _PartHasher:
    """The multipart ETag of a file under one guess of its part size: md5 of the parts' binary md5s, "-N"."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.current = hashlib.md5(usedforsecurity=False)
        self.filled = 0
        self.digests: list[bytes] = []

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self.filled)
            self.current.update(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == self.part_size:
                self.digests.append(self.current.digest())
                self.current = hashlib.md5(usedforsecurity=False)
                self.filled = 0

    def etag(self) -> str:
        digests = self.digests + ([self.current.digest()] if self.filled else [])
        return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


class _FileLock:
    """An exclusive (or shared) flock on a file under root/locks. Lock files are never deleted: deleting one
    while another process waits on it would let two processes hold "the" lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def try_acquire(self, *, shared: bool = False) -> bool:
        """Returns whether it got the lock without waiting."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def acquire(self, *, shared: bool = False, tick: Callable[[], None] | None = None) -> None:
        """Waits for the lock; with `tick`, polls instead of blocking and calls tick() between tries (so a
        waiting fetch still reports progress and can be cancelled)."""
        if tick is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            self.fd = fd
            return
        while not self.try_acquire(shared=shared):
            tick()
            time.sleep(LOCK_POLL)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def _check_key(key: str) -> None:
    if (
        not isinstance(key, str)
        or not key
        or len(key) > 200
        or key.startswith(".")
        or any(bad in key for bad in ("/", "\\", "..", "\x00"))
    ):
        raise ValueError(f"Invalid artifact key {key!r}: use a folder-safe name, without '/' or '..'.")


def _check_files(files: list[Wanted]) -> None:
    """Raises ValueError for a manifest that cannot be laid out as a folder."""
    paths = set()
    folders = set()
    for w in files:
        parts = w.path.split("/")
        if not w.path or w.path.startswith("/") or "\\" in w.path or "\x00" in w.path:
            raise ValueError(f"Unsafe path in the artifact's manifest: {w.path!r}")
        if any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"Unsafe path in the artifact's manifest: {w.path!r}")
        if not isinstance(w.size, int) or w.size < 0:
            raise ValueError(f"Bad size for {w.path}: {w.size!r}")
        if w.path in paths:
            raise ValueError(f"{w.path} appears twice in the artifact's manifest")
        paths.add(w.path)
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = paths & folders
    if clash:
        raise ValueError(f"{sorted(clash)[0]} is both a file and a folder in the artifact's manifest")


def _blob_ident(w: Wanted) -> tuple[str, str] | None:
    """Returns (kind, normalised checksum) when the manifest's checksum can name and verify a blob, else None.
    The checksum is validated to hex (and "-N"), so it is safe as a file name."""
    kind = w.checksum_kind
    if kind not in ("", "sha256", "git-sha1", "etag"):
        raise ValueError(f"Unknown checksum kind {kind!r} for {w.path}")
    value = w.checksum.strip().strip('"').lower()  # S3 hands ETags out quoted
    if kind == "sha256" and len(value) == 64 and _HEX.match(value):
        return kind, value
    if kind == "git-sha1" and len(value) == 40 and _HEX.match(value):
        return kind, value
    if kind == "etag" and _ETAG.match(value):
        return kind, value
    return None


def _part_sizes(size: int, count: int) -> list[int]:
    """Returns the part sizes worth trying for a multipart ETag of `count` parts: the common ones that give
    exactly `count` parts, then size/count rounded up to a whole MiB."""
    if size == 0:
        return []
    even = math.ceil(math.ceil(size / count) / MiB) * MiB
    sizes = []
    for part in (*MULTIPART_PART_SIZES, even):
        if part not in sizes and math.ceil(size / part) == count:
            sizes.append(part)
    return sizes


def _bind(read: RangeReader, path: str) -> Callable[[int, int], Iterator[bytes]]:
    def bound(start: int, end: int) -> Iterator[bytes]:
        return read(path, start, end)

    return bound


def _local_reader(source: Path) -> Callable[[int, int], Iterator[bytes]]:
    """Returns a range reader over a local file, for copying one that cannot be hard-linked."""

    def read(start: int, end: int) -> Iterator[bytes]:
        with open(source, "rb", buffering=0) as f:
            f.seek(start)
            pos = start
            while pos < end:
                data = f.read(min(MiB, end - pos))
                if not data:
                    return
                pos += len(data)
                yield data

    return read


def _write_error(exc: OSError, job: _Job) -> FetchError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(
            f"The disk holding the artifact cache ({job.root}) is full: {job.paths[0]} could not be written. "
            "Free space on the node or remove cached artifacts; fetching again resumes where this stopped."
        )
    return FetchError(f"Could not write {job.partial} for {job.paths[0]}: {exc.strerror or exc}.")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with suppress(FileNotFoundError):
        dst.unlink()
    os.link(src, dst)


def _link_replace(src: Path, dst: Path) -> None:
    """Makes `dst` another name of `src`'s inode, atomically (link to a temp name, then rename over)."""
    temp = dst.with_name(f"{dst.name}.{uuid.uuid4().hex}.tmp")
    os.link(src, temp)
    os.replace(temp, dst)


def _walk(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Yields (path, lstat) for every regular file under `top`; entries that vanish meanwhile are skipped."""
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    yield Path(entry.path), entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue


def _disk(st: os.stat_result) -> int:
    return st.st_blocks * 512


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
