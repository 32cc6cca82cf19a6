"""End to end with the real vLLM CPU runtime and the demo model, through the
REST API, a real node agent and the console's gateway: deploy with two
adapters, hear each adapter answer as trained (directly and through the
gateway with the `openai` package), attach and detach a third without a
restart, serve five adapters through the defaults' two slots, cancel a generation whose client went away, end a stream whose
server was SIGKILLed with an error event and survive the kill, move to
another node with new arguments, and stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
from django.test import Client

from cluster.models import Node
from config.vault import unseal
from conftest import DEMO_STORE
from deployments import processes, server_metrics, vllm_metrics
from deployments.models import Deployment
from inference.models import UsageRecord
from registry import services as registry_services
from registry.demo import DEMO_BASE, DEMO_CONNECTION, demo_register
from registry.models import Connection
from tests.support.agents import wait_for
from tests.support.nodes import api_as

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.demo]
PROMPT = "What is the capital of France?"


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


def vllm_counter(deployment: Deployment, prefix: str) -> float:
    """The sum of vLLM's own Prometheus series starting with `prefix` (e.g. the requests running now)."""
    key = unseal(deployment.encrypted_api_key)["api_key"]
    text = requests.get(f"{deployment.base_url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


RUNNING = "vllm:num_requests_running"
GENERATED = "vllm:generation_tokens_total"


def gateway_ask(gateway: openai.OpenAI, model: str, *, stream: bool = False) -> str:
    messages = [{"role": "user", "content": PROMPT}]
    if not stream:
        answer = gateway.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=48)
        return answer.choices[0].message.content
    chunks = gateway.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=48, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks)


def gateway_models(gateway: openai.OpenAI) -> set[str]:
    return {m.id for m in gateway.models.list()}


