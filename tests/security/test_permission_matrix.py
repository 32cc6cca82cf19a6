"""Who may do what, over every page and API endpoint the URL configuration has, and every route of
the OpenAI-compatible gateway: one row per URL name, with the objects its arguments name, the methods
to try, and the status each role gets. The rows are checked against the URL configuration both ways,
so a new endpoint without a row fails here until someone decides who may use it.

The roles (tests/security/conftest.py builds them): anonymous; outsider (owner of workspace B, no
membership in A); viewer, editor and owner of A; admin (a superuser who is not a member of A). Every
URL is filled with A's objects, so the outsider and the administrator must get 404, never 403: whether
another workspace's object exists must not leak. Each row is also tried by A's owner with B's objects,
with ids that do not exist and with ids that are not numbers: 404 each time, never 403 or 500; and with
a body that names B's objects (a workspace, a connection, an adapter) where it names any. Lists are
checked for what they show to whom, and create forms that answer 200 either way for whether they made
a row.

Unsafe methods really run (with a small valid body where one is needed to reach the permission check)
inside a transaction that is rolled back after each request, so one case cannot spoil the next.
The README's "Security model" table summarises these rows; this file is the source of truth."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests
from django.db import transaction
from django.db.models import Model
from django.urls import reverse

from accounts.models import ApiToken
from config import changes
from config.vault import seal
from deployments.models import Deployment
from inference.gateway.app import ENDPOINTS
from inference.models import InferenceKey
from tests.security.conftest import MATRIX_ROLES, MatrixSide, MatrixWorld
from tests.support.agents import wait_for
from tests.support.s3_server import free_port
from tests.support.urlconf import Route, arguments_of, named_urls

LOGIN = "login"  # a page's answer to the anonymous: a redirect to the sign-in page, back here afterwards

# Parts of the URL configuration that are not the console's own, each with why it has no row.
EXCLUDED_NAMESPACES = {
    "admin": "Django's own admin: it checks is_staff itself and is not part of the console's permission model.",
}
EXCLUDED_NAMES = {
    "api-schema": "The OpenAPI schema (drf-spectacular): documentation, IsAuthenticated by SERVE_PERMISSIONS.",
    "api-docs": "Swagger UI over that schema: documentation, no data of any workspace.",
}
EXCLUDED_ROUTES = {
    "admin/login/": "The admin's own sign-in, redirected to the console's (whose rows are `login`).",
}
# Kinds whose objects belong to no workspace (nodes are shared by every team): there is no "B's" one to try.
SHARED_KINDS = {"node", "accelerator"}
# Kinds every workspace's of which an administrator reads: the audit log.
SEEN_BY_ADMINS_EVERYWHERE = {"audit"}
# Kinds that are values rather than objects (a served name, a wizard step, a revision number).
VALUE_KINDS = {"served_name", "step", "revision"}


def roles(anonymous, outsider, viewer, editor, owner, admin) -> dict[str, object]:
    return dict(zip(MATRIX_ROLES, (anonymous, outsider, viewer, editor, owner, admin), strict=True))


# Pages: the anonymous are sent to sign in.
def page_any(ok=200):
    """Any signed-in person: a list or form of their own workspaces' things."""
    return roles(LOGIN, ok, ok, ok, ok, ok)


def page_read(ok=200):
    """Members of the object's workspace."""
    return roles(LOGIN, 404, ok, ok, ok, 404)


def page_write(ok=302):
    """Owners and editors of the object's workspace; a viewer, who can see it, gets 403."""
    return roles(LOGIN, 404, 403, ok, ok, 404)


POST_ONLY = roles(LOGIN, 405, 405, 405, 405, 405)


# The API: the anonymous get 401 (the personal-token scheme is offered in WWW-Authenticate).
def api_any(ok=200):
    return roles(401, ok, ok, ok, ok, ok)


def api_read(ok=200):
    return roles(401, 404, ok, ok, ok, 404)


def api_write(ok):
    return roles(401, 404, 403, ok, ok, 404)


def api_owner(ok):
    """Only the workspace's owners (its members); editors and viewers, who can see it, get 403."""
    return roles(401, 404, 403, 403, ok, 404)


