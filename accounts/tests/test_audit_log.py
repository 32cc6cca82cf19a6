"""The audit log's page and API: owners read their workspaces' entries, administrators all, everyone
their own tokens'; filters narrow it; nothing edits it."""

from __future__ import annotations

import pytest

from accounts import services
from audit.models import AuditEntry
from registry import services as registry
from tests.support.nodes import api_as


@pytest.fixture
def history(cast):
    registry.connection_create(workspace=cast.team, name="team-store", kind="hf")
    registry.connection_create(workspace=cast.other, name="their-store", kind="hf")
    assert api_as(cast.viewer).post("/api/v1/tokens/", {"name": "viewers-script"}, format="json").status_code == 201


def names(response) -> set[str]:
    return {e["target_name"] for e in response.json()["results"]}


def test_an_owner_reads_their_workspaces_log_and_their_own_tokens(cast, history):
    seen = names(api_as(cast.admin).get("/api/v1/audit/?action=connection."))
    assert seen == {"team-store", "their-store"}  # cast.admin is also an administrator: every workspace
    owner_only = names(api_as(cast.outsider).get("/api/v1/audit/?action=connection."))
    assert owner_only == {"their-store"}


def test_a_member_who_is_no_owner_reads_only_their_own_tokens(cast, history):
    assert names(api_as(cast.member).get("/api/v1/audit/?action=connection.")) == set()
    assert any(
        n.startswith("viewers-script (") for n in names(api_as(cast.viewer).get("/api/v1/audit/?action=token.create"))
    )


def test_filters_narrow_the_log_and_an_unknown_one_is_refused(cast, history):
    api = api_as(cast.admin)
    assert names(api.get(f"/api/v1/audit/?workspace={cast.other.slug}&action=connection.create")) == {"their-store"}
    assert api.get("/api/v1/audit/?actr=admin").status_code == 400


def test_nothing_edits_or_deletes_an_entry(cast, history):
    api = api_as(cast.admin)
    entry = AuditEntry.objects.filter(workspace=cast.team).first()
    assert api.patch(f"/api/v1/audit/{entry.pk}/", {"action": "x"}, format="json").status_code == 405
    assert api.delete(f"/api/v1/audit/{entry.pk}/").status_code == 405
    assert api.post("/api/v1/audit/", {"action": "x"}, format="json").status_code == 405


def test_the_page_lists_and_filters(cast, client, history):
    client.force_login(cast.outsider)
    page = client.get("/audit/?action=connection.").content.decode()
    assert "their-store" in page and "team-store" not in page
    assert "connection.create" in page


def test_services_across_the_console_write_the_log(cast, history):
    membership = services.membership_add(workspace=cast.other, username="viewer", role="viewer")
    services.membership_remove(membership=membership)
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {
        "workspace.create",
        "member.set",
        "member.add",
        "member.remove",
        "connection.create",
        "token.create",
    } <= actions
