from __future__ import annotations

import json
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib import messages
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseStopPolling

from accounts.access import can_write, get_for, workspace_for_write
from config import charts as charts_module
from config.errors import DomainError
from config.views import confirm_delete, errors_on
from deployments import logs, revisions, selectors, server_metrics, services, wizard
from deployments.forms import DeploymentEditForm
from deployments.models import TIMELINE_EVENTS, Deployment
from registry.models import Artifact, Compatibility


def _deployment_for(request, pk, *, write: bool = False) -> Deployment:
    return get_for(request.user, Deployment.objects.select_related("node", "base", "workspace"), pk, write=write)


def dashboard(request):
    """The home page: what runs and what fails in the caller's workspaces, the nodes, the latest events."""
    return render(request, "deployments/dashboard.html", selectors.dashboard_for(request.user))


def deployment_list(request):
    deployments = selectors.deployment_rows(request.user)
    return render(request, "deployments/deployment_list.html", {"deployments": deployments})


def _server_figures(deployment: Deployment, span: str) -> dict:
    """The deployment page's charts of its server's own figures over the last hour or day."""
    span = span if span in server_metrics.WINDOWS else "hour"
    samples = server_metrics.window(deployment.pk, span)
    end = server_metrics.now()
    start = end - (3600 if span == "hour" else 86400)
    labels = {"start_label": datetime.fromtimestamp(start, UTC).strftime("%H:%M"), "end_label": "now"}
    charts = {
        name: charts_module.time_chart(lines, start=start, end=end, height=120, **labels)
        for name, lines in server_metrics.series(samples).items()
    }
    return {"figures": charts, "latest": samples[-1] if samples else None, "span": span, "samples": len(samples)}


def _live_context(request, deployment: Deployment) -> dict:
    """What the live section needs, on the whole page and on each refresh alike (so a refresh keeps the
    Detach buttons): who may act, and which adapters the server's last report says are in its running batch."""
    sample = server_metrics.latest(deployment.pk)
    return {
        "deployment": deployment,
        "can_write": can_write(request.user, deployment.workspace),
        "running_adapters": set(sample.adapters_running) if sample else set(),
    }


def deployment_detail(request, pk):
    deployment = _deployment_for(request, pk)
    if request.htmx and request.GET.get("partial") == "live":
        if deployment.is_terminal and request.GET.get("terminal") == "1":
            return HttpResponseStopPolling()
        return render(request, "deployments/deployment_detail.html#live", _live_context(request, deployment))
    if request.GET.get("partial") == "metrics":
        if request.htmx and deployment.is_terminal and request.GET.get("terminal") == "1":
            return HttpResponseStopPolling()
        context = {"deployment": deployment, **_server_figures(deployment, request.GET.get("span", "hour"))}
        return render(request, "deployments/deployment_detail.html#metrics", context)
    attachable = Artifact.objects.filter(
        pk__in=Compatibility.objects.filter(base=deployment.base, compatible=True).values("adapter")
    ).exclude(pk__in=deployment.adapters.values("adapter"))
    context = {
        **_live_context(request, deployment),
        "attachable": attachable,
        "gateway_url": request.build_absolute_uri("/v1"),
        "revisions": revisions.history(
            deployment.revisions.select_related("node", "created_by"), current=deployment.revision
        ),
        **_server_figures(deployment, request.GET.get("span", "hour")),
    }
    return render(request, "deployments/deployment_detail.html", context)


def deployment_edit(request, pk):
    """Arguments and resources; saving makes a new revision, which the node redeploys."""
    deployment = _deployment_for(request, pk, write=True)
    form = DeploymentEditForm(
        request.POST or None, initial=DeploymentEditForm.initial_for(deployment), base=deployment.base
    )
    if request.method == "POST" and form.is_valid():
        with errors_on(form):
            deployment = services.deployment_update(
                deployment=deployment, **form.update_arguments(),
                allow_trust_remote_code=django_settings.PLUGBOARD_ALLOW_TRUST_REMOTE_CODE, user=request.user,
            )  # fmt: skip
            messages.success(
                request, f"Saved as revision {deployment.revision}: redeploying on {deployment.node.name}."
            )
            return redirect(deployment)
    return render(request, "deployments/deployment_edit.html", {"deployment": deployment, "form": form})


