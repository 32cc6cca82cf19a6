"""Personal API tokens: shown once, stored hashed, revocable."""

from __future__ import annotations

from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.services import api_token_create, token_digest


def test_a_token_is_stored_only_as_its_digest(cast):
    token, raw = api_token_create(user=cast.member, name="ci")

    assert raw.startswith("pbt_") and len(raw) > 40
    stored = ApiToken.objects.get(pk=token.pk)
    assert stored.digest == token_digest(raw) and raw not in (stored.digest, stored.prefix)


def test_the_settings_page_shows_a_new_token_once(cast, client):
    client.force_login(cast.member)
    created = client.post(reverse("accounts:settings"), {"name": "laptop"}).content.decode()
    raw = created.split('<code class="mono">')[1].split("<")[0]

    assert raw.startswith("pbt_")
    assert raw not in client.get(reverse("accounts:settings")).content.decode()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/workspaces/").json()["results"][0]["role"] == "editor"


def test_a_revoked_token_stops_working(cast, client):
    token, raw = api_token_create(user=cast.member, name="old")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/tokens/").status_code == 200

    client.force_login(cast.member)
    client.post(reverse("accounts:token_revoke", args=[token.pk]))

    assert api.get("/api/v1/tokens/").status_code == 401


def test_the_api_creates_lists_and_deletes_only_the_callers_tokens(cast):
    api = APIClient()
    api.force_authenticate(cast.member)
    created = api.post("/api/v1/tokens/", {"name": "script"}, format="json").json()
    theirs, _ = api_token_create(user=cast.outsider, name="theirs")

    assert created["token"].startswith("pbt_")
    listed = api.get("/api/v1/tokens/").json()["results"]
    assert [t["name"] for t in listed] == ["script"] and "token" not in listed[0]
    assert api.delete(f"/api/v1/tokens/{theirs.pk}/").status_code == 404
    assert api.delete(f"/api/v1/tokens/{created['id']}/").status_code == 204


def test_workspaces_list_only_the_callers(cast):
    api = APIClient()
    api.force_authenticate(cast.outsider)

    assert [w["slug"] for w in api.get("/api/v1/workspaces/").json()["results"]] == ["elsewhere"]