def api_writers_only(ok):
    """Things viewers do not even see (gateway keys): 404 for them too."""
    return roles(401, 404, 404, ok, ok, 404)


Body = Callable[[MatrixSide], dict]


@dataclass(frozen=True)
class Row:
    kinds: dict[str, str]  # URL argument -> the kind of A's object (or value) that fills it
    methods: dict[str, dict[str, object]]  # method -> role -> expected status (or LOGIN)
    api: bool = False
    body: dict[str, Body] = field(default_factory=dict)  # method -> the body to send, from A's side
    # (kind, roles): the list's 200 shows A's object of `kind` to exactly these roles, and never B's to them.
    lists: tuple[str, tuple[str, ...]] | None = None
    # What A's owner gets for a body naming B's objects instead (404 unless said here).
    foreign_body: dict[str, int] = field(default_factory=dict)
    # (model, roles): a POST adds a row of `model` for exactly these roles (where the status cannot tell).
    creates: tuple[type[Model], tuple[str, ...]] | None = None


MEMBERS = ("viewer", "editor", "owner")
WRITERS = ("editor", "owner")
PK = {"pk": "deployment"}


def page(kinds=None, lists=None, body=None, foreign_body=None, creates=None, **methods) -> Row:
    return Row(
        kinds=kinds or {},
        methods=methods,
        body=body or {},
        lists=lists,
        foreign_body=foreign_body or {},
        creates=creates,
    )


def api(kinds=None, lists=None, body=None, **methods) -> Row:
    return Row(kinds=kinds or {}, methods=methods, api=True, body=body or {}, lists=lists)


