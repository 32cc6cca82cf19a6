from __future__ import annotations

from django import forms

from cluster.models import Node
from config.forms import StyledForm


class FetchForm(StyledForm):
    node = forms.ModelChoiceField(queryset=Node.objects.all(), empty_label=None)
