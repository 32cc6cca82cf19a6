from __future__ import annotations

from django import forms

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
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. “nightly eval script”.")