ROWS: dict[str, Row] = {
    # Console pages ----------------------------------------------------------------------------------
    "home": page(GET=page_any()),
    # Signing in itself (POST) is the sign-in rate limit's to test: a matrix of failed sign-ins would trip it.
    "login": page(GET=roles(200, 200, 200, 200, 200, 200)),
    "logout": page(GET=roles(LOGIN, 405, 405, 405, 405, 405), POST=roles(LOGIN, 302, 302, 302, 302, 302)),
    "playground": page(GET=page_any()),
    # The load balancer's probes: open to anyone, and they name no object and no workspace.
    "healthz": page(GET=roles(200, 200, 200, 200, 200, 200), POST=roles(405, 405, 405, 405, 405, 405)),
    "readyz": page(GET=roles(200, 200, 200, 200, 200, 200), POST=roles(405, 405, 405, 405, 405, 405)),
    "registry:artifact_list": page(GET=page_any(), lists=("model", MEMBERS)),
    # Create forms offer only the workspaces one may write to: naming A, a viewer (or anyone outside A) gets
    # the form back with that refused (200), an editor a redirect to what was made. Naming B, so does A's owner.
    "registry:artifact_register": page(
        GET=page_any(),
        POST=roles(LOGIN, 200, 200, 302, 302, 200),
        foreign_body={"POST": 200},
        body={
            "POST": lambda a: {
                "workspace": a.workspace.pk,
                "name": "another",
                "kind": "base",
                "connection": a.value("connection"),
                "location": "base",
            }
        },
    ),
    "registry:artifact_detail": page({"pk": "model"}, GET=page_read()),
    "registry:artifact_edit": page({"pk": "model"}, GET=page_write(200), POST=page_write(200)),
    "registry:artifact_delete": page({"pk": "model"}, GET=page_write(200), POST=page_write(302)),
    "registry:artifact_reinspect": page({"pk": "model"}, GET=POST_ONLY, POST=page_write(302)),
    "registry:connection_list": page(GET=page_any(), lists=("connection", MEMBERS)),
    "registry:connection_create": page(
        GET=page_any(),
        POST=roles(LOGIN, 200, 200, 302, 302, 200),
        foreign_body={"POST": 200},
        body={
            "POST": lambda a: {
                "workspace": a.workspace.pk,
                "name": "new",
                "kind": "local",
                "root_path": a.objects["connection"].root_path,
            }
        },
    ),
    "registry:connection_detail": page({"pk": "connection"}, GET=page_read()),
    "registry:connection_edit": page({"pk": "connection"}, GET=page_write(200), POST=page_write(200)),
    "registry:connection_test": page({"pk": "connection"}, GET=POST_ONLY, POST=page_write(302)),
    "registry:connection_delete": page({"pk": "connection"}, GET=page_write(200), POST=page_write(302)),
    # The audit log: owners read their workspaces' (others see an empty page), administrators everyone's.
    "accounts:audit": page(
        GET=page_any(), POST=roles(LOGIN, 405, 405, 405, 405, 405), lists=("audit", ("owner", "admin"))
    ),
    "accounts:settings": page(
        GET=page_any(),
        POST=page_any(200),
        lists=("token", ("owner",)),
        body={"POST": lambda a: {"name": "mine"}},
        creates=(ApiToken, ("outsider", "viewer", "editor", "owner", "admin")),  # one's own tokens: anyone
    ),
    "accounts:token_revoke": page(
        {"pk": "token"},
        GET=POST_ONLY,
        POST=roles(LOGIN, 404, 404, 404, 302, 404),  # one's own tokens only
    ),
    "deployments:list": page(GET=page_any(), lists=("deployment", MEMBERS)),
    "deployments:wizard_start": page(GET=page_any(302)),
    # Without a wizard under way in the session there is nothing to estimate: 404 for everyone.
    "deployments:wizard_preflight": page(GET=roles(LOGIN, 404, 404, 404, 404, 404)),
    "deployments:wizard": page({"step": "step"}, GET=page_any(), POST=page_any(200)),
    "deployments:duplicate": page(PK, GET=page_read(302)),  # a copy in one's own wizard; deploying checks again
    "deployments:detail": page(PK, GET=page_read()),
    "deployments:events": page(PK, GET=page_read()),
    "deployments:log": page(PK, GET=page_read()),
    "deployments:log_download": page(PK, GET=page_read()),
    "deployments:edit": page(PK, GET=page_write(200), POST=page_write(200)),
    "deployments:rollback": page({"pk": "deployment", "number": "revision"}, GET=POST_ONLY, POST=page_write()),
    "deployments:stop": page(PK, GET=POST_ONLY, POST=page_write()),
    "deployments:start": page(PK, GET=POST_ONLY, POST=page_write()),
    "deployments:restart": page(PK, GET=POST_ONLY, POST=page_write()),
    "deployments:delete": page(PK, GET=page_write(200), POST=page_write()),
    "deployments:attach": page(
        PK,
        GET=POST_ONLY,
        POST=page_write(),
        body={"POST": lambda a: {"adapter": a.value("adapter"), "served_name": "x"}},
    ),
    "deployments:detach": page({"pk": "deployment", "served_name": "served_name"}, GET=POST_ONLY, POST=page_write()),
    "cluster:cluster": page(GET=page_any()),
    "cluster:artifact_nodes": page({"pk": "model"}, GET=page_read()),
    "cluster:artifact_fetch": page({"pk": "model"}, GET=POST_ONLY, POST=page_write()),
    "cluster:cached_cancel": page({"pk": "cached"}, GET=POST_ONLY, POST=page_write()),
    "cluster:cached_remove": page({"pk": "cached"}, GET=POST_ONLY, POST=page_write()),
    # The page answers 200 either way (the new key shown once, or the form with the workspace refused).
    "inference:keys": page(
        GET=page_any(),
        POST=page_any(200),
        lists=("key", WRITERS),
        foreign_body={"POST": 200},
        body={"POST": lambda a: {"workspace": a.workspace.pk, "name": "app", "scope": "all"}},
        creates=(InferenceKey, WRITERS),
    ),
    "inference:key_revoke": page({"pk": "key"}, GET=POST_ONLY, POST=roles(LOGIN, 404, 404, 302, 302, 404)),
    "inference:usage": page(GET=page_any(), lists=("usage", MEMBERS)),
    # The REST API -----------------------------------------------------------------------------------
    "api-root": api(GET=api_any()),
    "workspace-list": api(GET=api_any(), POST=api_any(201), body={"POST": lambda a: {"name": "Brand new"}}),
    "workspace-detail": api({"pk": "workspace"}, GET=api_read()),
    "membership-list": api(
        {"workspace_pk": "workspace"},
        GET=api_read(),
        POST=api_owner(201),
        lists=("member", MEMBERS),
        body={"POST": lambda a: {"username": "member-b-marker", "role": "viewer"}},
    ),
    "membership-detail": api(
        {"workspace_pk": "workspace", "user_id": "member"},
        PATCH=api_owner(200),
        DELETE=api_owner(204),
        body={"PATCH": lambda a: {"role": "editor"}},
    ),
    "token-list": api(
        GET=api_any(), POST=api_any(201), body={"POST": lambda a: {"name": "script"}}, lists=("token", ("owner",))
    ),
    "audit-entry-list": api(GET=api_any(), lists=("audit", ("owner", "admin"))),
    "audit-entry-detail": api({"pk": "audit"}, GET=roles(401, 404, 404, 404, 200, 200)),
    "token-detail": api({"pk": "token"}, DELETE=roles(401, 404, 404, 404, 204, 404)),  # one's own tokens only
    "node-list": api(GET=api_any()),
    "node-detail": api({"pk": "node"}, GET=api_any()),
    "accelerator-list": api(GET=api_any()),
    "accelerator-detail": api({"pk": "accelerator"}, GET=api_any()),
    "cache-list": api(
        GET=api_any(),
        POST=api_write(202),
        lists=("model", MEMBERS),
        body={"POST": lambda a: {"artifact": a.value("adapter"), "node": a.objects["node"].name}},
    ),
    "cache-detail": api({"pk": "cached"}, GET=api_read(), DELETE=api_write(202)),
    "cache-cancel": api({"pk": "cached"}, POST=api_write(400)),  # a finished fetch: nothing to cancel
    "connection-list": api(
        GET=api_any(),
        POST=api_write(201),
        lists=("connection", MEMBERS),
        body={
            "POST": lambda a: {
                "workspace": a.workspace.slug,
                "name": "new",
                "kind": "local",
                "root_path": a.objects["connection"].root_path,
            }
        },
    ),
    "connection-detail": api(
        {"pk": "connection"},
        GET=api_read(),
        PATCH=api_write(200),
        DELETE=api_write(400),  # models use it
        body={"PATCH": lambda a: {"name": "renamed"}},
    ),
    "connection-test": api({"pk": "connection"}, POST=api_write(200)),
    "model-list": api(
        GET=api_any(),
        POST=api_write(202),
        lists=("model", MEMBERS),
        body={
            "POST": lambda a: {
                "workspace": a.workspace.slug,
                "connection": a.value("connection"),
                "name": "another",
                "location": "base",
            }
        },
    ),
    "model-detail": api(
        {"pk": "model"},
        GET=api_read(),
        PATCH=api_write(200),
        DELETE=api_write(409),
        body={"PATCH": lambda a: {"description": "changed"}},
    ),
    "model-reinspect": api({"pk": "model"}, POST=api_write(202)),
    "model-compatibility": api({"pk": "model"}, GET=api_read()),
    "adapter-list": api(
        GET=api_any(),
        POST=api_write(202),
        lists=("adapter", MEMBERS),
        body={
            "POST": lambda a: {
                "workspace": a.workspace.slug,
                "connection": a.value("connection"),
                "name": "another",
                "location": "adapter",
            }
        },
    ),
    "adapter-detail": api(
        {"pk": "adapter"},
        GET=api_read(),
        PATCH=api_write(200),
        DELETE=api_write(409),
        body={"PATCH": lambda a: {"description": "changed"}},
    ),
    "adapter-reinspect": api({"pk": "adapter"}, POST=api_write(202)),
    "adapter-compatibility": api({"pk": "adapter"}, GET=api_read()),
    "compatibility-list": api(GET=api_any(), lists=("adapter", MEMBERS)),
    "compatibility-detail": api({"pk": "compatibility"}, GET=api_read()),
    "deployment-list": api(
        GET=api_any(),
        POST=api_write(202),
        lists=("deployment", MEMBERS),
        body={
            "POST": lambda a: {
                "workspace": a.workspace.slug,
                "name": "another",
                "base": a.value("model"),
                "node": a.objects["node"].name,
            }
        },
    ),
    "deployment-detail": api(
        PK, GET=api_read(), PATCH=api_write(202), DELETE=api_write(204), body={"PATCH": lambda a: {"max_adapters": 4}}
    ),
    "deployment-revisions": api(PK, GET=api_read()),
    # A's deployment is stopped at revision 1: rolling back to it, restarting it and stopping it are refused
    # (400, after the permission check: a viewer gets 403), starting it is accepted.
    "deployment-rollback": api(PK, POST=api_write(400), body={"POST": lambda a: {"revision": 1}}),
    "deployment-restart": api(PK, POST=api_write(400)),
    "deployment-stop": api(PK, POST=api_write(400)),
    "deployment-start": api(PK, POST=api_write(202)),
    "deployment-attach": api(
        PK, POST=api_write(400), body={"POST": lambda a: {"adapter": a.value("adapter"), "served_name": "again"}}
    ),
    "deployment-detach": api({"pk": "deployment", "served_name": "served_name"}, POST=api_write(202)),
    "deployment-events": api(PK, GET=api_read()),
    "deployment-log": api(PK, GET=api_read()),
    "inference-key-list": api(
        GET=api_any(),
        POST=api_write(201),
        lists=("key", WRITERS),
        body={"POST": lambda a: {"workspace": a.workspace.slug, "name": "app"}},
    ),
    "inference-key-detail": api({"pk": "key"}, GET=api_writers_only(200)),
    "inference-key-revoke": api({"pk": "key"}, POST=api_writers_only(200)),
    "usage-list": api(GET=api_any(), lists=("usage", MEMBERS)),
    "usage-summary": api(GET=api_any()),
}


