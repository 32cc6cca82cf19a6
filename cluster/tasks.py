from __future__ import annotations

from celery import shared_task

from cluster import agent, services
from cluster.models import CachedArtifact
from config import jobs


# Sent to one node's queue ("node.<name>"); the node's agent runs it against its own cache.
@shared_task(time_limit=24 * 3600, soft_time_limit=24 * 3600 - 60, acks_late=True, **jobs.RETRY_ON_DATABASE_DOWN)
def fetch_artifact(cached_id: int) -> None:
    """Brings an artifact into this node's cache (claimed only if still queued or left running)."""
    services.artifact_fetch_run(cached_id=cached_id, cache=agent.local_cache())


@shared_task(time_limit=600, acks_late=True)
def remove_cached_artifact(cached_id: int) -> None:
    """Removes an artifact from this node's cache, unless something uses it."""
    cached = CachedArtifact.objects.filter(pk=cached_id).select_related("artifact", "node").first()
    if cached is None:
        return
    services.cache_remove(cached=cached, cache=agent.local_cache())


@shared_task(time_limit=300)
def sweep_fetches() -> None:
    """Beat, every minute, on the control queue: finds fetches whose message or agent was lost."""
    services.fetches_sweep()


@shared_task(time_limit=60)
def report_now() -> None:
    """Broadcast to every node agent: report the inventory now rather than at the next heartbeat."""
    agent.report_once()
