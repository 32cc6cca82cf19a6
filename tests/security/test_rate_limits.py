"""Rate limits (config/ratelimit.py) against the real views and the real gateway: sign-in per address
and slower after failures, the REST API per address and per caller, the gateway per address and per
key. Each answers 429 with Retry-After. Counters live in the suite's Redis and outlive a test, so each
test counts under identities (addresses, users, keys) of its own, and uses long windows where a window
rolling over mid-test would reset the count."""

from __future__ import annotations

import uuid

import pytest
import requests
from django.test import Client
from rest_framework.test import APIClient

from accounts.services import api_token_create
from config import ratelimit
from inference.services import inference_key_create
from tests.support.agents import wait_for
from tests.support.factories import PASSWORD, UserFactory

DAY = 86400


def fresh_address() -> str:
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


@pytest.fixture(autouse=True)
def fresh_counters():
    """Starts each test with no counters. They live a day in Redis and are keyed by addresses and by token
    and key ids, which a new test database hands out again: an earlier run's requests on the same Redis
    server (another pass, another clone) must not count against this one's."""
    client = ratelimit.redis_client.client()
    for counter in client.scan_iter(f"{ratelimit.PREFIX}*"):
        client.delete(counter)


@pytest.fixture
def limits(settings):
    """Sets limits by name (requests per day, so a window never rolls over mid-test)."""

    def set_limits(**by_name: int) -> None:
        settings.PLUGBOARD_RATE_LIMITS = {
            **settings.PLUGBOARD_RATE_LIMITS,
            **{name.replace("_", "."): (count, DAY) for name, count in by_name.items()},
        }

    return set_limits


def sign_in(client: Client, address: str, username: str, password: str):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


# Sign-in ------------------------------------------------------------------------------------------


def test_repeated_failed_sign_ins_lock_the_user_out_for_a_growing_time(db, settings):
    settings.PLUGBOARD_SIGNIN_FREE_FAILURES = 2
    user = UserFactory(username=f"u-{uuid.uuid4().hex[:8]}")
    client, address = Client(), fresh_address()

    assert sign_in(client, address, user.username, "wrong").status_code == 200
    assert sign_in(client, address, user.username, "wrong").status_code == 200
    locked = sign_in(client, address, user.username, "wrong")
    assert locked.status_code == 429 and locked["Retry-After"] == "2"
    assert "Too many attempts to sign in. Wait 2 seconds" in locked.content.decode()
    # Even the right password waits: the lock is checked before the password.
    assert sign_in(client, address, user.username, PASSWORD).status_code == 429
    # From another address too: the username itself is locked.
    assert sign_in(Client(), fresh_address(), user.username, PASSWORD).status_code == 429

    wait_for(
        lambda: ratelimit.signin_locked(username=user.username, address=address) is None,
        timeout=5, every=0.1, what="the 2 s lock to end",
    )  # fmt: skip
    assert sign_in(client, address, user.username, "wrong again").status_code == 429  # next lock: longer
    assert ratelimit.signin_locked(username=user.username, address=address) in (3, 4)


def test_a_successful_sign_in_forgets_the_users_failures(db, settings):
    settings.PLUGBOARD_SIGNIN_FREE_FAILURES = 2
    user = UserFactory(username=f"u-{uuid.uuid4().hex[:8]}")

    for _ in range(2):
        assert sign_in(Client(), fresh_address(), user.username, "wrong").status_code == 200
    assert sign_in(Client(), fresh_address(), user.username, PASSWORD).status_code == 302
    # Two more failures are free again (each from a new address, so only the user's count matters).
    for _ in range(2):
        assert sign_in(Client(), fresh_address(), user.username, "wrong").status_code == 200


def test_sign_in_attempts_are_limited_per_address(db, limits):
    limits(signin=3)
    address = fresh_address()

    for n in range(3):
        assert sign_in(Client(), address, f"nobody-{n}", "x").status_code == 200
    refused = sign_in(Client(), address, "nobody-4", "x")

    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= DAY
    assert sign_in(Client(), fresh_address(), "nobody-5", "x").status_code == 200


