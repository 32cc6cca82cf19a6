from __future__ import annotations

from django import forms

from config.forms import StyledForm


class ApiTokenForm(StyledForm):
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. “nightly eval script”.")
