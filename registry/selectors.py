from __future__ import annotations

from django.db.models import Q, QuerySet

from registry.models import Artifact, Compatibility, Connection

# Columns the models and adapters lists (page and API) never show. Reading one of them on a row of such a
# list costs a query per row: tests/test_list_queries.py counts them.
LIST_DEFERRED = ("config", "connection__ca_bundle", "connection__encrypted_secrets")


def connections_for(user) -> QuerySet[Connection]:
    return Connection.objects.filter(workspace__memberships__user=user).select_related("workspace")


def artifacts_for(user, *, kind: str = "", status: str = "", source: str = "", search: str = "") -> QuerySet[Artifact]:
    """The artifacts in `user`'s workspaces, filtered as the models list asks, for a list: with their workspace
    and connection, and without what no list shows (the parsed config, the connection's CA bundle and sealed
    secrets), which a page of 100 rows would otherwise read and decode for nothing."""
    qs = (
        Artifact.objects.filter(workspace__memberships__user=user)
        .select_related("workspace", "connection")
        .defer(*LIST_DEFERRED)
    )
    if kind:
        qs = qs.filter(kind=kind)
    if status:
        qs = qs.filter(status=status)
    if source:
        qs = qs.filter(connection__kind=source)
    if search:
        qs = artifacts_matching(qs, search)
    return qs.order_by("name")


def artifacts_matching(qs: QuerySet[Artifact], text: str) -> QuerySet[Artifact]:
    """The artifacts of `qs` with `text` in their name, description, location, architecture or tags."""
    return qs.filter(
        Q(name__icontains=text)
        | Q(description__icontains=text)
        | Q(location__icontains=text)
        | Q(architecture__icontains=text)
        | Q(tags__icontains=text)
    )


def compatibility_for(artifact: Artifact) -> QuerySet[Compatibility]:
    """Verdicts that involve `artifact`, with the other side loaded."""
    if artifact.is_adapter:
        return Compatibility.objects.filter(adapter=artifact).select_related("base")
    return Compatibility.objects.filter(base=artifact).select_related("adapter")


def compatibility_visible_to(user) -> QuerySet[Compatibility]:
    return Compatibility.objects.filter(adapter__workspace__memberships__user=user).select_related("adapter", "base")
