"""A connection's credentials go only where its owner meant them to: a connection without keys never
borrows the console's own, an endpoint edited without its secrets loses them, and a workspace reads
only the local folders an administrator gave it. Each attack runs against a real server that records
what it was sent."""

from __future__ import annotations

import pytest
from django.urls import reverse

from registry import services
from registry.models import Connection
from tests.support.nodes import api_as
from tests.support.recording_server import RecordingServer

PLATFORM_KEY_ID = "AKIAPLATFORMROLE0001"
HUB_TOKEN = "hf_OwnersPrivateHubToken0123456789"


@pytest.fixture
def recorder():
    server = RecordingServer(status=403)
    yield server
    server.close()


@pytest.fixture
def platform_credentials(monkeypatch, tmp_path):
    """The console's own credentials, as an instance role or an operator's shell would give them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", PLATFORM_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_PlatformTokenNeverLent")
    monkeypatch.setenv("HOME", str(tmp_path))


def s3_without_keys(workspace, url: str, **fields) -> Connection:
    return services.connection_create(
        workspace=workspace, name="anon", kind="s3", endpoint_url=url, bucket="models", **fields
    )


# No ambient credentials ---------------------------------------------------------------------------------------------


def test_an_s3_connection_without_keys_reads_anonymously_not_with_the_consoles_credentials(
    cast, recorder, platform_credentials
):
    services.connection_test(connection=s3_without_keys(cast.team, recorder.url))

    assert recorder.requests, "the connection test never reached the store"
    assert not any("Authorization" in r.headers for r in recorder.requests)
    assert not recorder.sent(PLATFORM_KEY_ID)


def test_a_hub_connection_without_a_token_never_sends_the_consoles_token(cast, recorder, platform_credentials):
    connection = services.connection_create(workspace=cast.team, name="hub", kind="hf", endpoint_url=recorder.url)
    services.connection_test(connection=connection)

    assert recorder.requests
    assert not recorder.sent("hf_PlatformTokenNeverLent")


def test_an_administrator_may_let_a_connection_use_the_consoles_credentials(cast, recorder, platform_credentials):
    response = api_as(cast.admin).post(
        "/api/v1/connections/",
        {"workspace": cast.team.slug, "name": "role", "kind": "s3", "endpoint_url": recorder.url,
         "bucket": "models", "use_ambient_credentials": True},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.content
    assert response.json()["use_ambient_credentials"] is True

    services.connection_test(connection=Connection.objects.get(pk=response.json()["id"]))
    assert recorder.sent(PLATFORM_KEY_ID)  # the option does what it says


def test_an_editor_may_not_turn_on_the_consoles_credentials(cast, recorder):
    api = api_as(cast.member)
    created = api.post(
        "/api/v1/connections/",
        {"workspace": cast.team.slug, "name": "role", "kind": "s3", "endpoint_url": recorder.url,
         "bucket": "models", "use_ambient_credentials": True},
        format="json",
    )  # fmt: skip
    assert created.status_code == 403
    assert "administrator" in created.json()["detail"]

    connection = s3_without_keys(cast.team, recorder.url)
    patched = api.patch(f"/api/v1/connections/{connection.pk}/", {"use_ambient_credentials": True}, format="json")
    assert patched.status_code == 403
    connection.refresh_from_db()
    assert connection.use_ambient_credentials is False


def test_the_form_offers_the_option_to_administrators_only(cast, client):
    client.force_login(cast.member)
    assert "use_ambient_credentials" not in client.get(reverse("registry:connection_create")).content.decode()
    client.force_login(cast.admin)
    assert "use_ambient_credentials" in client.get(reverse("registry:connection_create")).content.decode()


# An edited endpoint loses its secrets -------------------------------------------------------------------------------


@pytest.fixture
def owners_hub_connection(cast, recorder):
    return services.connection_create(
        workspace=cast.team, name="hub", kind="hf", endpoint_url=recorder.url, secrets={"token": HUB_TOKEN}
    )


def test_an_editor_cannot_send_the_owners_hub_token_to_a_server_of_theirs(cast, owners_hub_connection):
    theirs = RecordingServer(status=401)
    try:
        response = api_as(cast.member).patch(
            f"/api/v1/connections/{owners_hub_connection.pk}/", {"endpoint_url": theirs.url}, format="json"
        )
        assert response.status_code == 200, response.content
        assert response.json()["has_secrets"] is False

        services.connection_test(connection=Connection.objects.get(pk=owners_hub_connection.pk))
        assert theirs.requests, "the test did not reach the new endpoint"
        assert not theirs.sent(HUB_TOKEN)
    finally:
        theirs.close()


def test_the_page_says_the_secrets_were_removed(cast, client, owners_hub_connection):
    theirs = "http://127.0.0.1:9/"
    client.force_login(cast.member)
    response = client.post(
        reverse("registry:connection_edit", args=[owners_hub_connection.pk]),
        {"name": "hub", "endpoint_url": theirs, "addressing_style": "path", "verify_tls": "on"},
        follow=True,
    )
    assert "the saved secrets were removed" in response.content.decode()
    owners_hub_connection.refresh_from_db()
    assert not owners_hub_connection.has_secrets


def test_secrets_sent_again_with_the_new_endpoint_are_kept(cast, owners_hub_connection):
    services.connection_update(
        connection=owners_hub_connection, endpoint_url="http://127.0.0.1:9", secrets={"token": "hf_new"}
    )
    assert owners_hub_connection.has_secrets


def test_editing_anything_else_keeps_the_secrets(cast, owners_hub_connection):
    response = api_as(cast.member).patch(
        f"/api/v1/connections/{owners_hub_connection.pk}/", {"name": "renamed", "region": "eu"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["has_secrets"] is True


def test_a_virtual_host_bucket_is_part_of_the_destination(cast, recorder):
    connection = services.connection_create(
        workspace=cast.team, name="vh", kind="s3", endpoint_url=recorder.url, bucket="models",
        addressing_style="virtual", secrets={"access_key_id": "AKIAOWNER", "secret_access_key": "owner"},
    )  # fmt: skip
    services.connection_update(connection=connection, bucket="attacker")
    assert not connection.has_secrets


def test_ambient_credentials_end_when_an_editor_moves_the_endpoint(cast, recorder, platform_credentials):
    connection = s3_without_keys(cast.team, recorder.url, use_ambient_credentials=True, user=cast.admin)
    theirs = RecordingServer(status=403)
    try:
        response = api_as(cast.member).patch(
            f"/api/v1/connections/{connection.pk}/",
            {"endpoint_url": theirs.url, "use_ambient_credentials": True},
            format="json",
        )
        assert response.status_code == 403  # asking to keep them is asking to turn them on again
        response = api_as(cast.member).patch(
            f"/api/v1/connections/{connection.pk}/", {"endpoint_url": theirs.url}, format="json"
        )
        assert response.json()["use_ambient_credentials"] is False
        services.connection_test(connection=Connection.objects.get(pk=connection.pk))
        assert theirs.requests and not theirs.sent(PLATFORM_KEY_ID)
    finally:
        theirs.close()


def test_another_workspace_cannot_edit_the_connection_at_all(cast, owners_hub_connection):
    response = api_as(cast.outsider).patch(
        f"/api/v1/connections/{owners_hub_connection.pk}/", {"endpoint_url": "http://127.0.0.1:9"}, format="json"
    )
    assert response.status_code == 404
    owners_hub_connection.refresh_from_db()
    assert owners_hub_connection.has_secrets


# Local roots belong to workspaces -----------------------------------------------------------------------------------


@pytest.fixture
def roots(cast, settings, tmp_path):
    """A folder given to the team, one given to the outsider's workspace, and one open to every workspace."""
    folders = {name: tmp_path / name for name in ("team-data", "their-data", "shared")}
    for folder in folders.values():
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "config.json").write_text("{}")
    settings.PLUGBOARD_LOCAL_ROOTS = [
        f"{folders['team-data']}={cast.team.slug}",
        f"{folders['their-data']}={cast.other.slug}|some-other-team",
        folders["shared"],
    ]
    return folders


