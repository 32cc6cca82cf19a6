"""Fixtures shared by every app's tests: the embedded or real Redis, real
S3 and hub servers on loopback, a Celery worker, and the permission cast."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis
from django.conf import settings

from config import embedded_redis
from tests.support.hub_server import HubServer, olah_available
from tests.support.s3_server import S3Server

DEMO_STORE = Path(settings.VAR_DIR) / "demo-store"


@pytest.fixture(scope="session", autouse=True)
def redis_server():
    """The broker and cache the suite uses: REDIS_URL's server, or the embedded one, which the
    suite stops again if it started it (a test run leaves nothing running)."""
    started = embedded_redis.ensure_running(settings.REDIS_URL)
    redis.Redis.from_url(settings.REDIS_URL).ping()
    yield settings.REDIS_URL
    if started:
        embedded_redis.stop(settings.REDIS_URL)


@pytest.fixture(autouse=True)
def _test_settings(settings, tmp_path):
    settings.PLUGBOARD_LOCAL_ROOTS = [tmp_path, DEMO_STORE]
    # Hashing a password properly takes a third of a second; the cast has four.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="session")
def hub_server(hub_root):
    if not olah_available():
        pytest.fail("olah is not installed: run `make test`, which installs it into .venv-olah.")
    server = HubServer(hub_root).start()
    yield server
    server.stop()


@pytest.fixture
def celery_worker_thread(transactional_db):
    """A real Celery worker, in a thread, consuming the control queue from Redis."""
    from celery.contrib.testing.worker import start_worker

    from config.celery import app

    app.control.purge()  # messages left by an earlier run would point at rows that no longer exist
    with start_worker(app, queues=["control"], pool="solo", perform_ping_check=False, shutdown_timeout=30) as worker:
        yield worker


@pytest.fixture
def cast(db):
    """An admin (owner of the team's workspace), a member (editor), a viewer, and an outsider with a workspace of their own."""
    from accounts.services import membership_set, workspace_create
    from tests.support.factories import UserFactory

    admin = UserFactory(username="admin", is_staff=True, is_superuser=True)
    member = UserFactory(username="member")
    viewer = UserFactory(username="viewer")
    outsider = UserFactory(username="outsider")
    team = workspace_create(name="Team", owner=admin)
    membership_set(workspace=team, user=member, role="editor")
    membership_set(workspace=team, user=viewer, role="viewer")
    other = workspace_create(name="Elsewhere", owner=outsider)

    class Cast:
        pass

    c = Cast()
    c.admin, c.member, c.viewer, c.outsider, c.team, c.other = admin, member, viewer, outsider, team, other
    return c


@pytest.fixture
def no_stray_servers():
    """Kills, after the test, every model server a deployment row still names: a failed real-vLLM test
    must not leave a server holding memory and a port for the next."""
    yield
    from deployments.models import Deployment

    for pid in Deployment.objects.exclude(pid=None).values_list("pid", flat=True):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def agents(tmp_path, settings):
    """Starts real node agents (each its own process, as on separate hosts) and waits until they report."""
    from cluster.models import Node
    from tests.support.agents import NodeAgent, wait_for

    settings.PLUGBOARD_NODE_HEARTBEAT_SECONDS = 1  # as the agents are told
    started = []

    def start(name: str, **kwargs) -> NodeAgent:
        agent = NodeAgent(
            name, cache_dir=tmp_path / f"cache-{name}", address=kwargs.pop("address", "127.0.0.1"), **kwargs
        )
        started.append(agent.start())
        wait_for(
            lambda: Node.objects.filter(name=name, last_seen_at__isnull=False).exists(),
            timeout=60,
            what=f"{name} to report",
        )
        return agent

    yield start
    for agent in started:
        agent.kill()


@pytest.fixture(scope="session")
def console(django_db_setup, django_db_blocker, tmp_path_factory):
    """The console's web process (uvicorn, as `make run` starts it) on the test database, for the whole session.
    Its gateway takes request bodies up to 64 KiB; its pages wait 5 s for a whole body."""
    from tests.support.web import UvicornServer, console_env

    with django_db_blocker.unblock():
        env = console_env(PLUGBOARD_GATEWAY_MAX_BODY_BYTES=str(64 * 1024), PLUGBOARD_BODY_TIMEOUT="5")
    server = UvicornServer(
        "config.asgi:application", log_path=tmp_path_factory.mktemp("console") / "web.log", env=env
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    """A small OpenAI-compatible server on loopback for the whole session (tests/support/openai_upstream.py),
    which tests/support/deployments.py makes a deployment's server; its /stats counts what reached it."""
    from tests.support.deployments import UPSTREAM_KEY
    from tests.support.web import UvicornServer

    server = UvicornServer(
        "tests.support.openai_upstream:app",
        log_path=tmp_path_factory.mktemp("upstream") / "upstream.log",
        env={"UPSTREAM_API_KEY": UPSTREAM_KEY},
    ).start()
    yield server
    server.stop()
