from __future__ import annotations

from django import forms

from accounts.forms import WorkspaceForm
from config.forms import StyledForm
from registry.models import (
    MAX_CA_BUNDLE,
    MAX_DESCRIPTION,
    MAX_SECRET,
    MAX_TAGS,
    ArtifactKind,
    Connection,
    ConnectionKind,
)
from registry.sources.network import endpoint_problem


class ConnectionForm(WorkspaceForm):
    name = forms.CharField(max_length=100)
    kind = forms.ChoiceField(choices=ConnectionKind.choices)
    endpoint_url = forms.URLField(
        assume_scheme="https",
        required=False,
        max_length=500,
        help_text="S3: the store's URL (blank for AWS). Hub: a private hub or mirror.",
    )
    region = forms.CharField(required=False, max_length=50)
    bucket = forms.CharField(required=False, max_length=255)
    addressing_style = forms.ChoiceField(choices=[("path", "Path-style"), ("virtual", "Virtual-host")], required=False)
    verify_tls = forms.BooleanField(required=False, initial=True, label="Verify TLS certificates")
    ca_bundle = forms.CharField(
        required=False, max_length=MAX_CA_BUNDLE, widget=forms.Textarea(attrs={"rows": 3}), label="CA bundle (PEM)"
    )
    root_path = forms.CharField(required=False, max_length=500, label="Folder (local path)")
    # Secrets: never rendered back into the page; blank on edit keeps the saved value.
    access_key_id = forms.CharField(
        required=False, max_length=MAX_SECRET, widget=forms.PasswordInput(render_value=False)
    )
    secret_access_key = forms.CharField(
        required=False, max_length=MAX_SECRET, widget=forms.PasswordInput(render_value=False)
    )
    token = forms.CharField(
        required=False, max_length=MAX_SECRET, widget=forms.PasswordInput(render_value=False), label="Hub token"
    )

    use_ambient_credentials = forms.BooleanField(
        required=False,
        label="Use the console's own credentials",
        help_text="Administrators only: without keys of its own, read with the console's instance role or "
        "environment instead of anonymously.",
    )

    SECRET_FIELDS = ("access_key_id", "secret_access_key", "token")

    def __init__(self, *args, user, instance: Connection | None = None, **kwargs):
        super().__init__(*args, user=user, **kwargs)
        if not user.is_staff:
            del self.fields["use_ambient_credentials"]
        if instance is not None:
            del self.fields["workspace"]
            del self.fields["kind"]
            for name in self.SECRET_FIELDS:
                self.fields[name].help_text = "Saved; leave blank to keep it." if instance.has_secrets else ""

    def clean_endpoint_url(self) -> str:
        url = self.cleaned_data["endpoint_url"]
        if problem := endpoint_problem(url):
            raise forms.ValidationError(problem)
        return url

    def split(self) -> tuple[dict, dict]:
        data = dict(self.cleaned_data)
        secrets = {k: data.pop(k) for k in self.SECRET_FIELDS if k in data}
        data["addressing_style"] = data.get("addressing_style") or "path"
        return data, secrets


class ArtifactForm(WorkspaceForm):
    name = forms.CharField(max_length=100)
    kind = forms.ChoiceField(choices=ArtifactKind.choices, widget=forms.RadioSelect, initial=ArtifactKind.BASE)
    connection = forms.ModelChoiceField(queryset=None, empty_label=None)
    location = forms.CharField(
        max_length=500, help_text="A bucket prefix, a repository id (org/name) or a folder under the connection's."
    )
    revision = forms.CharField(required=False, max_length=200, help_text="Hub only: a branch, tag or commit.")
    description = forms.CharField(required=False, max_length=MAX_DESCRIPTION, widget=forms.Textarea(attrs={"rows": 2}))
    tags = forms.CharField(required=False, max_length=MAX_TAGS * 51, help_text="Comma-separated.")
    license = forms.CharField(required=False, max_length=100)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["connection"].queryset = Connection.objects.filter(workspace__in=self.workspaces)


class ArtifactEditForm(StyledForm):
    name = forms.CharField(max_length=100)
    location = forms.CharField(max_length=500, help_text="Changing it, or the revision, inspects again.")
    revision = forms.CharField(required=False, max_length=200)
    description = forms.CharField(required=False, max_length=MAX_DESCRIPTION, widget=forms.Textarea(attrs={"rows": 2}))
    tags = forms.CharField(required=False, max_length=MAX_TAGS * 51, help_text="Comma-separated.")
    license = forms.CharField(required=False, max_length=100)


class ArtifactFilterForm(StyledForm):
    search = forms.CharField(
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "Search names, tags, architectures", "type": "search"}),
    )
    kind = forms.ChoiceField(required=False, choices=[("", "Any kind"), *ArtifactKind.choices])
    source = forms.ChoiceField(required=False, choices=[("", "Any source"), *ConnectionKind.choices])
    status = forms.ChoiceField(
        required=False,
        choices=[
            ("", "Any status"),
            ("pending", "Pending"),
            ("inspecting", "Inspecting"),
            ("ready", "Ready"),
            ("invalid", "Invalid"),
        ],
    )