def local_connection_by_api(user, workspace, folder):
    return api_as(user).post(
        "/api/v1/connections/",
        {"workspace": workspace.slug, "name": "nfs", "kind": "local", "root_path": str(folder)},
        format="json",
    )


def test_a_workspace_registers_from_the_roots_it_was_given(cast, roots):
    assert local_connection_by_api(cast.member, cast.team, roots["team-data"] / "model").status_code == 201
    assert local_connection_by_api(cast.outsider, cast.other, roots["their-data"]).status_code == 201


def test_a_workspace_cannot_register_from_a_root_given_to_another(cast, roots):
    response = local_connection_by_api(cast.outsider, cast.other, roots["team-data"] / "model")

    assert response.status_code == 400
    message = str(response.json())
    assert "outside the folders an administrator gives this workspace" in message
    assert str(roots["their-data"]) in message  # it names the outsider's own roots...
    assert str(roots["team-data"]) not in message.replace(str(roots["team-data"] / "model"), "")  # ...not the team's


def test_a_root_listed_without_workspaces_is_open_to_all(cast, roots):
    assert local_connection_by_api(cast.member, cast.team, roots["shared"]).status_code == 201
    assert local_connection_by_api(cast.outsider, cast.other, roots["shared"]).status_code == 201


def test_a_root_taken_back_stops_reads_through_existing_connections(cast, roots, settings):
    connection = services.connection_create(
        workspace=cast.other, name="nfs", kind="local", root_path=str(roots["their-data"])
    )
    settings.PLUGBOARD_LOCAL_ROOTS = [f"{roots['their-data']}={cast.team.slug}"]

    ok, message = services.connection_test(connection=connection)
    assert not ok
    assert "outside the folders an administrator gives this workspace" in message
    with pytest.raises(services.DomainError):
        services.artifact_register(
            workspace=cast.other, connection=connection, name="m", kind="base", location="model", user=cast.outsider
        )
