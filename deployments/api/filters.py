"""What the deployments list may be narrowed by (django-filter); a parameter not named here answers 400
(config.api.StrictFilterBackend)."""

from __future__ import annotations

import django_filters

from config.api import IdFilter
from deployments.models import Deployment


class DeploymentFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="iexact", help_text="The deployment's name (any case).")
    workspace = django_filters.CharFilter(field_name="workspace__slug", help_text="A workspace's slug.")
    status = django_filters.ChoiceFilter(choices=Deployment.Status.choices)
    node = django_filters.CharFilter(field_name="node__name", help_text="A node's name.")
    base = IdFilter(field_name="base_id", help_text="A base model's id.")

    class Meta:
        model = Deployment
        fields = ["name", "workspace", "status", "node", "base"]
