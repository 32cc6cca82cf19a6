from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts import services
from accounts.api.filters import AuditEntryFilter
from accounts.forms import ApiTokenForm
from accounts.models import Membership
from accounts.selectors import audit_entries_for
from config import ratelimit


def settings_page(request):
    form = ApiTokenForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        _, new_token = services.api_token_create(
            user=request.user,
            name=form.cleaned_data["name"],
            scope=form.cleaned_data["scope"],
            expires_at=form.expires_at(),
        )
        form = ApiTokenForm()
    context = {
        "form": form,
        "new_token": new_token,
        "tokens": request.user.api_tokens.all(),
        "memberships": Membership.objects.filter(user=request.user).select_related("workspace"),
    }
    return render(request, "accounts/settings.html", context)


@require_GET
def audit_log(request):
    """The audit log of the workspaces the user owns (all of it for an administrator), newest first,
    narrowed by the same filters as the API's."""
    filters = AuditEntryFilter(request.GET or None, queryset=audit_entries_for(request.user))
    page = Paginator(filters.qs.select_related("workspace"), 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "accounts/audit.html", {"filters": filters, "page": page, "query": query.urlencode()})


@require_POST
def token_revoke(request, pk):
    token = get_object_or_404(request.user.api_tokens, pk=pk)
    services.api_token_revoke(token=token)
    messages.success(request, f"Revoked the token “{token.name}”.")
    return redirect("accounts:settings")


class SignInView(auth_views.LoginView):
    """Django's sign-in page, rate limited per address (429 with Retry-After),
    and slower after repeated failures: past the free failures for a username
    or an address, each further failure locks both out for twice as long as the
    one before (config/ratelimit.py)."""

    def post(self, request, *args, **kwargs):
        address = request.META.get("REMOTE_ADDR", "")
        username = request.POST.get("username", "")[:150]
        wait = ratelimit.hit(ratelimit.limit("signin"), address) or ratelimit.signin_locked(
            username=username, address=address
        )
        if wait is not None:
            return self.refuse(wait)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        locked = ratelimit.signin_failed(
            username=self.request.POST.get("username", "")[:150], address=self.request.META.get("REMOTE_ADDR", "")
        )
        if locked:
            return self.refuse(locked)
        return super().form_invalid(form)

    def form_valid(self, form):
        ratelimit.signin_succeeded(username=form.get_user().get_username())
        return super().form_valid(form)

    def refuse(self, wait: int):
        context = self.get_context_data(form=self.get_form_class()(self.request), wait=wait)
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(wait)
        return response
