from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.models import Role
from config.errors import DomainError
from inference import services
from inference.forms import InferenceKeyForm
from inference.models import InferenceKey


def playground(request):
    # The playground needs a running deployment (issue #4) first.
    return render(request, "inference/playground.html")


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
        try:
            _, new_key = services.inference_key_create(
                workspace=data["workspace"], name=data["name"], user=request.user, expires_at=data["expires_at"],
                deployments=data["deployments"] if data["scope"] == "chosen" else None,
            )  # fmt: skip
            form = InferenceKeyForm(user=request.user)
        except DomainError as exc:
            form.add_error(None, exc.message)
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
