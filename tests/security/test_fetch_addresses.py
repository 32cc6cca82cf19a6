"""What the console fetches, and from where: a hostile editor of workspace B
points connections at cloud metadata, at the console's own Redis, at a name
that rebinds between save and use, at servers that redirect elsewhere or answer
errors with bodies meant for a page. Everything goes through the real API, real
boto3 and huggingface_hub clients, and real listening sockets that count what
reaches them."""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client

from accounts.services import membership_set
from cluster import services as cluster_services
from cluster.cache import ArtifactCache
from cluster.models import CachedArtifact
from registry import services
from registry.models import Artifact, Connection
from registry.sources import network
from tests.support.artifacts import base_model_files
from tests.support.factories import UserFactory
from tests.support.listener import Listener
from tests.support.nodes import api_as, online_cpu_node
from tests.support.s3_server import ACCESS_KEY, SECRET_KEY

MARKER = "leak-7f3c-body-marker"  # not shaped like an error code, so nothing may pass it on


class Stage(BaseHTTPRequestHandler):
    """A real HTTP server's handler: forwards to `upstream` (moto) unless `answer` returns (status, reason,
    headers, body) for the request. Counts the requests it gets."""

    server_version = "Stage"

    def _handle(self) -> None:
        server = self.server
        server.requests.append((self.command, self.path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = server.answer(self) if server.answer else None
        if answer is None:
            upstream = http.client.HTTPConnection(*server.upstream, timeout=10)
            # moto reads a bucket from a Host that is a name (virtual-host style): send it the upstream's.
            headers = dict(self.headers) | {"Host": f"{server.upstream[0]}:{server.upstream[1]}"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            reply = upstream.getresponse()
            status, reason, headers, data = reply.status, reply.reason, reply.getheaders(), reply.read()
            upstream.close()
        else:
            status, reason, headers, data = answer
            headers = [*headers, ("Content-Length", str(len(data)))]
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in ("transfer-encoding", "connection", "server", "date"):
                self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    def log_message(self, *args) -> None:
        pass


def stage(*, upstream: tuple[str, int] | None = None, answer=None, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, 0), Stage)
    server.daemon_threads = True
    server.upstream, server.answer, server.requests = upstream, answer, []
    server.url = f"http://{host}:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers():
    """Starts stages and listeners for one test and stops them after it."""
    started = []

    class Servers:
        def stage(self, **kwargs):
            started.append(stage(**kwargs))
            return started[-1]

        def listener(self, host: str = "127.0.0.1", port: int = 0):
            started.append(Listener(host, port))
            return started[-1]

    yield Servers()
    for server in started:
        if isinstance(server, Listener):
            server.close()
        else:
            server.shutdown()
            server.server_close()


@pytest.fixture
def mallory(cast):
    """An editor of workspace B (cast.other), hostile."""
    user = UserFactory(username="mallory")
    membership_set(workspace=cast.other, user=user, role="editor")
    return user


@pytest.fixture
def resolver(monkeypatch):
    """Names in the returned dict resolve to its addresses (a DNS the test controls); others as usual."""
    answers: dict[str, list[str]] = {}
    real = network.resolve

    def resolve(host: str, port: int):
        if host in answers:
            return [ipaddress.ip_address(a) for a in answers[host]]
        return real(host, port)

    monkeypatch.setattr(network, "resolve", resolve)
    return answers


@pytest.fixture
def connects(monkeypatch):
    """Every address the sources really connect to (a spy around socket.create_connection)."""
    seen = []
    real = socket.create_connection

    def create_connection(address, *args, **kwargs):
        seen.append(address[0])
        return real(address, *args, **kwargs)

    monkeypatch.setattr(network.socket, "create_connection", create_connection)
    return seen


def create_connection(user, workspace, *, endpoint: str, kind: str = "s3", name: str = "store"):
    payload = {"workspace": workspace.slug, "name": name, "kind": kind, "endpoint_url": endpoint}
    if kind == "s3":
        payload |= {"bucket": "models", "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}
    return api_as(user).post("/api/v1/connections/", payload, format="json")


def saved_anyway(workspace, *, endpoint: str, kind: str = "s3", name: str = "old"):
    """A connection saved before the rules (or by a path that skips the save-time check)."""
    fields = {"bucket": "models", "region": "us-east-1"} if kind == "s3" else {}
    secrets = {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY} if kind == "s3" else {}
    return services.connection_create(
        workspace=workspace, name=name, kind=kind, endpoint_url=endpoint, secrets=secrets, **fields
    )


def register_and_inspect(user, connection, *, location: str = "tiny", kind: str = "base") -> Artifact:
    path = "/api/v1/models/" if kind == "base" else "/api/v1/adapters/"
    response = api_as(user).post(
        path, {"name": f"a{Artifact.objects.count()}", "connection": connection.pk, "location": location}, format="json"
    )
    assert response.status_code in (201, 202), response.json()
    artifact_id = response.json()["id"]
    services.artifact_inspect(artifact_id=artifact_id)  # as the worker would
    return Artifact.objects.get(pk=artifact_id)


# 1. Metadata addresses and names ---------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("http://169.254.169.254/", "169.254.169.254 is a link-local or cloud metadata address"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254 is a link-local or cloud metadata address"),
        ("http://metadata.google.internal/", "metadata.google.internal is a cloud metadata service"),
    ],
)
@pytest.mark.parametrize("kind", ["s3", "hf"])
def test_an_endpoint_at_a_metadata_service_is_refused_when_saved(cast, mallory, endpoint, reason, kind):
    response = create_connection(mallory, cast.other, endpoint=endpoint, kind=kind)

    assert response.status_code == 400
    assert reason in response.json()["errors"]["endpoint_url"][0]
    assert not Connection.objects.filter(workspace=cast.other).exists()


def test_the_connection_form_refuses_a_metadata_endpoint_too(cast, mallory):
    client = Client()
    client.force_login(mallory)
    response = client.post(
        "/connections/new/",
        {"workspace": cast.other.pk, "name": "meta", "kind": "s3", "endpoint_url": "http://169.254.169.254/"},
    )

    assert response.status_code == 200
    assert "169.254.169.254 is a link-local or cloud metadata address" in response.content.decode()
    assert not Connection.objects.filter(workspace=cast.other).exists()


def test_changing_an_endpoint_to_a_metadata_address_is_refused(cast, mallory, s3_server):
    created = create_connection(mallory, cast.other, endpoint=s3_server.url)
    assert created.status_code == 201

    response = api_as(mallory).patch(
        f"/api/v1/connections/{created.json()['id']}/", {"endpoint_url": "http://169.254.169.254/"}, format="json"
    )

    assert response.status_code == 400
    assert Connection.objects.get(pk=created.json()["id"]).endpoint_url == s3_server.url


# 2. The console's own Redis ----------------------------------------------------


@pytest.fixture(autouse=True)
def _limits_stay_on_the_suites_redis(monkeypatch):
    """Tests here point REDIS_URL at a listener, so that the fetch rules take its port for the console's Redis.
    The rate limits go on counting in the suite's Redis meanwhile (their client would follow REDIS_URL), so
    that every connection a listener sees is a fetch's."""
    from config import redis_client

    suite = redis_client.client()
    monkeypatch.setattr(redis_client, "client", lambda: suite)


def test_an_endpoint_at_the_consoles_redis_is_refused_when_saved_and_when_used(cast, mallory, servers, settings):
    redis = servers.listener()
    settings.REDIS_URL = f"redis://127.0.0.1:{redis.port}/0"

    for endpoint in (f"http://127.0.0.1:{redis.port}/", f"http://localhost:{redis.port}/"):
        response = create_connection(mallory, cast.other, endpoint=endpoint, kind="hf")
        assert response.status_code == 400
        assert f"port {redis.port} is the console's own Redis" in response.json()["errors"]["endpoint_url"][0]

    for kind in ("s3", "hf"):
        old = saved_anyway(cast.other, endpoint=f"http://localhost:{redis.port}", kind=kind, name=f"old-{kind}")
        answer = api_as(mallory).post(f"/api/v1/connections/{old.pk}/test/").json()
        assert answer["ok"] is False
        assert f"port {redis.port} is the console's own Redis" in answer["message"]
    assert redis.accepted == 0


def test_an_endpoint_at_a_model_server_port_is_refused(cast, mallory, servers, tmp_path):
    from deployments.models import Deployment

    served = servers.listener()
    node = online_cpu_node(tmp_path)
    store = saved_anyway(cast.other, endpoint=f"http://127.0.0.1:{served.port}")
    base = Artifact.objects.create(workspace=cast.team, name="b", kind="base", connection=store, location="x")
    Deployment.objects.create(workspace=cast.team, name="d", base=base, node=node, port=served.port)
    network.forget_provided()

    answer = api_as(mallory).post(f"/api/v1/connections/{store.pk}/test/").json()

    assert answer["ok"] is False
    assert f"port {served.port} is the console's own model server" in answer["message"]
    assert served.accepted == 0


# 3. A name that rebinds between the check and the connection -------------------


def test_a_name_that_rebinds_to_the_consoles_redis_reaches_nothing(cast, mallory, servers, settings, resolver):
    redis = servers.listener()
    resolver["store.rebind.test"] = ["192.0.2.10"]  # TEST-NET: allowed, and nothing is ever sent there
    endpoint = f"http://store.rebind.test:{redis.port}"
    s3 = create_connection(mallory, cast.other, endpoint=endpoint)
    hub = create_connection(mallory, cast.other, endpoint=endpoint, kind="hf", name="hub")
    assert (s3.status_code, hub.status_code) == (201, 201)

    resolver["store.rebind.test"] = ["127.0.0.1"]
    # Control: while 127.0.0.1 at that port is nobody's, the check really connects there.
    answer = api_as(mallory).post(f"/api/v1/connections/{s3.json()['id']}/test/").json()
    assert answer["ok"] is False
    assert redis.accepted > 0

    redis.accepted = 0
    settings.REDIS_URL = f"redis://127.0.0.1:{redis.port}/0"
    for created in (s3, hub):
        answer = api_as(mallory).post(f"/api/v1/connections/{created.json()['id']}/test/").json()
        assert answer["ok"] is False
        assert answer["message"] == (
            f"Refused to connect to store.rebind.test: 127.0.0.1 port {redis.port} is the console's own Redis, "
            "which a connection may not reach."
        )
    for created in (s3, hub):
        artifact = register_and_inspect(mallory, Connection.objects.get(pk=created.json()["id"]), location="org/tiny")
        assert artifact.status == "invalid"
        assert any("is the console's own Redis" in p for p in artifact.problems), artifact.problems
    assert redis.accepted == 0


def test_a_name_that_rebinds_to_metadata_after_registration_cannot_be_fetched(
    cast, mallory, servers, s3_server, resolver, connects, tmp_path
):
    s3_server.put_files("models", "rebind", base_model_files())
    store = servers.stage(upstream=("127.0.0.1", s3_server.port))
    resolver["store.rebind.test"] = ["127.0.0.1"]
    created = create_connection(mallory, cast.other, endpoint=f"http://store.rebind.test:{store.server_address[1]}")
    artifact = register_and_inspect(mallory, Connection.objects.get(pk=created.json()["id"]), location="rebind")
    assert artifact.status == "ready", artifact.problems
    assert "127.0.0.1" in connects

    resolver["store.rebind.test"] = ["169.254.169.254"]
    connects.clear()
    node = online_cpu_node(tmp_path)
    cached = cluster_services.artifact_fetch_request(artifact=artifact, node=node)
    cached = cluster_services.artifact_fetch_run(cached_id=cached.pk, cache=ArtifactCache(tmp_path / node.name))

    assert cached.status == CachedArtifact.Status.FAILED
    assert cached.error == (
        "Refused to connect to store.rebind.test: 169.254.169.254 is a link-local or cloud metadata address, "
        "which the console never connects to."
    )
    assert connects == []


# 4. Redirects -------------------------------------------------------------------


def redirect_to(location: str, status: int = 302):
    return lambda request: (status, "Found", [("Location", location)], b"")


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("kind", ["s3", "hf"])
@pytest.mark.parametrize("target", ["metadata", "redis", "other host"])
def test_a_redirect_elsewhere_is_not_followed(cast, mallory, servers, settings, status, kind, target):
    redis = servers.listener()
    other = servers.listener("127.0.0.2")
    settings.REDIS_URL = f"redis://127.0.0.1:{redis.port}/0"
    location = {
        "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "redis": f"http://127.0.0.1:{redis.port}/",
        "other host": f"http://127.0.0.2:{other.port}/models",
    }[target]
    redirector = servers.stage(answer=redirect_to(location, status))
    created = create_connection(mallory, cast.other, endpoint=redirector.url, kind=kind)
    assert created.status_code == 201

    answer = api_as(mallory).post(f"/api/v1/connections/{created.json()['id']}/test/").json()
    artifact = register_and_inspect(mallory, Connection.objects.get(pk=created.json()["id"]), location="org/tiny")

    assert answer["ok"] is False
    assert artifact.status == "invalid"
    said = [answer["message"], *artifact.problems]
    if kind == "hf":
        assert all("the console follows redirects only to the same scheme, host and port" in m for m in said), said
    else:
        assert all(f"answered HTTP {status} (a redirect), which the console does not follow" in m for m in said), said
    assert redirector.requests  # it was asked, and its answer went nowhere
    assert (redis.accepted, other.accepted) == (0, 0)


def test_the_hub_client_follows_a_redirect_within_its_own_origin(cast, mallory, servers):
    def answer(request):
        if request.path.startswith("/api/models") and "moved" not in request.path:
            return 302, "Found", [("Location", "/api/models-moved?limit=1")], b""
        return 200, "OK", [("Content-Type", "application/json")], b"[]"

    hub = servers.stage(answer=answer)
    created = create_connection(mallory, cast.other, endpoint=hub.url, kind="hf")

    answer = api_as(mallory).post(f"/api/v1/connections/{created.json()['id']}/test/").json()

    assert answer["ok"] is True, answer["message"]
    assert [path for _, path in hub.requests] == ["/api/models?limit=1", "/api/models-moved?limit=1"]


# 5. The allowlist ------------------------------------------------------------------


def test_with_an_allowlist_a_store_outside_it_is_refused_and_one_inside_works(cast, mallory, s3_server, settings):
    s3_server.put_files("models", "allowed", base_model_files())
    before = saved_anyway(cast.other, endpoint=s3_server.url)
    settings.PLUGBOARD_FETCH_ALLOWLIST = ["10.0.0.0/8", "store.corp.example"]

    refused = create_connection(mallory, cast.other, endpoint=s3_server.url, name="outside")
    answer = api_as(mallory).post(f"/api/v1/connections/{before.pk}/test/").json()

    assert refused.status_code == 400
    assert "127.0.0.1 (127.0.0.1) is not in PLUGBOARD_FETCH_ALLOWLIST" in refused.json()["errors"]["endpoint_url"][0]
    assert answer["ok"] is False
    assert "is not in PLUGBOARD_FETCH_ALLOWLIST; ask an administrator" in answer["message"]

    for allowlist, endpoint in (
        (["127.0.0.0/8"], s3_server.url),
        (["localhost"], s3_server.url.replace("127.0.0.1", "localhost")),
    ):
        settings.PLUGBOARD_FETCH_ALLOWLIST = allowlist
        created = create_connection(mallory, cast.other, endpoint=endpoint, name=f"inside-{allowlist[0]}")
        assert created.status_code == 201, created.json()
        answer = api_as(mallory).post(f"/api/v1/connections/{created.json()['id']}/test/").json()
        assert answer["ok"] is True, answer["message"]
        artifact = register_and_inspect(mallory, Connection.objects.get(pk=created.json()["id"]), location="allowed")
        assert artifact.status == "ready", artifact.problems


# 6. What is kept of a failed request -----------------------------------------------


def marked_error(request):
    """An error answer that carries the marker everywhere a server could put it."""
    if "/api/" in request.path or request.headers.get("Authorization", "").startswith("Bearer"):
        body = json.dumps({"error": MARKER, "message": MARKER}).encode()
        return 500, f"Oops {MARKER}", [("Content-Type", "application/json"), ("X-Error-Code", MARKER)], body
    body = (
        f"<?xml version='1.0'?><Error><Code>{MARKER}</Code><Message>{MARKER}</Message>"
        f"<Resource>{MARKER}</Resource><RequestId>{MARKER}</RequestId></Error>"
    ).encode()
    return 500, f"Oops {MARKER}", [("Content-Type", "application/xml")], body


def not_xml_error(request):
    return 400, "Bad", [("Content-Type", "text/html")], f"<html><body>{MARKER}</body></html>".encode()


def coded_error(request):
    """An error whose code has the shape of one: the code is shown, the rest of the body is not."""
    body = f"<?xml version='1.0'?><Error><Code>AccountProblem</Code><Message>{MARKER}</Message></Error>"
    return 409, "Conflict", [("Content-Type", "application/xml"), ("X-Error-Code", "AccountProblem")], body.encode()


def everything_shown(client, mallory, connection, artifacts) -> str:
    """The connection and artifacts as the API, the pages and the database have them."""
    api = api_as(mallory)
    shown = [api.get(f"/api/v1/connections/{connection.pk}/").content.decode()]
    shown.append(client.get(f"/connections/{connection.pk}/").content.decode())
    for artifact in artifacts:
        shown.append(api.get(f"/api/v1/models/{artifact.pk}/").content.decode())
        shown.append(client.get(f"/models/{artifact.pk}/").content.decode())
    shown.extend(repr(list(model.objects.values())) for model in (Connection, Artifact, CachedArtifact))
    return "\n".join(shown)


@pytest.mark.parametrize(
    ("answer", "said"),
    [(marked_error, "HTTP 500"), (not_xml_error, "HTTP 400"), (coded_error, "HTTP 409 (AccountProblem)")],
    ids=["error-xml", "not-xml", "error-code"],
)
def test_the_body_of_a_failed_answer_is_never_kept_or_shown(cast, mallory, servers, s3_server, answer, said, tmp_path):
    s3_server.put_files("models", "marked", base_model_files())
    store = servers.stage(upstream=("127.0.0.1", s3_server.port))
    s3 = Connection.objects.get(pk=create_connection(mallory, cast.other, endpoint=store.url).json()["id"])
    hub_server = servers.stage(answer=answer)
    hub = Connection.objects.get(
        pk=create_connection(mallory, cast.other, endpoint=hub_server.url, kind="hf", name="hub").json()["id"]
    )
    ready = register_and_inspect(mallory, s3, location="marked")
    assert ready.status == "ready", ready.problems

    store.answer = answer  # from now on the store answers everything with the error
    messages = [api_as(mallory).post(f"/api/v1/connections/{c.pk}/test/").json()["message"] for c in (s3, hub)]
    failed = [register_and_inspect(mallory, c, location="org/marked") for c in (s3, hub)]
    # HEADs pass again, so a node's fetch gets as far as reading the weights.
    store.answer = lambda request: None if request.command == "HEAD" else answer(request)
    node = online_cpu_node(tmp_path)
    cached = cluster_services.artifact_fetch_request(artifact=ready, node=node)
    cached = cluster_services.artifact_fetch_run(cached_id=cached.pk, cache=ArtifactCache(tmp_path / node.name))

    assert cached.status == CachedArtifact.Status.FAILED
    assert all(f.status == "invalid" for f in failed)
    status = said.split()[1]
    assert messages == [
        f"{store.url} answered HTTP {status}.",  # HeadBucket: an answer to HEAD has no body, so no code
        f"{hub_server.url} answered HTTP {status} to a model listing; is it a Hugging Face hub?",
    ]
    assert [f.problems for f in failed] == [
        [f"{store.url} answered {said}."],
        [f"{hub_server.url} answered {said}."],
    ]
    assert cached.error == f"{store.url} answered {said}."
    client = Client()
    client.force_login(mallory)
    assert MARKER not in everything_shown(client, mallory, s3, [ready, *failed])
    assert MARKER not in everything_shown(client, mallory, hub, [])
