from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.response import Response

from accounts import services
from accounts.api.serializers import ApiTokenCreatedSerializer, ApiTokenSerializer, WorkspaceSerializer
from accounts.models import ApiToken, Workspace
from accounts.selectors import workspaces_for
from config.api import validated


class WorkspaceViewSet(viewsets.ReadOnlyModelViewSet):
    """The workspaces the caller belongs to, with their role in each."""

    serializer_class = WorkspaceSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Workspace.objects.none()
        return workspaces_for(self.request.user)


class ApiTokenViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """The caller's personal API tokens. The token itself is answered once, at creation."""

    serializer_class = ApiTokenSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return self.request.user.api_tokens.all()

    @extend_schema(request=ApiTokenSerializer, responses={201: ApiTokenCreatedSerializer})
    def create(self, request):
        name = validated(ApiTokenSerializer, request).validated_data["name"]
        token, raw = services.api_token_create(user=request.user, name=name)
        data = ApiTokenSerializer(token).data | {"token": raw}
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        services.api_token_revoke(token=instance)
