from __future__ import annotations

from django.db.models import Exists, OuterRef, Prefetch, QuerySet

from cluster.models import CachedArtifact, CacheLease, Node


def cached_visible_to(user) -> QuerySet[CachedArtifact]:
    """Cache entries of artifacts in `user`'s workspaces, each with `leased` (whether something uses it)."""
    return (
        CachedArtifact.objects.filter(artifact__workspace__memberships__user=user)
        .select_related("node", "artifact")
        .annotate(leased=Exists(CacheLease.objects.filter(cached=OuterRef("pk"))))
    )


def nodes_with_details(user) -> QuerySet[Node]:
    """Every node (the cluster is shared), with its accelerators and the cache entries `user` may see."""
    return Node.objects.prefetch_related(
        "accelerators",
        Prefetch("cached", queryset=cached_visible_to(user).order_by("artifact__name"), to_attr="visible_cached"),
    )


def nodes_with_accelerators() -> QuerySet[Node]:
    """Every node (the cluster is shared by all workspaces) with its accelerators: two queries."""
    return Node.objects.prefetch_related("accelerators")


def leases_of(artifact) -> list[str]:
    """Who uses `artifact` on which node, as "deployment chat on gpu-1"."""
    leases = (
        CacheLease.objects.filter(cached__artifact=artifact)
        .select_related("cached__node", "holder_type")
        .prefetch_related("holder")
        .order_by("holder_type", "holder_id", "cached__node__name")
    )
    return [f"{lease.holder_type.name} {lease.holder} on {lease.cached.node.name}" for lease in leases]
