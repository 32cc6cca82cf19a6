from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseStopPolling

from accounts.access import can_write, get_for
from config.errors import DomainError
from deployments import services
from deployments.models import Deployment
from registry.models import Artifact, Compatibility


def _deployment_for(request, pk, *, write: bool = False) -> Deployment:
    return get_for(request.user, Deployment.objects.select_related("node", "base", "workspace"), pk, write=write)


def deployment_list(request):
    deployments = (
        Deployment.objects.filter(workspace__memberships__user=request.user)
        .select_related("node", "base")
        .prefetch_related("adapters")
    )
    return render(request, "deployments/deployment_list.html", {"deployments": deployments})


def deployment_detail(request, pk):
    deployment = _deployment_for(request, pk)
    if request.htmx and request.GET.get("partial") == "live":
        if deployment.is_terminal and request.GET.get("terminal") == "1":
            return HttpResponseStopPolling()
        return render(request, "deployments/deployment_detail.html#live", {"deployment": deployment})
    attachable = Artifact.objects.filter(
        pk__in=Compatibility.objects.filter(base=deployment.base, compatible=True).values("adapter")
    ).exclude(pk__in=deployment.adapters.values("adapter"))
    context = {
        "deployment": deployment,
        "attachable": attachable,
        "can_write": can_write(request.user, deployment.workspace),
    }
    return render(request, "deployments/deployment_detail.html", context)


def _act(request, pk, action) -> Deployment:
    deployment = _deployment_for(request, pk, write=True)
    try:
        action(deployment)
    except DomainError as exc:
        messages.error(request, exc.message)
    return deployment


@require_POST
def deployment_stop(request, pk):
    return redirect(_act(request, pk, lambda d: services.deployment_stop(deployment=d)))


@require_POST
def deployment_start(request, pk):
    return redirect(_act(request, pk, lambda d: services.deployment_start(deployment=d)))


def deployment_delete(request, pk):
    deployment = _deployment_for(request, pk, write=True)
    if request.method == "POST":
        try:
            services.deployment_delete(deployment=deployment)
        except DomainError as exc:
            messages.error(request, exc.message)
            return redirect(deployment)
        messages.success(request, f"Deleted {deployment.name}.")
        return redirect("deployments:list")
    return render(
        request, "registry/confirm_delete.html", {"object": deployment, "cancel": deployment.get_absolute_url()}
    )


@require_POST
def adapter_attach(request, pk):
    deployment = _deployment_for(request, pk, write=True)
    try:
        adapter = get_for(request.user, Artifact.objects.all(), request.POST.get("adapter"))
        services.adapter_attach(deployment=deployment, adapter=adapter, served_name=request.POST.get("served_name", ""))
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect(deployment)


@require_POST
def adapter_detach(request, pk, served_name):
    deployment = _deployment_for(request, pk, write=True)
    attached = deployment.adapters.filter(served_name=served_name).first()
    if attached is not None:
        services.adapter_detach(attached=attached)
    return redirect(deployment)
