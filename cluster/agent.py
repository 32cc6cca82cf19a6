"""The node agent: a Celery worker that consumes its node's own queue
(`node.<name>`) and the broadcast queue, reports its inventory every few
seconds, and resumes the fetches a killed agent left behind.

`manage.py node_agent` sets the PLUGBOARD_NODE_* variables and becomes the
worker; the worker_ready signal below starts the reporting."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections

from cluster import inventory, services
from cluster.cache import ArtifactCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentConfig:
    name: str
    address: str
    cache_dir: Path
    cache_quota_bytes: int


def internal_address(text: str) -> str:
    """Returns `text`, the node's internal address: its model servers listen only there (`--host`) and
    the web process reaches them at it. Raises ValueError for a wildcard address, which would make
    every model server of the node listen on all of the host's networks."""
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return text  # a host name, which the servers and the console resolve alike
    if ip.is_unspecified:
        raise ValueError(
            f"{text} is not an address the model servers may listen on: it would open them to every network "
            "of this host. Give the node's internal address (e.g. 10.0.0.5), which the web process can reach."
        )
    return text


def config_from_env() -> AgentConfig | None:
    """This process's node, when it runs as a node agent; None in web and control workers."""
    name = os.environ.get("PLUGBOARD_NODE_NAME")
    if not name:
        return None
    return AgentConfig(
        name=name,
        address=internal_address(os.environ["PLUGBOARD_NODE_ADDRESS"]),
        cache_dir=Path(os.environ["PLUGBOARD_NODE_CACHE_DIR"]),
        cache_quota_bytes=int(os.environ["PLUGBOARD_NODE_CACHE_QUOTA"]),
    )


@cache
def local_cache():
    """The artifact cache of the node this agent serves."""
    config = config_from_env()
    if config is None:
        raise RuntimeError("Node tasks run only in a node agent (manage.py node_agent).")
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    return ArtifactCache(config.cache_dir)


class Reporter(threading.Thread):
    """Reports the node's inventory every heartbeat until stopped."""

    def __init__(self, config: AgentConfig) -> None:
        super().__init__(name="node-reporter", daemon=True)
        self.config = config
        self.stopping = threading.Event()
        self.wake = threading.Event()

    def run(self) -> None:
        node = services.node_register(
            name=self.config.name,
            address=self.config.address,
            cache_dir=str(self.config.cache_dir),
            cache_quota_bytes=self.config.cache_quota_bytes,
        )
        # Runtimes change only when someone installs one: look once per start.
        runtime = inventory.vllm_runtime(settings.PLUGBOARD_VLLM_PYTHON)
        runtimes = [runtime] if runtime else []
        if runtime:
            # Its flags take seconds to read the first time: the reports go on meanwhile and carry them once known.
            threading.Thread(target=self._read_flags, args=(runtime,), name="runtime-flags", daemon=True).start()
        first = True
        while not self.stopping.is_set():
            try:
                close_old_connections()
                found = inventory.take(runtimes=runtimes)
                node = services.node_report(node=node, inventory=found, cache=local_cache())
                if first:
                    resumed = services.fetches_resume(node=node)
                    if resumed:
                        log.info("resuming fetches %s", resumed)
                    first = False
            except Exception:
                log.exception("node report failed; trying again")
            self.wake.wait(settings.PLUGBOARD_NODE_HEARTBEAT_SECONDS)
            self.wake.clear()

    def _read_flags(self, runtime: dict) -> None:
        flags = inventory.vllm_flags(runtime, keep_in=Path(settings.VAR_DIR) / "runtime-flags")
        if flags:
            runtime["flags"] = flags  # the reporter sends the same dict on its next heartbeat
            self.wake.set()


_reporter: Reporter | None = None


@worker_ready.connect
def _start_reporting(**_) -> None:
    global _reporter
    config = config_from_env()
    if config is None:
        return
    _reporter = Reporter(config)
    _reporter.start()
    log.info("node agent %s ready: queue node.%s, cache %s", config.name, config.name, config.cache_dir)


@worker_shutdown.connect
def _stop_reporting(**_) -> None:
    if _reporter is not None:
        _reporter.stopping.set()
        _reporter.wake.set()


def report_once() -> None:
    """Makes the reporter report now instead of at the next heartbeat."""
    if _reporter is not None:
        _reporter.wake.set()
