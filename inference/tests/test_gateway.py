"""The OpenAI-compatible gateway as a client meets it: the real `openai`
package and plain HTTP against the console's web process (uvicorn), in front
of a small OpenAI-compatible upstream. What vLLM itself answers through the
gateway is in deployments/tests/test_vllm_e2e.py."""

from __future__ import annotations

import json
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import openai
import pytest
import requests
from django.test import Client
from django.utils import timezone

from accounts.services import api_token_create
from config import changes
from deployments import services as deployment_services
from deployments.models import Deployment
from inference import services
from inference.models import UsageRecord
from tests.support.agents import wait_for
from tests.support.deployments import demo_deployment, serve_from
from tests.support.nodes import online_cpu_node
from tests.support.web import read_answer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.demo]
CHAT = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def served(cast, tmp_path, upstream, fresh_routes):
    """Deployment `fake` of the team (pirate loaded, json-answer still fetching) served by the upstream,
    and `elsewhere` of the outsider's workspace, served by it too."""
    online_cpu_node(tmp_path)
    fake = demo_deployment(cast.team, "fake", adapters={"pirate": "pirate", "json-answer": "json"})
    serve_from(fake, upstream)
    serve_from(demo_deployment(cast.other, "elsewhere"), upstream)
    return Deployment.objects.get(pk=fake.pk)


@pytest.fixture
def key(cast, served) -> str:
    return services.inference_key_create(workspace=cast.team, name="app")[1]


def client(console, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=console.url + "/v1", api_key=key, max_retries=0, timeout=30)


