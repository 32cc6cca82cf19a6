"""A deployment's environment variables can be secrets (a token, a password): sealed at rest, written
but never read back through the API, shown by name only on every page, kept by an edit that leaves them
masked, and unsealed only when the node starts the server, which gets them. And what a deployment was
saved with is checked again, under the settings in force then, each time its server is (re)launched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.db import connection

from deployments import services
from deployments.models import Deployment
from tests.support.deployments import deploy, launch_and_wait, stand_in_runtime
from tests.support.nodes import api_as

pytestmark = pytest.mark.demo

SECRET = "s3cret-Value-42"
ENV = f"OMP_NUM_THREADS=2\nMY_TOKEN={SECRET}"
MASKED = {"OMP_NUM_THREADS": "****", "MY_TOKEN": "****"}


@pytest.fixture
def with_secret(cast, demo, settings) -> Deployment:
    """The demo deployed by the member with a secret in its environment (MY_TOKEN, which the administrator allows)."""
    settings.PLUGBOARD_ALLOWED_ENV = ["MY_TOKEN"]
    response = deploy(api_as(cast.member), demo, extra_env=ENV)
    assert response.status_code == 202, response.content
    assert response.json()["extra_env"] == MASKED
    return Deployment.objects.get(pk=response.json()["id"])


def stored_bytes(table: str, pk_column: str, pk: int) -> bytes:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT encrypted_env FROM {table} WHERE {pk_column} = %s", [pk])
        return b"".join(bytes(row[0]) for row in cursor.fetchall())


def test_the_database_holds_the_environment_sealed(with_secret):
    deployment_row = stored_bytes("deployments_deployment", "id", with_secret.pk)
    revision_rows = stored_bytes("deployments_deploymentrevision", "deployment_id", with_secret.pk)

    for stored in (deployment_row, revision_rows):
        assert stored.startswith(b"gAAAAA") and SECRET.encode() not in stored and b"MY_TOKEN" not in stored
    assert with_secret.env_text == ENV


@pytest.mark.parametrize("who", ["viewer", "member", "admin"])
def test_the_api_never_returns_a_value_to_anyone(cast, with_secret, who):
    api = api_as(getattr(cast, who))
    pk = with_secret.pk

    listed = api.get("/api/v1/deployments/")
    detail = api.get(f"/api/v1/deployments/{pk}/")
    history = api.get(f"/api/v1/deployments/{pk}/revisions/")

    for response in (listed, detail, history):
        assert response.status_code == 200 and SECRET not in response.content.decode()
    assert detail.json()["extra_env"] == MASKED
    assert listed.json()["results"][0]["extra_env"] == MASKED
    assert history.json()[0]["extra_env"] == MASKED


def test_the_schema_documents_the_masked_form(cast, client):
    client.force_login(cast.viewer)
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json").content.decode()
    assert "values are write-only" in schema


def test_no_page_shows_a_value_and_the_edit_form_starts_masked(cast, client, with_secret):
    client.force_login(cast.member)

    detail = client.get(with_secret.get_absolute_url()).content.decode()
    edit = client.get(f"/deployments/{with_secret.pk}/edit/").content.decode()
    duplicate = client.get(f"/deployments/{with_secret.pk}/duplicate/", follow=True).content.decode()
    server_step = client.get("/deployments/new/server/").content.decode()

    for page in (detail, edit, duplicate, server_step):
        assert SECRET not in page
    assert "environment OMP_NUM_THREADS, MY_TOKEN (values hidden)" in detail
    assert "OMP_NUM_THREADS=****\nMY_TOKEN=****" in edit
    # A copy does not carry the values: the names come commented out, to be typed again.
    assert "# MY_TOKEN=" in server_step and "are not copied" in server_step


def test_an_edit_that_leaves_a_value_masked_keeps_it_and_the_history_names_only_what_changed(cast, client, with_secret):
    client.force_login(cast.member)
    form = {"node": with_secret.node_id, "dtype": "auto", "max_loras": "1", "max_lora_rank": "8",
            "kv_cache_gib": "1.0", "extra_args": "", "extra_env": "OMP_NUM_THREADS=4\r\nMY_TOKEN=****"}  # fmt: skip

    assert client.post(f"/deployments/{with_secret.pk}/edit/", form).status_code == 302

    with_secret.refresh_from_db()
    assert with_secret.env_text == f"OMP_NUM_THREADS=4\nMY_TOKEN={SECRET}"
    page = client.get(with_secret.get_absolute_url()).content.decode()
    assert "environment: OMP_NUM_THREADS changed" in page and SECRET not in page
    events = " ".join(e.message for e in with_secret.events.all())
    assert SECRET not in events


def test_the_api_keeps_a_masked_value_and_refuses_to_keep_one_never_stored(cast, with_secret):
    api = api_as(cast.member)
    url = f"/api/v1/deployments/{with_secret.pk}/"

    kept = api.patch(url, {"extra_env": "MY_TOKEN=****"}, format="json")
    unknown = api.patch(url, {"extra_env": "MY_TOKEN=****\nTOKENIZERS_PARALLELISM=****"}, format="json")

    assert kept.status_code == 202 and kept.json()["extra_env"] == {"MY_TOKEN": "****"}
    assert Deployment.objects.get(pk=with_secret.pk).env_text == f"MY_TOKEN={SECRET}"
    assert unknown.status_code == 400
    assert (
        "Line 2: TOKENIZERS_PARALLELISM=**** keeps a stored value, but TOKENIZERS_PARALLELISM has none"
        in (unknown.json()["detail"])
    )
    assert Deployment.objects.get(pk=with_secret.pk).revision == 2


def test_the_wizard_review_shows_the_names_but_not_the_values(cast, client, demo, settings):
    settings.PLUGBOARD_ALLOWED_ENV = ["MY_TOKEN"]
    client.force_login(cast.member)
    client.post("/deployments/new/base/", {"base": demo["smollm2-135m-instruct"].pk, "name": "chat"})
    client.post("/deployments/new/adapters/", {})
    client.post("/deployments/new/resources/", {"placement": "auto", "kv_cache_gib": "1"})
    assert client.post("/deployments/new/server/", {"dtype": "auto", "extra_env": ENV}).status_code == 302

    assert SECRET not in json.dumps(client.session["deploy_wizard"]), "the session keeps the environment sealed"
    back = client.get("/deployments/new/server/").content.decode()
    review = client.get("/deployments/new/review/").content.decode()

    assert SECRET in back, "the person typing it gets it back on the step"
    assert "MY_TOKEN=****" in review and "OMP_NUM_THREADS=****" in review and SECRET not in review
    assert client.post("/deployments/new/review/", {"next": "1"}).status_code == 302
    assert Deployment.objects.get(name="chat").env_text == ENV


# At launch ---------------------------------------------------------------------------

# A stand-in for vLLM's python: says which of the user's variables it got, and with which value.
STAND_IN = '#!/bin/sh\necho "started with MY_TOKEN=$MY_TOKEN OMP_NUM_THREADS=$OMP_NUM_THREADS: $*"\n'


@pytest.fixture
def node_folder(tmp_path, settings) -> Path:
    return stand_in_runtime(tmp_path, settings, STAND_IN)


def test_the_server_gets_the_values_unsealed_at_launch_and_its_command_line_does_not(with_secret, node_folder):
    d = launch_and_wait(node_folder, with_secret)

    assert f"started with MY_TOKEN={SECRET} OMP_NUM_THREADS=2:" in Path(d.log_path).read_text()
    assert SECRET not in d.command


def test_a_relaunch_is_checked_again_under_the_settings_in_force_now(cast, demo, node_folder, settings):
    settings.PLUGBOARD_ALLOW_TRUST_REMOTE_CODE = True
    deployment = services.deployment_create(
        workspace=cast.team, name="remote", base=demo["smollm2-135m-instruct"], settings={"kv_cache_bytes": 1 << 30},
        extra_args="--trust-remote-code", allow_trust_remote_code=True,
    )  # fmt: skip
    first = launch_and_wait(node_folder, deployment)
    assert first.status == "starting" and "--trust-remote-code" in first.command

    settings.PLUGBOARD_ALLOW_TRUST_REMOTE_CODE = False  # the administrator changes their mind; then it crashes
    Deployment.objects.filter(pk=deployment.pk).update(status="restarting", pid=None)
    again = launch_and_wait(node_folder, deployment)

    assert (again.status, again.pid, again.port) == ("failed", None, None)
    assert "an administrator must allow remote code first" in again.status_reason
    assert "The server was not started" in [e.message for e in again.events.all()][-1]
    assert Path(first.log_path).read_text().count("started with") == 1, "no second process was started"


def test_a_relaunch_is_refused_once_an_allowed_variable_is_no_longer_allowed(with_secret, node_folder, settings):
    settings.PLUGBOARD_ALLOWED_ENV = []

    d = launch_and_wait(node_folder, with_secret)

    assert d.status == "failed" and d.pid is None and not d.log_path
    assert "MY_TOKEN is refused: it is not on the console's list" in d.status_reason
    assert SECRET not in d.status_reason
