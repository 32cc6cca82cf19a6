"""Real node agents for tests: `manage.py node_agent` in processes of their
own, on the test database and the suite's Redis, as on separate hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The URL of the database the tests use now (the test database), for another process."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or 'localhost'}:{s['PORT'] or 5432}/{s['NAME']}"


class NodeAgent:
    def __init__(self, name: str, *, cache_dir: Path, address: str, quota: str = "10G", env: dict | None = None):
        self.name, self.cache_dir, self.address, self.quota = name, cache_dir, address, quota
        self.extra_env = env or {}
        self.log_path = cache_dir.parent / f"agent-{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> NodeAgent:
        self.purge_queue()
        env = dict(
            os.environ,
            DATABASE_URL=database_url(),
            REDIS_URL=settings.REDIS_URL,
            PLUGBOARD_NODE_HEARTBEAT_SECONDS="1",
            PLUGBOARD_LOCAL_ROOTS=",".join(str(p) for p in settings.PLUGBOARD_LOCAL_ROOTS),
            **self.extra_env,
        )
        argv = [sys.executable, str(ROOT / "manage.py"), "node_agent", "--name", self.name, "--address", self.address,
                "--cache-dir", str(self.cache_dir), "--cache-quota", self.quota]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child writes to it for its whole life)
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def purge_queue(self) -> None:
        """Drops messages an earlier test left for a node of this name: their ids point at rows that are gone
        (or, worse, at new rows that reuse those ids)."""
        from config.celery import app

        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(f"node.{self.name}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for(condition, *, timeout: float = 60, every: float = 0.1, what: str = "a condition"):
    """Returns condition()'s first truthy value, polling; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def online_node(name: str):
    """The node `name`, read now and once its agent has reported within three heartbeats (a row read once
    says "offline" three heartbeats later; on a loaded machine a heartbeat can come late)."""
    from cluster.models import Node

    return wait_for(lambda: (n := Node.objects.get(name=name)).is_online and n, timeout=30, what=f"{name} online")


def fetch_settled(cached, timeout: float = 120):
    """`cached` (a CachedArtifact) once its fetch has ended, refreshed."""

    def ended():
        cached.refresh_from_db()
        return cached.status not in cached.ACTIVE

    wait_for(ended, timeout=timeout, what=f"the fetch of {cached.artifact.name} to end")
    return cached
