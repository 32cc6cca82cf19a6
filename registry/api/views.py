from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.access import get_for, workspace_for_write
from config.api import filter_by_query, validated
from registry import selectors, services
from registry.api.serializers import (
    KIND_OF_ENDPOINT,
    ArtifactDetailSerializer,
    ArtifactSerializer,
    ArtifactUpdateSerializer,
    ArtifactWriteSerializer,
    CompatibilitySerializer,
    ConnectionSerializer,
    ConnectionWriteSerializer,
)
from registry.models import Artifact, Compatibility, Connection


class ConnectionViewSet(viewsets.ModelViewSet):
    """Storage connections. Secrets are write-only: responses say only whether they are set."""

    serializer_class = ConnectionSerializer
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
        connection = services.connection_update(connection=connection, secrets=secrets, **fields)
        return Response(ConnectionSerializer(connection).data)

    def destroy(self, request, pk=None):
        services.connection_delete(connection=self.get_object(write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=ConnectionSerializer)
    @action(detail=True, methods=["post"])
    def test(self, request, pk=None):
        """Tries the connection now; the answer says exactly what failed, if anything."""
        connection = self.get_object(write=True)
        services.connection_test(connection=connection)
        return Response(ConnectionSerializer(connection).data)


class ArtifactViewSet(viewsets.GenericViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Base models (`/models/`) or LoRA adapters (`/adapters/`). Registering
    answers 202: poll the object until `status` is ready or invalid."""

    endpoint = "models"

    def get_serializer_class(self):
        return ArtifactDetailSerializer if self.action == "retrieve" else ArtifactSerializer

    @property
    def kind(self) -> str:
        return KIND_OF_ENDPOINT[self.endpoint]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Artifact.objects.none()
        params = self.request.query_params
        return selectors.artifacts_for(
            self.request.user,
            kind=self.kind,
            status=params.get("status", ""),
            source=params.get("source", ""),
            search=params.get("search", ""),
        ).prefetch_related("files")

    def get_object(self, *, write: bool = False) -> Artifact:
        return get_for(self.request.user, Artifact.objects.filter(kind=self.kind), self.kwargs["pk"], write=write)

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=["pending", "inspecting", "ready", "invalid"]),
            OpenApiParameter("source", str, enum=["s3", "hf", "local"]),
            OpenApiParameter("search", str),
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def retrieve(self, request, pk=None):
        return Response(ArtifactDetailSerializer(self.get_object()).data)

    @extend_schema(request=ArtifactWriteSerializer, responses={202: ArtifactSerializer})
    def create(self, request):
        data = dict(validated(ArtifactWriteSerializer, request).validated_data)
        workspace = workspace_for_write(request.user, data.pop("workspace", None))
        connection = get_for(request.user, Connection.objects.all(), data.pop("connection").pk)
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

    def destroy(self, request, pk=None):
        services.artifact_delete(artifact=self.get_object(write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: ArtifactSerializer})
    @action(detail=True, methods=["post"])
    def reinspect(self, request, pk=None):
        artifact = services.artifact_reinspect(artifact=self.get_object(write=True))
        return Response(ArtifactSerializer(artifact).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=CompatibilitySerializer(many=True))
    @action(detail=True, methods=["get"])
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

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Compatibility.objects.none()
        verdicts = selectors.compatibility_visible_to(self.request.user)
        return filter_by_query(verdicts, self.request, adapter="adapter_id", base="base_id")

    @extend_schema(parameters=[OpenApiParameter("adapter", int), OpenApiParameter("base", int)])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)