# Collecting the URL configuration -------------------------------------------------------------------


def collected_urls() -> dict[str, Route]:
    """Every named URL of config.urls, Django's admin and the API's documentation left out (EXCLUDED_*)."""
    return named_urls(
        excluded_namespaces=EXCLUDED_NAMESPACES, excluded_routes=EXCLUDED_ROUTES, excluded_names=EXCLUDED_NAMES
    )


def test_every_url_has_a_row_and_every_row_a_url():
    urls = collected_urls()
    missing = sorted(set(urls) - set(ROWS))
    assert not missing, (
        "These URLs have no row in the permission matrix (tests/security/test_permission_matrix.py, ROWS): "
        f"{', '.join(f'{n} ({sorted(urls[n].routes)[0]})' for n in missing)}. Add one row per URL name saying "
        "which objects its arguments name and what each role gets for each method, or name the URL if it has none."
    )
    stale = sorted(set(ROWS) - set(urls))
    assert not stale, f"These rows name URLs that no longer exist: {', '.join(stale)}; remove or rename them."
    for name, url in urls.items():
        if url.methods:
            assert set(ROWS[name].methods) == url.methods, (
                f"{name} answers {sorted(url.methods)} but its row tries {sorted(ROWS[name].methods)}: "
                "give every method the router maps its expected status for each role."
            )
        assert set(ROWS[name].kinds) == arguments_of(name), f"{name}'s row fills {sorted(ROWS[name].kinds)}"


