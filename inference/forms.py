from __future__ import annotations

from django import forms

from accounts.forms import WorkspaceForm
from config.forms import ModelMultipleIdsField
from deployments.models import Deployment


class InferenceKeyForm(WorkspaceForm):
    name = forms.CharField(max_length=100, help_text="What will use it, such as “support chatbot”.")
    scope = forms.ChoiceField(
        choices=[("all", "Every deployment of the workspace, now and later"), ("chosen", "Only the deployments chosen")],
        initial="all", widget=forms.RadioSelect,
    )  # fmt: skip
    deployments = ModelMultipleIdsField(queryset=None, required=False, widget=forms.CheckboxSelectMultiple)
    expires_at = forms.DateTimeField(
        required=False, label="Expires", help_text="Blank: never.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )  # fmt: skip

    field_order = ["name", "workspace"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["deployments"].queryset = Deployment.objects.filter(workspace__in=self.workspaces)

    def clean(self):
        data = super().clean()
        if data.get("scope") == "chosen":
            chosen = data.get("deployments") or []
            if not chosen:
                self.add_error("deployments", "Choose at least one deployment, or let the key use all of them.")
            elif data.get("workspace") and any(d.workspace_id != data["workspace"].pk for d in chosen):
                self.add_error("deployments", "Choose deployments of the key's own workspace.")
        return data
