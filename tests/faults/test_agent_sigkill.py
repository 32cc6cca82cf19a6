"""A node agent SIGKILLed while its server runs: the server keeps serving throughout (it runs in a session of
its own), and the agent that comes back adopts it, the same process (pid and start time), instead of
starting another. A real agent, and a stand-in server that answers like vLLM (test_vllm_e2e.py does the same
kill with real vLLM)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
import requests

from cluster.models import CachedArtifact
from deployments import processes
from deployments.models import Deployment
from tests.support.agents import wait_for
from tests.support.deployments import demo_deployment, processes_in, serving_stand_in
from tests.support.nodes import online_cpu_node

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.demo]


class Prober(threading.Thread):
    """Asks the server's /health every 50 ms until stopped; keeps what went wrong."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.answered, self.failures = 0, []
        self.stopping = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {self.key}"
            while not self.stopping.wait(0.05):
                try:
                    status = session.get(self.url + "/health", timeout=10).status_code
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                    continue
                if status == 200:
                    self.answered += 1
                else:
                    self.failures.append(status)


def test_a_sigkilled_agent_s_server_keeps_serving_and_is_adopted_by_the_next(
    cast, tmp_path, settings, agents, no_stray_servers
):
    stand_in = serving_stand_in(tmp_path, settings)
    node = online_cpu_node(tmp_path)
    deployment = demo_deployment(cast.team, "demo")
    CachedArtifact.objects.create(node=node, artifact=deployment.base, revision="r1", status="ready")
    agent = agents("cpu-1", env={"PLUGBOARD_VLLM_PYTHON": str(stand_in.python)})
    before = wait_for(
        lambda: Deployment.objects.filter(pk=deployment.pk, status="ready").first(), timeout=60, what="ready"
    )
    prober = Prober(before.base_url, before.api_key)
    prober.start()
    wait_for(lambda: prober.answered >= 5, timeout=10, what="the server to answer the prober")

    agent.kill(signal.SIGKILL)
    served_while_down = prober.answered
    wait_for(lambda: prober.answered >= served_while_down + 10, timeout=10, what="answers with no agent")
    agent.start()
    adopted = f"adopted the running server (pid {before.pid})"
    wait_for(
        lambda: deployment.events.filter(message__contains=adopted).exists(), timeout=60, what="the new agent to adopt"
    )
    answered = prober.answered
    wait_for(lambda: prober.answered >= answered + 5, timeout=10, what="answers after the adoption")
    prober.stopping.set()
    prober.join(5)

    after = Deployment.objects.get(pk=deployment.pk)
    assert (after.pid, after.process_identity, after.port) == (before.pid, before.process_identity, before.port)
    assert after.process_identity == processes.identity(before.pid), "the same process, by its start time"
    assert after.status == "ready"
    assert prober.failures == [], "the server stopped answering while its agent was down or coming back"
    assert stand_in.started() == [before.pid], "no second server was started"
    assert processes_in(Path(before.log_path).parent / "home") == [before.pid]
