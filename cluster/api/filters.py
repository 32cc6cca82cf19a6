"""What the cache list may be narrowed by (django-filter); a parameter not named here answers 400
(config.api.StrictFilterBackend)."""

from __future__ import annotations

import django_filters

from cluster.models import CachedArtifact
from config.api import IdFilter


class CachedArtifactFilter(django_filters.FilterSet):
    node = django_filters.CharFilter(field_name="node__name", help_text="A node's name.")
    artifact = IdFilter(field_name="artifact_id", help_text="A model's or adapter's id.")
    status = django_filters.ChoiceFilter(choices=CachedArtifact.Status.choices)

    class Meta:
        model = CachedArtifact
        fields = ["node", "artifact", "status"]
