"""Runs the deployment supervisor inside the node agent (see cluster/agent.py)."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown
from django.db import close_old_connections

from cluster.agent import config_from_env, local_cache

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
_stopping = threading.Event()


def _loop(node_name: str, log_dir) -> None:
    from deployments.supervisor import Supervisor

    supervisor = Supervisor(node_name, local_cache(), log_dir)
    while not _stopping.is_set():
        try:
            close_old_connections()
            supervisor.tick()
        except Exception:
            log.exception("supervisor tick failed; trying again")
        _stopping.wait(TICK_SECONDS)


@worker_ready.connect
def _start_supervising(**_) -> None:
    config = config_from_env()
    if config is None:
        return
    log_dir = config.cache_dir.parent / f"{config.cache_dir.name}-server-logs"
    threading.Thread(target=_loop, args=(config.name, log_dir), name="deployment-supervisor", daemon=True).start()


@worker_shutdown.connect
def _stop_supervising(**_) -> None:
    _stopping.set()
