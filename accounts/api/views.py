from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.response import Response

from accounts import services
from accounts.access import get_workspace_for
from accounts.api.filters import AuditEntryFilter
from accounts.api.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenSerializer,
    AuditEntrySerializer,
    MembershipCreateSerializer,
    MembershipSerializer,
    MembershipUpdateSerializer,
    WorkspaceCreateSerializer,
    WorkspaceSerializer,
)
from accounts.models import ApiToken, Membership, Workspace
from accounts.selectors import audit_entries_for, workspaces_for
from audit.models import AuditEntry
from config.api import validated


class WorkspaceViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """The workspaces the caller belongs to, with their role in each. Whoever
    creates a workspace becomes its owner."""

    serializer_class = WorkspaceSerializer
    admin_scope_for_writes = True  # a personal token needs the admin scope to create one

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Workspace.objects.none()
        return workspaces_for(self.request.user)

    @extend_schema(request=WorkspaceCreateSerializer, responses={201: WorkspaceSerializer})
    def create(self, request):
        name = validated(WorkspaceCreateSerializer, request).validated_data["name"]
        workspace = services.workspace_create(name=name.strip(), owner=request.user)
        return Response(
            WorkspaceSerializer(workspace, context={"request": request}).data, status=status.HTTP_201_CREATED
        )


LAST_OWNER = OpenApiResponse(description="They are the workspace's last owner: make someone else an owner first.")
MEMBER = OpenApiParameter("user_id", int, OpenApiParameter.PATH, description="The member's user id.")


@extend_schema_view(
    list=extend_schema(description="The workspace's members and their roles; any member may look."),
    create=extend_schema(
        request=MembershipCreateSerializer,
        responses={201: MembershipSerializer, 409: OpenApiResponse(description="They are a member already.")},
        description="Adds a user to the workspace (owners only).",
    ),
    partial_update=extend_schema(
        parameters=[MEMBER],
        request=MembershipUpdateSerializer,
        responses={200: MembershipSerializer, 409: LAST_OWNER},
        description="Changes a member's role (owners only); the last owner cannot be demoted (409).",
    ),
    destroy=extend_schema(
        parameters=[MEMBER],
        responses={204: None, 409: LAST_OWNER},
        description="Removes a member (owners only); the last owner cannot be removed (409).",
    ),
)
@extend_schema(
    parameters=[
        OpenApiParameter("workspace_pk", int, OpenApiParameter.PATH, description="The workspace's id."),
    ]
)
class MembershipViewSet(viewsets.GenericViewSet, mixins.ListModelMixin):
    """A workspace's members. Any member may list them; only owners add,
    change or remove them. Another workspace answers 404."""

    serializer_class = MembershipSerializer
    admin_scope_for_writes = True  # a personal token needs the admin scope to change members
    lookup_url_kwarg = "user_id"
    lookup_value_regex = "[0-9]+"

    def workspace(self, *, manage: bool = False) -> Workspace:
        return get_workspace_for(self.request.user, self.kwargs["workspace_pk"], manage=manage)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Membership.objects.none()
        return self.workspace().memberships.select_related("user").order_by("user__username")

    def get_object(self) -> Membership:
        membership = self.workspace(manage=True).memberships.select_related("user", "workspace")
        found = membership.filter(user_id=self.kwargs["user_id"]).first()
        if found is None:
            raise Http404
        return found

    def create(self, request, workspace_pk=None):
        data = validated(MembershipCreateSerializer, request).validated_data
        membership = services.membership_add(workspace=self.workspace(manage=True), **data)
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, workspace_pk=None, user_id=None):
        membership = self.get_object()
        role = validated(MembershipUpdateSerializer, request).validated_data["role"]
        membership = services.membership_set(workspace=membership.workspace, user=membership.user, role=role)
        return Response(MembershipSerializer(membership).data)

    def destroy(self, request, workspace_pk=None, user_id=None):
        services.membership_remove(membership=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiTokenViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """The caller's personal API tokens. The token itself is answered once, at
    creation. A personal token may list tokens with any scope but create or
    revoke them only with the admin scope."""

    serializer_class = ApiTokenSerializer
    admin_scope_for_writes = True

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return self.request.user.api_tokens.all()

    @extend_schema(request=ApiTokenSerializer, responses={201: ApiTokenCreatedSerializer})
    def create(self, request):
        data = validated(ApiTokenSerializer, request).validated_data
        token, raw = services.api_token_create(user=request.user, **data)
        data = ApiTokenSerializer(token).data | {"token": raw}
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        services.api_token_revoke(token=instance)


class AuditEntryViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit log, newest first: who registered, changed, deployed, attached, detached, stopped, deleted,
    created or revoked what, when and from which address. Owners read their workspaces' entries (and
    everyone those of their own personal tokens); administrators read all. Entries cannot be changed."""

    serializer_class = AuditEntrySerializer
    filterset_class = AuditEntryFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return AuditEntry.objects.none()
        return audit_entries_for(self.request.user).select_related("workspace")
