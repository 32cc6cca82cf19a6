"""Restarts of what the console stands on: the Redis server, the PostgreSQL server and the web process.

Design. These tests stop and start servers, so they never touch the machine's shared PostgreSQL and Redis
(CI and other engineers use them): the module starts a private PostgreSQL (initdb + pg_ctl) and a private
Redis (with an append-only file, as docker-compose.yml runs the broker) in temporary folders, once for the
module. The console then runs as in production, each part a process of its own on those two servers: the web
process (uvicorn), a control worker (`celery worker -Q control`) and a node agent (`manage.py node_agent`).
The test process itself points its default database connection at the private PostgreSQL for the module
(tests.support.servers.default_database), so that it sets up users and tokens with the ordinary factories and
services and reads back the rows the console's processes write. Everything the test asks the console to do
goes through its HTTP API, as a user's script would: the test process's own Celery app stays on the suite's
broker, so it never sends a message itself.

What counts as "done twice" is not taken from the console's own bookkeeping: triggers in the private database
record every status change of artifacts (inspections) and cache entries (fetches), and every claim of a fetch
(a new `started_at`), as the database saw them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone

from accounts.services import api_token_create, workspace_create
from cluster.models import CachedArtifact, Node
from deployments import services as deployment_services
from deployments.models import Deployment
from inference.services import inference_key_create
from registry.models import Artifact
from tests.support import artifacts as build
from tests.support.agents import NodeAgent, wait_for
from tests.support.deployments import UPSTREAM_KEY, serve_from
from tests.support.factories import UserFactory
from tests.support.nodes import online_cpu_node
from tests.support.servers import PostgresServer, RedisServer, default_database
from tests.support.slow_store import SlowStore
from tests.support.web import UvicornServer, console_env
from tests.support.workers import ControlWorker

NODE = "restarts-1"
BUCKET = "restarts"
# The configured database connect timeout of the console's processes (PLUGBOARD_DB_CONNECT_TIMEOUT).
DB_CONNECT_TIMEOUT = 2
# A page or API call while Redis is down answers within this (the rate limiter lets it through at once).
REDIS_DOWN_ANSWER_SECONDS = 1.0

CLAIM_LOG = """
CREATE TABLE fault_log (
    id bigserial PRIMARY KEY, tbl text NOT NULL, row_id bigint NOT NULL,
    old_status text, new_status text NOT NULL, claim boolean NOT NULL, at timestamptz DEFAULT clock_timestamp()
);
CREATE FUNCTION fault_log_artifact() RETURNS trigger AS $$ BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO fault_log (tbl, row_id, old_status, new_status, claim)
        VALUES ('artifact', NEW.id, OLD.status, NEW.status, NEW.status = 'inspecting');
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER fault_log_artifact AFTER UPDATE ON registry_artifact
    FOR EACH ROW EXECUTE FUNCTION fault_log_artifact();
CREATE FUNCTION fault_log_cached() RETURNS trigger AS $$ BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status OR NEW.started_at IS DISTINCT FROM OLD.started_at THEN
        INSERT INTO fault_log (tbl, row_id, old_status, new_status, claim)
        VALUES ('cached', NEW.id, OLD.status, NEW.status,
                NEW.started_at IS DISTINCT FROM OLD.started_at AND NEW.started_at IS NOT NULL);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER fault_log_cached AFTER UPDATE ON cluster_cachedartifact
    FOR EACH ROW EXECUTE FUNCTION fault_log_cached();
