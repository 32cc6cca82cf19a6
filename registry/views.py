from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseStopPolling

from accounts.access import can_write, get_for, workspace_for_write
from config.errors import DomainError
from config.views import confirm_delete, errors_on
from registry import dependents, selectors, services
from registry.forms import ArtifactEditForm, ArtifactFilterForm, ArtifactForm, ConnectionForm
from registry.models import Artifact, Connection


def _connection_for(request, pk, *, write: bool = False) -> Connection:
    return get_for(request.user, Connection.objects.select_related("workspace"), pk, write=write)


def _artifact_for(request, pk, *, write: bool = False) -> Artifact:
    return get_for(request.user, Artifact.objects.select_related("workspace", "connection"), pk, write=write)


# Models and adapters -------------------------------------------------------


def artifact_list(request):
    form = ArtifactFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    artifacts = selectors.artifacts_for(request.user, **{k: v for k, v in filters.items() if v})
    page = Paginator(artifacts, 25).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    template = "registry/artifact_list.html#results" if request.htmx else "registry/artifact_list.html"
    return render(request, template, context)


def artifact_register(request):
    form = ArtifactForm(request.POST or None, user=request.user, initial={"kind": request.GET.get("kind", "base")})
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        with errors_on(form):
            workspace = workspace_for_write(request.user, data.pop("workspace"))
            artifact = services.artifact_register(workspace=workspace, user=request.user, **data)
            messages.success(request, f"Registered {artifact.name}; inspecting it now.")
            return redirect(artifact)
    return render(request, "form_page.html", {"form": form, "title": "Register a model or adapter"})


def artifact_detail(request, pk):
    artifact = _artifact_for(request, pk)
    if request.htmx and request.GET.get("partial") == "status":
        if artifact.is_settled and request.GET.get("settled") == "1":
            return HttpResponseStopPolling()
        response = render(request, "registry/artifact_detail.html#status", {"artifact": artifact})
        if artifact.is_settled:
            # The rest of the page (files, verdicts) changed too: reload it once.
            response["HX-Refresh"] = "true"
        return response
    context = {
        "artifact": artifact,
        "used_by": dependents.users_of(artifact),
        "verdicts": selectors.compatibility_for(artifact),
        "files": artifact.files.all(),
        "can_write": can_write(request.user, artifact.workspace),
    }
    return render(request, "registry/artifact_detail.html", context)


def artifact_edit(request, pk):
    artifact = _artifact_for(request, pk, write=True)
    initial = {f: getattr(artifact, f) for f in ("name", "location", "revision", "description", "license")}
    initial["tags"] = ", ".join(artifact.tags)
    form = ArtifactEditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        with errors_on(form):
            services.artifact_update(artifact=artifact, **form.cleaned_data)
            messages.success(request, "Saved.")
            return redirect(artifact)
    return render(request, "form_page.html", {"form": form, "title": f"Edit {artifact.name}"})


def artifact_delete(request, pk):
    artifact = _artifact_for(request, pk, write=True)
    return confirm_delete(
        request, artifact, delete=lambda: services.artifact_delete(artifact=artifact), done_url="registry:artifact_list"
    )


@require_POST
def artifact_reinspect(request, pk):
    artifact = _artifact_for(request, pk, write=True)
    try:
        services.artifact_reinspect(artifact=artifact)
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect(artifact)


# Connections ---------------------------------------------------------------


def connection_list(request):
    connections = selectors.connections_for(request.user).order_by("workspace__name", "name")
    return render(request, "registry/connection_list.html", {"connections": connections})


def connection_create(request):
    form = ConnectionForm(request.POST or None, user=request.user, initial={"kind": request.GET.get("kind", "s3")})
    if request.method == "POST" and form.is_valid():
        fields, secrets = form.split()
        with errors_on(form):
            workspace = workspace_for_write(request.user, fields.pop("workspace"))
            connection = services.connection_create(workspace=workspace, user=request.user, secrets=secrets, **fields)
            messages.success(request, f"Saved {connection.name}. Test it to be sure it works.")
            return redirect(connection)
    return render(request, "registry/connection_form.html", {"form": form, "title": "New connection"})


def connection_detail(request, pk):
    connection = _connection_for(request, pk)
    context = {
        "connection": connection,
        "artifacts": connection.artifacts.all(),
        "can_write": can_write(request.user, connection.workspace),
    }
    return render(request, "registry/connection_detail.html", context)


def connection_edit(request, pk):
    connection = _connection_for(request, pk, write=True)
    fields = (
        "name", "endpoint_url", "region", "bucket", "addressing_style", "verify_tls", "ca_bundle", "root_path",
        "use_ambient_credentials",
    )  # fmt: skip
    form = ConnectionForm(
        request.POST or None,
        user=request.user,
        instance=connection,
        initial={f: getattr(connection, f) for f in fields},
    )
    if request.method == "POST" and form.is_valid():
        data, secrets = form.split()
        had_secrets = connection.has_secrets
        with errors_on(form):
            services.connection_update(connection=connection, secrets=secrets, user=request.user, **data)
            messages.success(request, "Saved.")
            if had_secrets and not connection.has_secrets:
                messages.warning(request, "The endpoint changed, so the saved secrets were removed: enter them again.")
            return redirect(connection)
    return render(request, "registry/connection_form.html", {"form": form, "title": f"Edit {connection.name}"})


@require_POST
def connection_test(request, pk):
    connection = _connection_for(request, pk, write=True)
    services.connection_test(connection=connection)
    if request.htmx:
        return render(request, "registry/connection_detail.html#check", {"connection": connection})
    return redirect(connection)


def connection_delete(request, pk):
    connection = _connection_for(request, pk, write=True)
    return confirm_delete(
        request,
        connection,
        delete=lambda: services.connection_delete(connection=connection),
        done_url="registry:connection_list",
    )
