"""What makes background work safe against lost, repeated and orphaned messages.

A job is a row with a status (an artifact's inspection, a node's fetch), not a message: the message only
says "look at row N". So:
- a worker claims the row with one conditional UPDATE that refuses a row another live worker holds (its
  owner and a heartbeat it refreshes while it works), which makes a repeated message, a redelivery after
  the broker's visibility timeout, or the sweep's resend harmless;
- what it writes at the end is conditional on still holding the claim, so a worker that was given up for
  dead and comes back cannot overwrite the work of the one that took over;
- messages are sent after the transaction that made the row commits, and a failure to send (the broker
  down) does not fail the request: the row says the job is wanted, and the sweep (a periodic task in each
  app: `registry.tasks.sweep_inspections`, `cluster.tasks.sweep_fetches`) sends it again, gives a job whose
  worker went silent to another, and fails one whose owner is gone for good, with the reason;
- a database outage in the middle of a job does not leave it claimed until the sweep's thresholds pass:
  the job puts itself back once the database answers again, and its task retries (`DATABASE_DOWN`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

log = logging.getLogger(__name__)

# What a database that restarts or cannot be reached raises; the job tasks retry on these.
DATABASE_DOWN = (OperationalError, InterfaceError)
# Each job task's retries on DATABASE_DOWN: backoff from 1 s up to a minute, for about a quarter of an hour.
RETRY_ON_DATABASE_DOWN = dict(
    autoretry_for=DATABASE_DOWN, retry_backoff=1, retry_backoff_max=60, retry_jitter=False, max_retries=20
)

_ids: dict[int, str] = {}


def worker_id() -> str:
    """Names this process as the owner of the jobs it claims: host, pid and a random part (a pid is reused
    after a restart). Computed per process, since a prefork worker's children inherit the parent's memory."""
    pid = os.getpid()
    if pid not in _ids:
        _ids[pid] = f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}"
    return _ids[pid]


def send(send_message, *, what: str) -> bool:
    """Sends a job's message now; if the broker cannot take it, logs that and says so (the job stays wanted
    in the database, and the sweep sends it again). `what` names the job in the log."""
    try:
        send_message()
    except Exception:
        log.warning("could not send %s now; the periodic sweep will send it again", what, exc_info=True)
        return False
    return True


def send_on_commit(send_message, *, what: str) -> None:
    """Sends a job's message once the current transaction commits, as `send` does: a broker that is down does
    not fail the request that asked for the job."""
    transaction.on_commit(lambda: send(send_message, what=what))


def resend_before() -> datetime:
    """Queued jobs whose message went out before this are sent again by the sweep (the message may be lost)."""
    return timezone.now() - timedelta(seconds=settings.PLUGBOARD_JOB_RESEND_SECONDS)


def put_back_when_database_returns(put_back, *, what: str, wait_seconds: float = 600) -> bool:
    """A database outage interrupted a claimed job: waits, trying again with backoff, until the database
    answers, then runs `put_back` (a conditional UPDATE that makes the job wanted again and clears this
    worker's claim), so the task's retry can claim it. Says whether it could before `wait_seconds` passed;
    if not, the sweep finds the job once its claim is stale."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        connection.close()  # the broken one: the next query opens a new one
        try:
            put_back()
            return True
        except DATABASE_DOWN:
            if time.monotonic() + delay > deadline:
                log.warning("the database did not come back within %s s; the sweep will find %s", wait_seconds, what)
                return False
            time.sleep(delay)
            delay = min(delay * 2, 15)
