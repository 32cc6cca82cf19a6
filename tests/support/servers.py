"""Private PostgreSQL and Redis servers for fault tests, which stop and start them: the machine's shared servers
(5432, 6379) serve CI and every other engineer, so a test never restarts those.

Each server lives in a temporary folder of its own, on a free port, and restarts on the same port and the same
data, as a database or a broker coming back after a crash or an upgrade does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import environ
import psycopg
import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from tests.support.s3_server import free_port


def _wait(ready, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout} s")
        time.sleep(0.05)


class PostgresServer:
    """initdb + pg_ctl under a temporary folder. PostgreSQL refuses to run as root, so as root the folder is
    handed to the `postgres` user and each command runs as it (runuser); otherwise as the current user."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="plugboard-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *argv: str, timeout: float = 120) -> None:
        if self.as_root:
            argv = ("runuser", "-u", "postgres", "--", *argv)
        subprocess.run(argv, check=True, timeout=timeout, capture_output=True, cwd=self.root)

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        if not self.data.exists():
            if self.as_root:
                shutil.chown(self.root, "postgres", "postgres")
            # Trust on loopback: the server listens on 127.0.0.1 only, for this test's own processes.
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        # fsync off: a process crash or a restart loses nothing without it (only a crash of the machine
        # would), and the machine's two shared cores are spared the flushes.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c max_connections=60"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")
        _wait(self.accepting, timeout=30, what="PostgreSQL")
        return self

    def accepting(self) -> bool:
        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def stop(self, mode: str = "fast") -> None:
        """Stops the server: "fast" disconnects every client and shuts down cleanly, "immediate" as if
        the server crashed (it recovers from its log when it starts again)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """redis-server with an append-only file, as docker-compose.yml configures the broker: messages queued
    before a clean stop (SIGTERM) are all there when it starts again; a SIGKILL loses at most the last second."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="plugboard-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.root),
                "--logfile", str(self.root / "redis.log")]  # fmt: skip
        self.process = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL)
        _wait(self.answering, timeout=30, what="Redis")
        return self

    def answering(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log()[-2000:]}")
        try:
            return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis writes its append-only file and exits. SIGKILL: it dies where it stands."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def log(self) -> str:
        path = self.root / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def default_database(url: str):
    """Points this process's default database connection at `url` while the block runs, then back at the
    suite's database: a fault test's own rows, written through the ordinary services and factories, then live
    where the console's processes it started read them."""
    saved = connections[DEFAULT_DB_ALIAS]
    saved.close()
    config = environ.Env.db_url_config(url)
    config["OPTIONS"] = dict(settings.DATABASES[DEFAULT_DB_ALIAS].get("OPTIONS", {}))
    if config["ENGINE"] != saved.settings_dict["ENGINE"]:
        config["OPTIONS"] = {"connect_timeout": 5}  # the suite runs on SQLite, whose options do not apply
    connections.settings[DEFAULT_DB_ALIAS] = connections.configure_settings({DEFAULT_DB_ALIAS: config})[
        DEFAULT_DB_ALIAS
    ]
    del connections[DEFAULT_DB_ALIAS]
    try:
        yield
    finally:
        connections[DEFAULT_DB_ALIAS].close()
        del connections[DEFAULT_DB_ALIAS]
        connections.settings[DEFAULT_DB_ALIAS] = saved.settings_dict
        connections[DEFAULT_DB_ALIAS] = saved
