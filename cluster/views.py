from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.access import get_for
from cluster import occupancy, selectors, services
from cluster.forms import FetchForm
from cluster.models import CachedArtifact
from config.errors import DomainError
from registry.models import Artifact


def cluster_page(request):
    nodes = list(selectors.nodes_with_details(request.user))
    mine = set(request.user.memberships.values_list("workspace_id", flat=True))
    running = occupancy.running_on(a for node in nodes for a in node.accelerators.all())
    for node in nodes:
        for accelerator in node.accelerators.all():
            # Another workspace's deployment takes the accelerator, but its name is not ours to show.
            accelerator.shown_running = [d if d.workspace_id in mine else None for d in running.get(accelerator.pk, [])]
    template = "cluster/cluster.html#nodes" if request.htmx else "cluster/cluster.html"
    return render(request, template, {"nodes": nodes})


def artifact_nodes(request, pk):
    """The "On nodes" part of a model page: where it is cached, fetches under way."""
    artifact = get_for(request.user, Artifact.objects.all(), pk)
    entries = selectors.cached_visible_to(request.user).filter(artifact=artifact)
    return render(
        request, "cluster/_artifact_nodes.html", {"artifact": artifact, "entries": entries, "form": FetchForm()}
    )


@require_POST
def artifact_fetch(request, pk):
    artifact = get_for(request.user, Artifact.objects.all(), pk, write=True)
    form = FetchForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a node to fetch it to.")
        return redirect(artifact)
    try:
        services.artifact_fetch_request(artifact=artifact, node=form.cleaned_data["node"])
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect(artifact)


@require_POST
def cached_cancel(request, pk):
    cached = _cached_for(request, pk)
    try:
        services.artifact_fetch_cancel(cached=cached)
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect(cached.artifact)


@require_POST
def cached_remove(request, pk):
    cached = _cached_for(request, pk)
    try:
        services.cache_remove_request(cached=cached)
        messages.success(request, f"Removing {cached.artifact.name} from {cached.node.name}'s cache.")
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect(cached.artifact)


def _cached_for(request, pk) -> CachedArtifact:
    return get_for(
        request.user,
        CachedArtifact.objects.select_related("artifact", "node"),
        pk,
        write=True,
        via="artifact__workspace",
    )
