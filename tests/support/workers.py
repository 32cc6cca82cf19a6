"""A control worker for tests (`celery -A config worker -Q control`, as docker-compose.yml starts it) in a
process of its own, on whatever database and Redis its environment names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.agents import ROOT, wait_for


class ControlWorker:
    def __init__(self, *, log_path: Path, env: dict[str, str], concurrency: int = 2) -> None:
        self.log_path, self.env, self.concurrency = log_path, env, concurrency
        self.process: subprocess.Popen | None = None

    def start(self) -> ControlWorker:
        celery = str(Path(sys.executable).with_name("celery"))
        argv = [celery, "-A", "config", "worker", "-Q", "control", "-c", str(self.concurrency),
                "-n", f"control-{os.getpid()}@%h", "-l", "INFO", "--without-gossip", "--without-mingle"]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child writes to it for its whole life)
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_for(self._ready, timeout=60, what="the control worker to be ready")
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the control worker exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        return " ready." in self.log()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
