from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from cluster.models import CachedArtifact, CacheLease, Node


def cached_visible_to(user) -> QuerySet[CachedArtifact]:
    """Cache entries of artifacts in `user`'s workspaces."""
    return CachedArtifact.objects.filter(artifact__workspace__memberships__user=user).select_related("node", "artifact")


def nodes_with_details(user) -> QuerySet[Node]:
    """Every node (the cluster is shared), with its accelerators and the cache entries `user` may see."""
    return Node.objects.prefetch_related(
        "accelerators",
        Prefetch("cached", queryset=cached_visible_to(user).order_by("artifact__name"), to_attr="visible_cached"),
    )


def leases_of(artifact) -> list[str]:
    """Who uses `artifact` on which node, as "deployment chat on gpu-1"."""
    from deployments.models import Deployment

    leases = list(
        CacheLease.objects.filter(cached__artifact=artifact).select_related("cached__node").order_by("holder")
    )
    ids = [
        int(pk)
        for kind, _, pk in (lease.holder.partition(":") for lease in leases)
        if kind == "deployment" and pk.isdigit()
    ]
    names = dict(Deployment.objects.filter(pk__in=ids).values_list("pk", "name"))
    described = []
    for lease in leases:
        kind, _, pk = lease.holder.partition(":")
        who = (
            f"deployment {names[int(pk)]}"
            if kind == "deployment" and pk.isdigit() and int(pk) in names
            else lease.holder
        )
        described.append(f"{who} on {lease.cached.node.name}")
    return described
