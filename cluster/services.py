"""All writes and state transitions of the cluster: nodes and their reports,
and artifacts coming into (and leaving) node caches."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import connection, models, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from audit.services import audit_record
from cluster import tasks
from cluster.cache import ArtifactCache, FetchCancelled, FetchError, Wanted, evict_lru
from cluster.inventory import Inventory, cpu_name
from cluster.models import Accelerator, CachedArtifact, CacheLease, Node
from config import jobs
from config.errors import DomainError
from registry.models import Artifact, ArtifactStatus, Connection, ConnectionKind
from registry.sources import SourceError, open_source
from registry.sources.hf import endpoint_of

log = logging.getLogger(__name__)

PROGRESS_EVERY = 1.0  # seconds between progress writes (and cancellation checks)


# Nodes ---------------------------------------------------------------------


def node_register(*, name: str, address: str, cache_dir: str, cache_quota_bytes: int) -> Node:
    """Creates or updates the node a starting agent serves, and marks it started."""
    if cache_quota_bytes <= 0:
        raise DomainError("The cache quota must be more than zero bytes.")
    node, _ = Node.objects.update_or_create(
        name=name,
        defaults={
            "address": address,
            "cache_dir": cache_dir,
            "cache_quota_bytes": cache_quota_bytes,
            "started_at": timezone.now(),
        },
    )
    return node


def node_report(*, node: Node, inventory: Inventory, cache: ArtifactCache) -> Node:
    """Records what the agent found now: accelerators (GPUs, else the CPU),
    memory, runtimes and cache usage, and that the node is alive. Recreates
    the node if someone deleted it while its agent ran."""
    with transaction.atomic():
        node, _ = Node.objects.get_or_create(
            name=node.name,
            defaults={
                "address": node.address,
                "cache_dir": node.cache_dir,
                "cache_quota_bytes": node.cache_quota_bytes,
            },
        )
        seen = []
        if inventory.gpus:
            for gpu in inventory.gpus:
                accelerator, _ = Accelerator.objects.update_or_create(
                    node=node,
                    kind=Accelerator.Kind.GPU,
                    index=gpu.index,
                    defaults={
                        "name": gpu.name,
                        "uuid": gpu.uuid,
                        "memory_total_bytes": gpu.memory_total_bytes,
                        "memory_free_bytes": gpu.memory_free_bytes,
                        "utilization_percent": gpu.utilization_percent,
                    },
                )
                seen.append(accelerator.pk)
        else:
            accelerator, _ = Accelerator.objects.update_or_create(
                node=node,
                kind=Accelerator.Kind.CPU,
                index=0,
                defaults={
                    "name": cpu_name(),
                    "memory_total_bytes": inventory.memory_total_bytes,
                    "memory_free_bytes": inventory.memory_available_bytes,
                    "cores": inventory.cpu_count,
                },
            )
            seen.append(accelerator.pk)
        Accelerator.objects.filter(node=node).exclude(pk__in=seen).delete()
        Node.objects.filter(pk=node.pk).update(
            hostname=inventory.hostname,
            cpu_count=inventory.cpu_count,
            memory_total_bytes=inventory.memory_total_bytes,
            memory_available_bytes=inventory.memory_available_bytes,
            runtimes=inventory.runtimes,
            cache_used_bytes=cache.usage_bytes(),
            disk_free_bytes=cache.free_bytes(),
            last_seen_at=timezone.now(),
        )
    node.refresh_from_db()
    return node


# The cache -----------------------------------------------------------------


def artifact_fetch_request(*, artifact: Artifact, node: Node) -> CachedArtifact:
    """Asks `node` to bring `artifact` into its cache. A fetch already under
    way is shared, a cached artifact is reused; otherwise queues one on the
    node's own queue. Returns the cache entry to poll."""
    if artifact.status != ArtifactStatus.READY:
        raise DomainError(
            f"{artifact.name} is {artifact.get_status_display().lower()}; only ready artifacts can be fetched."
        )
    if not node.is_online:
        raise DomainError(f"The node {node.name} is offline: its agent has not reported for a while.")
    with transaction.atomic():
        cached, created = CachedArtifact.objects.select_for_update().get_or_create(
            node=node, artifact=artifact, defaults={"revision": artifact.resolved_revision}
        )
        if not created and cached.is_active:
            return cached  # one download per artifact per node: share it
        if (
            not created
            and cached.status == CachedArtifact.Status.READY
            and cached.revision == artifact.resolved_revision
        ):
            CachedArtifact.objects.filter(pk=cached.pk).update(last_used_at=timezone.now())
            return cached
        CachedArtifact.objects.filter(pk=cached.pk).update(
            status=CachedArtifact.Status.QUEUED,
            revision=artifact.resolved_revision,
            error="",
            bytes_done=0,
            bytes_transferred=0,
            rate_bytes_per_second=None,
            eta_seconds=None,
            requested_at=timezone.now(),
            started_at=None,
            finished_at=None,
            claimed_by="",
            heartbeat_at=None,
            sent_at=timezone.now(),
        )
        audit_record(action=f"{artifact.kind_noun}.fetch", target=artifact, detail={"node": node.name})
        _send_fetch(cached.pk, node)
    cached.refresh_from_db()
    return cached


