"""A file being downloaded: its partial file under root/partial, written chunk by chunk at its offsets, and
the sidecar that records which chunks are on disk so that a killed fetch resumes instead of starting over."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from pathlib import Path

from cluster.cache import disk
from cluster.cache.checksums import Verifier
from cluster.cache.locks import FileLock
from cluster.cache.manifest import FetchError, Wanted

MiB = 1024 * 1024
SIDECAR_INTERVAL = 1.0  # seconds between fsync+sidecar writes of one file: at most this much work is lost to a crash
HASH_READ = 4 * MiB

ChunkReader = Callable[[int, int], Iterator[bytes]]


class Job:
    """One content to produce: downloaded once even if several paths of the artifact hold it."""

    def __init__(
        self,
        *,
        root: Path,
        name: str,
        ident: tuple[str, str] | None,
        scope: str,
        wanted: Wanted,
        read: ChunkReader,
        local_source: Path | None,
        lock: FileLock,
        chunk_size: int,
    ) -> None:
        self.root = root
        self.name = name
        self.ident = ident
        self.scope = scope  # who may share the bytes this job stores (see store.py)
        self.wanted = wanted
        self.size = wanted.size
        self.paths = [wanted.path]
        self.read = read
        self.local_source = local_source  # a file on this host to copy instead of reading the source
        self.partial = root / "partial" / f"{name}.part"
        self.sidecar = root / "partial" / f"{name}.part.json"
        self.lock = lock  # the blob's lock: one process downloads a content at a time
        self.chunk_size = chunk_size
        self.done: set[int] = set()
        self.cursor = 0  # chunks hashed so far
        self.fd = -1
        self.finished = False
        self.discarded = False
        self.unverified = False
        self.sha256 = ""  # of the blob that ended up holding the bytes, once stored or shared
        self.verifier = Verifier(ident, wanted.size)
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

    def open(self) -> int:
        """Prepares the partial file (resuming an earlier run's chunks) and returns the bytes that need no transfer;
        the caller holds the blob lock. A local source is copied chunk by chunk like any other, never hard-linked:
        the cache must own its bytes, or editing the original would change what deployments load."""
        reused = 0
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
            reused += self._chunk_bytes(self.done)
        else:
            self.forget_partial()
        # Further paths with the same content are linked, not transferred.
        reused += self.size * (len(self.paths) - 1)
        if source is not None:
            self.read = local_reader(source)
        try:
            self.fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
            if loaded is None:
                os.ftruncate(self.fd, self.size)  # sparse; chunks are written at their offsets
        except OSError as exc:
            raise self.write_error(exc) from None
        self._last_saved = time.monotonic()
        return reused

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
            raise self.write_error(exc) from None

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
            if self.discarded or self.sealed or not done:
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
                raise self.write_error(exc) from None

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

    def seal(self) -> None:
        """Ends sidecar writes and makes the bytes durable: the file is verified and about to get its name."""
        with self.save_lock:  # a sidecar write still running in another thread must not outlive the partial file
            self.sealed = True
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise self.write_error(exc) from None

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

    def close(self, *, keep: bool = True) -> None:
        """Closes the file and lets go of the blob lock. With `keep` (the process is going down, as under a kill),
        an unfinished file's progress is saved so that the next fetch resumes it; without (the fetch failed or was
        cancelled), the unfinished file and its sidecar are deleted, if this job holds the blob's lock: a partial
        file another process is writing is that process's to keep or delete."""
        if self.fd >= 0:
            if not self.finished and keep:
                with self.state:
                    snapshot = set(self.done)
                with suppress(FetchError):  # a full disk must not hide the error that stopped the fetch
                    self._save(snapshot)
            os.close(self.fd)
            self.fd = -1
        if not keep and not self.finished and self.lock.held:
            self.discard()
        self.lock.release()

    def write_error(self, exc: OSError) -> FetchError:
        if disk.is_disk_full(exc):
            return disk_full(self.root, f"{self.paths[0]} ({disk.human(self.size)})")
        return FetchError(f"Could not write {self.partial} for {self.paths[0]}: {exc.strerror or exc}.")


def disk_full(root: Path, what: str) -> FetchError:
    """The error of a fetch that found the cache's disk full (ENOSPC, or EDQUOT under a quota) writing `what`."""
    free = disk.free_bytes(root)
    return FetchError(
        f"Disk full: the artifact cache {root} has {disk.human(free)} free, too little to write {what}. "
        "Free space on that disk (or remove cached artifacts, or lower the node's cache quota), then fetch again."
    )


def local_reader(source: Path) -> ChunkReader:
    """Returns a range reader over a local file, for copying it into the cache."""

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
