from __future__ import annotations

from datetime import timedelta

from django import forms
from django.utils import timezone

from accounts.models import TokenScope
from accounts.selectors import writable_workspaces_for
from config.forms import StyledForm


class WorkspaceForm(StyledForm):
    """A form that makes something in a workspace: `workspace` offers, and
    `self.workspaces` holds, the workspaces `user` may write to."""

    workspace = forms.ModelChoiceField(queryset=None, empty_label=None)

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.workspaces = writable_workspaces_for(user)
        self.fields["workspace"].queryset = self.workspaces


class ApiTokenForm(StyledForm):
    # Days until a token stops working; "" never.
    EXPIRY_CHOICES = [("30", "Expires in 30 days"), ("7", "Expires in 7 days"), ("90", "Expires in 90 days"),
                      ("365", "Expires in a year"), ("", "Never expires")]  # fmt: skip

    name = forms.CharField(max_length=100, help_text="What will use it, e.g. “nightly eval script”.")
    scope = forms.ChoiceField(
        choices=TokenScope.choices,
        initial=TokenScope.WRITE,
        help_text="Read: look only. Write: change things too. Admin: also manage tokens and members.",
    )
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, initial="30")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["scope"].required = False  # a post without one gets the default, write

    def clean_scope(self) -> str:
        return self.cleaned_data.get("scope") or TokenScope.WRITE

    def expires_at(self):
        """When the token should stop working, from the chosen number of days (None: never)."""
        days = self.cleaned_data.get("expires_in")
        return timezone.now() + timedelta(days=int(days)) if days else None
