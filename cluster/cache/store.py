"""The content-addressed store: blobs named by the sha256 the node computed, shared only within the scopes
that stored them; artifact folders of hard links to blobs; garbage collection of unlinked blobs, disk
accounting, and eviction of the least recently used artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cluster.cache import disk, layout
from cluster.cache.download import Download, RangeReader, Run, plan
from cluster.cache.locks import FileLock
from cluster.cache.manifest import FetchError, Wanted, check_files, check_key
from cluster.cache.partial import Job, disk_full

MiB = 1024 * 1024
SPACE_MARGIN = 64 * MiB  # kept free on top of what a fetch needs, so the node does not fill its disk to the last byte
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The running usage total is checked against a walk of the whole cache this often: it follows what this process
# stores and deletes, not what another process (or a person) changes in the folder.
RECOUNT_SECONDS = 24 * 3600
# A partial file nobody wrote for this long belongs to a fetch nobody will resume (killed, then cancelled while
# its agent was down): tidy() deletes it. A killed agent's fetches resume when it starts, well within this.
PARTIAL_MAX_AGE = 7 * 24 * 3600


@dataclass
class FetchReport:
    path: Path  # root/artifacts/<key>/, holding every file of the artifact under its relative path
    bytes_transferred: int  # bytes read from the source (or copied from a local file) by this call
    bytes_reused: int  # bytes that needed no transfer: shared blobs, chunks of partial files, repeated contents
    unverified: list[str]  # paths checked by size only (no usable checksum, or an unguessable multipart ETag)


class _Usage:
    """The running total of one cache folder's disk usage outside partial/, shared by every ArtifactCache of
    that folder in this process (the fetch service makes a second one for sources without ranged reads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total: int | None = None  # None: not counted yet (or something happened it cannot follow)
        self.counted_at = 0.0
        self.walks = 0

    def add(self, delta: int) -> None:
        with self.lock:
            if self.total is not None:
                self.total += delta


_usages: dict[str, _Usage] = {}
_usages_lock = threading.Lock()


def _usage_of(root: Path) -> _Usage:
    with _usages_lock:
        return _usages.setdefault(os.path.abspath(root), _Usage())


class ArtifactCache:
    """A cache folder shared by every deployment on a node. Safe to use from
    several threads and several processes at once (flock-based)."""

    def __init__(
        self,
        root: Path,
        *,
        chunk_size: int = 16 * MiB,
        parallel: int = 8,
        recount_seconds: float = RECOUNT_SECONDS,
        partial_max_age: float = PARTIAL_MAX_AGE,
    ) -> None:
        if chunk_size < 1 or parallel < 1:
            raise ValueError("chunk_size and parallel must be positive")
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.parallel = parallel
        self.recount_seconds = recount_seconds
        self.partial_max_age = partial_max_age
        self._usage = _usage_of(self.root)

    # Layout ---------------------------------------------------------------

    def artifact_path(self, key: str) -> Path:
        """Returns root/artifacts/<key>/ (which may not exist); raises ValueError for a key that is not folder-safe."""
        check_key(key)
        return self.root / "artifacts" / key

    def has_artifact(self, key: str) -> bool:
        """Returns whether the artifact is complete and present: its folder only appears once every file is linked."""
        return self.artifact_path(key).is_dir()

    def _ensure_layout(self) -> None:
        if layout.version(self.root) != layout.VERSION:
            older = any((self.root / sub).exists() for sub in ("blobs", "artifacts", "partial"))
            layout.ensure(self)
            if older:
                with self._usage.lock:
                    self._usage.total = None  # moving up deleted and copied files: count again

    def lock_path(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    def blob_path(self, sha256: str) -> Path:
        """Returns root/blobs/sha256/<sha256>: the bytes the node hashed to `sha256` when it stored them."""
        return self.root / "blobs" / "sha256" / sha256

    def _scope_mark(self, sha256: str, scope: str) -> Path:
        """Returns the file whose presence says that a fetch of `scope` downloaded and verified these bytes.
        The scope is hashed: it is the caller's string, not a safe file name."""
        return self.root / "records" / "blobs" / sha256 / hashlib.sha256(scope.encode()).hexdigest()[:32]

    def _record_path(self, key: str) -> Path:
        return self.root / "records" / "artifacts" / f"{key}.json"

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

    def shared_blob(self, job: Job) -> Path | None:
        """Returns the blob this job may take without downloading it, or None.

        Only a sha256 that the source states (a strong hash) names a blob, and only a blob that a fetch of the
        same scope downloaded and verified may be taken: bytes another scope stored reach this one only by
        being downloaded again from this one's own source."""
        if job.ident is None or job.ident[0] != "sha256":
            return None  # an ETag, a git blob id or no checksum at all: what the source claims is not enough
        sha256 = job.ident[1]
        blob = self.blob_path(sha256)
        if not self._scope_mark(sha256, job.scope).is_file() or not blob.is_file():
            return None
        return blob

    # Fetch ----------------------------------------------------------------

    def fetch(
        self,
        key: str,
        files: list[Wanted],
        read: RangeReader,
        *,
        scope: str = "",
        progress: Callable[[int, int], None] | None = None,
        local_file: Callable[[Wanted], Path | None] | None = None,
    ) -> FetchReport:
        """Makes root/artifacts/<key>/ hold exactly `files`, verified, and returns what it took.

        Downloads only the files the cache may not share with this fetch, and of
        those only the chunks no earlier (interrupted) run of the same scope left
        on disk. `scope` names who may share bytes (see the package's docstring);
        blank, the fetch shares with fetches of the same key only. `local_file`
        names a file on this host to copy instead of reading `read` (never linked:
        the cache keeps its own copy). Raises FetchError (checksum or size
        mismatch, disk full), FetchCancelled (from `progress`), ValueError (bad
        key or paths), or whatever `read` raises. A fetch that fails or is
        cancelled deletes the partial files it was writing before it raises;
        only a process that goes down (killed, or SystemExit/KeyboardInterrupt)
        leaves them, and the next fetch of the same content resumes them.
        """
        check_key(key)
        check_files(files)
        scope = scope or f"artifact:{key}"
        self._ensure_layout()
        run = Run(sum(w.size for w in files), progress)
        run.tick(force=True)
        lock = FileLock(self.lock_path(f"artifact.{key}"))
        lock.acquire(tick=run.tick)  # one fetch per key at a time, in any process
        try:
            final = self.artifact_path(key)
            record = self._current_record(key, files, scope)
            if record is not None:
                run.add_reused(run.total)
                run.tick(force=True)
                unverified = sorted(path for path, entry in record["files"].items() if not entry["verified"])
                return FetchReport(final, 0, run.total, unverified)
            return self._build(key, files, read, local_file, scope, run)
        finally:
            lock.release()

    def _current_record(self, key: str, wanted: list[Wanted], scope: str) -> dict | None:
        """Returns the artifact's record when its complete folder holds exactly these files, built for this scope,
        each verified against the same claim and linked to its blob; else None."""
        final = self.artifact_path(key)
        if not final.is_dir():
            return None
        try:
            record = json.loads(self._record_path(key).read_text())
            files = record["files"]
            if record.get("scope") != scope or set(files) != {w.path for w in wanted}:
                return None
            if sum(1 for _ in disk.walk(final)) != len(wanted):
                return None
            for w in wanted:
                entry = files[w.path]
                if entry["size"] != w.size or entry["claim"] != _claim(w) or not _SHA256.fullmatch(entry["sha256"]):
                    return None
                if self.blob_path(entry["sha256"]).stat().st_ino != (final / w.path).stat().st_ino:
                    return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # no record (an artifact of layout 1, or a crash), or not one this code wrote
        return record

    def _build(
        self,
        key: str,
        wanted: list[Wanted],
        read: RangeReader,
        local_file: Callable[[Wanted], Path | None] | None,
        scope: str,
        run: Run,
    ) -> FetchReport:
        """Assembles the artifact in staging/, records it, then renames it into place. The caller holds the key's
        lock."""
        final = self.artifact_path(key)
        key_staging = self.root / "staging" / key
        # Left by a killed run: nobody else may be using it while we hold the key's lock.
        shutil.rmtree(key_staging, ignore_errors=True)
        staging = key_staging / uuid.uuid4().hex
        staging.mkdir(parents=True)
        jobs = plan(self, key, wanted, read, local_file, scope)
        failed = False
        try:
            with self.gc_lock(shared=True):
                missing = [job for job in jobs if not self.link_cached(job, staging, run)]
            self._check_space(missing)
            Download(self, staging, run).produce(missing)
            self._write_record(key, scope, jobs)
            old = None
            if final.exists():  # an older or damaged version of this key: swap the new one in
                old = key_staging / f"old-{uuid.uuid4().hex}"
                os.rename(final, old)
            os.rename(staging, final)
            if old is not None:
                self._delete_folder(old)
                self._collect_garbage()
        except OSError as exc:
            failed = True
            if disk.is_disk_full(exc):  # a record, a folder, a link: what partial.py does not already name
                raise disk_full(self.root, f"the artifact {key}") from None
            raise
        except Exception:
            failed = True
            raise
        finally:
            # A failed or cancelled fetch deletes its partial files: nothing will resume them, and a fetch asked
            # for again starts over. A process going down (KeyboardInterrupt, SystemExit) keeps them, as a kill does.
            for job in jobs:
                job.close(keep=not failed)
            shutil.rmtree(key_staging, ignore_errors=True)
        run.tick(force=True)
        unverified = sorted(path for job in jobs if job.unverified for path in job.paths)
        return FetchReport(final, run.transferred, run.reused, unverified)

    def _write_record(self, key: str, scope: str, jobs: list[Job]) -> None:
        """Records, for the artifact about to appear, each file's claim, whether it was verified and its blob;
        a later fetch of the key trusts the folder only if it still matches (atomic: temp + rename)."""
        files = {
            path: {"size": job.size, "claim": _claim(job.wanted), "sha256": job.sha256, "verified": not job.unverified}
            for job in jobs
            for path in job.paths
        }
        target = self._record_path(key)
        temp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
        temp.write_text(json.dumps({"version": layout.VERSION, "scope": scope, "files": files}))
        os.replace(temp, target)

    def link_cached(self, job: Job, staging: Path, run: Run) -> bool:
        """Links the job's blob into `staging` when the cache may share it with this job (shared_blob); returns
        whether it did. The caller holds the gc lock (shared)."""
        blob = self.shared_blob(job)
        if blob is None:
            return False
        size = blob.stat().st_size
        if size != job.size:
            raise FetchError(
                f"{job.paths[0]}: the manifest says {job.size} bytes, but the cached file with the same sha256 "
                f"({job.wanted.checksum}) has {size}: the registration is inconsistent; re-register the artifact."
            )
        for path in job.paths:
            disk.link(blob, staging / path)
        job.finished = True
        job.unverified = False  # the blob's bytes hash to the sha256 the manifest states: the node hashed them
        job.sha256 = blob.name
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
        """Gives the verified partial file its blob name, the sha256 the node computed over it (or, when the
        cache already holds those bytes, keeps that one copy), marks the blob as stored by the job's scope,
        and returns it. The caller holds the job's blob lock and the gc lock (shared)."""
        blob = self.blob_path(sha256)
        try:
            os.link(job.partial, blob)  # never replaces: a blob another fetch stored just now stays as it is
        except FileExistsError:
            pass  # the same bytes, by their sha256: keep one copy
        else:
            self._usage.add(disk.usage(os.stat(blob)))
        os.unlink(job.partial)
        job.forget_sidecar()
        mark = self._scope_mark(sha256, job.scope)
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
        job.sha256 = sha256
        return blob

    # Disk accounting and removal ------------------------------------------

    def usage_bytes(self) -> int:
        """Returns the bytes the cache holds on disk (blobs, partial files, artifact folders), each inode once.

        The node reports this every heartbeat, so it does not walk the cache: only partial/ (the few files being
        downloaded, which grow by the chunk) is listed; the rest is a running total that storing a blob and
        deleting blobs and folders adjust. It is counted by a walk of the whole cache on the first call in this
        process (a node agent's start) and again every `recount_seconds`, since another process or a person
        may change the folder behind this one's back; each walk also tidies (see tidy)."""
        usage = self._usage
        with usage.lock:
            due = usage.total is None or time.monotonic() - usage.counted_at > self.recount_seconds
        if due:
            self.recount()
        with usage.lock:
            total = usage.total or 0
        return total + self._partial_bytes()

    @property
    def usage_walks(self) -> int:
        """How many times this process walked the whole cache to count its usage."""
        return self._usage.walks

    def recount(self) -> int:
        """Tidies the cache, walks it, and makes the walk's count the running usage total; returns the total
        (without partial files)."""
        self.tidy()
        usage = self._usage
        with usage.lock:  # a blob stored meanwhile waits, so that it is neither lost nor counted twice
            seen: dict[tuple[int, int], int] = {}
            for sub in ("blobs", "artifacts", "staging"):
                for _, st in disk.walk(self.root / sub):
                    seen[(st.st_dev, st.st_ino)] = disk.usage(st)
            usage.total = sum(seen.values())
            usage.counted_at = time.monotonic()
            usage.walks += 1
            return usage.total

    def _partial_bytes(self) -> int:
        return sum(disk.usage(st) for _, st in disk.walk(self.root / "partial"))

    def tidy(self) -> int:
        """Deletes what nothing will use again, each file under its own lock so that nothing in use is touched:
        partial files nobody wrote for `partial_max_age` (with their sidecars), and the lock files of blobs and
        artifact keys that are gone (a lock file is made for every content and key ever fetched, and would
        otherwise pile up). Returns how many files it deleted."""
        removed = 0
        partial = self.root / "partial"
        for part in list(partial.glob("*.part")):
            lock = FileLock(self.lock_path(f"blob.{part.name.removesuffix('.part')}"))
            if not self._abandoned(part) or not lock.try_acquire():
                continue
            try:
                if self._abandoned(part):  # a fetch may have resumed it just before we got the lock
                    for path in (part, part.with_name(f"{part.name}.json")):
                        with suppress(FileNotFoundError):
                            path.unlink()
                            removed += 1
            finally:
                lock.release()
        for path in list((self.root / "locks").glob("*.lock")):
            name = path.name.removesuffix(".lock")
            if name.startswith("blob."):
                guarded = [partial / f"{name.removeprefix('blob.')}.part"]
            elif name.startswith("artifact."):
                key = name.removeprefix("artifact.")
                guarded = [self.root / "artifacts" / key, self.root / "staging" / key]
            else:
                continue  # gc.lock guards the whole cache
            if FileLock(path).remove_if_free(lambda guarded=guarded: not any(p.exists() for p in guarded)):
                removed += 1
        return removed

    def _abandoned(self, part: Path) -> bool:
        try:
            return time.time() - part.stat().st_mtime > self.partial_max_age
        except FileNotFoundError:
            return False

    def free_bytes(self) -> int:
        """Returns the bytes an unprivileged process may still write on the cache's file system."""
        return disk.free_bytes(self.root)

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
            with suppress(FileNotFoundError):
                self._record_path(key).unlink()
            freed = self._delete_folder(trash)
            shutil.rmtree(key_staging, ignore_errors=True)
            return freed + self._collect_garbage()
        finally:
            lock.release()
            lock.remove_if_free(lambda: not final.exists() and not (self.root / "staging" / key).exists())

    def _delete_folder(self, folder: Path) -> int:
        """Deletes an artifact folder taken out of artifacts/; returns the bytes freed with it: files no blob
        holds (there should be none, but a crash or layout 1 could leave some). The blobs it linked stay until
        garbage collection."""
        freed = sum(disk.usage(st) for st, count in _inode_counts(folder).values() if st.st_nlink == count)
        shutil.rmtree(folder, ignore_errors=True)
        self._usage.add(-freed)
        return freed

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
        """Deletes every blob that no artifact or staging folder links, with the record of who stored it;
        returns the bytes freed."""
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
                self._usage.add(-disk.usage(st))  # gone from the cache's folders, whoever else still links it
                if st.st_nlink == len(names):  # otherwise a link outside the cache keeps the bytes
                    freed += disk.usage(st)
            for marks in list((self.root / "records" / "blobs").glob("*")):
                if not self.blob_path(marks.name).exists():
                    shutil.rmtree(marks, ignore_errors=True)
            self.tidy()
            return freed


def _claim(wanted: Wanted) -> str:
    """Returns what the manifest says a file's bytes are ("etag:<md5>", "sha256:<hex>"), or "" for nothing."""
    ident = wanted.ident()
    return f"{ident[0]}:{ident[1]}" if ident is not None else ""


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
