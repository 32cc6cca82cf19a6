"""The registry's REST API: who may see and change what, and the 202 + poll flow."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from registry.tests.helpers import register_and_inspect, s3_connection
from tests.support import artifacts as build
from tests.support.agents import wait_for
from tests.support.nodes import api_as


@pytest.fixture
def catalogue(cast, s3_server):
    s3_server.put_files("models", "tiny", build.base_model_files())
    s3_server.put_files("models", "lora", build.adapter_files())
    store = s3_connection(cast.team, s3_server)
    base = register_and_inspect(cast.team, store, name="tiny", kind="base", location="tiny")
    lora = register_and_inspect(cast.team, store, name="lora", kind="adapter", location="lora")
    theirs = s3_connection(cast.other, s3_server, name="theirs")
    their_base = register_and_inspect(cast.other, theirs, name="theirs", kind="base", location="tiny")
    return store, base, lora, theirs, their_base


def test_without_credentials_every_endpoint_answers_401(db):
    client = APIClient()
    for path in ("/api/v1/models/", "/api/v1/adapters/", "/api/v1/connections/", "/api/v1/compatibility/",
                 "/api/v1/tokens/", "/api/v1/workspaces/"):  # fmt: skip
        response = client.get(path)
        assert response.status_code == 401, path
        assert "detail" in response.json()
    assert client.get("/api/v1/schema/").status_code == 401
    assert client.get("/api/v1/docs/").status_code == 401


def test_a_wrong_token_is_refused_with_a_reason(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer pbt_nonsense")
    response = client.get("/api/v1/models/")

    assert response.status_code == 401
    assert response.json()["detail"] == "This API token is unknown or was revoked."


def test_lists_show_only_the_callers_workspaces(cast, catalogue):
    _, _base, _lora, _, _their_base = catalogue

    models = api_as(cast.member).get("/api/v1/models/").json()["results"]
    adapters = api_as(cast.member).get("/api/v1/adapters/").json()["results"]
    theirs = api_as(cast.outsider).get("/api/v1/models/").json()["results"]

    assert [m["name"] for m in models] == ["tiny"]
    assert [a["name"] for a in adapters] == ["lora"]
    assert [m["name"] for m in theirs] == ["theirs"]


def test_another_workspaces_ids_answer_404(cast, catalogue):
    store, base, lora, _theirs, their_base = catalogue
    outsider = api_as(cast.outsider)

    for path in (f"/api/v1/models/{base.pk}/", f"/api/v1/adapters/{lora.pk}/", f"/api/v1/connections/{store.pk}/",
                 f"/api/v1/models/{base.pk}/compatibility/"):  # fmt: skip
        assert outsider.get(path).status_code == 404, path
    assert outsider.delete(f"/api/v1/models/{base.pk}/").status_code == 404
    assert outsider.post(f"/api/v1/connections/{store.pk}/test/").status_code == 404
    assert api_as(cast.member).get(f"/api/v1/models/{their_base.pk}/").status_code == 404
    # Registering through another workspace's connection is refused the same way.
    response = api_as(cast.outsider).post(
        "/api/v1/models/", {"name": "x", "connection": store.pk, "location": "tiny"}, format="json"
    )
    assert response.status_code == 404


def test_a_viewer_may_read_but_not_write(cast, catalogue):
    store, base, *_ = catalogue
    viewer = api_as(cast.viewer)

    assert viewer.get(f"/api/v1/models/{base.pk}/").status_code == 200
    assert viewer.delete(f"/api/v1/models/{base.pk}/").status_code == 403
    assert viewer.patch(f"/api/v1/models/{base.pk}/", {"description": "x"}, format="json").status_code == 403
    assert viewer.post(f"/api/v1/connections/{store.pk}/test/").status_code == 403
    response = viewer.post("/api/v1/models/", {"name": "x", "connection": store.pk, "location": "tiny"}, format="json")
    assert response.status_code == 403
    assert "Viewers" in response.json()["detail"] or "not an owner or editor" in response.json()["detail"]


def test_a_model_detail_has_its_manifest_and_verdicts(cast, catalogue):
    _, base, lora, *_ = catalogue
    api = api_as(cast.member)

    detail = api.get(f"/api/v1/models/{base.pk}/").json()
    verdicts = api.get(f"/api/v1/models/{base.pk}/compatibility/").json()
    pairs = api.get("/api/v1/compatibility/", {"adapter": lora.pk}).json()["results"]

    assert detail["status"] == "ready" and detail["hidden_size"] == 64
    assert {f["path"] for f in detail["files"]} == {"config.json", "model.safetensors"}
    assert [(v["adapter_name"], v["compatible"]) for v in verdicts] == [("lora", True)]
    assert [(p["base_name"], p["compatible"]) for p in pairs] == [("tiny", True)]


def test_registering_answers_202_and_a_worker_brings_it_to_ready(cast, s3_server, celery_worker_thread):
    """Through the API, Redis and a real Celery worker, as in production."""

    s3_server.put_files("models", "queued", build.base_model_files())
    store = s3_connection(cast.team, s3_server)
    api = api_as(cast.member)

    response = api.post(
        "/api/v1/models/", {"name": "queued", "connection": store.pk, "location": "queued"}, format="json"
    )
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    settled = wait_for(
        lambda: (status := api.get(f"/api/v1/models/{response.json()['id']}/").json()["status"]) in ("ready", "invalid")
        and status,
        timeout=60, every=0.2, what="the inspection to settle",
    )  # fmt: skip
    assert settled == "ready"


def test_a_duplicate_name_is_refused_with_a_message(cast, catalogue):
    store, *_ = catalogue
    response = api_as(cast.member).post(
        "/api/v1/models/", {"name": "tiny", "connection": store.pk, "location": "x"}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["detail"] == "This workspace already has a model or adapter named “tiny”."


def test_the_schema_and_swagger_ui_are_served_locally(cast):
    api = api_as(cast.member)

    schema = api.get("/api/v1/schema/")
    assert schema.status_code == 200 and b"/api/v1/models/" in schema.content
    api.force_authenticate(cast.member)
    docs = api.get("/api/v1/docs/")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower() and b"swagger-ui" in docs.content
