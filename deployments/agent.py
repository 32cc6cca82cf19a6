"""Runs the deployment supervisor inside the node agent (see cluster/agent.py)."""

from __future__ import annotations

import logging
import threading

from celery.signals import task_postrun, worker_ready, worker_shutdown
from django.db import close_old_connections

from cluster.agent import config_from_env, local_cache
from deployments.supervisor import Supervisor

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
# While a server starts or adapters load, look again soon: a person is waiting for "ready".
BUSY_TICK_SECONDS = 0.2
_stopping = threading.Event()
_wake = threading.Event()


def wake() -> None:
    """Makes the supervisor reconcile now rather than at its next tick."""
    _wake.set()


def _loop(node_name: str, log_dir) -> None:
    supervisor = Supervisor(node_name, local_cache(), log_dir)
    while not _stopping.is_set():
        try:
            close_old_connections()
            busy = supervisor.tick()
        except Exception:
            log.exception("supervisor tick failed; trying again")
            busy = False
        _wake.wait(BUSY_TICK_SECONDS if busy else TICK_SECONDS)
        _wake.clear()


@worker_ready.connect
def _start_supervising(**_) -> None:
    config = config_from_env()
    if config is None:
        return
    log_dir = config.cache_dir.parent / f"{config.cache_dir.name}-server-logs"
    threading.Thread(target=_loop, args=(config.name, log_dir), name="deployment-supervisor", daemon=True).start()


@task_postrun.connect
def _fetch_done(sender=None, **_) -> None:
    # A fetch that ends may be what a deployment waits for.
    if sender is not None and sender.name == "cluster.tasks.fetch_artifact":
        wake()


@worker_shutdown.connect
def _stop_supervising(**_) -> None:
    _stopping.set()
    _wake.set()