@require_POST
def deployment_rollback(request, pk, number):
    """Makes a new revision equal to revision `number`, which the node redeploys."""
    deployment = _deployment_for(request, pk, write=True)
    try:
        deployment = services.deployment_rollback(
            deployment=deployment, revision_number=number, user=request.user,
            allow_trust_remote_code=django_settings.PLUGBOARD_ALLOW_TRUST_REMOTE_CODE,
        )  # fmt: skip
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Rolled back to revision {number} as revision {deployment.revision}: redeploying.")
    return redirect(deployment)


def _act(request, pk, action):
    """Calls `action` on the deployment, then goes back to the page the form was on (its `next`,
    e.g. the deployments list) or else to the deployment; a refusal is shown there."""
    deployment = _deployment_for(request, pk, write=True)
    try:
        action(deployment)
    except DomainError as exc:
        messages.error(request, exc.message)
    back = request.POST.get("next", "")
    # Only a path of this site: redirect() would take any other text for a URL name (a 500 when it is none).
    if back.startswith("/") and url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return HttpResponseRedirect(back)
    return redirect(deployment)


@require_POST
def deployment_stop(request, pk):
    return _act(request, pk, lambda d: services.deployment_stop(deployment=d))


@require_POST
def deployment_restart(request, pk):
    return _act(request, pk, lambda d: services.deployment_restart(deployment=d))


@require_POST
def deployment_start(request, pk):
    return _act(request, pk, lambda d: services.deployment_start(deployment=d))


