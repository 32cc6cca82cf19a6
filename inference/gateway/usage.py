"""Usage records, written off the request path: a request appends to a list
in memory and a background task writes the list in one batch every
FLUSH_SECONDS. A database that cannot be reached delays the writes; the list
is bounded, so a long outage drops the oldest records (and says so) rather
than growing without end."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from inference import services
from inference.models import UsageRecord

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
MAX_PENDING = 100_000


def _write(batch: list[dict]) -> None:
    try:
        services.usage_record_many(records=[UsageRecord(**fields) for fields in batch])
    finally:
        close_old_connections()


class UsageWriter:
    def __init__(self) -> None:
        self._pending: list[dict] = []  # the fields of each record
        self._writing = 0  # records of the batch being written now
        self._task: asyncio.Task | None = None
        self.dropped = 0

    @property
    def backlog(self) -> int:
        """Records taken but not yet in the database (pending, or in the batch being written)."""
        return len(self._pending) + self._writing

    def add(self, fields: dict) -> None:
        self._pending.append(fields)
        if len(self._pending) > MAX_PENDING:
            excess = len(self._pending) - MAX_PENDING
            del self._pending[:excess]
            self.dropped += excess
            log.error("dropped %d usage records: the database has not taken them for a while", excess)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Writes what is pending; on failure keeps it for the next try."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        self._writing = len(batch)
        try:
            await sync_to_async(_write, thread_sensitive=False)(batch)
        except Exception:
            log.exception("writing %d usage records failed; retrying", len(batch))
            self._pending[:0] = batch
        finally:
            self._writing = 0

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()