def _send_fetch(cached_id: int, node: Node) -> None:
    jobs.send_on_commit(
        lambda: tasks.fetch_artifact.apply_async(args=[cached_id], queue=node.queue), what=f"fetch {cached_id}"
    )


def artifact_fetch_cancel(*, cached: CachedArtifact) -> CachedArtifact:
    """Stops a queued or running fetch: the agent running it notices within a second (its progress write
    finds the row cancelled) and removes what it downloaded."""
    stopped = CachedArtifact.objects.filter(pk=cached.pk, status__in=CachedArtifact.ACTIVE).update(
        status=CachedArtifact.Status.CANCELLED, finished_at=timezone.now(), error="Cancelled."
    )
    if not stopped:
        raise DomainError("This fetch is not running.")
    cached.refresh_from_db()
    audit_record(
        action=f"{cached.artifact.kind_noun}.fetch_cancel", target=cached.artifact, detail={"node": cached.node.name}
    )
    return cached


def artifact_fetch_run(*, cached_id: int, cache: ArtifactCache) -> CachedArtifact | None:
    """Runs on the node: claims a queued fetch, checks the source has not changed
    since registration, downloads what the cache lacks with progress, and records
    the outcome. Returns None when there was nothing to claim: a message repeated
    or redelivered while the fetch runs, or after it ended, does nothing. (A fetch
    whose agent died is queued again by `fetches_resume` or `fetches_sweep`.)"""
    owner = jobs.worker_id()
    now = timezone.now()
    claimed = CachedArtifact.objects.filter(pk=cached_id, status=CachedArtifact.Status.QUEUED).update(
        status=CachedArtifact.Status.FETCHING, started_at=now, claimed_by=owner, heartbeat_at=now
    )
    if not claimed:
        return None
    try:
        return _fetch_claimed(cached_id, owner, cache)
    except jobs.DATABASE_DOWN:
        # What is on disk stays for the resume: wanted again once the database is back; the task retries.
        jobs.put_back_when_database_returns(
            lambda: _mine(cached_id, owner).update(
                status=CachedArtifact.Status.QUEUED, claimed_by="", heartbeat_at=None
            ),
            what=f"fetch {cached_id}",
        )
        raise


