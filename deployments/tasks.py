from __future__ import annotations

from celery import shared_task

from deployments import agent


# Sent to one node's queue ("node.<name>") whenever a deployment there changes, so the
# supervisor acts now instead of at its next tick.
@shared_task(time_limit=30, ignore_result=True)
def reconcile_now() -> None:
    """Wakes this node's deployment supervisor."""
    agent.wake()
