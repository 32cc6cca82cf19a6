"""The gateway's fixtures: a console that gives up on servers and clients quickly. The console's web
process and the small OpenAI-compatible upstream are the `console` and `upstream` fixtures of the root
conftest.py."""

from __future__ import annotations

import pytest
import requests

from accounts.services import api_token_create
from config import changes
from tests.support.agents import wait_for
from tests.support.web import UvicornServer, console_env


@pytest.fixture(scope="module")
def impatient_console(django_db_setup, django_db_blocker, tmp_path_factory):
    """A console whose gateway gives up on a model server after 2 s of silence, and on a client that has not
    sent its whole request body after 2 s."""
    with django_db_blocker.unblock():
        env = console_env(PLUGBOARD_GATEWAY_READ_TIMEOUT="2", PLUGBOARD_GATEWAY_BODY_TIMEOUT="2")
    server = UvicornServer(
        "config.asgi:application", log_path=tmp_path_factory.mktemp("console") / "web.log", env=env
    ).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_routes(transactional_db, console, cast):
    """Rows of earlier tests are gone: make every gateway process drop what it holds of them. Afterwards,
    wait until the console has written the usage of this test's requests: its batch insert and the
    test database's flush, run at the same time, deadlock on PostgreSQL."""
    changes.announce()
    _, token = api_token_create(user=cast.admin, name="usage backlog")
    yield
    wait_for(
        lambda: "plugboard_gateway_usage_backlog 0\n"
        in requests.get(console.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text,
        timeout=30, what="the console to write the usage it holds",
    )  # fmt: skip
