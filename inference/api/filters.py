"""What the usage list may be narrowed by (django-filter); a parameter not named here answers 400
(config.api.StrictFilterBackend)."""

from __future__ import annotations

import django_filters

from config.api import IdFilter
from inference.models import UsageRecord


class UsageRecordFilter(django_filters.FilterSet):
    workspace = django_filters.CharFilter(field_name="workspace__slug", help_text="A workspace's slug.")
    deployment = IdFilter(field_name="deployment_id", help_text="A deployment's id.")
    model = django_filters.CharFilter(help_text="The model id asked for (deployment or deployment:adapter).")
    key = django_filters.CharFilter(field_name="key__prefix", help_text="An inference key's prefix.")

    class Meta:
        model = UsageRecord
        fields = ["workspace", "deployment", "model", "key"]
