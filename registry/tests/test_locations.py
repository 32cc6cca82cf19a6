"""A hub location that is not a repository id is refused when it is registered
(by the service, so the API and the page alike), naming the rule it breaks."""

from __future__ import annotations

import pytest
from django.urls import reverse

from config.errors import DomainError
from registry import services
from registry.models import Artifact
from tests.support.nodes import api_as


@pytest.fixture
def hub(cast):
    # Nothing is read from the hub: the location is refused before anything is queued.
    return services.connection_create(
        workspace=cast.team, name="hub", kind="hf", endpoint_url="http://hub.plugboard-test.invalid"
    )


@pytest.mark.parametrize(
    ("location", "rule"),
    [
        ("acme/../secrets", "it may not contain “--” or “..”"),
        ("acme--tiny", "it may not contain “--” or “..”"),
        ("acme/tiny/main", "it has more than one “/”"),
        ("acme/tiny.git", "it may not end in “.git”"),
        ("acme/tiny llama", "use only letters, digits, “-”, “_” and “.”"),
        ("-acme/tiny", "not starting or ending with “-” or “.”"),
    ],
)
def test_a_hub_location_that_is_not_a_repository_id_is_refused_naming_the_rule(cast, hub, location, rule):
    with pytest.raises(DomainError) as refused:
        services.artifact_register(workspace=cast.team, name="x", kind="base", connection=hub, location=location)

    assert rule in refused.value.message
    assert "HFValidationError" not in refused.value.message
    assert not Artifact.objects.exists()


def test_the_api_refuses_it_with_400_and_the_rule(cast, hub):
    response = api_as(cast.member).post(
        "/api/v1/models/", {"name": "x", "connection": hub.pk, "location": "acme/../secrets"}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["detail"] == "“acme/../secrets” is not a repository id: it may not contain “--” or “..”."


def test_the_form_refuses_it_and_shows_the_rule(cast, hub, client):
    client.force_login(cast.member)
    response = client.post(
        reverse("registry:artifact_register"),
        {"workspace": cast.team.pk, "name": "x", "kind": "base", "connection": hub.pk, "location": "a/b/c"},
    )

    assert response.status_code == 200
    assert "it has more than one “/”" in response.content.decode()
    assert not Artifact.objects.exists()


def test_changing_a_hub_location_to_an_invalid_id_is_refused(cast, hub):
    artifact = services.artifact_register(
        workspace=cast.team, name="x", kind="base", connection=hub, location="acme/tiny"
    )

    with pytest.raises(DomainError, match=r"may not end in “\.git”"):
        services.artifact_update(artifact=artifact, location="acme/tiny.git")


@pytest.mark.parametrize("location", ["acme/tiny-llama", "/acme/tiny-llama/", "tiny_llama.v2", "gpt2"])
def test_valid_repository_ids_are_accepted(cast, hub, location):
    artifact = services.artifact_register(workspace=cast.team, name="x", kind="base", connection=hub, location=location)

    assert artifact.status == "pending"