def post(console, key: str | None, body, path: str = "/v1/chat/completions", **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(console.url + path, data=data, headers=headers, timeout=30, **kwargs)


def assert_openai_error(response: requests.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"], error
    return error


def wait_for_status(send, status: int, *, timeout: float, what: str) -> requests.Response:
    """Sends with `send()` until the answer has `status`; returns that answer."""
    answers = []
    wait_for(
        lambda: answers.append(send()) or answers[-1].status_code == status, timeout=timeout, every=0.05, what=what
    )
    return answers[-1]


def usage_of(**filters) -> list[UsageRecord]:
    """The usage records matching `filters`, once the gateway has written them (it does so every second)."""
    return wait_for(lambda: list(UsageRecord.objects.filter(**filters)), timeout=10, what=f"usage {filters}")


# Models and chats ---------------------------------------------------------------------


def test_models_lists_what_the_key_may_use_and_what_is_loaded_now(console, key):
    models = {m.id: m for m in client(console, key).models.list()}
    assert set(models) == {"fake", "fake:pirate"}, "json is still fetching; elsewhere is another workspace's"
    assert models["fake"].owned_by == "team" and models["fake:pirate"].parent == "fake"
    assert client(console, key).models.retrieve("fake:pirate").id == "fake:pirate"


def test_the_openai_package_chats_with_the_base_and_an_adapter_streamed_and_not(console, key, upstream):
    api = client(console, key)
    answer = api.chat.completions.create(model="fake:pirate", messages=CHAT, max_tokens=5)
    assert answer.choices[0].message.content == "tok " * 5 and answer.usage.completion_tokens == 5

    chunks = list(api.chat.completions.create(model="fake", messages=CHAT, max_tokens=6, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok " * 6
    assert all(c.choices for c in chunks), "the usage event the gateway asked for does not reach the client"
    assert requests.get(upstream.url + "/stats").json()["last"]["stream_options"] == {"include_usage": True}

    chunks = list(
        api.chat.completions.create(
            model="fake", messages=CHAT, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage.completion_tokens == 4 and not chunks[-1].choices, "asked for, it is passed on"

    text = api.completions.create(model="fake:pirate", prompt="Once", max_tokens=3)
    assert text.choices[0].text == "tok " * 3

    records = usage_of(model__startswith="fake", status=200)
    wait_for(lambda: UsageRecord.objects.count() == 4, timeout=10, what="four usage records")
    by_tokens = {r.completion_tokens: r for r in UsageRecord.objects.all()}
    assert set(by_tokens) == {5, 6, 4, 3}, "tokens as the upstream counted them, streams included"
    assert by_tokens[6].stream and by_tokens[6].ttft_ms is not None and by_tokens[6].prompt_tokens == 7
    assert (by_tokens[5].adapter, by_tokens[6].adapter, by_tokens[5].deployment.name) == ("pirate", "", "fake")
    assert by_tokens[3].endpoint == "completions" and records[0].key.name == "app"


# Keys ----------------------------------------------------------------------------------


def test_a_request_without_a_valid_key_is_refused_with_401(console, served):
    assert_openai_error(post(console, None, {"model": "fake", "messages": CHAT}), 401, "missing_api_key")
    assert_openai_error(post(console, "pbi_nonsense", {"model": "fake", "messages": CHAT}), 401, "invalid_api_key")
    response = requests.get(console.url + "/v1/models", headers={"Authorization": "Basic abc"}, timeout=10)
    assert_openai_error(response, 401, "invalid_api_key")


def test_a_revoked_key_is_refused_within_a_second_and_says_so(console, cast, served):
    row, raw = services.inference_key_create(workspace=cast.team, name="to revoke")
    assert post(console, raw, {"model": "fake", "messages": CHAT}).status_code == 200  # cached by the gateway now
    services.inference_key_revoke(key=row)
    revoked_at = timezone.now()
    wait_for_status(
        lambda: post(console, raw, {"model": "fake", "messages": CHAT}),
        401,
        timeout=1,
        what="the revocation to reach the gateway",
    )
    assert timezone.now() - revoked_at < timedelta(seconds=1)
    assert_openai_error(post(console, raw, {"model": "fake", "messages": CHAT}), 401, "revoked_api_key")


def test_an_expired_key_is_refused_and_says_so(console, cast, served):
    row, raw = services.inference_key_create(
        workspace=cast.team, name="short", expires_at=timezone.now() + timedelta(seconds=1)
    )
    assert post(console, raw, {"model": "fake", "messages": CHAT}).status_code == 200
    wait_for(lambda: timezone.now() > row.expires_at, timeout=2, what="the expiry")
    assert_openai_error(post(console, raw, {"model": "fake", "messages": CHAT}), 401, "expired_api_key")


def test_a_key_out_of_scope_is_403_and_another_workspaces_model_is_404(console, cast, served):
    elsewhere = Deployment.objects.get(name="elsewhere")
    # A key of the team for one deployment only: a second deployment of the team is out of its scope.
    second = deployment_services.deployment_create(
        workspace=cast.team, name="second", base=served.base, settings={"kv_cache_bytes": 1 << 30}
    )
    _, scoped = services.inference_key_create(workspace=cast.team, name="scoped", deployments=[second])
    assert_openai_error(post(console, scoped, {"model": "fake", "messages": CHAT}), 403, "model_not_allowed")
    assert [m["id"] for m in requests.get(
        console.url + "/v1/models", headers={"Authorization": f"Bearer {scoped}"}, timeout=10
    ).json()["data"]] == [], "the key's one deployment is not ready, and fake is out of its scope"  # fmt: skip
    # Another workspace's deployment does not exist for the team's keys, even though it runs.
    _, team_key = services.inference_key_create(workspace=cast.team, name="all")
    assert_openai_error(post(console, team_key, {"model": elsewhere.name, "messages": CHAT}), 404, "model_not_found")
    _, other_key = services.inference_key_create(workspace=cast.other, name="theirs")
    assert post(console, other_key, {"model": elsewhere.name, "messages": CHAT}).status_code == 200
    assert_openai_error(post(console, other_key, {"model": "fake:pirate", "messages": CHAT}), 404, "model_not_found")


# Errors ----------------------------------------------------------------------------------


def test_bad_requests_get_400_413_404_and_405_in_openais_shape(console, key):
    assert_openai_error(post(console, key, b"{not json"), 400, "invalid_json")
    assert_openai_error(post(console, key, b"\xff\xfe"), 400, "invalid_json")
    assert_openai_error(post(console, key, [1, 2]), 400, "invalid_json")
    assert_openai_error(post(console, key, {"messages": CHAT}), 400, "invalid_type")
    assert_openai_error(post(console, key, {"model": "fake", "messages": "hi"}), 400, "invalid_type")
    assert_openai_error(post(console, key, {"model": "fake", "messages": CHAT, "stream": "yes"}), 400, "invalid_type")
    assert_openai_error(post(console, key, {"model": "fake", "messages": CHAT, "max_tokens": 1.5}), 400, "invalid_type")
    assert_openai_error(post(console, key, {"model": "fake", "prompt": 3}, "/v1/completions"), 400, "invalid_type")
    too_big = {"model": "fake", "messages": [{"role": "user", "content": "x" * 70_000}]}
    assert_openai_error(post(console, key, too_big), 413, "request_too_large")
    assert_openai_error(post(console, key, {"model": "nope", "messages": CHAT}), 404, "model_not_found")
    assert_openai_error(post(console, key, {}, "/v1/embeddings"), 404, "unknown_url")
    response = requests.get(console.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"})
    assert_openai_error(response, 405, "method_not_allowed")


def test_a_deployment_or_adapter_not_ready_is_503_with_retry_after(console, key, served):
    response = post(console, key, {"model": "fake:json", "messages": CHAT})
    assert_openai_error(response, 503, "model_not_ready")
    assert int(response.headers["Retry-After"]) > 0 and "not loaded yet" in response.json()["error"]["message"]

    deployment_services.deployment_mark_restarting(deployment=served, reason="Redeploying.")
    response = wait_for_status(
        lambda: post(console, key, {"model": "fake", "messages": CHAT}), 503, timeout=1,
        what="the restart to reach the gateway",
    )  # fmt: skip
    assert_openai_error(response, 503, "model_not_ready")
    assert int(response.headers["Retry-After"]) > 0 and "restarting" in response.json()["error"]["message"]


def test_an_unreachable_upstream_is_502_and_a_slow_one_504(console, impatient_console, key, served):
    response = post(impatient_console, key, {"model": "fake", "messages": CHAT, "x_behaviour": "slow"})
    assert_openai_error(response, 504, "upstream_timeout")
    # The server answers on another port now, where nothing listens (the discard port).
    Deployment.objects.filter(pk=served.pk).update(port=9)
    changes.announce()
    response = wait_for_status(
        lambda: post(console, key, {"model": "fake", "messages": CHAT}), 502, timeout=1,
        what="the new port to reach the gateway",
    )  # fmt: skip
    assert_openai_error(response, 502, "upstream_unreachable")
    usage_of(status=504)  # the impatient console has written what it holds before the test's data goes


def test_an_upstream_that_dies_mid_stream_ends_the_stream_with_an_error_event(console, key):
    stream = client(console, key).chat.completions.create(
        model="fake", messages=CHAT, max_tokens=20, stream=True, extra_body={"x_behaviour": "die"}
    )
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["tok "] * 3 and "mid-stream" in raised.value.message
    assert usage_of(status=502)[0].stream


def test_an_upstream_that_stalls_mid_stream_times_out_with_an_error_event(impatient_console, key):
    response = post(impatient_console, key, {"model": "fake", "messages": CHAT, "stream": True, "x_behaviour": "stall"})
    events = [e for e in response.text.split("\n\n") if e]
    assert len(events) == 4 and json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "upstream_timeout"
    usage_of(status=504)  # the impatient console has written what it holds before the test's data goes


def test_a_client_that_sends_its_body_too_slowly_gets_408_and_holds_nothing(impatient_console, key):
    host, port = urlsplit(impatient_console.url).hostname, urlsplit(impatient_console.url).port
    began = time.monotonic()
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: 200\r\n\r\n".encode()
            + b'{"model": "fake", '  # and nothing more: the rest of the 200 bytes never comes
        )
        status, body = read_answer(conn)
    took = time.monotonic() - began
    assert status == "HTTP/1.1 408 Request Timeout", (status, body[:300])
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert 1.5 < took < 6, f"answered after {took:.1f} s; the body timeout is 2 s"
    assert post(impatient_console, key, {"model": "fake", "messages": CHAT}).status_code == 200


def test_a_client_that_disconnects_cancels_the_upstream_request(console, key, upstream):
    before = requests.get(upstream.url + "/stats").json()["cancelled"]
    body = {"model": "fake", "messages": CHAT, "stream": True, "max_tokens": 200, "x_behaviour": "drip"}
    with post(console, key, body, stream=True) as response:
        lines = response.iter_lines()
        assert next(lines).startswith(b"data: ")
    # 200 tokens at 0.1 s would take 20 s; the upstream sees its client go within a moment.
    wait_for(
        lambda: requests.get(upstream.url + "/stats").json()["cancelled"] > before, timeout=5,
        what="the upstream stream to be cancelled",
    )  # fmt: skip
    assert usage_of(status=499)[0].model == "fake"


# Routing follows the deployment ----------------------------------------------------------------


def test_detaching_an_adapter_makes_it_404_within_a_second(console, key, served):
    assert post(console, key, {"model": "fake:pirate", "messages": CHAT}).status_code == 200
    deployment_services.adapter_detach(attached=served.adapters.get(served_name="pirate"))
    response = wait_for_status(
        lambda: post(console, key, {"model": "fake:pirate", "messages": CHAT}), 404, timeout=1,
        what="the detach to reach the gateway",
    )  # fmt: skip
    assert_openai_error(response, 404, "model_not_found")


# The playground's way in: a signed-in session -----------------------------------------------


def signed_in(user) -> dict[str, str]:
    """The cookies of a browser where `user` signed in, with a CSRF cookie as Django sets one."""
    browser = Client()
    browser.force_login(user)
    return {"sessionid": browser.cookies["sessionid"].value, "csrftoken": "k" * 32}


def test_a_signed_in_member_chats_without_a_key_and_the_usage_is_theirs(console, cast, served):
    cookies = signed_in(cast.viewer)
    body = json.dumps({"model": "fake:pirate", "messages": CHAT, "max_tokens": 2})
    response = requests.post(
        console.url + "/v1/chat/completions", data=body, cookies=cookies, headers={"X-CSRFToken": cookies["csrftoken"]}
    )
    assert response.status_code == 200, response.text
    record = usage_of(user=cast.viewer)[0]
    assert (record.key, record.model, record.completion_tokens, record.workspace) == (None, "fake:pirate", 2, cast.team)
    models = requests.get(console.url + "/v1/models", cookies=cookies, headers={"X-CSRFToken": cookies["csrftoken"]})
    assert {m["id"] for m in models.json()["data"]} == {"fake", "fake:pirate"}


def test_a_session_without_the_csrf_header_or_of_an_outsider_gets_nothing(console, cast, served):
    cookies = signed_in(cast.member)
    body = json.dumps({"model": "fake", "messages": CHAT})
    response = requests.post(console.url + "/v1/chat/completions", data=body, cookies=cookies)
    assert_openai_error(response, 403, "csrf_failed")
    response = requests.post(
        console.url + "/v1/chat/completions", data=body, cookies=cookies, headers={"X-CSRFToken": "another value"}
    )
    assert_openai_error(response, 403, "csrf_failed")
    outsider = signed_in(cast.outsider)
    response = requests.post(
        console.url + "/v1/chat/completions",
        data=body,
        cookies=outsider,
        headers={"X-CSRFToken": outsider["csrftoken"]},
    )
    assert_openai_error(response, 404, "model_not_found")
    gone = {"sessionid": "not-a-session", "csrftoken": "k" * 32}
    response = requests.post(
        console.url + "/v1/chat/completions", data=body, cookies=gone, headers={"X-CSRFToken": "k" * 32}
    )
    assert_openai_error(response, 401, "session_expired")


# The console's own /metrics ----------------------------------------------------------------


def test_metrics_count_requests_per_model_for_an_administrators_token_only(console, cast, key):
    post(console, key, {"model": "fake:pirate", "messages": CHAT, "max_tokens": 3})
    post(console, key, {"model": "invented-name", "messages": CHAT})
    _, admin_token = api_token_create(user=cast.admin, name="prometheus")
    _, member_token = api_token_create(user=cast.member, name="not an admin")
    assert_openai_error(requests.get(console.url + "/metrics"), 401, "missing_token")
    assert_openai_error(
        requests.get(console.url + "/metrics", headers={"Authorization": f"Bearer {key}"}), 401, "invalid_token"
    )
    response = requests.get(console.url + "/metrics", headers={"Authorization": f"Bearer {member_token}"})
    assert_openai_error(response, 403, "not_an_administrator")
    text = requests.get(console.url + "/metrics", headers={"Authorization": f"Bearer {admin_token}"}).text
    assert 'plugboard_gateway_requests_total{deployment="fake",model="fake:pirate",status="200"}' in text
    assert 'plugboard_gateway_tokens_total{deployment="fake",model="fake:pirate",kind="completion"}' in text
    assert 'plugboard_gateway_request_duration_seconds_count{deployment="fake",model="fake:pirate"}' in text
    assert "invented-name" not in text and 'model="",status="404"' in text, "unknown names do not become labels"
