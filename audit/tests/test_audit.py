"""The audit log: each change is recorded with who made it, from where, and what; no entry can change."""

from __future__ import annotations

import pytest

from audit.models import AuditEntry, ImmutableEntry
from audit.services import audit_record
from registry import services as registry
from tests.support.nodes import api_as

SECRET = "AKIAOWNERSECRETKEY01"


def test_an_api_change_is_recorded_with_its_actor_and_address(cast):
    response = api_as(cast.member).post(
        "/api/v1/connections/",
        {"workspace": cast.team.slug, "name": "store", "kind": "s3", "endpoint_url": "http://127.0.0.1:9",
         "bucket": "models", "access_key_id": SECRET, "secret_access_key": SECRET},
        format="json",
        REMOTE_ADDR="10.1.2.3",
    )  # fmt: skip
    assert response.status_code == 201

    entry = AuditEntry.objects.get(action="connection.create")
    assert (entry.actor, entry.actor_name, entry.address) == (cast.member, "member", "10.1.2.3")
    assert (entry.workspace, entry.target_type, entry.target_id) == (cast.team, "connection", response.json()["id"])
    assert entry.target_name == "store"


def test_a_page_change_is_recorded_too(cast, client):
    connection = registry.connection_create(workspace=cast.team, name="hub", kind="hf")
    client.force_login(cast.member)
    client.post(f"/connections/{connection.pk}/delete/", REMOTE_ADDR="10.9.9.9")

    entry = AuditEntry.objects.get(action="connection.delete")
    assert (entry.actor_name, entry.address, entry.target_id) == ("member", "10.9.9.9", connection.pk)


def test_work_outside_a_request_is_the_systems(cast):
    registry.connection_create(workspace=cast.team, name="hub", kind="hf")

    entry = AuditEntry.objects.get(action="connection.create")
    assert (entry.actor, entry.actor_name, entry.address) == (None, "system", None)


def test_an_update_names_the_fields_and_never_a_secret(cast):
    connection = registry.connection_create(
        workspace=cast.team, name="store", kind="s3", endpoint_url="http://127.0.0.1:9", bucket="models",
        secrets={"access_key_id": SECRET, "secret_access_key": SECRET},
    )  # fmt: skip
    registry.connection_update(
        connection=connection, endpoint_url="http://127.0.0.1:10", secrets={"access_key_id": "x"}
    )

    entry = AuditEntry.objects.get(action="connection.update")
    assert entry.detail["fields"] == ["endpoint_url"]
    assert entry.detail["secrets_dropped"] == ["access_key_id", "secret_access_key"]
    assert entry.detail["secrets_set"] == ["access_key_id"]
    assert SECRET not in str(list(AuditEntry.objects.values()))


def test_an_entry_cannot_be_changed_or_deleted(cast):
    entry = audit_record(action="workspace.update", target=cast.team, workspace=cast.team)
    entry.action = "nothing.happened"
    with pytest.raises(ImmutableEntry):
        entry.save()
    with pytest.raises(ImmutableEntry):
        entry.delete()
    assert AuditEntry.objects.get(pk=entry.pk).action == "workspace.update"


def test_entries_outlive_what_they_name(cast):
    connection = registry.connection_create(workspace=cast.team, name="hub", kind="hf")
    pk = connection.pk
    registry.connection_delete(connection=connection)

    assert list(AuditEntry.objects.filter(target_type="connection", target_id=pk).values_list("action", flat=True)) == [
        "connection.delete",
        "connection.create",
    ]


def test_the_admin_shows_entries_read_only(cast, client):
    entry = audit_record(action="workspace.update", target=cast.team, workspace=cast.team)
    client.force_login(cast.admin)

    assert client.get("/admin/audit/auditentry/").status_code == 200
    assert client.get(f"/admin/audit/auditentry/{entry.pk}/change/").status_code == 200  # a view, no form
    assert client.post(f"/admin/audit/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()
