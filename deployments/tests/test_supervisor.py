"""The supervisor's process handling, with stand-in processes (vLLM itself is in test_vllm_e2e.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from deployments import supervisor
from deployments.models import Deployment
from deployments.supervisor import Supervisor, process_alive

# Ignores SIGTERM, as vLLM was seen to while it loads a model.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(300)"
)


@pytest.fixture
def stubborn():
    process = subprocess.Popen([sys.executable, "-c", STUBBORN], start_new_session=True, stdout=subprocess.PIPE)
    assert process.stdout.readline() == b"up\n"
    yield process
    process.kill()
    process.wait()


@pytest.mark.parametrize(
    ("ready", "at_least", "below"),
    [(False, 0.0, 1.0), (True, 1.5, 10.0)],
    ids=["still starting: killed after the short grace", "has served: given the full grace"],
)
def test_stopping_gives_a_server_that_has_served_time_to_finish(
    stubborn, tmp_path, monkeypatch, ready, at_least, below
):
    monkeypatch.setattr(supervisor, "STOP_GRACE_SECONDS", 1.5)
    monkeypatch.setattr(supervisor, "STARTING_STOP_GRACE_SECONDS", 0.3)
    started = timezone.now()
    deployment = Deployment(
        pid=stubborn.pid, started_at=started, ready_at=started + timedelta(seconds=1) if ready else None
    )

    began = time.monotonic()
    Supervisor("n", None, tmp_path).terminate(deployment)
    took = time.monotonic() - began

    assert not process_alive(stubborn.pid)
    assert at_least <= took < below, took
