"""A node agent killed between launching a server and recording it leaves exactly one server: the launch is
recorded before the process starts (Deployment.launch_token, which the server carries in its environment),
so the next agent finds that server and adopts it (same pid, same start time), or stops it when the
deployment should no longer run, instead of launching a second one.

The crash window is made as it happens: the supervisor's own launch records the launch and starts the
server (a stand-in that serves like vLLM), and the pid is never recorded; then a real node agent starts."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cluster.cache import ArtifactCache
from cluster.models import CachedArtifact
from deployments import processes
from deployments.models import Deployment
from deployments.supervisor import Supervisor
from tests.support.agents import wait_for
from tests.support.deployments import demo_deployment, processes_in, serving_stand_in
from tests.support.nodes import online_cpu_node

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.demo]


def health_checks(log_path: str) -> int:
    return Path(log_path).read_text().count('"GET /health HTTP/1.1" 200')


@pytest.fixture
def launched_but_not_recorded(cast, tmp_path, settings):
    """(the deployment, the stand-in runtime, the server's process): the server runs, started by the supervisor's
    own launch, and the database holds the launch but no pid, as an agent killed right after Popen leaves it."""
    stand_in = serving_stand_in(tmp_path, settings)
    node = online_cpu_node(tmp_path)
    deployment = demo_deployment(cast.team, "demo")
    cached = CachedArtifact.objects.create(
        node=node, artifact=deployment.base, revision="r1", status=CachedArtifact.Status.READY
    )
    supervisor = Supervisor("cpu-1", ArtifactCache(tmp_path / "cache-cpu-1"), stand_in.root)
    d = Deployment.objects.select_related("base", "node").get(pk=deployment.pk)
    process = supervisor.prepare_launch(d, {d.base_id: cached}).spawn()
    wait_for(lambda: stand_in.started(), timeout=10, what="the stand-in server to start")
    yield Deployment.objects.get(pk=deployment.pk), stand_in, process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def test_the_window_is_real_the_launch_is_recorded_without_a_pid(launched_but_not_recorded):
    d, stand_in, process = launched_but_not_recorded
    assert d.launch_token and d.pid is None and d.status == "pending"
    assert stand_in.started() == [process.pid]
    environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
    assert f"PLUGBOARD_LAUNCH_TOKEN={d.launch_token}".encode() in environ


def test_the_next_agent_adopts_the_server_it_finds_and_starts_no_second(
    launched_but_not_recorded, agents, no_stray_servers
):
    d, stand_in, process = launched_but_not_recorded
    started_at = processes.identity(process.pid)
    home = Path(d.log_path).parent / "home"

    agents("cpu-1", env={"PLUGBOARD_VLLM_PYTHON": str(stand_in.python)})

    ready = wait_for(
        lambda: Deployment.objects.filter(pk=d.pk, status="ready").first(), timeout=60, what="the deployment ready"
    )
    assert (ready.pid, ready.process_identity) == (process.pid, started_at), "the server found was adopted"
    assert ready.launch_token == "" and ready.port == d.port and ready.launched_revision == 1
    assert stand_in.started() == [process.pid], "no second server was started"
    assert processes_in(home) == [process.pid]
    assert process.poll() is None
    messages = [e.message for e in ready.events.all()]
    assert any(f"Adopted the server (pid {process.pid}) on port {d.port}" in m for m in messages), messages
    # It stays the one server: later ticks (each asks /health, which the server logs) neither restart nor add one.
    checks = health_checks(d.log_path)
    wait_for(lambda: health_checks(d.log_path) >= checks + 3, timeout=30, what="three more ticks")
    assert stand_in.started() == [process.pid] and Deployment.objects.get(pk=d.pk).pid == process.pid
    assert processes_in(home) == [process.pid]


def test_a_server_whose_deployment_was_stopped_meanwhile_is_stopped(launched_but_not_recorded, agents):
    d, stand_in, process = launched_but_not_recorded
    Deployment.objects.filter(pk=d.pk).update(desired="stopped", status="stopping")  # a stop from the web

    agents("cpu-1", env={"PLUGBOARD_VLLM_PYTHON": str(stand_in.python)})

    stopped = wait_for(
        lambda: Deployment.objects.filter(pk=d.pk, status="stopped").first(), timeout=60, what="the stop"
    )
    assert process.wait(10) is not None, "the server launched before the agent died was stopped"
    assert (stopped.pid, stopped.port, stopped.launch_token) == (None, None, "")
    assert stand_in.started() == [process.pid], "nothing was started"
    messages = [e.message for e in stopped.events.all()]
    assert any(f"Stopped the server (pid {process.pid}) launched before the node agent stopped" in m for m in messages)


def test_a_launch_whose_server_never_started_is_settled_and_launched_once(
    launched_but_not_recorded, agents, no_stray_servers
):
    d, stand_in, process = launched_but_not_recorded
    os.killpg(process.pid, signal.SIGKILL)  # the agent died before the server got anywhere
    process.wait(10)

    agents("cpu-1", env={"PLUGBOARD_VLLM_PYTHON": str(stand_in.python)})

    ready = wait_for(
        lambda: Deployment.objects.filter(pk=d.pk, status="ready").first(), timeout=60, what="the deployment ready"
    )
    assert ready.pid != process.pid and stand_in.started() == [process.pid, ready.pid]
    assert processes_in(Path(d.log_path).parent / "home") == [ready.pid]
    messages = [e.message for e in ready.events.all()]
    assert "The server the node agent was launching when it stopped is not running." in messages
