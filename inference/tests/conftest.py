"""The gateway's fixtures: a small OpenAI-compatible upstream, a real server
on loopback for the whole session, and a deployment whose server it is. The
console's web process is the `console` fixture of the root conftest.py."""

from __future__ import annotations

import pytest
from django.utils import timezone

from config import changes
from registry.vault import seal
from tests.support.web import UvicornServer, console_env

UPSTREAM_KEY = "upstream-test-key"


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    server = UvicornServer(
        "tests.support.openai_upstream:app",
        log_path=tmp_path_factory.mktemp("upstream") / "upstream.log",
        env={"UPSTREAM_API_KEY": UPSTREAM_KEY},
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def impatient_console(django_db_setup, django_db_blocker, tmp_path_factory):
    """A console whose gateway gives up on a model server after 2 s of silence."""
    with django_db_blocker.unblock():
        env = console_env(PLUGBOARD_GATEWAY_READ_TIMEOUT="2")
    server = UvicornServer(
        "config.asgi:application", log_path=tmp_path_factory.mktemp("console") / "web.log", env=env
    ).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_routes(transactional_db):
    """Rows of earlier tests are gone: make every gateway process drop what it holds of them."""
    changes.announce()


def serve_from(deployment, upstream: UvicornServer, *, status: str = "ready") -> None:
    """Makes `upstream` the server of `deployment`, as the supervisor records a started server."""
    from deployments.models import Deployment

    Deployment.objects.filter(pk=deployment.pk).update(
        status=status, port=upstream.port, launched_node=deployment.node, launched_revision=deployment.revision,
        encrypted_api_key=seal({"api_key": UPSTREAM_KEY}), ready_at=timezone.now(),
    )  # fmt: skip
    changes.announce()
