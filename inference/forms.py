from __future__ import annotations

from django import forms

from accounts.selectors import writable_workspaces_for
from config.forms import StyledForm
from deployments.models import Deployment


class InferenceKeyForm(StyledForm):
    name = forms.CharField(max_length=100, help_text="What will use it, such as “support chatbot”.")
    workspace = forms.ModelChoiceField(queryset=None, empty_label=None)
    scope = forms.ChoiceField(
        choices=[("all", "Every deployment of the workspace, now and later"), ("chosen", "Only the deployments chosen")],
        initial="all", widget=forms.RadioSelect,
    )  # fmt: skip
    deployments = forms.ModelMultipleChoiceField(queryset=None, required=False, widget=forms.CheckboxSelectMultiple)
    expires_at = forms.DateTimeField(
        required=False, label="Expires", help_text="Blank: never.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )  # fmt: skip

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        workspaces = writable_workspaces_for(user)
        self.fields["workspace"].queryset = workspaces
        self.fields["deployments"].queryset = Deployment.objects.filter(workspace__in=workspaces)

    def clean(self):
        data = super().clean()
        if data.get("scope") == "chosen":
            chosen = data.get("deployments") or []
            if not chosen:
                self.add_error("deployments", "Choose at least one deployment, or let the key use all of them.")
            elif data.get("workspace") and any(d.workspace_id != data["workspace"].pk for d in chosen):
                self.add_error("deployments", "Choose deployments of the key's own workspace.")
        return data
