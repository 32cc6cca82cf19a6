"""Migration 0002 turns a lease's holder string ("deployment:12") into a typed
relation to the deployment, and drops leases whose holder cannot be read."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

# The registry as it was then too: its later migrations add columns the old models here do not fill.
BEFORE = [("cluster", "0001_initial"), ("deployments", "0003_launched_node"), ("registry", "0001_initial")]
AFTER = [("cluster", "0002_lease_holder_relation"), ("deployments", "0003_launched_node"), ("registry", "0001_initial")]


@pytest.mark.django_db(transaction=True)
def test_holder_strings_become_relations_to_their_deployments():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    workspace = old.get_model("accounts", "Workspace").objects.create(name="w", slug="w")
    connection_row = old.get_model("registry", "Connection").objects.create(
        workspace=workspace, name="c", kind="local", root_path="/"
    )
    artifact = old.get_model("registry", "Artifact").objects.create(
        workspace=workspace, name="m", kind="base", connection=connection_row, location="m"
    )
    node = old.get_model("cluster", "Node").objects.create(name="n", address="a", cache_dir="/c", cache_quota_bytes=1)
    cached = old.get_model("cluster", "CachedArtifact").objects.create(node=node, artifact=artifact)
    deployment = old.get_model("deployments", "Deployment").objects.create(
        workspace=workspace, name="d", base=artifact, node=node, device="cpu"
    )
    lease_model = old.get_model("cluster", "CacheLease")
    lease_model.objects.create(cached=cached, holder=f"deployment:{deployment.pk}")
    lease_model.objects.create(cached=cached, holder="someone by hand")

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    executor.loader.build_graph()
    new = executor.loader.project_state(AFTER).apps
    (lease,) = new.get_model("cluster", "CacheLease").objects.select_related("holder_type")
    assert (lease.holder_type.app_label, lease.holder_type.model, lease.holder_id) == (
        "deployments", "deployment", deployment.pk,
    )  # fmt: skip
    MigrationExecutor(connection).migrate(executor.loader.graph.leaf_nodes())
