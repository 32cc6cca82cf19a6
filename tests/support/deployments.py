"""Deployments for tests: the demo deployed through the API or the services,
an adapter shaped for the demo model, and a deployment whose "server" is the
small OpenAI-compatible upstream (tests/support/openai_upstream.py)."""

from __future__ import annotations

import json
from pathlib import Path

from django.utils import timezone

from cluster.cache import ArtifactCache
from cluster.models import CachedArtifact
from config import changes
from config.vault import seal
from conftest import DEMO_STORE
from deployments import processes
from deployments import services as deployment_services
from deployments.models import Deployment, DeploymentAdapter
from deployments.supervisor import Supervisor
from registry import services as registry_services
from registry.demo import DEMO_BASE, demo_register
from registry.tests.helpers import register_and_inspect
from tests.support import artifacts as build
from tests.support.agents import wait_for
from tests.support.web import UvicornServer

GiB = 1 << 30
UPSTREAM_KEY = "upstream-test-key"


def deploy(api, demo, **overrides):
    body = {"name": "demo", "base": demo[DEMO_BASE].pk, "node": "cpu-1",
            "adapters": [{"adapter": demo["pirate"].pk}], "settings": {"kv_cache_bytes": GiB}}  # fmt: skip
    body.update(overrides)
    return api.post("/api/v1/deployments/", body, format="json")


def adapter_for_demo(cast, tmp_path, name: str, **kwargs):
    """A LoRA adapter shaped for SmolLM2-135M (hidden 576, 9 heads, 3 KV heads, 30 layers)."""
    folder = tmp_path / "adapters" / name
    folder.mkdir(parents=True)
    r = kwargs.pop("r", 8)
    hidden = kwargs.pop("hidden", 576)
    (folder / "adapter_config.json").write_text(json.dumps(build.adapter_config(r=r, base=DEMO_BASE, **kwargs)))
    tensors = build.lora_tensors(hidden=hidden, layers=30, heads=9, kv_heads=3, r=r)
    (folder / "adapter_model.safetensors").write_bytes(build.safetensors_bytes(tensors))
    shelf = registry_services.connection_create(
        workspace=cast.team, name=f"shelf-{name}", kind="local", root_path=str(tmp_path)
    )
    return register_and_inspect(cast.team, shelf, name=name, kind="adapter", location=f"adapters/{name}")


def demo_deployment(workspace, name: str, *, adapters: dict[str, str] | None = None):
    """A deployment of the demo model in `workspace` (on a node already online), with `adapters`
    ({demo adapter: served name}) attached; pirate, if attached, is marked loaded."""
    demo = {a.name: a for a in demo_register(workspace=workspace, store=DEMO_STORE)}
    deployment = deployment_services.deployment_create(
        workspace=workspace, name=name, base=demo[DEMO_BASE], settings={"kv_cache_bytes": 1 << 30},
        adapters=[(demo[adapter], served) for adapter, served in (adapters or {}).items()],
    )  # fmt: skip
    DeploymentAdapter.objects.filter(deployment=deployment, adapter=demo["pirate"]).update(state="loaded")
    return deployment


def serve_from(deployment, upstream: UvicornServer, *, status: str = "ready") -> None:
    """Makes `upstream` the server of `deployment`, as the supervisor records a started server."""
    Deployment.objects.filter(pk=deployment.pk).update(
        status=status, port=upstream.port, launched_node=deployment.node, launched_revision=deployment.revision,
        encrypted_api_key=seal({"api_key": UPSTREAM_KEY}), ready_at=timezone.now(),
    )  # fmt: skip
    changes.announce()


def stand_in_runtime(tmp_path: Path, settings, script: str) -> Path:
    """Makes the shell `script` the vLLM runtime's python, so that a launch starts it instead of vLLM; returns
    the folder a supervisor of this test keeps its servers' runs in."""
    python = tmp_path / "stand-in-python"
    python.write_text(script)
    python.chmod(0o755)
    settings.PLUGBOARD_VLLM_PYTHON = python
    return tmp_path / "cache-server-logs"


def launch_and_wait(root: Path, deployment: Deployment) -> Deployment:
    """Launches the deployment's server as the node agent does (its base cached) and returns the deployment
    once the stand-in server has exited (at once, when the launch was refused)."""
    d = Deployment.objects.select_related("base", "node").get(pk=deployment.pk)
    entries = {d.base_id: CachedArtifact(artifact_id=d.base_id, revision="r1")}
    Supervisor("cpu-1", ArtifactCache(root.parent / "cache"), root).launch(d, entries)
    d = Deployment.objects.get(pk=deployment.pk)
    if d.pid:
        wait_for(lambda: not processes.alive(d.pid), timeout=10, what="the stand-in server to exit")
    return d
