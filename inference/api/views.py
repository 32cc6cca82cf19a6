from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from accounts.access import get_for, workspace_for_write
from accounts.models import Role
from config.api import validated
from inference import selectors, services
from inference.api.filters import UsageRecordFilter
from inference.api.serializers import (
    InferenceKeyCreatedSerializer,
    InferenceKeyCreateSerializer,
    InferenceKeySerializer,
    UsageRecordSerializer,
    UsageSummarySerializer,
)
from inference.models import InferenceKey, UsageRecord, UsageTotal

WRITERS = [Role.OWNER, Role.EDITOR]


class InferenceKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Keys for the OpenAI-compatible gateway (`/v1/`). A key belongs to a
    workspace and reaches its deployments (all, or the ones chosen); owners and
    editors create, list and revoke them. The key itself is answered once."""

    serializer_class = InferenceKeySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return InferenceKey.objects.none()
        return (
            InferenceKey.objects.filter(
                workspace__memberships__user=self.request.user, workspace__memberships__role__in=WRITERS
            )
            .select_related("workspace")
            .prefetch_related("deployments")
        )

    @extend_schema(request=InferenceKeyCreateSerializer, responses={201: InferenceKeyCreatedSerializer})
    def create(self, request):
        data = validated(InferenceKeyCreateSerializer, request).validated_data
        workspace = workspace_for_write(request.user, data.get("workspace"))
        deployments = data.get("deployments")
        if deployments is not None:
            deployments = [get_for(request.user, type(d).objects.all(), d.pk) for d in deployments]
        key, raw = services.inference_key_create(
            workspace=workspace, name=data["name"], user=request.user, deployments=deployments,
            expires_at=data.get("expires_at"),
        )  # fmt: skip
        return Response(InferenceKeySerializer(key).data | {"key": raw}, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: InferenceKeySerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revokes the key: the gateway refuses it from its next request on."""
        key = services.inference_key_revoke(key=self.get_object())
        return Response(InferenceKeySerializer(key).data)


class UsageViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Requests through the gateway and the playground, newest first, in the
    workspaces the caller belongs to; `summary` sums them per deployment,
    adapter or key over the last hour, day or week."""

    serializer_class = UsageRecordSerializer
    filterset_class = UsageRecordFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return UsageRecord.objects.none()
        return UsageRecord.objects.filter(workspace__memberships__user=self.request.user).select_related(
            "key", "user", "deployment"
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("period", OpenApiTypes.STR, enum=list(selectors.PERIODS), default="day"),
            OpenApiParameter("by", OpenApiTypes.STR, enum=list(selectors.GROUPS), default="deployment"),
            OpenApiParameter(
                "workspace", OpenApiTypes.STR, description="A workspace's slug; all of yours if left out."
            ),
        ],
        responses={200: UsageSummarySerializer},
    )
    @action(detail=False)
    def summary(self, request):
        period = request.query_params.get("period", "day")
        by = request.query_params.get("by", "deployment")
        if period not in selectors.PERIODS:
            raise ValidationError({"period": [f"Use one of {', '.join(selectors.PERIODS)}."]})
        if by not in selectors.GROUPS:
            raise ValidationError({"by": [f"Use one of {', '.join(selectors.GROUPS)}."]})
        records = self.get_queryset()
        totals = UsageTotal.objects.filter(workspace__memberships__user=request.user)
        if "\x00" in (workspace := request.query_params.get("workspace", "")):  # PostgreSQL would refuse it (a 500)
            raise ValidationError({"workspace": ["A workspace's slug has no NUL character."]})
        if workspace:
            records = records.filter(workspace__slug=workspace)
            totals = totals.filter(workspace__slug=workspace)
        summary = selectors.usage_summary(records=records, totals=totals, period=period, by=by)
        return Response(UsageSummarySerializer(summary).data)
