"""Registering from a real Hugging Face-compatible endpoint on loopback (olah
serving local git repositories offline) through huggingface_hub."""

from __future__ import annotations

import pytest

from registry import services
from registry.models import Compatibility
from registry.tests.helpers import register_and_inspect
from tests.support import artifacts as build


@pytest.fixture
def hub(cast, hub_server):
    return services.connection_create(
        workspace=cast.team,
        name="hub",
        kind="hf",
        endpoint_url=hub_server.url,
        secrets={"token": "hf_plugboard_test_token"},
    )


def test_it_pins_the_commit_and_describes_the_model(cast, hub_server, hub):
    sha = hub_server.make_repo("acme/tiny-llama", build.base_model_files(), lfs={"model.safetensors"})
    artifact = register_and_inspect(cast.team, hub, name="tiny", kind="base", location="acme/tiny-llama")

    assert artifact.status == "ready", artifact.problems
    assert artifact.resolved_revision == sha
    assert artifact.architecture == "LlamaForCausalLM" and artifact.hidden_size == 64
    weights = artifact.files.get(path="model.safetensors")
    assert weights.checksum_kind == "sha256" and len(weights.checksum) == 64
    assert weights.size == len(build.base_model_files()["model.safetensors"])
    assert artifact.files.get(path="config.json").checksum_kind == "git-sha1"


def test_a_branch_a_tag_or_a_commit_is_resolved_to_its_commit(cast, hub_server, hub):
    first = hub_server.make_repo("acme/versions", build.base_model_files(), tag="v1")
    second = hub_server.make_repo("acme/versions", build.base_model_files(hidden=128))

    by_tag = register_and_inspect(cast.team, hub, name="v1", kind="base", location="acme/versions", revision="v1")
    by_branch = register_and_inspect(
        cast.team, hub, name="main", kind="base", location="acme/versions", revision="main"
    )
    by_sha = register_and_inspect(cast.team, hub, name="sha", kind="base", location="acme/versions", revision=first)

    assert (by_tag.resolved_revision, by_tag.hidden_size) == (first, 64)
    assert (by_branch.resolved_revision, by_branch.hidden_size) == (second, 128)
    assert (by_sha.resolved_revision, by_sha.hidden_size) == (first, 64)


def test_an_adapter_from_the_hub_fits_the_base_from_the_hub(cast, hub_server, hub):
    hub_server.make_repo("acme/base", build.base_model_files())
    hub_server.make_repo("acme/lora", build.adapter_files(targets=("q_proj", "k_proj", "v_proj", "o_proj")))
    base = register_and_inspect(cast.team, hub, name="base", kind="base", location="acme/base")
    lora = register_and_inspect(cast.team, hub, name="lora", kind="adapter", location="acme/lora")

    assert lora.status == "ready", lora.problems
    assert lora.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert Compatibility.objects.get(adapter=lora, base=base).compatible


def test_a_missing_repository_ends_invalid_with_the_reason(cast, hub):
    artifact = register_and_inspect(cast.team, hub, name="ghost", kind="base", location="acme/does-not-exist")

    assert artifact.status == "invalid"
    assert "The repository acme/does-not-exist does not exist on" in artifact.problems[0]
    assert "hf_plugboard_test_token" not in artifact.problems[0]


def test_files_in_folders_of_a_repository_are_kept_with_their_paths(cast, hub_server, hub):
    hub_server.make_repo("acme/nested", {**build.base_model_files(), "extra/notes.txt": b"hello"})
    artifact = register_and_inspect(cast.team, hub, name="nested", kind="base", location="acme/nested")

    assert artifact.status == "ready", artifact.problems
    assert artifact.files.filter(path="extra/notes.txt").exists()


def test_the_connection_test_reaches_the_hub(cast, hub):
    ok, message = services.connection_test(connection=hub)

    assert ok, message
    assert "hf_plugboard_test_token" not in message


def test_the_connection_test_names_an_endpoint_where_nothing_listens(cast):
    from tests.support.s3_server import free_port

    dead = services.connection_create(
        workspace=cast.team, name="dead", kind="hf", endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    ok, message = services.connection_test(connection=dead)

    assert not ok
    assert "Could not connect to http://127.0.0.1:" in message and "nothing answers there" in message