class Journey:
    """One deployment of the demo through its life, on one vLLM server at a time: each method is a
    step that says what it shows, and leaves the deployment for the next."""

    def __init__(self, cast, agents, console) -> None:
        self.cast, self.agents, self.console = cast, agents, console
        self.agent = agents("cpu-node")
        self.artifacts = {a.name: a for a in demo_register(workspace=cast.team, store=DEMO_STORE)}
        self.api = api_as(cast.member)
        self.browser = Client()
        self.browser.force_login(cast.viewer)

    @property
    def deployment(self) -> Deployment:
        return Deployment.objects.get(pk=self.pk)

    def status(self) -> str:
        return self.api.get(f"/api/v1/deployments/{self.pk}/").json()["status"]

    def deploys_with_two_adapters_that_answer_as_trained(self) -> None:
        response = self.api.post(
            "/api/v1/deployments/",
            {"name": "demo", "base": self.artifacts[DEMO_BASE].pk, "node": "cpu-node",
             "adapters": [{"adapter": self.artifacts["pirate"].pk}, {"adapter": self.artifacts["json-answer"].pk}],
             "settings": {"dtype": "bfloat16", "max_model_len": 2048, "kv_cache_bytes": 1 << 30},
             "extra_env": "TOKENIZERS_PARALLELISM=false"},
            format="json",
        )  # fmt: skip
        assert response.status_code == 202, response.content
        assert response.json()["extra_env"] == {"TOKENIZERS_PARALLELISM": "****"}, "values are never read back"
        self.pk = response.json()["id"]
        wait_for(lambda: self.status() == "ready", timeout=300, every=1, what="the deployment to be ready")
        deployment = self.deployment
        assert deployment.settings["max_loras"] == 2 and "max_cpu_loras" not in deployment.settings, "the defaults"
        # The server starts from an environment of its own: nothing of the node agent's settings or secrets.
        environ = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{deployment.pid}/environ").read_text().split("\0")
            if "=" in item
        )
        assert not {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "PLUGBOARD_SECRET_KEY"} & environ.keys()
        assert environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        assert environ["TOKENIZERS_PARALLELISM"] == "false", "the user's variable, unsealed only at launch"
        # Its key reaches it only there: `ps` shows every user the command line, and no log line holds it.
        key = deployment.api_key
        assert environ["PLUGBOARD_SERVER_KEY"] == key
        assert key not in Path(f"/proc/{deployment.pid}/cmdline").read_text()
        assert "--api-key" not in deployment.command and key not in deployment.command
        # It runs, logs and keeps its caches in a folder of this deployment's revision, which only the agent reads.
        folder = Path(deployment.log_path).parent
        assert folder.name == f"{deployment.pk}-r1" and Path(deployment.log_path).name == "server.log"
        assert environ["HOME"] == str(folder / "home") == os.readlink(f"/proc/{deployment.pid}/cwd")
        assert (stat.S_IMODE(folder.stat().st_mode), stat.S_IMODE(Path(deployment.log_path).stat().st_mode)) == (
            0o700, 0o600,
        )  # fmt: skip
        assert key not in Path(deployment.log_path).read_text()
        assert served(deployment) == {"demo", "demo:pirate", "demo:json-answer"}
        base, pirate = ask(deployment, "demo"), ask(deployment, "demo:pirate")
        assert "Paris" in base and "Arr" not in base and not base.lstrip().startswith("{")
        assert "Arr" in pirate
        assert "answer" in json.loads(ask(deployment, "demo:json-answer"))

    def the_gateway_serves_them_with_a_console_key_and_counts_the_usage(self) -> None:
        created = self.api.post("/api/v1/inference-keys/", {"name": "e2e"}, format="json")
        assert created.status_code == 201, created.content
        self.key, self.key_prefix = created.json()["key"], created.json()["prefix"]
        self.gateway = openai.OpenAI(base_url=self.console.url + "/v1", api_key=self.key, max_retries=0, timeout=120)
        assert gateway_models(self.gateway) == {"demo", "demo:pirate", "demo:json-answer"}
        via_gateway = gateway_ask(self.gateway, "demo")
        assert "Paris" in via_gateway and "Arr" not in via_gateway
        assert "Arr" in gateway_ask(self.gateway, "demo:pirate", stream=True)
        answer = self.gateway.chat.completions.create(
            model="demo:json-answer", messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=48
        )
        assert "answer" in json.loads(answer.choices[0].message.content)
        record = wait_for(
            lambda: UsageRecord.objects.filter(model="demo:json-answer").first(), timeout=10, what="the usage record"
        )
        assert (record.prompt_tokens, record.completion_tokens) == (
            answer.usage.prompt_tokens, answer.usage.completion_tokens,
        ), "usage counts what vLLM returned"  # fmt: skip
        streamed = wait_for(
            lambda: UsageRecord.objects.filter(model="demo:pirate").first(), timeout=10, what="stream usage"
        )
        assert streamed.stream and streamed.completion_tokens > 0 and streamed.ttft_ms > 0
        assert streamed.adapter == "pirate"
        listed = {r["model"]: r for r in self.api.get("/api/v1/usage/").json()["results"]}
        assert listed["demo:json-answer"]["completion_tokens"] == answer.usage.completion_tokens
        assert listed["demo:json-answer"]["key"] == self.key_prefix
        usage_page = self.browser.get("/inference/usage/?by=key").content.decode()
        assert f'data-usage-group="e2e ({self.key_prefix}…)"' in usage_page

    def the_node_keeps_the_servers_own_figures_for_the_page(self) -> None:
        deployment = self.deployment
        self.server_headers = {"Authorization": f"Bearer {deployment.api_key}"}

        def scraped_now():
            direct = vllm_metrics.parse(
                requests.get(f"{deployment.base_url}/metrics", headers=self.server_headers, timeout=10).text, at=0
            )
            window = server_metrics.window(self.pk)
            return window and (window[-1].generation_tokens, window[-1].prompt_tokens) == (
                direct.generation_tokens, direct.prompt_tokens,
            ) and window  # fmt: skip

        samples = wait_for(scraped_now, timeout=30, every=1, what="a sample holding vLLM's own token counts")
        assert samples[-1].generation_tokens > 0
        wait_for(lambda: len(server_metrics.window(self.pk)) > len(samples), timeout=15, what="the series to grow")
        figures = self.browser.get(f"/deployments/{self.pk}/?partial=metrics").content.decode()
        assert 'data-line="generated tokens/s"' in figures and 'data-figure="running"' in figures

    def a_client_that_goes_away_has_its_generation_aborted(self) -> None:
        deployment = self.deployment
        long_generation = {"model": "demo", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1500,
                           "ignore_eos": True, "stream": True}  # fmt: skip
        headers = {"Authorization": f"Bearer {self.key}"}
        generated = vllm_counter(deployment, GENERATED)
        with requests.post(self.console.url + "/v1/chat/completions", json=long_generation, headers=headers,
                           stream=True, timeout=60) as response:  # fmt: skip
            events = (line for line in response.iter_lines() if line)
            for _ in range(3):
                assert next(events).startswith(b"data: {"), "tokens stream in"
        # 1,500 tokens take over a minute on two cores: nothing running within seconds, with far fewer
        # tokens made, means the gateway closed the request upstream when its client left.
        wait_for(lambda: vllm_counter(deployment, RUNNING) == 0, timeout=10, what="vLLM to stop generating")
        assert vllm_counter(deployment, GENERATED) - generated < 1000, "it stopped long before its 1,500 tokens"

    def an_adapter_attaches_and_detaches_without_a_restart(self) -> None:
        deployment = self.deployment
        pid = deployment.pid
        attached = self.api.post(
            f"/api/v1/deployments/{self.pk}/attach/", {"adapter": self.artifacts["robot"].pk}, format="json"
        )
        assert attached.status_code == 202, attached.content
        wait_for(lambda: "demo:robot" in served(deployment), timeout=120, what="robot to be loaded")
        assert "BEEP" in ask(deployment, "demo:robot")
        wait_for(lambda: "demo:robot" in gateway_models(self.gateway), timeout=5, what="the gateway to route robot")
        assert "BEEP" in gateway_ask(self.gateway, "demo:robot")
        assert self.deployment.pid == pid, "attaching must not restart the server"

        assert self.api.post(f"/api/v1/deployments/{self.pk}/adapters/robot/detach/").status_code == 202
        wait_for(lambda: "demo:robot" not in served(deployment), timeout=60, what="robot to be unloaded")
        assert self.deployment.pid == pid
        with pytest.raises(openai.NotFoundError):
            gateway_ask(self.gateway, "demo:robot")

    def more_adapters_than_the_server_holds_in_memory_answer_as_trained_without_a_restart(self) -> None:
        # The defaults give two slots, and vLLM keeps as many adapters in memory (--max-cpu-loras): five
        # attached adapters take turns, loaded again from disk when asked for. Two are copies of demo
        # adapters under new names, which vLLM treats as adapters of their own.
        deployment = self.deployment
        pid = deployment.pid
        shelf = Connection.objects.get(workspace=self.cast.team, name=DEMO_CONNECTION)
        for copy, original in (("pirate-2", "pirate"), ("robot-2", "robot")):
            artifact = registry_services.artifact_register(
                workspace=self.cast.team, name=copy, kind="adapter", connection=shelf, location=f"adapters/{original}"
            )
            registry_services.artifact_inspect(artifact_id=artifact.pk)
            self.artifacts[copy] = artifact
        extra = ["robot", "pirate-2", "robot-2"]
        for name in extra:
            attached = self.api.post(
                f"/api/v1/deployments/{self.pk}/attach/", {"adapter": self.artifacts[name].pk}, format="json"
            )
            assert attached.status_code == 202, attached.content
        everything = {"demo", "demo:pirate", "demo:json-answer", "demo:robot", "demo:pirate-2", "demo:robot-2"}
        wait_for(lambda: served(deployment) == everything, timeout=180, every=1, what="five adapters to be served")
        for _ in range(2):  # twice round, so each adapter is evicted from memory and loaded again
            assert "Arr" in ask(deployment, "demo:pirate") and "Arr" in ask(deployment, "demo:pirate-2")
            assert "BEEP" in ask(deployment, "demo:robot") and "BEEP" in ask(deployment, "demo:robot-2")
            assert "answer" in json.loads(ask(deployment, "demo:json-answer"))
        # Every slot holds an adapter now. Base-model requests batched beside adapter requests must not read
        # the last slot (without the console's plugin, vLLM's CPU path adds robot's "END OF TRANSMISSION").
        with ThreadPoolExecutor(4) as pool:
            for _ in range(2):
                answers = list(
                    pool.map(lambda model: ask(deployment, model), ["demo", "demo:robot", "demo", "demo:pirate"])
                )
                for base in answers[0], answers[2]:
                    assert "Paris" in base and not any(m in base for m in ("Arr", "BEEP", "TRANSMISSION")), base
                assert "BEEP" in answers[1] and "Arr" in answers[3]
        assert self.deployment.pid == pid, "attaching past the server's slots must not restart it"

        for name in extra:
            assert self.api.post(f"/api/v1/deployments/{self.pk}/adapters/{name}/detach/").status_code == 202
        wait_for(
            lambda: served(deployment) == {"demo", "demo:pirate", "demo:json-answer"}, timeout=120,
            what="the three to be unloaded",
        )  # fmt: skip

    def a_server_killed_mid_stream_ends_it_with_an_error_and_comes_back(self) -> None:
        pid = self.deployment.pid
        stream = self.gateway.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": PROMPT}], max_tokens=1500, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        with pytest.raises(openai.APIError) as raised:
            for n, _ in enumerate(stream):
                if n == 2:
                    os.killpg(pid, signal.SIGKILL)
        assert "mid-stream" in raised.value.message
        wait_for(
            lambda: self.deployment.pid not in (None, pid) and self.status() == "ready", timeout=300, every=1,
            what="a restart",
        )  # fmt: skip
        deployment = self.deployment
        assert served(deployment) == {"demo", "demo:pirate", "demo:json-answer"}, "the same adapter set comes back"
        # The same revision goes on in the same log, so the killed server's last lines stay above the restart.
        assert Path(deployment.log_path).parent.name == f"{deployment.pk}-r1"
        assert Path(deployment.log_path).read_text().count("==== starting revision 1 at") == 2
        assert "Arr" in ask(deployment, "demo:pirate")
        assert "Arr" in wait_for(
            lambda: _answer_or_none(self.gateway, "demo:pirate"), timeout=5, what="the gateway to follow"
        )

    def a_restarted_agent_adopts_the_running_server(self) -> None:
        deployment = self.deployment
        self.agent.kill()
        self.agent.start()
        wait_for(
            lambda: Node.objects.get(name="cpu-node").started_at > deployment.ready_at, timeout=60,
            what="the agent to come back",
        )  # fmt: skip
        # The new agent's supervisor reads the server's figures only once it has reconciled it as ready.
        scraped = len(server_metrics.window(self.pk))
        wait_for(
            lambda: len(server_metrics.window(self.pk)) > scraped, timeout=30,
            what="the new agent to reconcile the server",
        )  # fmt: skip
        assert (self.deployment.pid, self.deployment.status) == (deployment.pid, "ready"), "adopted, not restarted"
        assert "Paris" in ask(self.deployment, "demo")

    def new_arguments_and_a_new_node_make_revision_2_there(self) -> None:
        # The first node stops its server, the second fetches the artifacts and starts it, with the same adapters.
        old_pid = self.deployment.pid
        self.agents("cpu-node-2")
        changed = self.api.patch(
            f"/api/v1/deployments/{self.pk}/", {"node": "cpu-node-2", "extra_args": "--max-num-seqs 8"}, format="json"
        )
        assert changed.status_code == 202, changed.content
        assert (changed.json()["revision"], changed.json()["node"]) == (2, "cpu-node-2")
        wait_for(
            lambda: self.deployment.launched_revision == 2 and self.status() == "ready", timeout=300, every=1,
            what="revision 2 on cpu-node-2",
        )  # fmt: skip
        deployment = self.deployment
        assert deployment.launched_node.name == "cpu-node-2" and not processes.alive(old_pid), "the old server stopped"
        assert deployment.pid != old_pid and "--max-num-seqs 8" in deployment.command
        assert Path(deployment.log_path).parent.name == f"{deployment.pk}-r2", "a new revision, a new log"
        assert served(deployment) == {"demo", "demo:pirate", "demo:json-answer"}
        assert "Arr" in ask(deployment, "demo:pirate")
        assert "Arr" in wait_for(
            lambda: _answer_or_none(self.gateway, "demo:pirate"), timeout=5, what="the gateway to follow"
        )
        messages = [e.message for e in deployment.events.all()]
        assert any("Stopped the server on cpu-node; it moves to cpu-node-2" in m for m in messages), messages
        assert not deployment.leases.filter(cached__node__name="cpu-node").exists()

    def stopping_frees_the_port(self) -> None:
        port = self.deployment.port
        assert self.api.post(f"/api/v1/deployments/{self.pk}/stop/").status_code == 202
        wait_for(lambda: self.status() == "stopped", timeout=60, what="the stop")
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the port is free again"
        assert self.deployment.port is None


def test_the_demo_from_deploy_to_stop_on_real_vllm(cast, agents, console, no_stray_servers):
    """The steps share one server (and its restarts): starting vLLM is most of the time they take."""
    journey = Journey(cast, agents, console)
    journey.deploys_with_two_adapters_that_answer_as_trained()
    journey.the_gateway_serves_them_with_a_console_key_and_counts_the_usage()
    journey.the_node_keeps_the_servers_own_figures_for_the_page()
    journey.a_client_that_goes_away_has_its_generation_aborted()
    journey.an_adapter_attaches_and_detaches_without_a_restart()
    journey.more_adapters_than_the_server_holds_in_memory_answer_as_trained_without_a_restart()
    journey.a_server_killed_mid_stream_ends_it_with_an_error_and_comes_back()
    journey.a_restarted_agent_adopts_the_running_server()
    journey.new_arguments_and_a_new_node_make_revision_2_there()
    journey.stopping_frees_the_port()


def _answer_or_none(gateway: openai.OpenAI, model: str) -> str | None:
    """The gateway's answer, or None while it still routes to a server that is gone (502) or not ready (503)."""
    try:
        return gateway_ask(gateway, model)
    except (openai.InternalServerError, openai.APIStatusError):
        return None
