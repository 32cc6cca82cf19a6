"""Shortcuts the registry's tests share: make a connection, register, inspect."""

from __future__ import annotations

from registry import services
from registry.models import Artifact
from tests.support.s3_server import ACCESS_KEY, SECRET_KEY


def s3_connection(workspace, s3_server, *, bucket: str = "models", name: str = "store", **fields):
    return services.connection_create(
        workspace=workspace,
        name=name,
        kind="s3",
        endpoint_url=s3_server.url,
        bucket=bucket,
        region="us-east-1",
        secrets={"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
        **fields,
    )


def register_and_inspect(workspace, connection, *, name: str, kind: str, location: str, **fields) -> Artifact:
    """Registers an artifact and runs its inspection here, as the worker would."""
    artifact = services.artifact_register(
        workspace=workspace, name=name, kind=kind, connection=connection, location=location, **fields
    )
    services.artifact_inspect(artifact_id=artifact.pk)
    artifact.refresh_from_db()
    return artifact
