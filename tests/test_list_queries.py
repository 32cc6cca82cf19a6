"""The registry's lists, page and API, run as many SQL queries for 50 rows as for 5: nothing on a row
of a list reads the database again (bench/registry_list.py measures them at 10,000 rows)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from registry.models import Artifact, ArtifactFile, ArtifactTensors, Connection

# (path, the kind of the rows it lists, or "" for both)
LISTS = [
    ("/models/", ""),
    ("/models/?kind=base", "base"),
    ("/models/?kind=adapter", "adapter"),
    ("/api/v1/models/", "base"),
    ("/api/v1/adapters/", "adapter"),
]


def add_artifacts(workspace, connections, *, kind: str, start: int, count: int) -> None:
    """`count` ready artifacts of `kind` with files and a tensor table, as inspection leaves them, spread
    over `connections` (so that rows do not all share one connection)."""
    rows = Artifact.objects.bulk_create(
        Artifact(
            workspace=workspace, name=f"{kind}-{i:03d}", kind=kind, connection=connections[i % len(connections)],
            location=f"team/{kind}-{i}", status="ready", tags=["bench", str(i)], total_bytes=1000 + i,
            parameter_count=10_000 + i, dtype="BF16", config={"model_type": "llama"},
            rank=8 if kind == "adapter" else None, target_modules=["q_proj"] if kind == "adapter" else [],
        )
        for i in range(start, start + count)
    )  # fmt: skip
    ArtifactFile.objects.bulk_create(
        ArtifactFile(artifact=a, path=path, size=100, checksum="0" * 64, checksum_kind="sha256")
        for a in rows
        for path in ("config.json", "model.safetensors")
    )
    ArtifactTensors.objects.bulk_create(ArtifactTensors(artifact=a, tensors={"w": [[4, 4], "BF16", 32]}) for a in rows)


def queries_of(client: Client, path: str) -> tuple[int, int]:
    """(SQL queries, rows shown) of one GET of `path`."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, response.content[:500]
    # A page's table has a header row besides one row per artifact.
    rows = len(response.json()["results"]) if path.startswith("/api/") else response.content.count(b"<tr>") - 1
    return len(captured), rows


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "kind"), LISTS)
def test_a_list_runs_the_same_queries_for_50_rows_as_for_5(cast, path, kind):
    connections = [
        Connection.objects.create(workspace=cast.team, name="store", kind="s3", bucket="models"),
        Connection.objects.create(workspace=cast.team, name="hub", kind="hf"),
        Connection.objects.create(workspace=cast.team, name="nfs", kind="local", root_path="/srv/models"),
    ]
    kinds = [kind] if kind else ["base", "adapter"]
    client = Client()
    client.force_login(cast.member)

    def grow_to(total: int, start: int) -> None:
        # Both kinds, for the page that lists both: the first gets the odd row.
        for n, k in enumerate(kinds):
            share = (total - start) // len(kinds) + (n < (total - start) % len(kinds))
            add_artifacts(cast.team, connections, kind=k, start=start, count=share)

    grow_to(5, 0)
    few, shown_few = queries_of(client, path)
    grow_to(50, 5)
    many, shown_many = queries_of(client, path)

    assert (shown_few, shown_many) == ((5, 25) if path.startswith("/models/") else (5, 50))
    assert many == few, f"{path}: {few} queries for {shown_few} rows, {many} for {shown_many}"
