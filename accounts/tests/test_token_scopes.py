"""Personal API tokens: scopes (read, write, admin), expiry, and when they were last used."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.services import LAST_USE_PRECISION, api_token_create


def bearer(raw: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api


def test_a_read_token_reads_but_cannot_change_anything(cast):
    _, raw = api_token_create(user=cast.admin, name="dashboard", scope="read")
    api = bearer(raw)

    assert api.get("/api/v1/workspaces/").status_code == 200
    refused = api.post(f"/api/v1/workspaces/{cast.team.pk}/members/", {"username": "outsider"}, format="json")
    assert refused.status_code == 403
    assert "scope is “read”" in refused.json()["detail"] and "needs “admin”" in refused.json()["detail"]
    refused = api.delete(f"/api/v1/inference-keys/{0}/")
    assert refused.status_code == 403 and "needs “write”" in refused.json()["detail"]


def test_a_write_token_changes_things_but_cannot_make_tokens_or_manage_members(cast):
    _, raw = api_token_create(user=cast.admin, name="deployer", scope="write")
    api = bearer(raw)

    made = api.post("/api/v1/tokens/", {"name": "escalate", "scope": "admin"}, format="json")
    assert made.status_code == 403 and "needs “admin”" in made.json()["detail"]
    assert not ApiToken.objects.filter(name="escalate").exists()
    member = api.post(f"/api/v1/workspaces/{cast.team.pk}/members/", {"username": "outsider"}, format="json")
    assert member.status_code == 403
    assert api.post("/api/v1/workspaces/", {"name": "Sneaky"}, format="json").status_code == 403
    # An unsafe request that is not administration goes through to the view (which says what is wrong).
    assert api.post("/api/v1/connections/", {}, format="json").status_code == 400


def test_an_admin_token_makes_tokens_and_manages_members(cast):
    _, raw = api_token_create(user=cast.admin, name="automation", scope="admin")
    api = bearer(raw)

    made = api.post("/api/v1/tokens/", {"name": "ci", "scope": "read"}, format="json")
    assert made.status_code == 201 and made.json()["scope"] == "read" and made.json()["token"].startswith("pbt_")
    added = api.post(f"/api/v1/workspaces/{cast.team.pk}/members/", {"username": "outsider"}, format="json")
    assert added.status_code == 201
    assert api.delete(f"/api/v1/tokens/{made.json()['id']}/").status_code == 204


def test_a_session_is_not_limited_by_scopes(cast):
    api = APIClient()
    api.force_login(cast.admin)

    assert api.post("/api/v1/tokens/", {"name": "from the console"}, format="json").json()["scope"] == "write"


def test_an_expired_token_is_refused_with_401_and_says_when_it_expired(cast):
    token, raw = api_token_create(user=cast.member, name="temporary", expires_at=timezone.now() + timedelta(days=1))
    assert bearer(raw).get("/api/v1/workspaces/").status_code == 200

    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    refused = bearer(raw).get("/api/v1/workspaces/")

    assert refused.status_code == 401
    assert "expired at" in refused.json()["detail"] and "create a new one" in refused.json()["detail"]


def test_a_token_cannot_be_made_already_expired(cast):
    api = APIClient()
    api.force_login(cast.member)
    past = (timezone.now() - timedelta(hours=1)).isoformat()

    refused = api.post("/api/v1/tokens/", {"name": "old", "expires_at": past}, format="json")

    assert refused.status_code == 400 and "must be in the future" in refused.json()["detail"]


def test_last_use_is_recorded_at_most_once_a_minute(cast, django_assert_num_queries):
    token, raw = api_token_create(user=cast.member, name="busy")
    api = bearer(raw)

    api.get("/api/v1/workspaces/")
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    api.get("/api/v1/workspaces/")
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first

    earlier = first - LAST_USE_PRECISION
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=earlier)
    api.get("/api/v1/workspaces/")
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first


def test_the_settings_page_makes_a_scoped_expiring_token_and_shows_its_last_use(cast, client):
    client.force_login(cast.member)
    client.post(reverse("accounts:settings"), {"name": "nightly", "scope": "read", "expires_in": "7"})
    token = ApiToken.objects.get(user=cast.member, name="nightly")
    assert token.scope == "read"
    assert timedelta(days=6, hours=23) < token.expires_at - timezone.now() <= timedelta(days=7)

    page = client.get(reverse("accounts:settings")).content.decode()
    row = page.split("nightly")[1].split("</tr>")[0]
    assert "Read" in row and "never" in row  # not used yet

    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now() - timedelta(hours=3))
    row = client.get(reverse("accounts:settings")).content.decode().split("nightly")[1].split("</tr>")[0]
    assert "3\xa0hours ago" in row


@pytest.mark.django_db(transaction=True)
def test_tokens_from_before_scopes_keep_everything_they_could_do():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("accounts", "0001_initial")])
    old_apps = executor.loader.project_state([("accounts", "0001_initial")]).apps
    user = old_apps.get_model("auth", "User").objects.create(username="veteran")
    old_apps.get_model("accounts", "ApiToken").objects.create(user=user, name="old", prefix="pbt_x", digest="d" * 64)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    token = ApiToken.objects.get(name="old")
    assert token.scope == "admin" and token.expires_at is None
