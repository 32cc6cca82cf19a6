from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.access import get_for
from cluster import selectors, services
from cluster.api.filters import CachedArtifactFilter
from cluster.api.serializers import (
    AcceleratorSerializer,
    CachedArtifactSerializer,
    FetchRequestSerializer,
    NodeSerializer,
)
from cluster.models import Accelerator, CachedArtifact, Node
from config.api import validated
from registry.models import Artifact


class NodeViewSet(viewsets.ReadOnlyModelViewSet):
    """Nodes (shared by every workspace), with their accelerators and runtimes."""

    serializer_class = NodeSerializer
    queryset = Node.objects.prefetch_related("accelerators")


class AcceleratorViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = AcceleratorSerializer
    queryset = Accelerator.objects.select_related("node")


class CacheViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Artifacts in node caches. Requesting a fetch answers 202: poll until
    `status` is ready, failed or cancelled."""

    serializer_class = CachedArtifactSerializer
    filterset_class = CachedArtifactFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return CachedArtifact.objects.none()
        return selectors.cached_visible_to(self.request.user)

    def _writable(self) -> CachedArtifact:
        return get_for(self.request.user, CachedArtifact.objects.select_related("node", "artifact"), self.kwargs["pk"],
                       write=True, via="artifact__workspace")  # fmt: skip

    @extend_schema(request=FetchRequestSerializer, responses={202: CachedArtifactSerializer})
    def create(self, request):
        data = validated(FetchRequestSerializer, request).validated_data
        artifact = get_for(request.user, Artifact.objects.all(), data["artifact"], write=True)
        cached = services.artifact_fetch_request(artifact=artifact, node=data["node"])
        return Response(CachedArtifactSerializer(cached).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=CachedArtifactSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        cached = services.artifact_fetch_cancel(cached=self._writable())
        return Response(CachedArtifactSerializer(cached).data)

    @extend_schema(responses={202: None})
    def destroy(self, request, pk=None):
        """Removes the artifact from the node's cache (the node's agent does it); refused while in use."""
        services.cache_remove_request(cached=self._writable())
        return Response(status=status.HTTP_202_ACCEPTED)
