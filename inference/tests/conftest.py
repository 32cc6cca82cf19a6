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


def demo_deployment(workspace, name: str, *, adapters: dict[str, str] | None = None):
    """A deployment of the demo model in `workspace` (on a node already online), with `adapters`
    ({demo adapter: served name}) attached; pirate, if attached, is marked loaded."""
    from conftest import DEMO_STORE
    from deployments import services as deployment_services
    from deployments.models import DeploymentAdapter
    from registry.demo import DEMO_BASE, demo_register

    demo = {a.name: a for a in demo_register(workspace=workspace, store=DEMO_STORE)}
    deployment = deployment_services.deployment_create(
        workspace=workspace, name=name, base=demo[DEMO_BASE], settings={"kv_cache_bytes": 1 << 30},
        adapters=[(demo[adapter], served) for adapter, served in (adapters or {}).items()],
    )  # fmt: skip
    DeploymentAdapter.objects.filter(deployment=deployment, adapter=demo["pirate"]).update(state="loaded")
    return deployment


def serve_from(deployment, upstream: UvicornServer, *, status: str = "ready") -> None:
    """Makes `upstream` the server of `deployment`, as the supervisor records a started server."""
    from deployments.models import Deployment

    Deployment.objects.filter(pk=deployment.pk).update(
        status=status, port=upstream.port, launched_node=deployment.node, launched_revision=deployment.revision,
        encrypted_api_key=seal({"api_key": UPSTREAM_KEY}), ready_at=timezone.now(),
    )  # fmt: skip
    changes.announce()
