from __future__ import annotations

from django.conf import settings as django_settings
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.access import get_for, workspace_for_write
from config.api import validated
from deployments import logs, revisions, services
from deployments.api.filters import DeploymentFilter
from deployments.api.logs import DeploymentLogSerializer, LogQuerySerializer, log_query
from deployments.api.serializers import (
    AdapterChoiceSerializer,
    DeploymentCreateSerializer,
    DeploymentDetailSerializer,
    DeploymentEventSerializer,
    DeploymentRevisionSerializer,
    DeploymentSerializer,
    DeploymentUpdateSerializer,
    RollbackSerializer,
)
from deployments.models import Deployment
from registry.models import Artifact


class DeploymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    """Deployments. Creating, starting, stopping and attaching answer 202:
    poll the deployment until `status` says what came of it."""

    serializer_class = DeploymentSerializer
    filterset_class = DeploymentFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Deployment.objects.none()
        return (
            Deployment.objects.filter(workspace__memberships__user=self.request.user)
            .select_related("workspace", "node", "base")
            .prefetch_related("adapters__adapter", "adapters__deployment")
        )

    def _writable(self) -> Deployment:
        return get_for(
            self.request.user,
            Deployment.objects.select_related("node", "base", "workspace"),
            self.kwargs["pk"],
            write=True,
        )

    def retrieve(self, request, pk=None):
        deployment = get_for(request.user, Deployment.objects.all(), pk)
        return Response(DeploymentDetailSerializer(deployment).data)

    @extend_schema(request=DeploymentCreateSerializer, responses={202: DeploymentSerializer})
    def create(self, request):
        data = validated(DeploymentCreateSerializer, request).validated_data
        workspace = workspace_for_write(request.user, data.get("workspace"))
        base = get_for(request.user, Artifact.objects.all(), data["base"])
        adapters = [
            (get_for(request.user, Artifact.objects.all(), a["adapter"]), a["served_name"]) for a in data["adapters"]
        ]
        deployment = services.deployment_create(
            workspace=workspace, name=data["name"], base=base, node=data.get("node"), adapters=adapters,
            accelerator_indices=data["accelerator_indices"], settings=data["settings"], extra_args=data["extra_args"],
            extra_env=data["extra_env"], allow_trust_remote_code=django_settings.PLUGBOARD_ALLOW_TRUST_REMOTE_CODE,
            user=request.user,
        )  # fmt: skip
        return Response(DeploymentSerializer(deployment).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=DeploymentUpdateSerializer, responses={202: DeploymentSerializer})
    def partial_update(self, request, pk=None):
        """Changes settings, extra arguments, environment or resources (node, GPU
        indices): a new revision, which is redeployed, on the new node if it moved."""
        data = dict(validated(DeploymentUpdateSerializer, request).validated_data)
        deployment = self._writable()
        if "max_adapters" in data:  # a limit of the console's, not the server's: no new revision
            deployment = services.deployment_set_max_adapters(
                deployment=deployment, max_adapters=data.pop("max_adapters")
            )
        if data:
            deployment = services.deployment_update(
                deployment=deployment, **data,
                allow_trust_remote_code=django_settings.PLUGBOARD_ALLOW_TRUST_REMOTE_CODE, user=request.user,
            )  # fmt: skip
        return Response(DeploymentSerializer(deployment).data, status=202)

    @extend_schema(responses={200: DeploymentRevisionSerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def revisions(self, request, pk=None):
        """The deployment's revisions, newest first: who made each, when, and what changed since the one before."""
        deployment = get_for(request.user, Deployment.objects.all(), pk)
        history = revisions.history(
            deployment.revisions.select_related("node", "created_by"), current=deployment.revision
        )
        return Response(DeploymentRevisionSerializer(history, many=True).data)

    @extend_schema(responses={200: DeploymentEventSerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[])
    def events(self, request, pk=None):
        """The deployment's timeline, newest first, a page at a time (the newest PLUGBOARD_EVENTS_KEPT are kept)."""
        deployment = get_for(request.user, Deployment.objects.all(), pk)
        page = self.paginate_queryset(deployment.events.order_by("-created_at", "-pk"))
        return self.get_paginated_response(DeploymentEventSerializer(page, many=True).data)

    @extend_schema(request=RollbackSerializer, responses={202: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        """Makes a new revision with the arguments and resources of an earlier one, checked like any
        change; the server restarts with it."""
        deployment = self._writable()
        number = validated(RollbackSerializer, request).validated_data["revision"]
        deployment = services.deployment_rollback(
            deployment=deployment, revision_number=number, user=request.user,
            allow_trust_remote_code=django_settings.PLUGBOARD_ALLOW_TRUST_REMOTE_CODE,
        )  # fmt: skip
        return Response(DeploymentSerializer(deployment).data, status=202)

    @extend_schema(request=None, responses={202: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def restart(self, request, pk=None):
        return Response(DeploymentSerializer(services.deployment_restart(deployment=self._writable())).data, status=202)

    def destroy(self, request, pk=None):
        services.deployment_delete(deployment=self._writable())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        return Response(DeploymentSerializer(services.deployment_stop(deployment=self._writable())).data, status=202)

    @extend_schema(request=None, responses={202: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return Response(DeploymentSerializer(services.deployment_start(deployment=self._writable())).data, status=202)

    @extend_schema(request=AdapterChoiceSerializer, responses={202: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def attach(self, request, pk=None):
        """Loads another compatible adapter into the live server, without restarting it."""
        deployment = self._writable()
        data = validated(AdapterChoiceSerializer, request).validated_data
        adapter = get_for(request.user, Artifact.objects.all(), data["adapter"])
        services.adapter_attach(deployment=deployment, adapter=adapter, served_name=data["served_name"])
        deployment.refresh_from_db()
        return Response(DeploymentSerializer(deployment).data, status=202)

    @extend_schema(request=None, responses={202: DeploymentSerializer})
    @action(detail=True, methods=["post"], url_path=r"adapters/(?P<served_name>[^/\x00]+)/detach")
    def detach(self, request, pk=None, served_name=None):
        """Unloads an adapter from the live server."""
        deployment = self._writable()
        attached = deployment.adapters.filter(served_name=served_name).first()
        if attached is None:
            return Response({"detail": f"No adapter is served as “{served_name}” here."}, status=404)
        services.adapter_detach(attached=attached)
        deployment.refresh_from_db()
        return Response(DeploymentSerializer(deployment).data, status=202)

    @extend_schema(parameters=[LogQuerySerializer], responses=DeploymentLogSerializer)
    @action(detail=True, methods=["get"])
    def log(self, request, pk=None):
        """The server log's last lines, the deployment's key masked as ****, without the access
        lines of the console's own checks unless `health_checks`; `search` filters them."""
        deployment = get_for(request.user, Deployment.objects.all(), pk)
        query = log_query(request.query_params)
        excerpt = logs.read(
            deployment.log_path, copy=deployment.log_tail, limit=query["lines"], search=query["search"],
            health_checks=query["health_checks"], secrets=[deployment.api_key],
        )  # fmt: skip
        return Response(DeploymentLogSerializer(excerpt).data)
