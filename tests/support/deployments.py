"""Deployments for tests: the demo deployed through the API or the services,
an adapter shaped for the demo model, a deployment whose "server" is the
small OpenAI-compatible upstream (tests/support/openai_upstream.py), and a
stand-in vLLM runtime whose servers answer /health and count their starts."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
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
    DeploymentAdapter.objects.filter(deployment=deployment, adapter__name="pirate").update(state="loaded")
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


# A model server as the supervisor sees one: it takes vLLM's arguments (--host, --port, --served-model-name),
# answers /health, /v1/models and /metrics with the deployment's key, writes a line per request to its log
# (stdout), and adds a line to the starts file when it starts.
SERVING_STAND_IN = """
import argparse, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser(allow_abbrev=False)
parser.add_argument("--host")
parser.add_argument("--port", type=int)
parser.add_argument("--served-model-name", default="model")
args, _ = parser.parse_known_args()
key = os.environ.get("PLUGBOARD_SERVER_KEY", "")
with open(sys.argv[1], "a") as starts:
    starts.write(f"{os.getpid()}\\n")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != f"Bearer {key}":
            body, status = b"{}", 401
        elif self.path == "/health":
            body, status = b"", 200
        elif self.path == "/v1/models":
            body, status = ('{"data": [{"id": "%s"}]}' % args.served_model_name).encode(), 200
        elif self.path == "/metrics":
            body, status = b"# no figures\\n", 200
        else:
            body, status = b"{}", 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *a):
        print(format % a, flush=True)


print(f"stand-in server {os.getpid()} listening on {args.host}:{args.port}", flush=True)
ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
"""


@dataclass(frozen=True)
class ServingStandIn:
    """A stand-in vLLM runtime (see serving_stand_in)."""

    python: Path  # what PLUGBOARD_VLLM_PYTHON names
    root: Path  # where the node agent of `node` keeps its servers' runs
    starts: Path  # a line per server started, with its pid

    def started(self) -> list[int]:
        return [int(line) for line in self.starts.read_text().split()] if self.starts.exists() else []


def serving_stand_in(tmp_path: Path, settings, *, node: str = "cpu-1") -> ServingStandIn:
    """Makes a stand-in that serves like vLLM (SERVING_STAND_IN, run by this interpreter) the runtime of this
    test and of the node agents it starts with `env={"PLUGBOARD_VLLM_PYTHON": str(stand_in.python)}`. A runtime
    probe (`python -c ...`) finds no vLLM there; a server launch starts the stand-in in its place (`exec`: the
    same process, environment and working directory the supervisor gave it)."""
    server = tmp_path / "stand-in-server.py"
    server.write_text(SERVING_STAND_IN)
    starts = tmp_path / "stand-in-starts"
    python = tmp_path / "stand-in-python"
    python.write_text(f'#!/bin/sh\n[ "$1" = "-c" ] && exit 1\nexec {sys.executable} {server} {starts} "$@"\n')
    python.chmod(0o755)
    settings.PLUGBOARD_VLLM_PYTHON = python
    return ServingStandIn(python=python, root=tmp_path / f"cache-{node}-server-logs", starts=starts)


def processes_in(folder: Path) -> list[int]:
    """The pids of the live processes whose working directory is `folder` (a server's HOME)."""
    found = []
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and os.readlink(f"/proc/{entry.name}/cwd") == str(folder):
                with open(f"/proc/{entry.name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        found.append(int(entry.name))
        except OSError:
            continue
    return found