def test_the_admins_own_sign_in_form_leads_to_the_rate_limited_one(db):
    response = Client().get("/admin/login/?next=/admin/")

    assert response.status_code == 302 and response["Location"] == "/login/?next=/admin/"


# REST API -----------------------------------------------------------------------------------------


def test_the_api_is_limited_per_address_counting_wrong_tokens_too(db, limits):
    limits(api_address=3)
    address = fresh_address()
    api = APIClient(REMOTE_ADDR=address)
    api.credentials(HTTP_AUTHORIZATION="Bearer pbt_guess")

    assert [api.get("/api/v1/workspaces/").status_code for _ in range(3)] == [401, 401, 401]
    refused = api.get("/api/v1/workspaces/")

    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= DAY
    assert "Too many requests from this address" in refused.json()["detail"]
    assert APIClient(REMOTE_ADDR=fresh_address()).get("/api/v1/workspaces/").status_code == 401


def test_the_api_is_limited_per_token(cast, limits):
    limits(api_caller=2)
    _, busy = api_token_create(user=cast.member, name="busy")
    _, other = api_token_create(user=cast.member, name="other")

    def get(raw: str):
        api = APIClient(REMOTE_ADDR=fresh_address())
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return api.get("/api/v1/workspaces/")

    assert [get(busy).status_code for _ in range(2)] == [200, 200]
    refused = get(busy)

    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= DAY
    assert "throttled" in refused.json()["detail"]
    assert get(other).status_code == 200


# Gateway ------------------------------------------------------------------------------------------

GATEWAY_PER_KEY, GATEWAY_PER_ADDRESS = 3, 40


@pytest.fixture(scope="module")
def limited_console(django_db_setup, django_db_blocker, tmp_path_factory):
    """A console whose gateway takes 3 requests a day per key and 40 per address."""
    from tests.support.web import UvicornServer, console_env

    with django_db_blocker.unblock():
        env = console_env(
            PLUGBOARD_RATE_LIMIT_GATEWAY_PER_KEY=f"{GATEWAY_PER_KEY}/{DAY}",
            PLUGBOARD_RATE_LIMIT_GATEWAY_PER_ADDRESS=f"{GATEWAY_PER_ADDRESS}/{DAY}",
        )
    server = UvicornServer(
        "config.asgi:application", log_path=tmp_path_factory.mktemp("console") / "web.log", env=env
    ).start()
    yield server
    server.stop()


def gateway_models(console, key: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.get(console.url + "/v1/models", headers=headers, timeout=10)


@pytest.mark.django_db(transaction=True)
def test_the_gateway_is_limited_per_key_then_per_address(limited_console, cast):
    _, busy = inference_key_create(workspace=cast.team, name="busy")
    _, other = inference_key_create(workspace=cast.team, name="other")
    assert [gateway_models(limited_console, busy).status_code for _ in range(GATEWAY_PER_KEY)] == [200] * 3
    refused = gateway_models(limited_console, busy)
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= DAY
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "Too many requests with this key" in error["message"]
    assert gateway_models(limited_console, other).status_code == 200

    # Requests without a valid key count against the address: guessing keys is limited too.
    answers = [gateway_models(limited_console, "pbi_guess").status_code for _ in range(GATEWAY_PER_ADDRESS)]
    assert answers[0] == 401 and answers[-1] == 429
    refused = gateway_models(limited_console, other)
    assert refused.status_code == 429 and "from this address" in refused.json()["error"]["message"]


def test_limits_that_cannot_count_let_requests_through_rather_than_fail_them(cast, limits, monkeypatch):
    """With Redis gone the API still answers (the limit is not counted, and the log says so), never 500."""
    import redis

    from config import redis_client
    from tests.support.s3_server import free_port

    limits(api_address=1, api_caller=1)
    monkeypatch.setattr(redis_client, "_client", redis.Redis(port=free_port(), socket_connect_timeout=1))
    api = APIClient(REMOTE_ADDR=fresh_address())
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_create(user=cast.member, name='t')[1]}")

    assert [api.get("/api/v1/workspaces/").status_code for _ in range(3)] == [200, 200, 200]
    assert ratelimit.hit(ratelimit.limit("api.address"), "10.0.0.1") is None