"""


@pytest.fixture(scope="module")
def servers():
    missing = [tool for tool in ("initdb", "pg_ctl", "redis-server") if not shutil.which(tool)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not on PATH: these tests start PostgreSQL and Redis servers of their own.")
    pg, broker = PostgresServer().start(), RedisServer().start()
    yield pg, broker
    pg.destroy()
    broker.destroy()


@pytest.fixture(scope="module")
def private(servers, django_db_blocker):
    """This process on the private PostgreSQL (migrated, with the claim log) and, for the processes it
    starts, the private Redis."""
    pg, broker = servers
    url = pg.create_database("plugboard_restarts")
    with django_db_blocker.unblock(), default_database(url), override_settings(REDIS_URL=broker.url(0)):
        call_command("migrate", verbosity=0, interactive=False)
        with connection.cursor() as cursor:
            cursor.execute(CLAIM_LOG)
        yield pg, broker


@pytest.fixture(scope="module")
def store(s3_server):
    """The S3 server behind a proxy that holds each request 0.3 s: an inspection lasts a few seconds."""
    proxy = SlowStore(s3_server.url, delay=0.3)
    yield s3_server, proxy
    proxy.close()


@pytest.fixture(scope="module")
def console(private, tmp_path_factory):
    """The web process, a control worker and a node agent, all on the private servers."""
    root = tmp_path_factory.mktemp("restarts")
    env = console_env(PLUGBOARD_DB_CONNECT_TIMEOUT=str(DB_CONNECT_TIMEOUT))
    web = UvicornServer("config.asgi:application", log_path=root / "web.log", env=env)
    worker = ControlWorker(log_path=root / "worker.log", env=env)
    # The fetch of the large model takes ~10 s at this rate: long enough to restart something under it.
    agent = NodeAgent(NODE, cache_dir=root / "cache", address="127.0.0.1",
                      env={"PLUGBOARD_FETCH_MAX_BYTES_PER_SECOND": "400000",
                           "PLUGBOARD_DB_CONNECT_TIMEOUT": str(DB_CONNECT_TIMEOUT)})  # fmt: skip
    with ThreadPoolExecutor(3) as pool:  # each spends its start importing Django: start them side by side
        list(pool.map(lambda process: process.start(), (web, worker, agent)))
    wait_for(lambda: Node.objects.filter(name=NODE, last_seen_at__isnull=False).exists(), timeout=60,
             what="the node agent to report")  # fmt: skip

    c = SimpleNamespace(web=web, worker=worker, agent=agent, root=root)
    user = UserFactory(username="restarter", is_staff=True, is_superuser=True)
    c.workspace = workspace_create(name="Restarts", owner=user)
    c.token = api_token_create(user=user, name="restarts", scope="admin")[1]
    browser = Client()
    browser.force_login(user)
    c.session = browser.cookies["sessionid"].value
    yield c
    for process in (agent, worker, web):
        with contextlib.suppress(Exception):  # stop the others even if one will not
            process.stop()


# Talking to the console ----------------------------------------------------------------------------------


def api(console, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {console.token}"}
    return requests.request(method, console.web.url + path, headers=headers, timeout=30, **kwargs)


def page(console, path: str = "/models/", timeout: float = 30) -> requests.Response:
    return requests.get(console.web.url + path, cookies={"sessionid": console.session}, timeout=timeout)


def timed(call):
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


def s3_connection(console, store) -> int:
    s3, proxy = store
    answer = api(console, "post", "/api/v1/connections/", json={
        "workspace": console.workspace.slug, "name": f"store-{time.monotonic_ns()}", "kind": "s3",
        "endpoint_url": proxy.url, "bucket": BUCKET, "region": "us-east-1", "addressing_style": "path",
        "access_key_id": s3.reader[0], "secret_access_key": s3.reader[1],
    })  # fmt: skip
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def register(console, connection_id: int, name: str, prefix: str, kind: str = "base") -> int:
    answer = api(console, "post", f"/api/v1/{'models' if kind == 'base' else 'adapters'}/", json={
        "workspace": console.workspace.slug, "name": name, "connection": connection_id, "location": prefix,
    })  # fmt: skip
    assert answer.status_code in (201, 202), answer.text
    return answer.json()["id"]


def upload(store, prefix: str, files: dict[str, bytes]) -> str:
    store[0].put_files(BUCKET, prefix, files)
    return prefix


def inspected(pks: list[int]) -> bool:
    """True once every artifact of `pks` is ready; fails at once on one refused (with its problems)."""
    artifacts = list(Artifact.objects.filter(pk__in=pks))
    refused = [(a.name, a.problems) for a in artifacts if a.status == "invalid"]
    assert not refused, refused
    return all(a.status == "ready" for a in artifacts)


def log_of(table: str, row_id: int) -> list[tuple[str | None, str, bool]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT old_status, new_status, claim FROM fault_log WHERE tbl = %s AND row_id = %s ORDER BY id",
            [table, row_id],
        )
        return cursor.fetchall()


def reconnect() -> None:
    """The test's own connection died with the server it was on: open a new one at the next query."""
    connection.close()


def big_model_files() -> dict[str, bytes]:
    """A model of ~4 MB of weights: its fetch lasts ~10 s at the agent's bandwidth cap."""
    return build.base_model_files(hidden=256, layers=2, intermediate=512, vocab=4096)


