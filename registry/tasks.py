from __future__ import annotations

from celery import shared_task

from config import jobs
from registry import services

# An inspection running longer than this is killed; the sweep gives one claimed longer ago to another worker.
INSPECTION_TIME_LIMIT = 600


@shared_task(
    time_limit=INSPECTION_TIME_LIMIT, soft_time_limit=INSPECTION_TIME_LIMIT - 30, acks_late=True,
    **jobs.RETRY_ON_DATABASE_DOWN,
)  # fmt: skip
def inspect_artifact(artifact_id: int) -> None:
    """Inspects a registered artifact (claimed only if still pending)."""
    services.artifact_inspect(artifact_id=artifact_id)


@shared_task(time_limit=300)
def sweep_inspections() -> None:
    """Beat, every minute: finds inspections whose message or worker was lost."""
    services.inspections_sweep()
