"""Registering from a local (or NFS) folder, confined to the allowed roots."""

from __future__ import annotations

import os

import pytest

from config.errors import DomainError
from registry import services
from registry.tests.helpers import register_and_inspect
from tests.support import artifacts as build


def write(folder, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def shelf(cast, tmp_path):
    return services.connection_create(workspace=cast.team, name="nfs", kind="local", root_path=str(tmp_path))


def test_a_model_in_a_local_folder_is_inspected(cast, tmp_path, shelf):
    write(tmp_path / "models" / "tiny", build.base_model_files())
    artifact = register_and_inspect(cast.team, shelf, name="tiny", kind="base", location="models/tiny")

    assert artifact.status == "ready", artifact.problems
    assert artifact.hidden_size == 64
    assert artifact.resolved_revision.startswith("files:")


def test_a_location_that_climbs_out_of_the_folder_is_refused(cast, tmp_path, shelf):
    artifact = register_and_inspect(cast.team, shelf, name="escape", kind="base", location="../../etc")

    assert artifact.status == "invalid"
    assert "leads outside the connection's folder" in artifact.problems[0]


def test_a_symlink_out_of_the_folder_is_refused(cast, tmp_path, shelf):
    write(tmp_path / "linked", build.base_model_files())
    os.symlink("/etc/hostname", tmp_path / "linked" / "notes.txt")
    artifact = register_and_inspect(cast.team, shelf, name="linked", kind="base", location="linked")

    assert artifact.status == "invalid"
    assert "is a link that leads outside" in artifact.problems[0]


def test_a_folder_that_does_not_exist_says_so(cast, shelf):
    artifact = register_and_inspect(cast.team, shelf, name="ghost", kind="base", location="nope")

    assert artifact.problems == [f"Nothing found at {shelf.root_path}/nope: the folder does not exist."]


def test_a_connection_outside_the_allowed_roots_cannot_be_saved(cast):
    with pytest.raises(DomainError, match="outside the folders an administrator gives this workspace"):
        services.connection_create(workspace=cast.team, name="root", kind="local", root_path="/")


def test_an_artifact_with_more_files_than_allowed_is_refused_before_any_is_read(cast, tmp_path, shelf, settings):
    settings.PLUGBOARD_MAX_ARTIFACT_FILES = 4
    write(tmp_path / "crowded", build.base_model_files() | {f"extra/{i}.txt": b"x" for i in range(4)})
    artifact = register_and_inspect(cast.team, shelf, name="crowded", kind="base", location="crowded")

    assert artifact.status == "invalid"
    assert artifact.problems[0].startswith("It holds ")
    assert "more than the 4 an artifact may have" in artifact.problems[0]
    assert artifact.inspection_bytes_read == 0
    assert not artifact.files.exists()


def test_the_tensor_table_lives_apart_from_the_rows_lists_load(cast, tmp_path, shelf, client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.support.nodes import api_as

    write(tmp_path / "models" / "tiny", build.base_model_files())
    artifact = register_and_inspect(cast.team, shelf, name="tiny", kind="base", location="models/tiny")
    assert len(artifact.tensors) > 10  # kept, and read where shapes are compared

    api = api_as(cast.member)
    client.force_login(cast.member)
    with CaptureQueriesContext(connection) as queries:
        assert api.get("/api/v1/models/").status_code == 200
        assert client.get("/models/").status_code == 200
    loaded = " ".join(q["sql"] for q in queries.captured_queries)
    assert "registry_artifact" in loaded
    assert "registry_artifacttensors" not in loaded