# Redis ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_redis_restart_loses_no_inspection_or_fetch_and_runs_none_twice(console, private, store, stop_signal):
    _, broker = private
    run = f"{stop_signal.name.lower()}-{time.monotonic_ns()}"
    conn = s3_connection(console, store)
    big = register(console, conn, f"big-{run}", upload(store, f"{run}/big", big_model_files()))
    wait_for(lambda: inspected([big]), timeout=30, what="the large model inspected")

    answer = api(console, "post", "/api/v1/cache/", json={"artifact": big, "node": NODE})
    assert answer.status_code == 202, answer.text
    fetch = answer.json()["id"]
    wait_for(lambda: CachedArtifact.objects.get(pk=fetch).bytes_done > 0, timeout=30, what="the fetch to run")
    small = [
        register(console, conn, f"small-{i}-{run}", upload(store, f"{run}/small-{i}", build.base_model_files()))
        for i in range(4)
    ]
    # Two inspections running (the worker's two processes), two queued, and the fetch half done.
    wait_for(lambda: Artifact.objects.filter(pk__in=small, status="inspecting").exists(), timeout=10,
             what="an inspection to start")  # fmt: skip

    # Frozen first (it holds its connections and answers nothing): the API's rate limits give up on it at once.
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        listed, api_seconds = timed(lambda: api(console, "get", "/api/v1/models/"))
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
    assert listed.status_code == 200 and api_seconds < REDIS_DOWN_ANSWER_SECONDS, (listed.status_code, api_seconds)

    broker.stop(stop_signal)
    try:
        # While Redis is down, pages and the API (whose rate limits count in Redis) answer at once.
        shown, page_seconds = timed(lambda: page(console))
        listed, api_seconds = timed(lambda: api(console, "get", "/api/v1/models/"))
        assert shown.status_code == 200 and page_seconds < REDIS_DOWN_ANSWER_SECONDS, (shown.status_code, page_seconds)
        assert listed.status_code == 200 and api_seconds < REDIS_DOWN_ANSWER_SECONDS, (listed.status_code, api_seconds)
        time.sleep(2)  # down for a while, as in a real restart; the jobs go on meanwhile
    finally:
        broker.start()

    jobs = [big, *small]
    wait_for(lambda: inspected(jobs), timeout=60, what="every inspection to end ready")  # fmt: skip
    wait_for(lambda: CachedArtifact.objects.get(pk=fetch).status == "ready", timeout=60, what="the fetch to end ready")

    for pk in jobs:
        claims = [entry for entry in log_of("artifact", pk) if entry[2]]
        readies = [entry for entry in log_of("artifact", pk) if entry[1] == "ready"]
        assert (len(claims), len(readies)) == (1, 1), f"artifact {pk}: {log_of('artifact', pk)}"
    fetch_log = log_of("cached", fetch)
    assert [e for e in fetch_log if e[2]] == [("queued", "fetching", True)], fetch_log
    assert [e for e in fetch_log if e[1] == "ready"] == [("fetching", "ready", False)], fetch_log


# PostgreSQL -----------------------------------------------------------------------------------------------


def test_a_postgres_restart_is_survived_by_web_worker_and_agent_and_no_request_hangs(console, private, store):
    pg, _ = private
    run = f"pg-{time.monotonic_ns()}"
    assert requests.get(console.web.url + "/readyz", timeout=10).status_code == 200
    assert page(console).status_code == 200
    conn = s3_connection(console, store)
    big = register(console, conn, f"big-{run}", upload(store, f"{run}/big", big_model_files()))
    wait_for(lambda: inspected([big]), timeout=30, what="the large model inspected")
    fetch = api(console, "post", "/api/v1/cache/", json={"artifact": big, "node": NODE}).json()["id"]
    wait_for(lambda: CachedArtifact.objects.get(pk=fetch).bytes_done > 0, timeout=30, what="the fetch to run")
    small = [
        register(console, conn, f"small-{i}-{run}", upload(store, f"{run}/small-{i}", build.base_model_files()))
        for i in range(2)
    ]
    wait_for(lambda: Artifact.objects.filter(pk__in=small, status="inspecting").exists(), timeout=10,
             what="an inspection to start")  # fmt: skip

    # A frozen database (it takes connections and never answers): requests fail within the connect timeout.
    pg_pid = int((pg.data / "postmaster.pid").read_text().split()[0])
    os.kill(pg_pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda call: timed(call), [
                lambda: requests.get(console.web.url + "/readyz", timeout=30),
                lambda: page(console),
                lambda: api(console, "get", "/api/v1/models/"),
            ]))  # fmt: skip
    finally:
        os.kill(pg_pid, signal.SIGCONT)
    for answer, seconds in answers:
        assert answer.status_code == 503 and seconds < DB_CONNECT_TIMEOUT + 2, (
            answer.request.url,
            answer.status_code,
            seconds,
            answer.text[:300],
        )

    # Down: every request answers 503 at once, with words, not a traceback.
    pg.stop("fast")
    restarted_at = timezone.now()
    try:
        for call in (
            lambda: requests.get(console.web.url + "/readyz", timeout=30),
            lambda: page(console),
            lambda: api(console, "get", "/api/v1/models/"),
        ):
            answer, seconds = timed(call)
            assert answer.status_code == 503 and seconds < DB_CONNECT_TIMEOUT + 1, (
                answer.request.url,
                answer.status_code,
                seconds,
                answer.text[:300],
            )
            assert "Traceback" not in answer.text and "database" in answer.text.lower(), answer.text[:500]
        time.sleep(2)
    finally:
        pg.start()
    reconnect()

    # Back: everything recovers by itself.
    wait_for(lambda: requests.get(console.web.url + "/readyz", timeout=10).status_code == 200, timeout=20,
             what="/readyz to answer 200 again")  # fmt: skip
    assert page(console).status_code == 200
    assert api(console, "get", "/api/v1/models/").status_code == 200
    wait_for(lambda: Node.objects.get(name=NODE).last_seen_at > restarted_at, timeout=20,
             what="the node agent to report again")  # fmt: skip
    # The worker takes new work ...
    after = register(console, conn, f"after-{run}", upload(store, f"{run}/after", build.base_model_files()))
    wait_for(lambda: inspected([after]), timeout=30, what="an inspection after")

    # ... and the work under way during the outage is not left half-done: each inspection and the fetch end
    # ready (the source never failed), and every model that says ready has its files recorded.
    def settled() -> bool:
        return not Artifact.objects.filter(pk__in=[big, *small], status__in=["pending", "inspecting"]).exists() and (
            CachedArtifact.objects.get(pk=fetch).status not in ("queued", "fetching")
        )

    try:
        wait_for(settled, timeout=60, what="the inspections and the fetch under way to end")
    except AssertionError as exc:
        states = {a.name: (a.status, log_of("artifact", a.pk)) for a in Artifact.objects.filter(pk__in=[big, *small])}
        cached = CachedArtifact.objects.get(pk=fetch)
        raise AssertionError(f"{exc}: {states}, fetch {cached.status} {log_of('cached', fetch)}") from None
    for artifact in Artifact.objects.filter(pk__in=[big, *small, after]):
        assert (artifact.status, artifact.problems) == ("ready", []), artifact.name
        assert artifact.files.exists() and artifact.total_bytes, artifact.name
    cached = CachedArtifact.objects.get(pk=fetch)
    assert (cached.status, cached.error) == ("ready", ""), log_of("cached", fetch)


