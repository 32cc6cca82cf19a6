"""A model server answers only with its deployment's key, on every route: teams share nodes, and vLLM's
own --api-key guards only /v1. The real test starts the demo through a real node agent on real vLLM and
calls every route the server's own OpenAPI document lists, with every method, without a key and with
another deployment's key; then a hostile editor of another workspace tries to deploy servers that read
the running server's environment, model files or log through environment variables and file flags.
The guard's own logic (fail closed, websockets, the error shape) is tested
in-process too, where a server without a key is cheap to make."""

from __future__ import annotations

import asyncio
import re
import socket
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from django.core.management import CommandError, call_command
from django.db import transaction

from cluster.agent import internal_address
from conftest import DEMO_STORE
from deployments import vllm_args
from deployments.models import Deployment
from deployments.vllm_plugin.plugboard_vllm_auth import KEY_VARIABLE, ServerKeyMiddleware
from registry.demo import DEMO_BASE, demo_register
from tests.support.agents import wait_for
from tests.support.deployments import demo_deployment
from tests.support.nodes import api_as

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Served beside the routes the OpenAPI document lists: the document itself, its pages, the metrics
# app vLLM mounts, and a path nothing serves (a 404 would tell a caller what exists).
UNLISTED = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/metrics", "/no-such-route")
# Named by the issue: each must be among the routes called.
NAMED = ("/health", "/metrics", "/tokenize", "/detokenize", "/invocations", "/v1/load_lora_adapter",
         "/v1/unload_lora_adapter", "/openapi.json", "/docs", "/version", "/ping")  # fmt: skip


def refused(response: requests.Response) -> bool:
    return response.status_code == 401 and response.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")


