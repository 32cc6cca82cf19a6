"""ASGI servers for tests, each under uvicorn in a process of its own: the
console (as `make run` starts its web process, on the test database and the
suite's Redis) and the small OpenAI-compatible upstream."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from tests.support.agents import ROOT, database_url, wait_for
from tests.support.s3_server import free_port


class UvicornServer:
    def __init__(self, app: str, *, log_path: Path, env: dict | None = None) -> None:
        self.app, self.log_path, self.env = app, log_path, env or {}
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> UvicornServer:
        argv = [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port),
                "--no-access-log", "--log-level", "warning"]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child writes to it for its whole life)
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._listening, timeout=60, what=f"{self.app} to listen on {self.port}")
        return self

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.app} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def console_env(**overrides: str) -> dict[str, str]:
    """The environment of a console process on the test database and the suite's Redis."""
    return {
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "PLUGBOARD_LOCAL_ROOTS": ",".join(str(p) for p in settings.PLUGBOARD_LOCAL_ROOTS),
        **overrides,
    }


def read_answer(conn: socket.socket) -> tuple[str, str]:
    """(status line, body) of one HTTP/1.1 answer read from `conn`, whole, however many packets it comes in."""
    answer = http.client.HTTPResponse(conn)
    answer.begin()
    version = f"HTTP/{answer.version // 10}.{answer.version % 10}"
    return f"{version} {answer.status} {answer.reason}", answer.read().decode("utf-8", "replace")
