"""What the registry's lists may be narrowed by (django-filter); a parameter
not named here answers 400 (config.api.StrictFilterBackend)."""

from __future__ import annotations

import django_filters

from config.api import IdFilter
from registry import selectors
from registry.models import Artifact, ArtifactStatus, Compatibility, Connection, ConnectionKind


class ConnectionFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="iexact", help_text="The connection's name (any case).")
    workspace = django_filters.CharFilter(field_name="workspace__slug", help_text="A workspace's slug.")
    kind = django_filters.ChoiceFilter(choices=ConnectionKind.choices)

    class Meta:
        model = Connection
        fields = ["name", "workspace", "kind"]


class ArtifactFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="iexact", help_text="The model's or adapter's name (any case).")
    workspace = django_filters.CharFilter(field_name="workspace__slug", help_text="A workspace's slug.")
    connection = IdFilter(field_name="connection_id", help_text="A connection's id.")
    status = django_filters.ChoiceFilter(choices=ArtifactStatus.choices)
    source = django_filters.ChoiceFilter(
        field_name="connection__kind", choices=ConnectionKind.choices, help_text="The kind of its connection."
    )
    search = django_filters.CharFilter(
        method="search_for", help_text="Text in the name, description, location, architecture or tags."
    )

    class Meta:
        model = Artifact
        fields = ["name", "workspace", "connection", "status", "source", "search"]

    def search_for(self, queryset, name, value):
        return selectors.artifacts_matching(queryset, value)


class CompatibilityFilter(django_filters.FilterSet):
    adapter = IdFilter(field_name="adapter_id", help_text="An adapter's id.")
    base = IdFilter(field_name="base_id", help_text="A base model's id.")
    compatible = django_filters.BooleanFilter()
    workspace = django_filters.CharFilter(field_name="adapter__workspace__slug", help_text="A workspace's slug.")

    class Meta:
        model = Compatibility
        fields = ["adapter", "base", "compatible", "workspace"]
