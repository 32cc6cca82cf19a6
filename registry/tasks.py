from __future__ import annotations

from celery import shared_task

from registry import services


@shared_task(time_limit=600, soft_time_limit=570, acks_late=True)
def inspect_artifact(artifact_id: int) -> None:
    """Inspects a registered artifact (claimed only if still pending)."""
    services.artifact_inspect(artifact_id=artifact_id)