# Running a row ----------------------------------------------------------------------------------------


def _url(name: str, row: Row, side: MatrixSide, *, replace_ids: str | None = None) -> str:
    """`name` reversed with `side`'s objects; with `replace_ids`, object ids are replaced by that text."""
    kwargs = {arg: side.value(kind) for arg, kind in row.kinds.items()}
    if replace_ids is None:
        return reverse(name, kwargs=kwargs)
    placeholder = 987654321
    objects = {arg for arg, kind in row.kinds.items() if kind not in VALUE_KINDS}
    url = reverse(name, kwargs={arg: placeholder if arg in objects else v for arg, v in kwargs.items()})
    return url.replace(str(placeholder), replace_ids)


def _send(world: MatrixWorld, row: Row, role: str, method: str, url: str, *, body_from: MatrixSide | None = None):
    """The answer to `role`'s request (its body made from A's objects, or `body_from`'s), its writes
    rolled back afterwards."""
    client = world.api_client(role) if row.api else world.page_client(role)
    body = row.body[method](body_from or world.a) if method in row.body else {}
    send = getattr(client, method.lower())
    counted = row.creates[0].objects if row.creates else None
    with transaction.atomic():
        before = counted.count() if counted is not None else 0
        if row.api:
            response = send(url, body or None, format="json") if method != "GET" else send(url)
        else:
            response = send(url, body) if method != "GET" else send(url)
        content = b"".join(response.streaming_content) if response.streaming else response.content
        response.created = counted.count() > before if counted is not None else None
        transaction.set_rollback(True)
    return response, content.decode(errors="replace")


