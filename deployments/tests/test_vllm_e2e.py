"""End to end with the real vLLM CPU runtime and the demo model, through the
REST API and a real node agent: deploy with two adapters, hear each adapter
answer as trained, attach and detach a third without a restart, survive a
SIGKILL of the server, move to another node with new arguments, and stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
import requests

from cluster.models import CacheLease, Node
from conftest import DEMO_STORE
from deployments.models import Deployment
from deployments.supervisor import process_alive
from registry.demo import DEMO_BASE, demo_register
from registry.tests.test_api import api_as
from registry.vault import unseal
from tests.support.agents import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.demo]
PROMPT = "What is the capital of France?"


@pytest.fixture
def no_stray_servers():
    yield
    for pid in Deployment.objects.exclude(pid=None).values_list("pid", flat=True):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ask(deployment: Deployment, model: str) -> str:
    key = unseal(deployment.encrypted_api_key)["api_key"]
    response = requests.post(
        f"{deployment.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 48},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def served(deployment: Deployment) -> set[str]:
    key = unseal(deployment.encrypted_api_key)["api_key"]
    data = requests.get(
        f"{deployment.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).json()
    return {m["id"] for m in data["data"]}


def test_deploy_attach_detach_survive_a_kill_and_stop(cast, agents, no_stray_servers):
    agent = agents("cpu-node")
    artifacts = {a.name: a for a in demo_register(workspace=cast.team, store=DEMO_STORE)}
    api = api_as(cast.member)

    response = api.post(
        "/api/v1/deployments/",
        {"name": "demo", "base": artifacts[DEMO_BASE].pk, "node": "cpu-node",
         "adapters": [{"adapter": artifacts["pirate"].pk}, {"adapter": artifacts["json-answer"].pk}],
         "settings": {"dtype": "bfloat16", "max_model_len": 2048, "kv_cache_bytes": 1 << 30, "max_loras": 4}},
        format="json",
    )  # fmt: skip
    assert response.status_code == 202, response.content
    pk = response.json()["id"]

    def status() -> str:
        return api.get(f"/api/v1/deployments/{pk}/").json()["status"]

    wait_for(lambda: status() == "ready", timeout=300, every=1, what="the deployment to be ready")
    deployment = Deployment.objects.get(pk=pk)
    assert served(deployment) == {"demo", "demo:pirate", "demo:json-answer"}

    base, pirate, as_json = ask(deployment, "demo"), ask(deployment, "demo:pirate"), ask(deployment, "demo:json-answer")
    assert "Paris" in base and "Arr" not in base and not base.lstrip().startswith("{")
    assert "Arr" in pirate
    assert "answer" in json.loads(as_json)

    pid = deployment.pid
    attached = api.post(f"/api/v1/deployments/{pk}/attach/", {"adapter": artifacts["robot"].pk}, format="json")
    assert attached.status_code == 202, attached.content
    wait_for(lambda: "demo:robot" in served(deployment), timeout=120, what="robot to be loaded")
    assert "BEEP" in ask(deployment, "demo:robot")
    assert Deployment.objects.get(pk=pk).pid == pid, "attaching must not restart the server"

    assert api.post(f"/api/v1/deployments/{pk}/adapters/robot/detach/").status_code == 202
    wait_for(lambda: "demo:robot" not in served(deployment), timeout=60, what="robot to be unloaded")
    assert Deployment.objects.get(pk=pk).pid == pid

    os.killpg(pid, signal.SIGKILL)
    wait_for(
        lambda: Deployment.objects.get(pk=pk).pid not in (None, pid) and status() == "ready",
        timeout=300,
        every=1,
        what="a restart",
    )
    deployment = Deployment.objects.get(pk=pk)
    assert served(deployment) == {"demo", "demo:pirate", "demo:json-answer"}, "the same adapter set comes back"
    assert "Arr" in ask(deployment, "demo:pirate")

    # A restarted node agent adopts the server it finds running instead of starting another.
    pid = deployment.pid
    agent.kill()
    agent.start()
    wait_for(
        lambda: Node.objects.get(name="cpu-node").started_at > deployment.ready_at,
        timeout=60,
        what="the agent to come back",
    )
    time.sleep(3)  # a few supervisor ticks
    deployment = Deployment.objects.get(pk=pk)
    assert (deployment.pid, deployment.status) == (pid, "ready"), "the server was adopted, not restarted"
    assert "Paris" in ask(deployment, "demo")

    # Changing the arguments and the node makes a new revision: the first node stops its
    # server, the second fetches the artifacts and starts it, with the same adapters.
    agents("cpu-node-2")
    changed = api.patch(
        f"/api/v1/deployments/{pk}/", {"node": "cpu-node-2", "extra_args": "--max-num-seqs 8"}, format="json"
    )
    assert changed.status_code == 202, changed.content
    assert (changed.json()["revision"], changed.json()["node"]) == (2, "cpu-node-2")
    wait_for(
        lambda: Deployment.objects.get(pk=pk).launched_revision == 2 and status() == "ready",
        timeout=300,
        every=1,
        what="revision 2 on cpu-node-2",
    )
    deployment = Deployment.objects.get(pk=pk)
    assert deployment.launched_node.name == "cpu-node-2" and not process_alive(pid), "the old server stopped"
    assert deployment.pid != pid and "--max-num-seqs 8" in deployment.command
    assert served(deployment) == {"demo", "demo:pirate", "demo:json-answer"}
    assert "Arr" in ask(deployment, "demo:pirate")
    messages = [e.message for e in deployment.events.all()]
    assert any("Stopped the server on cpu-node; it moves to cpu-node-2" in m for m in messages), messages
    assert not CacheLease.objects.filter(holder=deployment.lease_holder, cached__node__name="cpu-node").exists()

    port = deployment.port
    assert api.post(f"/api/v1/deployments/{pk}/stop/").status_code == 202
    wait_for(lambda: status() == "stopped", timeout=60, what="the stop")
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the port is free again"
    assert Deployment.objects.get(pk=pk).port is None
