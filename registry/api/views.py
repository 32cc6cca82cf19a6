from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.access import get_for, workspace_for_write
from config.api import validated
from registry import selectors, services
from registry.api.filters import ArtifactFilter, CompatibilityFilter, ConnectionFilter
from registry.api.serializers import (
    KIND_OF_ENDPOINT,
    ArtifactDetailSerializer,
    ArtifactSerializer,
    ArtifactUpdateSerializer,
    ArtifactWriteSerializer,
    CompatibilitySerializer,
    ConnectionSerializer,
    ConnectionTestSerializer,
    ConnectionWriteSerializer,
)
from registry.models import Artifact, Compatibility, Connection


class ConnectionViewSet(viewsets.ModelViewSet):
    """Storage connections. Secrets are write-only: responses say only whether they are set."""

    serializer_class = ConnectionSerializer
    filterset_class = ConnectionFilter
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Connection.objects.none()
        return selectors.connections_for(self.request.user)

    def get_object(self, *, write: bool = False) -> Connection:
        return get_for(self.request.user, Connection.objects.all(), self.kwargs["pk"], write=write)

    @extend_schema(request=ConnectionWriteSerializer, responses={201: ConnectionSerializer})
    def create(self, request):
        fields, secrets = validated(ConnectionWriteSerializer, request).split()
        workspace = workspace_for_write(request.user, fields.pop("workspace", None))
        connection = services.connection_create(workspace=workspace, user=request.user, secrets=secrets, **fields)
        return Response(ConnectionSerializer(connection).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ConnectionWriteSerializer, responses=ConnectionSerializer)
    def partial_update(self, request, pk=None):
        connection = self.get_object(write=True)
        fields, secrets = validated(ConnectionWriteSerializer, request, partial=True).split()
        fields.pop("workspace", None)
        fields.pop("kind", None)
        connection = services.connection_update(connection=connection, secrets=secrets, user=request.user, **fields)
        return Response(ConnectionSerializer(connection).data)

    def destroy(self, request, pk=None):
        services.connection_delete(connection=self.get_object(write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=ConnectionTestSerializer)
    @action(detail=True, methods=["post"])
    def test(self, request, pk=None):
        """Tries the connection now. The test having run, the answer is 200 whether it passed or not:
        `ok` says which, `message` what was checked or exactly what failed. Both are kept on the
        connection as `last_check_ok` and `last_check_message`."""
        connection = self.get_object(write=True)
        ok, message = services.connection_test(connection=connection)
        return Response({"ok": ok, "message": message, **ConnectionSerializer(connection).data})


class ArtifactViewSet(viewsets.GenericViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Base models (`/models/`) or LoRA adapters (`/adapters/`). Registering
    answers 202: poll the object until `status` is ready or invalid."""

    endpoint = "models"
    filterset_class = ArtifactFilter

    def get_serializer_class(self):
        return ArtifactDetailSerializer if self.action == "retrieve" else ArtifactSerializer

    @property
    def kind(self) -> str:
        return KIND_OF_ENDPOINT[self.endpoint]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Artifact.objects.none()
        return selectors.artifacts_for(self.request.user, kind=self.kind)

    def get_object(self, *, write: bool = False) -> Artifact:
        return get_for(self.request.user, Artifact.objects.filter(kind=self.kind), self.kwargs["pk"], write=write)

    def retrieve(self, request, pk=None):
        return Response(ArtifactDetailSerializer(self.get_object()).data)

    @extend_schema(request=ArtifactWriteSerializer, responses={202: ArtifactSerializer})
    def create(self, request):
        data = dict(validated(ArtifactWriteSerializer, request).validated_data)
        workspace = workspace_for_write(request.user, data.pop("workspace", None))
        # A connection of another workspace is 404, the same answer as an id that does not exist.
        connection = get_for(request.user, Connection.objects.filter(workspace=workspace), data.pop("connection"))
        artifact = services.artifact_register(
            workspace=workspace, kind=self.kind, connection=connection, user=request.user, **data
        )
        return Response(ArtifactSerializer(artifact).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=ArtifactUpdateSerializer, responses=ArtifactSerializer)
    def partial_update(self, request, pk=None):
        artifact = self.get_object(write=True)
        data = validated(ArtifactUpdateSerializer, request, partial=True).validated_data
        artifact = services.artifact_update(artifact=artifact, **data)
        return Response(ArtifactSerializer(artifact).data)

    @extend_schema(responses={204: None, 409: OpenApiResponse(description="A deployment or a node's cache uses it.")})
    def destroy(self, request, pk=None):
        services.artifact_delete(artifact=self.get_object(write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: ArtifactSerializer})
    @action(detail=True, methods=["post"])
    def reinspect(self, request, pk=None):
        artifact = services.artifact_reinspect(artifact=self.get_object(write=True))
        return Response(ArtifactSerializer(artifact).data, status=status.HTTP_202_ACCEPTED)

    # The whole list, unfiltered and in one answer (one row per artifact of the other kind): no filters or
    # pages, which the schema would otherwise declare for it as for the lists.
    @extend_schema(responses=CompatibilitySerializer(many=True))
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def compatibility(self, request, pk=None):
        """For a model: the adapters that fit it and those that do not; for an adapter: the models."""
        verdicts = selectors.compatibility_for(self.get_object())
        return Response(CompatibilitySerializer(verdicts, many=True).data)


class ModelViewSet(ArtifactViewSet):
    endpoint = "models"


class AdapterViewSet(ArtifactViewSet):
    endpoint = "adapters"


class CompatibilityViewSet(viewsets.ReadOnlyModelViewSet):
    """Every adapter × base model verdict in the caller's workspaces."""

    serializer_class = CompatibilitySerializer
    filterset_class = CompatibilityFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Compatibility.objects.none()
        return selectors.compatibility_visible_to(self.request.user)
