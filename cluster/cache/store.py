"""The content-addressed store: blobs named by their checksums, artifact folders of hard links to them,
garbage collection of unlinked blobs, disk accounting, and eviction of the least recently used artifacts."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cluster.cache import disk
from cluster.cache.download import Download, RangeReader, Run, plan
from cluster.cache.locks import FileLock
from cluster.cache.manifest import FetchError, Wanted, check_files, check_key
from cluster.cache.partial import Job

MiB = 1024 * 1024
SPACE_MARGIN = 64 * MiB  # kept free on top of what a fetch needs, so the node does not fill its disk to the last byte
UNVERIFIED = ".unverified"  # suffix of a blob whose checksum could not be checked (an unguessable multipart ETag)


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
        check_key(key)
        return self.root / "artifacts" / key

    def has_artifact(self, key: str) -> bool:
        """Returns whether the artifact is complete and present: its folder only appears once every file is linked."""
        return self.artifact_path(key).is_dir()

    def _ensure_layout(self) -> None:
        for sub in ("artifacts", "blobs/sha256", "blobs/git-sha1", "blobs/etag", "partial", "locks", "staging"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def lock_path(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    @contextmanager
    def gc_lock(self, *, shared: bool) -> Iterator[None]:
        """Holds root/locks/gc.lock: shared while linking blobs into a folder, exclusive while deleting unlinked blobs,
        so garbage collection never deletes a blob between its lookup and its link."""
        lock = FileLock(self.lock_path("gc"))
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
        for path in (self.root / "blobs" / kind / name, self.root / "blobs" / kind / (name + UNVERIFIED)):
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
        check_key(key)
        check_files(files)
        self._ensure_layout()
        run = Run(sum(w.size for w in files), progress)
        run.tick(force=True)
        lock = FileLock(self.lock_path(f"artifact.{key}"))
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

    def _is_current(self, final: Path, wanted: list[Wanted]) -> bool:
        """Returns whether the complete artifact folder holds exactly these files, each linked to its blob."""
        if not final.is_dir():
            return False
        try:
            if sum(1 for _ in disk.walk(final)) != len(wanted):
                return False
            for w in wanted:
                st = (final / w.path).stat()
                if st.st_size != w.size:
                    return False
                ident = w.ident()
                if ident is not None:
                    blob = self._find_blob(ident)
                    if blob is None or blob.stat().st_ino != st.st_ino:
                        return False
        except OSError:
            return False
        return True

    def _unverified_of(self, wanted: list[Wanted]) -> list[str]:
        """Returns the paths of an already complete artifact that were only checked by size."""
        unverified = []
        for w in wanted:
            blob = self._find_blob(w.ident())
            if blob is None or blob.name.endswith(UNVERIFIED):
                unverified.append(w.path)
        return sorted(unverified)

    def _build(
        self,
        key: str,
        wanted: list[Wanted],
        read: RangeReader,
        local_file: Callable[[Wanted], Path | None] | None,
        run: Run,
    ) -> FetchReport:
        """Assembles the artifact in staging/, then renames it into place. The caller holds the key's lock."""
        final = self.artifact_path(key)
        key_staging = self.root / "staging" / key
        # Left by a killed run: nobody else may be using it while we hold the key's lock.
        shutil.rmtree(key_staging, ignore_errors=True)
        staging = key_staging / uuid.uuid4().hex
        staging.mkdir(parents=True)
        jobs = plan(self, key, wanted, read, local_file)
        try:
            with self.gc_lock(shared=True):
                missing = [job for job in jobs if not self.link_cached(job, staging, run)]
            self._check_space(missing)
            Download(self, staging, run).produce(missing)
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

    def link_cached(self, job: Job, staging: Path, run: Run) -> bool:
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
            disk.link(blob, staging / path)
        job.finished = True
        job.unverified = blob.name.endswith(UNVERIFIED)
        run.add_reused(job.size * len(job.paths))
        return True

    def _check_space(self, jobs: list[Job]) -> None:
        """Raises FetchError before any transfer when the cache's file system cannot hold what is missing."""
        need = sum(job.bytes_needed() for job in jobs)
        if need == 0:
            return
        free = self.free_bytes()
        if free < need + SPACE_MARGIN:
            raise FetchError(
                f"Not enough disk space in {self.root}: {disk.human(need)} needed, {disk.human(free)} free. "
                "Free space on the node or remove cached artifacts, then fetch again."
            )

    def store(self, job: Job, sha256: str) -> Path:
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
                disk.link_replace(sha_path, named)
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
            disk.link_replace(sha_path, named)
        return named

    # Disk accounting and removal ------------------------------------------

    def usage_bytes(self) -> int:
        """Returns the bytes the cache holds on disk (blobs, partial files, artifact folders), each inode once."""
        seen: dict[tuple[int, int], int] = {}
        for sub in ("blobs", "partial", "artifacts", "staging"):
            for _, st in disk.walk(self.root / sub):
                seen[(st.st_dev, st.st_ino)] = disk.usage(st)
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
        mine = _inode_counts(final)
        elsewhere = self._referenced(exclude=final)
        blob_names: dict[tuple[int, int], int] = {}
        for _, st in disk.walk(self.root / "blobs"):
            ident = (st.st_dev, st.st_ino)
            blob_names[ident] = blob_names.get(ident, 0) + 1
        return sum(
            disk.usage(st)
            for ident, (st, count) in mine.items()
            if ident not in elsewhere and st.st_nlink == count + blob_names.get(ident, 0)
        )

    def remove_artifact(self, key: str) -> int:
        """Removes the artifact's folder, then every blob no artifact links any more; returns the bytes freed."""
        final = self.artifact_path(key)
        if not final.is_dir():
            return 0
        self._ensure_layout()
        lock = FileLock(self.lock_path(f"artifact.{key}"))
        lock.acquire()
        try:
            if not final.is_dir():
                return 0
            key_staging = self.root / "staging" / key
            trash = key_staging / f"removed-{uuid.uuid4().hex}"
            key_staging.mkdir(parents=True, exist_ok=True)
            os.rename(final, trash)  # the artifact disappears at once, never half-removed
            # Files no blob holds (should not exist, but a crash could leave some) are freed with the folder.
            freed = sum(disk.usage(st) for st, count in _inode_counts(trash).values() if st.st_nlink == count)
            shutil.rmtree(key_staging, ignore_errors=True)
            return freed + self._collect_garbage()
        finally:
            lock.release()

    def _referenced(self, *, exclude: Path | None = None) -> set[tuple[int, int]]:
        """Returns the inodes linked from artifact folders and staging folders (except `exclude`)."""
        referenced = set()
        for sub in ("artifacts", "staging"):
            for path, st in disk.walk(self.root / sub):
                if exclude is not None and path.is_relative_to(exclude):
                    continue
                referenced.add((st.st_dev, st.st_ino))
        return referenced

    def _remove_abandoned_staging(self) -> None:
        """Deletes staging folders left by killed fetches (their key's lock is free), which would otherwise keep
        their blobs alive. Keys being fetched or removed right now hold their lock and are left alone."""
        for folder in list((self.root / "staging").glob("*")):
            lock = FileLock(self.lock_path(f"artifact.{folder.name}"))
            if lock.try_acquire():
                try:
                    shutil.rmtree(folder, ignore_errors=True)
                finally:
                    lock.release()

    def _collect_garbage(self) -> int:
        """Deletes every blob (all its names) that no artifact or staging folder links; returns the bytes freed."""
        with self.gc_lock(shared=False):
            self._remove_abandoned_staging()
            referenced = self._referenced()
            blobs: dict[tuple[int, int], tuple[os.stat_result, list[Path]]] = {}
            for path, st in disk.walk(self.root / "blobs"):
                blobs.setdefault((st.st_dev, st.st_ino), (st, []))[1].append(path)
            freed = 0
            for ident, (st, names) in blobs.items():
                if ident in referenced:
                    continue
                for name in names:
                    with suppress(FileNotFoundError):
                        name.unlink()
                if st.st_nlink == len(names):  # otherwise a link outside the cache (a local source) keeps the bytes
                    freed += disk.usage(st)
            return freed


def _inode_counts(folder: Path) -> dict[tuple[int, int], tuple[os.stat_result, int]]:
    """Returns, for each inode under `folder`, its stat and how many names it has there."""
    counts: dict[tuple[int, int], tuple[os.stat_result, int]] = {}
    for _, st in disk.walk(folder):
        ident = (st.st_dev, st.st_ino)
        counts[ident] = (st, counts[ident][1] + 1 if ident in counts else 1)
    return counts


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