def _fetch_claimed(cached_id: int, owner: str, cache: ArtifactCache) -> CachedArtifact:
    mine = _mine(cached_id, owner)
    cached = CachedArtifact.objects.select_related("artifact__connection", "node").get(pk=cached_id)
    artifact = cached.artifact
    manifest = list(artifact.files.all())
    wanted = [Wanted(f.path, f.size, f.checksum, f.checksum_kind) for f in manifest]
    total = sum(w.size for w in wanted)
    mine.update(bytes_total=total)
    progress = _ProgressWriter(mine, total)
    try:
        source = open_source(artifact.connection, location=artifact.location, revision=artifact.resolved_revision)
        _check_unchanged(artifact, source, manifest)
        local_file = getattr(source, "local_path", None)
        read = _throttled(source.stream_range, settings.PLUGBOARD_FETCH_MAX_BYTES_PER_SECOND)
        largest = max(wanted, key=lambda w: w.size, default=None)
        if largest is not None and not source.supports_ranges(largest.path):
            # Each chunk would stream the file from its start: read every file once, front to back.
            cache = ArtifactCache(cache.root, chunk_size=max(w.size for w in wanted) or 1, parallel=1)
        report = cache.fetch(
            cached.key, wanted, read, scope=fetch_scope(artifact.connection), progress=progress, local_file=local_file
        )
        if artifact.connection.kind == ConnectionKind.LOCAL:
            try:  # a file edited while it was copied: what the cache holds may be half old, half new
                _check_folder_unchanged(artifact, source)
            except DomainError:
                if report.bytes_transferred:  # this run copied it (a folder already whole was checked before)
                    cache.remove_artifact(cached.key)
                raise
    except FetchCancelled:
        # Cancelled, or taken over after this worker was silent too long: the row is no longer ours to write.
        return CachedArtifact.objects.get(pk=cached_id)
    except jobs.DATABASE_DOWN:
        raise
    except (FetchError, SourceError, DomainError) as exc:
        return _finish(cached_id, owner, CachedArtifact.Status.FAILED, getattr(exc, "message", None) or str(exc))
    except Exception:
        log.exception("fetch %s failed unexpectedly", cached_id)
        return _finish(
            cached_id, owner, CachedArtifact.Status.FAILED, "The fetch failed unexpectedly; see the node agent's log."
        )
    # Make room before saying ready, so whoever waits for "ready" sees the cache within its quota.
    cache_evict(node=cached.node, cache=cache)
    mine.update(
        status=CachedArtifact.Status.READY,
        bytes_done=total,
        bytes_transferred=F("bytes_transferred") + report.bytes_transferred,
        unverified=report.unverified,
        eta_seconds=0,
        finished_at=timezone.now(),
        last_used_at=timezone.now(),
    )
    cached.refresh_from_db()
    return cached


def _throttled(read, max_bytes_per_second: int):
    """Wraps a range reader so that all its streams together stay under the node's bandwidth cap."""
    if not max_bytes_per_second:
        return read
    lock = threading.Lock()
    started = time.monotonic()
    moved = 0

    def throttled_read(path: str, start: int, end: int):
        nonlocal moved
        for data in read(path, start, end):
            with lock:
                moved += len(data)
                ahead = moved / max_bytes_per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            yield data

    return throttled_read


def fetch_scope(connection: Connection) -> str:
    """Returns the sharing scope of what a node's cache fetches through `connection`: the cache hands a file to
    a fetch without downloading it only from bytes a fetch of the same scope downloaded and verified. Files of
    a hub read without credentials are public there (anyone may download them); anything else stays within
    its workspace, so no source can claim its way to another team's private bytes."""
    if connection.kind == ConnectionKind.HF and not connection.has_secrets and not connection.use_ambient_credentials:
        return f"hub:{endpoint_of(connection)}"
    return f"workspace:{connection.workspace_id}"


def _check_unchanged(artifact: Artifact, source, manifest) -> None:
    """Refuses to mix in content that changed at the source since registration."""
    if artifact.connection.kind == ConnectionKind.LOCAL:
        _check_folder_unchanged(artifact, source)
        return
    if artifact.connection.kind != ConnectionKind.S3:
        return  # the hub is pinned to a commit, and its files are verified by their sha256 or git blob id
    for f in manifest:
        now = source.current(f.path)
        if (now.size, now.checksum) != (f.size, f.checksum):
            raise DomainError(
                f"{f.path} changed at the source since registration (ETag {f.checksum} → {now.checksum}). "
                "Inspect the artifact again to register the new content."
            )


def _check_folder_unchanged(artifact: Artifact, source) -> None:
    """Refuses a local folder whose files changed since registration. Its manifest holds no checksum (that
    would mean reading every byte to register), so its revision, a digest of every file's name, size and
    modification time, is what tells."""
    revision, _ = source.resolve()
    if revision != artifact.resolved_revision:
        raise DomainError(
            f"Files of {artifact.name} in the local folder changed since registration (a name, size or "
            "modification time differs), so the copy cannot be verified. Inspect the artifact again to register "
            "the new content."
        )


