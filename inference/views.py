from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from django.conf import settings as django_settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.models import Role
from config import charts
from config.errors import DomainError
from config.views import errors_on
from deployments.models import Deployment, DeploymentAdapter
from inference import selectors, services
from inference.forms import InferenceKeyForm
from inference.models import InferenceKey, UsageRecord, UsageTotal


def playground(request):
    """The Inference tab: chat with a deployment's base model or any of its
    loaded adapters, or several at once. The page's script calls the gateway
    (`/v1/`) with the signed-in session, so no key is in the page."""
    deployments = list(
        Deployment.objects.filter(workspace__memberships__user=request.user)
        .select_related("base", "node", "workspace")
        .prefetch_related("adapters")
    )
    wanted = request.GET.get("deployment", "")
    selected = next((d for d in deployments if str(d.pk) == wanted), None) or next(
        (d for d in deployments if d.status == Deployment.Status.READY), deployments[0] if deployments else None
    )
    targets = []
    if selected is not None:
        ready = selected.status == Deployment.Status.READY
        targets.append(
            {
                "id": selected.name,
                "label": f"{selected.name} (base model)",
                "ready": ready,
                "state": selected.get_status_display(),
            }
        )
        for a in selected.adapters.all():
            if a.state != DeploymentAdapter.State.DETACHING:
                loaded = ready and a.state == DeploymentAdapter.State.LOADED
                targets.append({"id": a.model_id, "label": a.model_id, "ready": loaded, "state": a.get_state_display()})
    config = {
        "gatewayUrl": request.build_absolute_uri("/v1"),
        "csrfCookie": django_settings.CSRF_COOKIE_NAME,
        "targets": targets,
    }
    context = {"deployments": deployments, "selected": selected, "targets": targets, "config": config}
    return render(request, "inference/playground.html", context)


def _keys_for(user):
    """The keys `user` may see and revoke: those of workspaces they own or edit."""
    return InferenceKey.objects.filter(
        workspace__memberships__user=user, workspace__memberships__role__in=[Role.OWNER, Role.EDITOR]
    ).select_related("workspace", "created_by")


def keys(request):
    """The Keys page: every gateway key of the workspaces the user owns or
    edits, and a form for a new one, which is shown once."""
    form = InferenceKeyForm(request.POST or None, user=request.user)
    new_key = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        with errors_on(form):
            _, new_key = services.inference_key_create(
                workspace=data["workspace"], name=data["name"], user=request.user, expires_at=data["expires_at"],
                deployments=data["deployments"] if data["scope"] == "chosen" else None,
            )  # fmt: skip
            form = InferenceKeyForm(user=request.user)
    context = {
        "form": form,
        "new_key": new_key,
        "keys": _keys_for(request.user).prefetch_related("deployments"),
        "gateway_url": request.build_absolute_uri("/v1"),
    }
    return render(request, "inference/keys.html", context)


@require_POST
def key_revoke(request, pk):
    key = _keys_for(request.user).filter(pk=pk).first()
    if key is None:
        raise Http404
    try:
        services.inference_key_revoke(key=key)
        messages.success(request, f"Revoked the key “{key.name}”. Requests with it are refused from now on.")
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect("inference:keys")


def usage(request):
    """The Usage page: requests and tokens through the gateway and the
    playground, per deployment, adapter or key, over the last hour, day or
    week, in the workspaces the user belongs to; and the latest requests."""
    period = request.GET.get("period", "day")
    by = request.GET.get("by", "deployment")
    period = period if period in selectors.PERIODS else "day"
    by = by if by in selectors.GROUPS else "deployment"
    records = UsageRecord.objects.filter(workspace__memberships__user=request.user)
    totals = UsageTotal.objects.filter(workspace__memberships__user=request.user)
    summary = selectors.usage_summary(records=records, totals=totals, period=period, by=by)
    step = timedelta(seconds=summary["bucket_seconds"])
    start, end = charts.floor_to(summary["since"], step), charts.floor_to(timezone.now(), step) + step
    requests_by, tokens_by = defaultdict(dict), defaultdict(dict)
    for bucket in summary["series"]:
        requests_by[bucket["name"]][bucket["start"]] = bucket["requests"]
        tokens_by[bucket["name"]][bucket["start"]] = bucket["prompt_tokens"] + bucket["completion_tokens"]
    label = {"week": "%a %H:%M", "month": "%b %d"}.get(period, "%H:%M")
    context = {
        "summary": summary, "period": period, "by": by,
        "periods": list(selectors.PERIODS), "groupings": list(selectors.GROUPS),
        "requests_chart": charts.line_chart(requests_by, start=start, end=end, step=step, label_format=label),
        "tokens_chart": charts.line_chart(tokens_by, start=start, end=end, step=step, label_format=label),
        "recent": records.select_related("key", "user", "deployment")[:20],
    }  # fmt: skip
    return render(request, "inference/usage.html", context)
