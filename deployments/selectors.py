"""Reads of deployments that other pages need."""

from __future__ import annotations

from collections import defaultdict

from django.db.models import Q, QuerySet

from accounts.selectors import writable_workspaces_for
from cluster.selectors import nodes_with_accelerators
from deployments import lifecycle
from deployments.models import Deployment, DeploymentEvent
from registry.models import Artifact


def deployments_of(user) -> QuerySet[Deployment]:
    """The deployments of `user`'s workspaces, with their base model, node and adapters (two queries)."""
    return (
        Deployment.objects.filter(workspace__memberships__user=user)
        .select_related("node", "base")
        .prefetch_related("adapters")
    )


def deployment_rows(user) -> list[Deployment]:
    """The deployments list: deployments_of(user), each with `running` (ready or degraded) and `writable`
    (whether `user` may start, stop or restart it). Three queries however many there are."""
    writable = set(writable_workspaces_for(user).values_list("pk", flat=True))
    rows = list(deployments_of(user))
    for deployment in rows:
        deployment.running = deployment.status in lifecycle.SERVING
        deployment.writable = deployment.workspace_id in writable
    return rows


def dashboard_for(user) -> dict:
    """The home page's contents: what runs and what fails in `user`'s workspaces, every node with its
    accelerators, the ten latest events of `user`'s deployments, and whether `user` has models and
    deployments at all (a new user is shown where to begin). A constant number of queries."""
    mine = deployments_of(user)
    failing = Q(status=Deployment.Status.FAILED) | Q(status=Deployment.Status.RESTARTING, failures__gt=0)
    events = (
        DeploymentEvent.objects.filter(deployment__workspace__memberships__user=user)
        .select_related("deployment")
        .order_by("-created_at", "-pk")[:10]
    )
    return {
        "running": list(mine.filter(status__in=lifecycle.SERVING)),
        "failing": list(mine.filter(failing)),
        "nodes": list(nodes_with_accelerators()),
        "events": list(events),
        "has_deployments": mine.exists(),
        "has_models": Artifact.objects.filter(workspace__memberships__user=user).exists(),
    }


def running_by_accelerator(accelerators: list) -> dict[int, list[Deployment]]:
    """The deployments that should run on each accelerator ({accelerator id: deployments}):
    a CPU hosts every CPU deployment of its node, a GPU those placed on its index. One query."""
    node_ids = {a.node_id for a in accelerators}
    running = Deployment.objects.filter(node_id__in=node_ids, desired=Deployment.Desired.RUNNING).order_by("name")
    by_node = defaultdict(list)
    for d in running:
        by_node[d.node_id].append(d)
    return {
        a.pk: [
            d for d in by_node[a.node_id]
            if (d.device == "cpu" if a.kind == "cpu" else d.device == "cuda" and a.index in d.accelerator_indices)
        ]
        for a in accelerators
    }  # fmt: skip


def deployments_using(artifact) -> list[str]:
    """The deployments that use `artifact` as their base model or an adapter, as "deployment chat"
    (what the registry names when it refuses to delete the artifact)."""
    using = Deployment.objects.filter(Q(base=artifact) | Q(adapters__adapter=artifact)).distinct().order_by("name")
    return [f"deployment {name}" for name in using.values_list("name", flat=True)]


def model_server_addresses() -> list[tuple[str, int]]:
    """(node address, port) of every model server that has a port now: no storage or hub connection may
    reach one (registry/sources/network.py)."""
    rows = Deployment.objects.filter(port__isnull=False).values_list("node__address", "launched_node__address", "port")
    return [(address, port) for node, launched, port in rows for address in {node, launched} if address]
