"""The parallel ranged download of the blobs a fetch lacks: chunks on a pool of threads, each file hashed in
order as its chunks land (so hashing overlaps the download), verified, then handed to the store."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.cache import disk
from cluster.cache.locks import LOCK_POLL, FileLock
from cluster.cache.manifest import FetchError, Wanted
from cluster.cache.partial import ChunkReader, Job

if TYPE_CHECKING:  # the store drives a download; a download only calls back into it
    from cluster.cache.store import ArtifactCache

PROGRESS_INTERVAL = 0.25  # seconds between progress calls while bytes move

RangeReader = Callable[[str, int, int], Iterator[bytes]]


class Run:
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


def plan(
    cache: ArtifactCache,
    key: str,
    wanted: list[Wanted],
    read: RangeReader,
    local_file: Callable[[Wanted], Path | None] | None,
    scope: str,
) -> list[Job]:
    """Returns one job per distinct content: paths of one artifact with the same checksum share a download."""
    jobs: dict[str, Job] = {}
    for w in wanted:
        name = job_name(key, w, scope)
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
        jobs[name] = Job(
            root=cache.root,
            name=name,
            ident=w.ident(),
            scope=scope,
            wanted=w,
            read=_bind(read, w.path),
            local_source=Path(source) if source is not None else None,
            lock=FileLock(cache.lock_path(f"blob.{name}")),
            chunk_size=cache.chunk_size,
        )
    return list(jobs.values())


def job_name(key: str, w: Wanted, scope: str) -> str:
    """Returns the name of the partial file (and blob lock) of `w`: stable across runs, so a killed fetch
    resumes, and never the same for two fetches that may not share bytes, so that the chunks one left on disk
    never reach another. Chunks stay within the scope; for a claim weaker than the sha256 blobs are named by
    (an ETag, a git blob id, none), within the artifact too, as its blobs would."""
    ident = w.ident()
    if ident is None:
        return "none." + hashlib.sha256(f"{scope}\0{key}\0{w.path}\0{w.size}".encode()).hexdigest()[:40]
    owner = scope if ident[0] == "sha256" else f"{scope}\0{key}"
    return f"{ident[0]}.{ident[1]}.{hashlib.sha256(owner.encode()).hexdigest()[:16]}"


def _bind(read: RangeReader, path: str) -> ChunkReader:
    def bound(start: int, end: int) -> Iterator[bytes]:
        return read(path, start, end)

    return bound


class Download:
    """Produces the blobs of `jobs` that the cache lacks and links each into `staging` once it is stored."""

    def __init__(self, cache: ArtifactCache, staging: Path, run: Run) -> None:
        self.cache = cache
        self.staging = staging
        self.run = run

    def produce(self, jobs: list[Job]) -> None:
        """Downloads (or copies) every job's blob and links it into `staging`.

        A blob another process is downloading is waited for (its lock polled,
        progress kept alive), then reused once that process has stored it.
        """
        waiting = sorted(jobs, key=lambda job: job.name)
        while waiting:
            ready = [job for job in waiting if job.lock.try_acquire()]
            waiting = [job for job in waiting if not job.lock.held]
            batch = []
            with self.cache.gc_lock(shared=True):
                for job in ready:
                    # Another process may have stored it while we were not holding its lock.
                    if self.cache.link_cached(job, self.staging, self.run):
                        job.lock.release()
                    else:
                        batch.append(job)
            if batch:
                self._download(batch)
            elif waiting:
                self.run.tick()
                time.sleep(LOCK_POLL)

    def _download(self, jobs: list[Job]) -> None:
        """Runs the chunks of `jobs` on `parallel` threads; each file is hashed in order as its chunks land,
        then verified, stored and linked into `staging`. Raises the first error any thread hit."""
        for job in jobs:
            self.run.add_reused(job.open())
        with ThreadPoolExecutor(max_workers=self.cache.parallel, thread_name_prefix="artifact-fetch") as pool:
            # The hashing tasks come first: they hash what an earlier run left on disk while the rest downloads.
            futures = [pool.submit(self._advance_hash, job) for job in jobs]
            futures += [pool.submit(self._fetch_chunk, job, index) for job in jobs for index in job.missing()]
            self.run.wait(futures)
        for job in jobs:
            if not job.finished:  # cannot happen unless a thread died silently; never link an unverified file
                raise FetchError(f"{job.paths[0]}: the download ended without the whole file; fetch again.")

    def _fetch_chunk(self, job: Job, index: int) -> None:
        """Reads one chunk from the source into the partial file at its offset, then records it."""
        stop = self.run.stop
        if stop.is_set():
            return
        start = index * job.chunk_size
        end = min(job.size, start + job.chunk_size)
        pos = start
        pieces = job.read(start, end)
        try:
            for piece in pieces:
                if stop.is_set():
                    return
                if pos + len(piece) > end:
                    job.discard()
                    raise FetchError(
                        f"{job.paths[0]}: the source sent more than the {end - start} bytes asked for at offset "
                        f"{start}: it ignores ranged reads, or the file changed since it was registered."
                    )
                job.write(piece, pos)
                pos += len(piece)
                self.run.add_transferred(len(piece))
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
        self._advance_hash(job)

    def _advance_hash(self, job: Job) -> None:
        """Hashes the job's chunks that are on disk, in order, as far as they go; the thread that hashes the last
        one verifies and stores the file. One thread hashes a file at a time; the others leave it to that one."""
        stop = self.run.stop
        while not stop.is_set():
            if not job.hash_lock.acquire(blocking=False):
                return  # the holder re-checks for ready chunks after releasing, so ours is not lost
            try:
                while not stop.is_set() and job.next_ready():
                    if not job.hash_next(stop):
                        return
                if job.cursor == job.chunks and not job.finished and not stop.is_set():
                    self._finalize(job)
                    return
            finally:
                job.hash_lock.release()
            if not job.next_ready():
                return

    def _finalize(self, job: Job) -> None:
        """Verifies the finished partial file, gives it its blob name and links it into `staging`.
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
        job.seal()  # the bytes must be durable before they carry a final name
        with self.cache.gc_lock(shared=True):
            target = self.cache.store(job, sha256)
            for path in job.paths:
                disk.link(target, self.staging / path)
        job.finished = True
        job.lock.release()  # a process waiting for this blob may link it now; the data fd closes after the pool
