"""Gateway keys through the REST API and the Keys page: owners and editors
create, list and revoke them; viewers and outsiders cannot; the key is shown once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.services import token_digest
from deployments.models import Deployment
from inference import services
from inference.models import InferenceKey
from tests.support.nodes import api_as

pytestmark = pytest.mark.django_db


def test_an_editor_creates_a_key_that_is_shown_once_and_stored_hashed(cast):
    api = api_as(cast.member)
    response = api.post("/api/v1/inference-keys/", {"name": "chatbot"}, format="json")
    assert response.status_code == 201, response.content
    raw = response.json()["key"]
    row = InferenceKey.objects.get()
    assert raw.startswith("pbi_") and raw.startswith(row.prefix) and row.digest == token_digest(raw)
    assert (row.workspace, row.all_deployments, row.created_by) == (cast.team, True, cast.member)
    listed = api.get("/api/v1/inference-keys/").json()["results"]
    assert [k["name"] for k in listed] == ["chatbot"] and "key" not in listed[0] and listed[0]["state"] == "active"
    assert raw not in api.get(f"/api/v1/inference-keys/{row.pk}/").content.decode()


def test_a_key_can_be_limited_to_chosen_deployments_and_given_an_expiry(cast, tmp_path):
    from tests.support.nodes import online_cpu_node

    node = online_cpu_node(tmp_path)
    base = _base(cast.team)
    mine = Deployment.objects.create(workspace=cast.team, name="mine", base=base, node=node, device="cpu")
    theirs = Deployment.objects.create(
        workspace=cast.other, name="theirs", base=_base(cast.other), node=node, device="cpu"
    )
    api = api_as(cast.member)
    when = (timezone.now() + timedelta(days=30)).isoformat()
    response = api.post(
        "/api/v1/inference-keys/", {"name": "one", "deployments": [mine.pk], "expires_at": when}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["deployments"] == ["mine"] and response.json()["all_deployments"] is False
    refused = api.post("/api/v1/inference-keys/", {"name": "x", "deployments": [theirs.pk]}, format="json")
    assert refused.status_code == 404, "another workspace's deployment does not exist for the caller"
    past = (timezone.now() - timedelta(days=1)).isoformat()
    assert api.post("/api/v1/inference-keys/", {"name": "x", "expires_at": past}, format="json").status_code == 400
    assert InferenceKey.objects.count() == 1


def test_revoking_keeps_the_key_listed_as_revoked(cast):
    key, _ = services.inference_key_create(workspace=cast.team, name="old")
    api = api_as(cast.admin)
    response = api.post(f"/api/v1/inference-keys/{key.pk}/revoke/")
    assert response.status_code == 200 and response.json()["state"] == "revoked"
    assert api.post(f"/api/v1/inference-keys/{key.pk}/revoke/").status_code == 400, "already revoked"


def test_viewers_and_outsiders_cannot_see_create_or_revoke_keys(cast):
    key, _ = services.inference_key_create(workspace=cast.team, name="team key")
    for user, revoke_status in ((cast.viewer, 404), (cast.outsider, 404)):
        api = api_as(user)
        assert api.get("/api/v1/inference-keys/").json()["results"] == []
        assert api.post(f"/api/v1/inference-keys/{key.pk}/revoke/").status_code == revoke_status
    created = api_as(cast.viewer).post(
        "/api/v1/inference-keys/", {"name": "x", "workspace": cast.team.slug}, format="json"
    )
    assert created.status_code == 403
    created = api_as(cast.outsider).post(
        "/api/v1/inference-keys/", {"name": "x", "workspace": cast.team.slug}, format="json"
    )
    assert created.status_code == 404
    assert InferenceKey.objects.get().revoked_at is None
    assert api_as(cast.outsider).get("/api/v1/inference-keys/").json()["results"] == []


def test_the_keys_page_creates_shows_once_and_revokes(cast, client):
    client.force_login(cast.member)
    page = client.get(reverse("inference:keys"))
    assert page.status_code == 200 and b"No keys yet" in page.content
    created = client.post(reverse("inference:keys"), {"name": "web app", "workspace": cast.team.pk, "scope": "all"})
    assert created.status_code == 200
    key = InferenceKey.objects.get()
    raw = created.content.decode().split('data-key="')[1].split('"')[0]
    assert key.digest == token_digest(raw), "the key is on the page once"
    again = client.get(reverse("inference:keys")).content.decode()
    assert raw not in again and key.prefix in again
    response = client.post(reverse("inference:key_revoke", args=[key.pk]))
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_viewers_see_no_keys_page_and_cannot_revoke(cast, client):
    key, _ = services.inference_key_create(workspace=cast.team, name="team key")
    client.force_login(cast.viewer)
    page = client.get(reverse("inference:keys"))
    assert "team key" not in page.content.decode()
    assert (
        client.post(reverse("inference:keys"), {"name": "x", "workspace": cast.team.pk, "scope": "all"}).status_code
        == 200
    )
    assert InferenceKey.objects.count() == 1
    assert client.post(reverse("inference:key_revoke", args=[key.pk])).status_code == 404
    client.force_login(cast.outsider)
    assert client.post(reverse("inference:key_revoke", args=[key.pk])).status_code == 404


def _base(workspace):
    from registry.models import Artifact, ArtifactKind, Connection

    connection = Connection.objects.create(workspace=workspace, name=f"c-{workspace.slug}", kind="local", root_path="/")
    return Artifact.objects.create(
        workspace=workspace, name=f"base-{workspace.slug}", kind=ArtifactKind.BASE, connection=connection, location="m"
    )
