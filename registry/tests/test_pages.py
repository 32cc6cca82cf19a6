"""The registry's pages, as a signed-in person uses them."""

from __future__ import annotations

import pytest
from django.urls import reverse

from registry.models import Artifact
from registry.tests.helpers import register_and_inspect, s3_connection
from tests.support import artifacts as build


@pytest.fixture
def catalogue(cast, s3_server):
    s3_server.put_files("models", "tiny", build.base_model_files())
    s3_server.put_files("models", "lora", build.adapter_files())
    store = s3_connection(cast.team, s3_server)
    base = register_and_inspect(cast.team, store, name="tiny", kind="base", location="tiny", tags=["chat"])
    lora = register_and_inspect(cast.team, store, name="pirate-lora", kind="adapter", location="lora")
    bad = register_and_inspect(cast.team, store, name="broken", kind="base", location="missing")
    return store, base, lora, bad


def test_every_page_requires_signing_in(client, db):
    for name in (
        "registry:artifact_list",
        "registry:connection_list",
        "accounts:settings",
        "deployments:list",
        "cluster:cluster",
        "playground",
    ):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith("/login/"), name


def test_the_list_filters_by_kind_status_source_and_search(cast, client, catalogue):
    client.force_login(cast.member)
    url = reverse("registry:artifact_list")

    def names(**query) -> list[str]:
        return [a.name for a in client.get(url, query).context["page"].object_list]

    assert names() == ["broken", "pirate-lora", "tiny"]
    assert names(kind="adapter") == ["pirate-lora"]
    assert names(status="invalid") == ["broken"]
    assert names(source="s3", kind="base", status="ready") == ["tiny"]
    assert names(source="hf") == []
    assert names(search="pirate") == ["pirate-lora"]
    assert names(search="chat") == ["tiny"]


def test_htmx_filtering_renders_only_the_results(cast, client, catalogue):
    client.force_login(cast.member)
    response = client.get(reverse("registry:artifact_list"), {"kind": "base"}, headers={"HX-Request": "true"})

    assert b'<nav class="navbar' not in response.content
    assert b"tiny" in response.content and b"pirate-lora" not in response.content


def test_the_list_paginates(cast, client, catalogue):
    store, _base, *_ = catalogue
    for n in range(30):
        Artifact.objects.create(workspace=cast.team, name=f"m{n:02}", kind="base", connection=store, location="x")
    client.force_login(cast.member)

    first = client.get(reverse("registry:artifact_list"))
    second = client.get(reverse("registry:artifact_list"), {"page": 2})

    assert len(first.context["page"].object_list) == 25
    assert len(second.context["page"].object_list) == 8
    assert b"Page 1 of 2" in first.content


def test_the_detail_page_shows_metadata_files_and_what_fits(cast, client, catalogue):
    _, base, lora, bad = catalogue
    client.force_login(cast.member)

    model_page = client.get(base.get_absolute_url()).content.decode()
    adapter_page = client.get(lora.get_absolute_url()).content.decode()
    bad_page = client.get(bad.get_absolute_url()).content.decode()

    assert "These adapters fit this model" in model_page and "pirate-lora" in model_page
    assert "model.safetensors" in model_page and "LlamaForCausalLM" in model_page
    assert "Fits these base models" in adapter_page and 'data-verdict="fits"' in adapter_page
    assert "Refused:" in bad_page and "Nothing found at s3://models/missing/" in bad_page


def test_a_pending_artifact_polls_and_stops_once_settled(cast, client, catalogue):
    store, *_ = catalogue
    pending = Artifact.objects.create(workspace=cast.team, name="p", kind="base", connection=store, location="tiny")
    client.force_login(cast.member)

    page = client.get(pending.get_absolute_url()).content.decode()
    assert 'hx-trigger="every 2s"' in page
    Artifact.objects.filter(pk=pending.pk).update(status="ready")
    settled = client.get(pending.get_absolute_url(), {"partial": "status"}, headers={"HX-Request": "true"})
    assert settled["HX-Refresh"] == "true"
    stop = client.get(pending.get_absolute_url(), {"partial": "status", "settled": "1"}, headers={"HX-Request": "true"})
    assert stop.status_code == 286


def test_registering_through_the_form_redirects_to_the_new_artifact(cast, client, catalogue):
    store, *_ = catalogue
    client.force_login(cast.member)
    response = client.post(
        reverse("registry:artifact_register"),
        {
            "workspace": cast.team.pk,
            "name": "again",
            "kind": "base",
            "connection": store.pk,
            "location": "tiny",
            "tags": "a, b",
        },
    )

    artifact = Artifact.objects.get(name="again")
    assert response.status_code == 302 and response["Location"] == artifact.get_absolute_url()
    assert artifact.status == "pending" and artifact.tags == ["a", "b"]


def test_delete_asks_for_confirmation_first(cast, client, catalogue):
    _, base, *_ = catalogue
    client.force_login(cast.member)
    url = reverse("registry:artifact_delete", args=[base.pk])

    confirm = client.get(url)
    assert confirm.status_code == 200 and b"Delete tiny?" in confirm.content
    assert Artifact.objects.filter(pk=base.pk).exists()
    client.post(url)
    assert not Artifact.objects.filter(pk=base.pk).exists()


def test_other_workspaces_pages_are_404_and_viewers_cannot_change_anything(cast, client, catalogue):
    store, base, *_ = catalogue
    client.force_login(cast.outsider)
    assert client.get(base.get_absolute_url()).status_code == 404
    assert client.get(reverse("registry:connection_detail", args=[store.pk])).status_code == 404

    client.force_login(cast.viewer)
    assert client.get(base.get_absolute_url()).status_code == 200
    assert client.post(reverse("registry:artifact_delete", args=[base.pk])).status_code == 403
    assert client.get(reverse("registry:artifact_edit", args=[base.pk])).status_code == 403
    assert Artifact.objects.filter(pk=base.pk).exists()


def test_the_connection_test_button_answers_in_place(cast, client, catalogue):
    store, *_ = catalogue
    client.force_login(cast.member)
    response = client.post(reverse("registry:connection_test", args=[store.pk]), headers={"HX-Request": "true"})

    assert b'id="check"' in response.content and b'data-ok="true"' in response.content
    assert b"<nav" not in response.content


def test_editing_the_location_inspects_again(cast, client, catalogue, s3_server):
    _, base, *_ = catalogue
    s3_server.put_files("models", "tiny-v2", build.base_model_files(hidden=128))
    client.force_login(cast.member)
    url = reverse("registry:artifact_edit", args=[base.pk])

    form = client.get(url)
    assert form.status_code == 200 and 'value="tiny"' in form.content.decode()
    client.post(
        url, {"name": "tiny", "location": "tiny-v2", "revision": "", "description": "v2", "tags": "chat", "license": ""}
    )

    base.refresh_from_db()
    assert (base.status, base.location, base.description) == ("pending", "tiny-v2", "v2")
    from registry import services

    services.artifact_inspect(artifact_id=base.pk)
    base.refresh_from_db()
    assert base.status == "ready" and base.hidden_size == 128