# The web process ------------------------------------------------------------------------------------------


def test_a_web_restart_leaves_model_servers_serving_and_the_gateway_serves_again(console, store, tmp_path):
    conn = s3_connection(console, store)
    base = register(console, conn, "tiny", upload(store, f"web-{time.monotonic_ns()}/tiny", build.base_model_files()))
    wait_for(lambda: inspected([base]), timeout=30, what="the model inspected")
    # A node without an agent, so that nothing launches a real server for the deployment: the upstream below
    # stands in for its model server.
    node = online_cpu_node(tmp_path, name="web-restart")
    deployment = deployment_services.deployment_create(
        workspace=console.workspace, name="survivor", base=Artifact.objects.get(pk=base), node=node,
        settings={"kv_cache_bytes": 1 << 30},
    )  # fmt: skip
    upstream = UvicornServer(
        "tests.support.openai_upstream:app", log_path=tmp_path / "upstream.log", env={"UPSTREAM_API_KEY": UPSTREAM_KEY}
    ).start()
    try:
        serve_from(deployment, upstream)
        key = inference_key_create(workspace=console.workspace, name="app")[1]
        chat = {"model": "survivor", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}

        def gateway(body: dict, **kwargs) -> requests.Response:
            return requests.post(console.web.url + "/v1/chat/completions", json=body, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"}, **kwargs)  # fmt: skip

        answer = gateway(chat)
        assert answer.status_code == 200, answer.text

        # Killed mid-stream: the client's stream ends (it does not hang), the model server sees its client go.
        streamed = gateway({**chat, "stream": True, "max_tokens": 200, "x_behaviour": "drip"}, stream=True)
        assert streamed.status_code == 200, streamed.text
        lines = streamed.iter_lines()
        assert next(line for line in lines if line.startswith(b"data:"))
        started = time.monotonic()
        os.killpg(console.web.process.pid, signal.SIGKILL)
        console.web.process.wait(10)
        with pytest.raises(requests.exceptions.RequestException):
            for _ in lines:
                pass
        assert time.monotonic() - started < 5, "the cut stream ended at once"
        wait_for(lambda: requests.get(upstream.url + "/stats", timeout=5).json()["cancelled"] >= 1, timeout=10,
                 what="the model server to see its client leave")  # fmt: skip

        # The model server goes on serving, to whoever holds its key ...
        direct = requests.post(upstream.url + "/v1/chat/completions", json=chat, timeout=30,
                               headers={"Authorization": f"Bearer {UPSTREAM_KEY}"})  # fmt: skip
        assert direct.status_code == 200 and direct.json()["choices"][0]["message"]["content"], direct.text

        # ... and once the web process is back, the gateway serves again, with the same key.
        console.web.start()
        answer = gateway(chat)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"], answer.text
        assert Deployment.objects.get(pk=deployment.pk).status == "ready"
    finally:
        upstream.stop()