def deployment_delete(request, pk):
    deployment = _deployment_for(request, pk, write=True)
    return confirm_delete(
        request,
        deployment,
        delete=lambda: services.deployment_delete(deployment=deployment),
        done_url="deployments:list",
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
    if attached is None:
        raise Http404("No adapter of this deployment is served under that name.")
    services.adapter_detach(attached=attached)
    return redirect(deployment)


WIZARD = "deploy_wizard"


def deploy_wizard_start(request):
    """A new deployment: the wizard's first step with the answers of an earlier wizard forgotten."""
    request.session.pop(WIZARD, None)
    return redirect("deployments:wizard", step="base")


def deploy_wizard_duplicate(request, pk):
    """A new wizard holding everything one deployment has (base, adapters, node, settings), under a new
    name: each step can still be changed, and Deploy checks it all again."""
    deployment = _deployment_for(request, pk)
    request.session[WIZARD] = wizard.answers_from(deployment)
    messages.info(request, f"A copy of {deployment.name}: change what you need, then deploy it.")
    return redirect("deployments:wizard", step="base")


def deploy_wizard_preflight(request):
    """The resources step's estimate for the values in its fields now (htmx, as they change): only
    the fields that are valid count, the others keep what the step holds."""
    data = request.session.get(WIZARD, {})
    if "base" not in data:
        raise Http404
    base = get_for(request.user, Artifact.objects.all(), data["base"]["base"])
    form = wizard.ResourcesForm(request.GET, base=base)
    form.is_valid()
    typed = {name: form.cleaned_data[name] for name in form.fields if name in form.cleaned_data}
    answers = {**data, "resources": {**data.get("resources", {}), **wizard.stored(typed)}}
    return render(request, "deployments/wizard.html#preflight", {"preflight": wizard.preflight(answers, base)})


def deploy_wizard(request, step: str):
    """The five-step deploy wizard; answers are kept in the session until Deploy
    (Back and the steps' own URLs resume them; deploy_wizard_start forgets them)."""
    if step not in wizard.STEPS:
        raise Http404
    data = request.session.get(WIZARD, {})
    base = None
    if step != "base":
        if "base" not in data:
            return redirect("deployments:wizard", step="base")
        base = get_for(request.user, Artifact.objects.all(), data["base"]["base"])
    index = wizard.STEPS.index(step)
    back = wizard.STEPS[max(0, index - 1)]
    forward = wizard.STEPS[min(len(wizard.STEPS) - 1, index + 1)]
    form = None
    error = None
    if step == "base":
        form = wizard.BaseForm(request.POST or None, user=request.user, initial=data.get("base"))
    elif step == "resources":
        initial = data.get("resources") or {"placement": "auto"}
        form = wizard.ResourcesStepForm(request.POST or None, initial=initial, base=base, answers=data)
    elif step == "server":
        form = wizard.ServerStepForm(request.POST or None, initial=wizard.server_initial(data), base=base, answers=data)

    if request.method == "POST":
        going_back = "back" in request.POST
        try:
            if step == "adapters":
                data["adapters"] = wizard.read_adapters(request.POST, base, name=data["base"]["name"])
            elif step == "review" and not going_back:
                workspace = workspace_for_write(request.user, base.workspace)
                deployment = wizard.deploy(data, workspace=workspace, user=request.user)
                request.session.pop(WIZARD, None)
                messages.success(
                    request, f"Deploying {deployment.name}: the node fetches what it needs, then starts the server."
                )
                return redirect(deployment)
            elif form is not None and form.is_valid():
                data[step] = wizard.stored(form.cleaned_data)
            elif form is not None and not going_back:
                raise DomainError("")
        except DomainError as exc:
            error = exc.message
        else:
            request.session[WIZARD] = data
            return redirect("deployments:wizard", step=back if going_back else forward)
        if going_back:
            request.session[WIZARD] = data
            return redirect("deployments:wizard", step=back)

    context = {
        "step": step,
        "steps": [(s, wizard.TITLES[s]) for s in wizard.STEPS],
        "form": form,
        "error": error,
        "data": data,
        "base": base,
    }
    if step == "base":
        context["bases"] = wizard.ready_bases(request.user)
    elif step == "adapters":
        # A refused choice is shown as it was sent, to be corrected.
        shown = {**data, "adapters": wizard.posted_adapters(request.POST)} if error else data
        context["rows"] = wizard.adapter_rows(base, shown)
    elif step == "resources":
        context["preflight"] = wizard.preflight(data, base)
        context["node_kinds_json"] = json.dumps(wizard.node_kinds())
    elif step == "server":
        try:
            context["node"], _, _ = wizard.resolve_placement(data, base)
        except DomainError as exc:
            context["error"] = context["error"] or exc.message
    elif step == "review":
        try:
            placed = wizard.resolve_placement(data, base)
            context["node"], _, context["indices"] = placed
            context["preview"] = wizard.command_preview(data, base, placed)
            context["adapters"] = wizard.chosen_adapters(data)
        except DomainError as exc:
            context["error"] = exc.message
    return render(request, "deployments/wizard.html", context)


def deployment_events(request, pk):
    """The deployment's whole timeline (the newest PLUGBOARD_EVENTS_KEPT), newest first, a page at a time:
    the deployment page shows only the latest."""
    deployment = _deployment_for(request, pk)
    page = Paginator(deployment.events.order_by("-created_at", "-pk"), TIMELINE_EVENTS).get_page(
        request.GET.get("page")
    )
    context = {"deployment": deployment, "page": page, "kept": django_settings.PLUGBOARD_EVENTS_KEPT}
    return render(request, "deployments/events.html", context)


def deployment_log(request, pk):
    """The server log: its last lines, followed while the page is open (htmx polls the `body`
    partial), searched, without the console's own checks unless `health_checks=1`."""
    deployment = _deployment_for(request, pk)
    if request.htmx and deployment.is_terminal and request.GET.get("terminal") == "1":
        return HttpResponseStopPolling()
    search = request.GET.get("search", "")[:200]
    health_checks = request.GET.get("health_checks") == "1"
    excerpt = logs.read(
        deployment.log_path, copy=deployment.log_tail, search=search, health_checks=health_checks,
        secrets=[deployment.api_key],
    )  # fmt: skip
    context = {
        "deployment": deployment,
        "log": excerpt,
        "log_search": search,
        "health_checks": health_checks,
        "searched_mib": logs.SEARCHED_BYTES // logs.MiB,
    }
    template = "deployments/_log.html#body" if request.htmx else "deployments/deployment_log.html"
    return render(request, template, context)


async def _in_thread(chunks):
    """Yields `chunks` (a blocking iterator) read off the event loop: under ASGI, Django
    would otherwise collect a synchronous iterator whole before sending it."""
    try:
        while (chunk := await sync_to_async(next, thread_sensitive=False)(chunks, None)) is not None:
            yield chunk
    finally:
        if close := getattr(chunks, "close", None):
            close()


def deployment_log_download(request, pk):
    """The whole server log as a text file, streamed a chunk at a time, the deployment's key masked."""
    deployment = _deployment_for(request, pk)
    secrets = [deployment.api_key]  # servers started before the key left the command line printed it there
    try:
        chunks = logs.stream(deployment.log_path, secrets=secrets)
    except OSError:  # not on this host: the last lines the node reported are all there is
        chunks = iter([logs.mask(deployment.log_tail, secrets).encode()])
    if isinstance(request, ASGIRequest):
        chunks = _in_thread(chunks)
    response = StreamingHttpResponse(chunks, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{deployment.name}.log"'
    return response