def websocket_status(url: str, path: str, headers: dict[str, str]) -> str:
    """The status line a websocket handshake to `path` gets."""
    where = urlsplit(url)
    request = [f"GET {path} HTTP/1.1", f"Host: {where.netloc}", "Upgrade: websocket", "Connection: Upgrade",
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
               *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    with socket.create_connection((where.hostname, where.port), timeout=10) as s:
        s.sendall(("\r\n".join(request) + "\r\n\r\n").encode())
        return s.recv(4096).split(b"\r\n", 1)[0].decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.demo
def test_no_route_of_a_real_model_server_answers_without_its_deployments_key(cast, agents, no_stray_servers):
    agents("cpu-node")
    # Another workspace's deployment, stopped before any agent could see it: its key is a real one, not this server's.
    with transaction.atomic():
        other = demo_deployment(cast.other, "theirs")
        Deployment.objects.filter(pk=other.pk).update(desired="stopped", status="stopped")
    base = {a.name: a for a in demo_register(workspace=cast.team, store=DEMO_STORE)}[DEMO_BASE]
    created = api_as(cast.member).post(
        "/api/v1/deployments/",
        {"name": "demo", "base": base.pk, "node": "cpu-node", "settings": {"kv_cache_bytes": 1 << 30}},
        format="json",
    )
    assert created.status_code == 202, created.content
    pk = created.json()["id"]
    wait_for(
        lambda: Deployment.objects.get(pk=pk).status == "ready", timeout=300, every=1, what="the server to be ready"
    )
    d = Deployment.objects.get(pk=pk)
    url, key, other_key = d.base_url, d.api_key, other.api_key
    assert key and other_key and key != other_key
    callers = {"no key": {}, "another deployment's key": {"Authorization": f"Bearer {other_key}"}}

    # The server itself carries no key in what `ps` shows.
    assert key not in Path(f"/proc/{d.pid}/cmdline").read_text()

    # The server's own list of what it serves, which it gives only with the key.
    for headers in callers.values():
        assert refused(requests.get(url + "/openapi.json", headers=headers, timeout=10))
    document = requests.get(url + "/openapi.json", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert document.status_code == 200
    paths = document.json()["paths"]
    assert len(paths) > 20, sorted(paths)
    assert set(NAMED) <= set(paths) | set(UNLISTED), set(NAMED) - set(paths)

    answered = []
    calls = [(method, path) for path, item in paths.items() for method in item if method in METHODS]
    calls += [(method, path) for path in UNLISTED for method in ("get", "post")]
    for method, path in calls:
        concrete = re.sub(r"\{[^}]*\}", "x", path)
        for who, headers in callers.items():
            response = requests.request(method, url + concrete, headers=headers, timeout=30)
            if not refused(response):
                answered.append(f"{method.upper()} {path} with {who}: {response.status_code} {response.text[:100]}")
            elif method != "head":
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not answered, "routes that answered without the key:\n" + "\n".join(answered)
    assert len(calls) >= len(paths) + 2 * len(UNLISTED), "every listed route with at least one method"

    # Websockets too: the handshake is refused instead of switching protocols.
    for headers in callers.values():
        assert " 101 " not in websocket_status(url, "/v1/realtime", headers) + " "

    # With the key, the console's own calls answer.
    with_key = {"Authorization": f"Bearer {key}"}
    for path in ("/health", "/v1/models", "/metrics"):
        assert requests.get(url + path, headers=with_key, timeout=10).status_code == 200, path

    # Its log, tail and events hold no key, and only the agent can read the log and its folder.
    log_path = Path(d.log_path)
    assert key not in log_path.read_text()
    assert key not in Deployment.objects.get(pk=pk).log_tail
    assert not any(key in e.message for e in d.events.all())
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_path.parent.stat().st_mode) == 0o700

    # A hostile editor of another workspace, with A's server running on the same node, tries to make a
    # server of theirs read A's secrets, code or files through environment variables and file flags.
    hostile_deployments_are_refused(cast, a_server=d)


def hostile_deployments_are_refused(cast, *, a_server: Deployment) -> None:
    """Every attempt of workspace B's owner (cast.outsider) to deploy a server that reads workspace A's
    server's environment, model files or log, or loads code, is a 400 with a reason, and no deployment of
    B is made; A's own deployment answers B 404 whatever B asks of it."""
    theirs = {a.name: a for a in demo_register(workspace=cast.other, store=DEMO_STORE)}[DEMO_BASE]
    a_environ, a_model, a_log = f"/proc/{a_server.pid}/environ", Path(a_server.log_path).parent, a_server.log_path
    environments = [
        f"LD_PRELOAD={a_model}/x.so", "LD_LIBRARY_PATH=/tmp", "PYTHONPATH=/tmp", "PYTHONSTARTUP=/tmp/x.py",
        f"HF_HOME={a_model}", f"TRANSFORMERS_CACHE={a_model}", "VLLM_CONFIG_ROOT=/", "VLLM_PLUGINS=evil",
        f"NCCL_DEBUG_FILE={a_log}", "VLLM_LOGGING_CONFIG_PATH=/etc/passwd", "HOME=/", "PLUGBOARD_SERVER_KEY=guess",
        "HTTPS_PROXY=http://169.254.169.254", "SOME_UNLISTED_NAME=1",
    ]  # fmt: skip
    flags = [
        f"--chat-template {a_environ}", f"--chat-template=../../../../..{a_environ}", f"--chat-template {a_log}",
        f"--generation-config {a_model}", f"--tokenizer {a_model}", "--download-dir /tmp",
        "--allowed-local-media-path /", "--middleware evil.Middleware", "--trust-remote-code",
        f"--lora-modules stolen={a_model}", "--api-key x", f"--ssl-keyfile {a_environ}",
        "--tool-parser-plugin /tmp/evil.py", '--speculative-config {"model":"/"}', "--served-model-name demo",
        "--load-format pt", "--model /", "--enable-some-flag-nobody-listed",
    ]  # fmt: skip
    api = api_as(cast.outsider)
    attempts = [("extra_env", e, e.split("=")[0]) for e in environments]
    attempts += [("extra_args", f, f.split()[0].split("=")[0]) for f in flags]
    for field, value, named in attempts:
        response = api.post(
            "/api/v1/deployments/",
            {"workspace": cast.other.slug, "name": "hostile", "base": theirs.pk, "node": "cpu-node",
             "settings": {"kv_cache_bytes": 1 << 30}, field: value},
            format="json",
        )  # fmt: skip
        assert response.status_code == 400, (value, response.status_code, response.content[:300])
        assert named in response.content.decode(), (value, "refused for another reason:", response.content[:300])
    assert not Deployment.objects.filter(name="hostile").exists()
    for method, path in (("get", ""), ("patch", ""), ("get", "log/"), ("post", "stop/"), ("get", "revisions/")):
        response = getattr(api, method)(f"/api/v1/deployments/{a_server.pk}/{path}", {}, format="json")
        assert response.status_code == 404, (method, path, response.status_code)


# --- the guard in-process ------------------------------------------------------------------------------------------


def call(guard: ServerKeyMiddleware, scope: dict) -> tuple[list[dict], list[dict]]:
    """Runs one request through `guard`: (the messages it sent, the scopes that reached the app behind)."""
    sent, reached = [], []

    async def app(scope, receive, send):
        reached.append(scope)

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    guard.app = app
    asyncio.run(guard(scope, receive, send))
    return sent, reached


def http(path: str = "/health", **headers: str) -> dict:
    return {"type": "http", "method": "GET", "path": path,
            "headers": [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip


def test_only_the_bearer_of_the_key_reaches_the_server():
    guard = ServerKeyMiddleware(None, key="pbk_right")

    assert call(guard, http(authorization="Bearer pbk_right"))[1]
    assert call(guard, http(authorization="bearer  pbk_right "))[1], "the scheme is case-insensitive"
    for headers in ({}, {"authorization": "Bearer pbk_wrong"}, {"authorization": "Basic pbk_right"},
                    {"authorization": "pbk_right"}, {"x_api_key": "pbk_right"}, {"authorization": "Bearer "}):  # fmt: skip
        sent, reached = call(guard, http(**headers))
        assert not reached and sent[0]["status"] == 401, headers


def test_a_refusal_is_an_openai_error_that_says_what_to_send():
    sent, _ = call(ServerKeyMiddleware(None, key="pbk_right"), http("/metrics"))

    start, body = sent
    assert (b"www-authenticate", b'Bearer realm="model server"') in start["headers"]
    assert b'"code": "missing_api_key"' in body["body"] and b"Authorization: Bearer <key>" in body["body"]
    wrong, _ = call(ServerKeyMiddleware(None, key="pbk_right"), http(authorization="Bearer nope"))
    assert b'"code": "invalid_api_key"' in wrong[1]["body"] and b"nope" not in wrong[1]["body"]


def test_without_a_key_in_its_environment_the_server_refuses_everything_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    with caplog.at_level("ERROR", logger="vllm.plugboard_vllm_auth"):
        guard = ServerKeyMiddleware(None)
    assert f"{KEY_VARIABLE} is not set" in caplog.text

    for headers in ({}, {"authorization": "Bearer "}, {"authorization": "Bearer anything"}):
        sent, reached = call(guard, http(**headers))
        assert not reached and sent[0]["status"] == 503
        assert b"Restart the deployment" in sent[1]["body"]


def test_the_key_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, "pbk_from_env")
    guard = ServerKeyMiddleware(None)

    assert call(guard, http(authorization="Bearer pbk_from_env"))[1]
    assert not call(guard, http())[1]


def test_a_websocket_without_the_key_is_closed_before_it_opens_and_start_up_passes():
    guard = ServerKeyMiddleware(None, key="pbk_right")

    sent, reached = call(guard, {"type": "websocket", "path": "/v1/realtime", "headers": []})
    assert sent == [{"type": "websocket.close", "code": 1008}] and not reached
    assert call(guard, {"type": "websocket", "path": "/x", "headers": [(b"authorization", b"Bearer pbk_right")]})[1]
    assert call(guard, {"type": "lifespan"})[1], "vLLM's start-up and shutdown pass"


def test_no_deployment_may_set_the_variable_that_holds_the_key_even_when_an_administrator_allows_it():
    with pytest.raises(
        vllm_args.ArgumentError, match="PLUGBOARD_SERVER_KEY is refused: it holds the deployment's own key"
    ):
        vllm_args.parse_env("PLUGBOARD_SERVER_KEY=mine", allowed_env=["PLUGBOARD_SERVER_KEY"])


# --- where servers listen ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "[::]"])
def test_a_node_agent_refuses_a_wildcard_address_for_its_servers(address, tmp_path):
    with pytest.raises(CommandError, match="internal address"):
        call_command("node_agent", "--name", "n", "--address", address, "--cache-dir", str(tmp_path))


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "fd00::5", "gpu-1.internal"])
def test_an_internal_address_or_a_host_name_is_taken(address):
    assert internal_address(address) == address