def _matches(expected, response) -> bool:
    if expected == LOGIN:
        return response.status_code == 302 and response["Location"].startswith(reverse("login") + "?next=")
    if expected == 401:  # and says how to authenticate: with a personal token
        return response.status_code == 401 and response.get("WWW-Authenticate") == "Bearer"
    return response.status_code == expected


def _problem(name, method, url, who, expected, response, content) -> str:
    detail = content[:300].replace("\n", " ")
    if response.status_code in (301, 302):
        detail = f"-> {response['Location']}"
    if getattr(response, "exc_info", None):
        detail = f"{response.exc_info[0].__name__}: {response.exc_info[1]}"
    return f"{name}: {method} {url} as {who}: expected {expected}, got {response.status_code} ({detail})"


@pytest.mark.parametrize("name", sorted(ROWS))
def test_the_matrix_row(name, matrix_world):
    row = ROWS[name]
    world = matrix_world
    problems = []
    url = _url(name, row, world.a)
    for method, expected_by_role in row.methods.items():
        for role, expected in expected_by_role.items():
            response, content = _send(world, row, role, method, url)
            if not _matches(expected, response):
                problems.append(_problem(name, method, url, role, expected, response, content))
                continue
            if row.creates and method == "POST" and response.created != (role in row.creates[1]):
                made = "made" if response.created else "did not make"
                problems.append(f"{name}: POST {url} as {role} {made} a {row.creates[0].__name__}")
            if row.lists and method == "GET" and response.status_code == 200:
                kind, shown_to = row.lists
                if (world.a.marker(kind) in content) != (role in shown_to):
                    problems.append(
                        f"{name}: GET {url} as {role}: A's {kind} is {'missing' if role in shown_to else 'shown'}"
                    )
                if (
                    world.b.marker(kind) in content
                    and role != "outsider"
                    and not (role == "admin" and kind in SEEN_BY_ADMINS_EVERYWHERE)
                ):
                    problems.append(f"{name}: GET {url} as {role}: B's {kind} is shown")
        # Other workspaces' ids, ids that do not exist, ids that are not numbers: 404 for A's owner.
        if expected_by_role["owner"] in (405, LOGIN) or not any(k not in VALUE_KINDS for k in row.kinds.values()):
            continue
        tries = {"missing id": _url(name, row, world.a, replace_ids="987654321"),
                 "non-numeric id": _url(name, row, world.a, replace_ids="x1")}  # fmt: skip
        if not set(row.kinds.values()) & SHARED_KINDS:
            tries["B's ids"] = _url(name, row, world.b)
        for what, other in tries.items():
            response, content = _send(world, row, "owner", method, other)
            if response.status_code != 404:
                problems.append(_problem(name, method, other, f"owner ({what})", 404, response, content))
    # A body that names B's objects (a workspace, a connection, an adapter) where A's should be.
    for method, body in row.body.items():
        if body(world.b) != body(world.a):
            expected = row.foreign_body.get(method, 404)
            response, content = _send(world, row, "owner", method, url, body_from=world.b)
            if response.status_code != expected:
                problems.append(_problem(name, method, url, "owner (B's ids in the body)", expected, response, content))
            elif response.created:
                problems.append(f"{name}: {method} {url} as owner with B's ids in the body made a row in B")
    assert not problems, "\n".join(problems)


# The gateway (/v1/ and /metrics, beside Django in config/asgi.py) --------------------------------------

