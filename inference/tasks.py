from __future__ import annotations

from celery import shared_task

from inference import services


# Scheduled by beat (CELERY_BEAT_SCHEDULE); safe to run twice at once or to miss runs: each recomputes.
@shared_task(time_limit=600, acks_late=True)
def usage_rollup() -> None:
    """Sums raw usage into hourly and daily totals and deletes what has expired."""
    services.usage_rollup()
