"""A secrets sweep: after a whole scenario on real components (connections with secrets, a deployment
with a secret environment value on a real node agent and real vLLM, the gateway with a key, a failed
connection test and a server that crashes and is restarted), none of the secrets appears in any page,
API response, event, database row, log file, log tail, Celery message (everything any client sent to
Redis) or `ps` output.

The sweep itself is checked first: each place it searches is shown to find a secret put there on
purpose, so a sweep that cannot see never passes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import openai
import pytest
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from accounts.services import api_token_create
from conftest import DEMO_STORE
from deployments.models import Deployment, DeploymentEvent
from registry.demo import DEMO_BASE, demo_register
from tests.support.agents import wait_for
from tests.support.s3_server import SECRET_KEY as S3_SECRET
from tests.support.sweep import RedisMonitor, command_lines, database_text, files_holding, get_urls

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.demo]

ENV_NAME, ENV_SECRET = "WANDB_API_KEY", "wandb-sweep-secret-7f3a9c2e"
HUB_TOKEN = "hf_SweepHubTokenNeverShown9d8e7f"
WRONG_SECRET = "s3-secret-of-a-failing-connection-31337"


def test_the_sweep_finds_what_is_put_where_it_looks(cast, tmp_path):
    marker = "sweep-self-check-5b1e"
    with RedisMonitor(settings.REDIS_URL) as monitor:
        from config.celery import app

        app.send_task("inference.tasks.usage_rollup", args=[marker], queue="sweep-self-check")
        wait_for(lambda: any(b"LPUSH" in c for c in monitor.commands), timeout=5, what="the message to be seen")
    app.connection().default_channel.client.delete("sweep-self-check")
    assert marker.encode() in monitor.text()  # inside Celery's base64 body

    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "file.log").write_bytes(b"x" * 5_000_000 + marker.encode())
    assert files_holding([tmp_path], [marker], chunk=1024 * 1024) == [(tmp_path / "deep" / "er" / "file.log", marker)]

    cast.team.name = marker
    cast.team.save()
    assert marker in database_text()
    assert any("pytest" in line for line in command_lines().values())
    assert "/api/v1/connections/" in get_urls(ints={1}, strings=set())


def test_no_secret_leaks_anywhere_after_a_full_scenario(
    cast, agents, console, s3_server, hub_server, settings, tmp_path, no_stray_servers
):
    settings.PLUGBOARD_ALLOWED_ENV = [ENV_NAME]  # an administrator lets teams give their servers this key
    personal_token = api_token_create(user=cast.admin, name="sweep")[1]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {personal_token}")

    with RedisMonitor(settings.REDIS_URL) as monitor:
        agent = agents("cpu-node", env={"PLUGBOARD_ALLOWED_ENV": ENV_NAME})

        def connect(**fields) -> dict:
            response = api.post("/api/v1/connections/", {"workspace": cast.team.slug, **fields}, format="json")
            assert response.status_code == 201, response.content
            api.post(f"/api/v1/connections/{response.json()['id']}/test/")
            return response.json()

        s3 = {"kind": "s3", "endpoint_url": s3_server.url, "access_key_id": s3_server.reader[0]}
        good = connect(name="store", bucket="models", secret_access_key=S3_SECRET, **s3)
        bad = connect(name="wrong", bucket="no-such-bucket", secret_access_key=WRONG_SECRET, **s3)
        hub = connect(name="hub", kind="hf", endpoint_url=hub_server.url, token=HUB_TOKEN)
        assert api.get(f"/api/v1/connections/{bad['id']}/").json()["last_check_ok"] is False

        base = {a.name: a for a in demo_register(workspace=cast.team, store=DEMO_STORE)}[DEMO_BASE]
        created = api.post(
            "/api/v1/deployments/",
            {"workspace": cast.team.slug, "name": "demo", "base": base.pk, "node": "cpu-node",
             "settings": {"kv_cache_bytes": 1 << 30}, "extra_env": f"{ENV_NAME}={ENV_SECRET}"},
            format="json",
        )  # fmt: skip
        assert created.status_code == 202, created.content
        pk = created.json()["id"]
        ready = lambda: Deployment.objects.get(pk=pk).status == "ready"  # noqa: E731
        wait_for(ready, timeout=300, every=1, what="the server to be ready")
        deployment = Deployment.objects.get(pk=pk)
        environ = Path(f"/proc/{deployment.pid}/environ").read_bytes().decode()
        assert f"{ENV_NAME}={ENV_SECRET}" in environ, "the server got its secret: the sweep is not vacuous"

        gateway_key = api.post(
            "/api/v1/inference-keys/", {"workspace": cast.team.slug, "name": "app"}, format="json"
        ).json()["key"]
        answer = openai.OpenAI(base_url=f"{console.url}/v1", api_key=gateway_key).chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        assert answer.choices

        # A failure that logs: the server is killed, the supervisor records the crash with its log's tail
        # and starts it again.
        os.killpg(deployment.pid, signal.SIGKILL)
        wait_for(lambda: DeploymentEvent.objects.filter(deployment_id=pk, status="restarting").exists(), timeout=60)
        wait_for(ready, timeout=300, every=1, what="the server to be ready again")
        deployment = Deployment.objects.get(pk=pk)
        secrets = {
            "S3 secret": S3_SECRET, "wrong S3 secret": WRONG_SECRET, "hub token": HUB_TOKEN,
            "environment value": ENV_SECRET, "server key": deployment.api_key, "gateway key": gateway_key,
            "personal token": personal_token,
        }  # fmt: skip

        leaks = []
        for pid, line in command_lines().items():
            leaks += [f"ps of pid {pid}: {what}" for what, s in secrets.items() if s in line]

        # Every page and endpoint, as each member of the workspace (what the creating responses above
        # returned once, on purpose, is not swept: the gateway key is shown to its creator once).
        ids = set(Deployment.objects.values_list("pk", flat=True)) | {good["id"], hub["id"], base.pk}
        ids |= {cast.team.pk, deployment.revision, 1}
        urls = get_urls(ints=ids, strings={"review", "server", "adapters", "demo"})
        for user in (cast.viewer, cast.member, cast.admin):
            page, client = Client(), APIClient()
            page.force_login(user)
            client.force_authenticate(user)
            for url in urls:
                response = (client if url.startswith("/api/") else page).get(url)
                if response.streaming:
                    response.close()
                    continue
                body = response.content.decode(errors="replace")
                leaks += [f"GET {url} as {user}: {what}" for what, s in secrets.items() if s in body]

        assert api.post(f"/api/v1/deployments/{pk}/stop/").status_code == 202
        wait_for(lambda: Deployment.objects.get(pk=pk).status == "stopped", timeout=120, what="the server to stop")
        agent.stop()

    text = database_text()
    leaks += [f"database: {what}" for what, s in secrets.items() if s in text]
    for path, secret in files_holding([settings.VAR_DIR, tmp_path, console.log_path.parent], list(secrets.values())):
        leaks.append(f"file {path}: {next(w for w, s in secrets.items() if s == secret)}")
    sent = monitor.text()
    leaks += [f"Redis (Celery messages): {what}" for what, s in secrets.items() if s.encode() in sent]
    assert not leaks, "secrets found:\n" + "\n".join(leaks)