# Credentials: a gateway key of A, of B, A's revoked key, none; a signed-in session of A's viewer and of
# the outsider (the playground's way in); personal tokens for /metrics.
GATEWAY_ROWS: dict[str, dict[str, int]] = {
    "/v1/models": {"none": 401, "revoked": 401, "b-key": 200, "a-key": 200, "outsider-session": 200,
                   "viewer-session": 200},
    "/v1/models/{model}": {"none": 401, "revoked": 401, "b-key": 404, "a-key": 200, "outsider-session": 404,
                           "viewer-session": 200},
    # A's deployment is "ready" on a port where nothing listens: whoever may use it gets as far as the
    # server (502), the others are told that it does not exist.
    "/v1/chat/completions": {"none": 401, "revoked": 401, "b-key": 404, "a-key": 502, "outsider-session": 404,
                             "viewer-session": 502},
    "/v1/completions": {"none": 401, "revoked": 401, "b-key": 404, "a-key": 502, "outsider-session": 404,
                        "viewer-session": 502},
    "/metrics": {"none": 401, "owner-token": 403, "admin-token": 200},
}  # fmt: skip


def gateway_routes() -> set[str]:
    """The gateway's routes: its completion endpoints (ENDPOINTS) and the routes its handler answers
    before them (inference/gateway/app.py, Gateway.handle)."""
    return set(ENDPOINTS) | {"/v1/models", "/v1/models/{model}", "/metrics"}


def test_every_gateway_route_has_a_row():
    assert set(GATEWAY_ROWS) == gateway_routes(), (
        f"The gateway answers {sorted(gateway_routes())} but GATEWAY_ROWS has {sorted(GATEWAY_ROWS)}: "
        "give each route its expected status for each credential."
    )


def test_the_gateway_routes_for_every_credential(console, matrix_world_committed):
    world = matrix_world_committed
    Deployment.objects.filter(pk=world.a.value("deployment")).update(
        status=Deployment.Status.READY, desired=Deployment.Desired.RUNNING, port=free_port(),
        encrypted_api_key=seal({"api_key": "server-key"}),
    )  # fmt: skip
    changes.announce()  # the console drops what it holds of earlier tests' rows
    sessions = {}
    for role in ("viewer", "outsider"):
        client = world.page_client(role)
        sessions[f"{role}-session"] = {"sessionid": client.cookies["sessionid"].value, "csrftoken": "k" * 32}
    tokens = {"owner-token": world.api_tokens["owner"], "admin-token": world.api_tokens["admin"]}
    keys = {"a-key": world.a.key_raw, "b-key": world.b.key_raw, "revoked": world.a.revoked_key_raw}
    model = world.a.marker("deployment")
    problems = []
    for route, expected_by_credential in GATEWAY_ROWS.items():
        for credential, expected in expected_by_credential.items():
            headers, cookies = {}, None
            if credential in sessions:
                cookies = sessions[credential]
                headers["X-CSRFToken"] = cookies["csrftoken"]
            elif credential in keys or credential in tokens:
                headers["Authorization"] = f"Bearer {(keys | tokens)[credential]}"
            path = route.replace("{model}", model)
            if path in ENDPOINTS:
                body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi"}
                response = requests.post(console.url + path, json=body, headers=headers, cookies=cookies, timeout=30)
            else:
                response = requests.get(console.url + path, headers=headers, cookies=cookies, timeout=30)
            if response.status_code != expected:
                problems.append(f"{route} with {credential}: expected {expected}, got {response.status_code} "
                                f"({response.text[:200]})")  # fmt: skip
            elif route == "/v1/models" and response.status_code == 200:
                listed = {m["id"] for m in response.json()["data"]}
                mine = credential in ("a-key", "viewer-session")
                if listed != ({model, f"{model}:pirate"} if mine else set()):
                    problems.append(f"/v1/models with {credential} lists {sorted(listed)}")
    # The usage of these requests is written by the console once a second: wait for it before the
    # database is flushed (the two at once deadlock on PostgreSQL).
    metrics = {"Authorization": f"Bearer {world.api_tokens['admin']}"}
    wait_for(
        lambda: "plugboard_gateway_usage_backlog 0\n"
        in requests.get(console.url + "/metrics", headers=metrics, timeout=10).text,
        timeout=30, what="the console to write the usage it holds",
    )  # fmt: skip
    assert not problems, "\n".join(problems)
