"""What the audit log may be narrowed by (django-filter), in its page and its API; a parameter not named
here answers 400 in the API (config.api.StrictFilterBackend)."""

from __future__ import annotations

import django_filters

from audit.models import AuditEntry
from config.api import DateTimeFilter, IdFilter


class AuditEntryFilter(django_filters.FilterSet):
    workspace = django_filters.CharFilter(field_name="workspace__slug", help_text="A workspace's slug.")
    actor = django_filters.CharFilter(field_name="actor_name", lookup_expr="iexact", help_text="A username.")
    action = django_filters.CharFilter(
        lookup_expr="startswith", help_text='An action ("deployment.stop") or its kind ("deployment.").'
    )
    target_type = django_filters.CharFilter(help_text='"deployment", "connection", "artifact", "membership", …')
    target_id = IdFilter()
    since = DateTimeFilter(field_name="at", lookup_expr="gte")
    until = DateTimeFilter(field_name="at", lookup_expr="lt")

    class Meta:
        model = AuditEntry
        fields = ["workspace", "actor", "action", "target_type", "target_id", "since", "until"]
