"""The registry's REST API: who may see and change what, and the 202 + poll flow."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.services import membership_set
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


def test_another_workspaces_connection_answers_404_like_an_id_that_does_not_exist(cast, catalogue):
    _store, *_, theirs, _ = catalogue
    membership_set(workspace=cast.other, user=cast.member, role="editor")  # sees both workspaces
    api = api_as(cast.member)

    def register(connection_id: int):
        body = {"workspace": cast.team.slug, "name": "x", "connection": connection_id, "location": "tiny"}
        return api.post("/api/v1/models/", body, format="json")

    through_theirs, through_nothing = register(theirs.pk), register(999_999)
    outsiders = api_as(cast.outsider).post(
        "/api/v1/models/", {"name": "x", "connection": catalogue[0].pk, "location": "tiny"}, format="json"
    )

    assert through_theirs.status_code == through_nothing.status_code == outsiders.status_code == 404
    assert through_theirs.json() == through_nothing.json() == outsiders.json() == {"detail": "Not found."}


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


def test_lists_filter_by_name_workspace_connection_status_and_kind(cast, catalogue, s3_server):
    *_, lora, _theirs, _ = catalogue
    membership_set(workspace=cast.other, user=cast.member, role="viewer")
    other_store = s3_connection(cast.team, s3_server, name="second")
    register_and_inspect(cast.team, other_store, name="broken", kind="base", location="nothing-here")
    api = api_as(cast.member)

    def names(path: str, **query) -> list[str]:
        response = api.get(path, query)
        assert response.status_code == 200, response.json()
        return [row.get("name") or row.get("base_name") for row in response.json()["results"]]

    assert names("/api/v1/models/") == ["broken", "theirs", "tiny"]
    assert names("/api/v1/models/", name="TINY") == ["tiny"]
    assert names("/api/v1/models/", workspace=cast.other.slug) == ["theirs"]
    assert names("/api/v1/models/", connection=other_store.pk) == ["broken"]
    assert names("/api/v1/models/", status="invalid") == ["broken"]
    assert names("/api/v1/models/", status="ready", workspace=cast.team.slug) == ["tiny"]
    assert names("/api/v1/models/", source="hf") == []
    assert names("/api/v1/models/", search="nothing-h", page=1) == ["broken"]
    assert names("/api/v1/connections/", workspace=cast.team.slug) == ["second", "store"]
    assert names("/api/v1/connections/", kind="s3", name="theirs") == ["theirs"]
    assert names("/api/v1/connections/", kind="local") == []
    assert names("/api/v1/compatibility/", adapter=lora.pk, compatible="true") == ["tiny"]
    assert names("/api/v1/models/", format="json") == ["broken", "theirs", "tiny"]


@pytest.mark.parametrize("path", ["/api/v1/models/", "/api/v1/adapters/", "/api/v1/connections/",
                                  "/api/v1/compatibility/"])  # fmt: skip
def test_an_unknown_query_parameter_is_a_400_naming_it(cast, path):
    response = api_as(cast.member).get(path, {"stauts": "ready"})

    assert response.status_code == 400
    assert response.json()["detail"].startswith("Unknown query parameter “stauts”; this list takes ")
    assert "page" in response.json()["detail"]


def test_a_filter_value_outside_its_choices_is_a_400_naming_the_filter(cast):
    response = api_as(cast.member).get("/api/v1/models/", {"status": "done"})

    assert response.status_code == 400
    assert "status" in response.json()["errors"]


def test_the_schema_documents_the_error_shape_each_4xx_location_and_the_ca_bundle(cast):
    schema = api_as(cast.member).get("/api/v1/schema/", {"format": "json"}).json()
    paths, components = schema["paths"], schema["components"]["schemas"]
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}

    assert components["Error"]["required"] == ["detail"] and "errors" in components["Error"]["properties"]
    register = paths["/api/v1/models/"]["post"]["responses"]
    assert {"400", "401", "403", "404"} <= set(register) and register["404"]["content"] == error
    assert set(paths["/api/v1/models/"]["get"]["responses"]) == {"200", "400", "401", "404", "406", "429"}
    assert paths["/api/v1/models/{id}/"]["delete"]["responses"]["409"]["content"] == error
    member = paths["/api/v1/workspaces/{workspace_pk}/members/{user_id}/"]
    assert {"403", "404", "409"} <= set(member["delete"]["responses"]) and "409" in member["patch"]["responses"]
    location = components["ArtifactWrite"]["properties"]["location"]["description"]
    assert "S3: a key prefix in the connection's bucket" in location
    assert "Hugging Face hub: a repository id" in location and "`revision`" in location
    assert "Local path: a folder under the connection's `root_path`" in location
    assert components["ConnectionWrite"]["properties"]["ca_bundle"]["description"].startswith("PEM text")
    assert "`ok` says which" in paths["/api/v1/connections/{id}/test/"]["post"]["description"]
