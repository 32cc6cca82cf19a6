"""Reads of deployments that other pages need."""

from __future__ import annotations

from collections import defaultdict

from django.db.models import Q

from deployments.models import Deployment


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