class _ProgressWriter:
    """The fetch's progress callback: writes bytes, rate, time left and the claim's
    heartbeat at most once a second (the cache calls it every quarter second even
    while no byte moves), and stops the fetch when it was cancelled or taken over."""

    def __init__(self, mine: QuerySet, total: int) -> None:
        self.mine = mine
        self.total = total
        self.last_write = 0.0
        self.first: tuple[float, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
        if now - self.last_write < PROGRESS_EVERY and done < total:
            return
        self.last_write = now
        started, done_at_start = self.first
        elapsed = now - started
        rate = int((done - done_at_start) / elapsed) if elapsed > 0.5 else None
        eta = int((total - done) / rate) if rate else None
        try:
            updated = self.mine.update(
                bytes_done=done, rate_bytes_per_second=rate, eta_seconds=eta, heartbeat_at=timezone.now()
            )
        except jobs.DATABASE_DOWN:
            # A database restart must not throw away a download under way: write again next second.
            connection.close()
            return
        if not updated:
            raise FetchCancelled()


def _finish(cached_id: int, owner: str, status: str, error: str) -> CachedArtifact:
    """Records how a fetch ended, if it is still this worker's to record; returns the row as it is."""
    _mine(cached_id, owner).update(status=status, error=error, finished_at=timezone.now(), eta_seconds=None)
    return CachedArtifact.objects.get(pk=cached_id)


def _mine(cached_id: int, owner: str) -> QuerySet:
    """The fetch `cached_id` while `owner` still holds it: every write of a running fetch goes through this."""
    return CachedArtifact.objects.filter(pk=cached_id, status=CachedArtifact.Status.FETCHING, claimed_by=owner)


def fetches_resume(*, node: Node) -> list[int]:
    """Runs when `node`'s agent starts: the fetches a previous agent of the node left running are queued
    again (one agent serves a node, so their owner is dead and their partial files are resumed), and every
    queued fetch of the node is sent again. Returns their ids."""
    CachedArtifact.objects.filter(node=node, status=CachedArtifact.Status.FETCHING).exclude(
        claimed_by=jobs.worker_id()
    ).update(status=CachedArtifact.Status.QUEUED, claimed_by="", heartbeat_at=None)
    ids = list(
        CachedArtifact.objects.filter(node=node, status=CachedArtifact.Status.QUEUED).values_list("pk", flat=True)
    )
    _resend(ids, node)
    return ids


def _resend(ids: list[int], node: Node) -> None:
    CachedArtifact.objects.filter(pk__in=ids).update(sent_at=timezone.now())
    for pk in ids:
        jobs.send(lambda pk=pk: tasks.fetch_artifact.apply_async(args=[pk], queue=node.queue), what=f"fetch {pk}")


def fetches_sweep() -> dict[str, list[int]]:
    """Finds fetches again whose message or worker was lost (see config/jobs.py), run every minute by beat:
    - on a node gone for good (silent PLUGBOARD_NODE_GONE_SECONDS), every queued or running fetch fails, saying so;
    - a running fetch whose heartbeat is older than PLUGBOARD_FETCH_STALE_SECONDS is queued again (its
      agent died or lost it; the partial files are resumed);
    - a queued fetch whose message went out PLUGBOARD_JOB_RESEND_SECONDS ago is sent again.
    Returns the ids by what was done."""
    now = timezone.now()
    done: dict[str, list[int]] = {"failed": [], "requeued": [], "resent": []}
    gone_before = now - timedelta(seconds=settings.PLUGBOARD_NODE_GONE_SECONDS)
    active = CachedArtifact.objects.filter(status__in=CachedArtifact.ACTIVE)
    for cached in active.filter(Q(node__last_seen_at__lt=gone_before) | Q(node__last_seen_at=None)).select_related(
        "node"
    ):
        failed = CachedArtifact.objects.filter(pk=cached.pk, status__in=CachedArtifact.ACTIVE).update(
            status=CachedArtifact.Status.FAILED,
            finished_at=now,
            eta_seconds=None,
            error=f"The node {cached.node.name} has not reported since "
            f"{_when(cached.node.last_seen_at)}: its agent is gone. Fetch again once it is back, or on another node.",
        )
        if failed:
            done["failed"].append(cached.pk)
    live = active.exclude(pk__in=done["failed"])
    silent = now - timedelta(seconds=settings.PLUGBOARD_FETCH_STALE_SECONDS)
    for cached in live.filter(status=CachedArtifact.Status.FETCHING, heartbeat_at__lt=silent).select_related("node"):
        requeued = CachedArtifact.objects.filter(
            pk=cached.pk, status=CachedArtifact.Status.FETCHING, heartbeat_at=cached.heartbeat_at
        ).update(status=CachedArtifact.Status.QUEUED, claimed_by="", heartbeat_at=None)
        if requeued:
            log.warning(
                "fetch %s on %s went silent (owner %s); queued again", cached.pk, cached.node, cached.claimed_by
            )
            done["requeued"].append(cached.pk)
            _resend([cached.pk], cached.node)
    lost = live.filter(status=CachedArtifact.Status.QUEUED).filter(
        Q(sent_at__lt=jobs.resend_before()) | Q(sent_at=None)
    )
    for cached in lost.exclude(pk__in=done["requeued"]).select_related("node"):
        done["resent"].append(cached.pk)
        _resend([cached.pk], cached.node)
    return done


def _when(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z") if moment else "it was added"


# How often a lease held on every supervisor tick refreshes its artifact's "last used" time (for eviction).
LEASE_TOUCH_SECONDS = 60


def cache_lease(*, cached: CachedArtifact, holder: models.Model) -> CacheLease:
    """Records that `holder` (a row of any kind: a deployment) uses `cached`, which
    keeps it from eviction. The supervisor calls this on every tick for what it
    runs, so it writes only when the lease is new or "last used" is a minute old."""
    lease, created = CacheLease.objects.get_or_create(
        cached=cached, holder_type=ContentType.objects.get_for_model(holder), holder_id=holder.pk
    )
    now = timezone.now()
    if created or cached.last_used_at is None or (now - cached.last_used_at).total_seconds() > LEASE_TOUCH_SECONDS:
        CachedArtifact.objects.filter(pk=cached.pk).update(last_used_at=now)
        cached.last_used_at = now
    return lease


def cache_release(
    *,
    holder: models.Model,
    cached: CachedArtifact | None = None,
    artifact: Artifact | None = None,
    node: Node | None = None,
) -> int:
    """Ends the leases `holder` has: on `cached` only, or on `artifact`'s copies, or on `node`, or
    everywhere (the filters combine). Returns how many."""
    leases = CacheLease.objects.filter(holder_type=ContentType.objects.get_for_model(holder), holder_id=holder.pk)
    if cached is not None:
        leases = leases.filter(cached=cached)
    if artifact is not None:
        leases = leases.filter(cached__artifact=artifact)
    if node is not None:
        leases = leases.filter(cached__node=node)
    return leases.delete()[0]


def cache_evict(*, node: Node, cache: ArtifactCache) -> list[str]:
    """Evicts least-recently-used artifacts nobody leases until the cache is
    under the node's quota; returns the evicted keys."""
    entries = list(CachedArtifact.objects.filter(node=node).prefetch_related("leases"))
    by_key = {c.key: c for c in entries}
    in_use = {c.key for c in entries if c.leases.all() or c.is_active}
    last_used = {c.key: c.last_used_at.timestamp() for c in entries if c.status == CachedArtifact.Status.READY}
    removed = evict_lru(cache, quota=node.cache_quota_bytes, last_used=last_used, in_use=in_use)
    if removed:
        CachedArtifact.objects.filter(pk__in=[by_key[k].pk for k in removed]).delete()
        Node.objects.filter(pk=node.pk).update(cache_used_bytes=cache.usage_bytes())
    return removed


def cache_remove_request(*, cached: CachedArtifact) -> None:
    """Asks the node's agent to remove an artifact from its cache, once this commits;
    refused (409) while something uses it there."""
    if cached.leases.exists():
        raise DomainError(
            f"{cached.artifact.name} is in use on {cached.node.name}; stop what uses it first.", status=409
        )
    queue = cached.node.queue
    audit_record(
        action=f"{cached.artifact.kind_noun}.uncache", target=cached.artifact, detail={"node": cached.node.name}
    )
    # A lost message leaves the copy in place and listed: asking again sends another.
    jobs.send_on_commit(
        lambda: tasks.remove_cached_artifact.apply_async(args=[cached.pk], queue=queue), what=f"removal {cached.pk}"
    )


def cache_remove(*, cached: CachedArtifact, cache: ArtifactCache) -> int:
    """Removes an artifact from a node's cache (refused while leased); returns the bytes freed."""
    if cached.leases.exists():
        raise DomainError(f"{cached.artifact.name} is in use on {cached.node.name}; stop what uses it first.")
    if cached.is_active:
        raise DomainError("Cancel the fetch first.")
    freed = cache.remove_artifact(cached.key)
    cached.delete()
    return freed
