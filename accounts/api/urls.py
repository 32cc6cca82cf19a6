from __future__ import annotations

from rest_framework.routers import DefaultRouter

from accounts.api import views

router = DefaultRouter(trailing_slash=True)
router.register("workspaces", views.WorkspaceViewSet, basename="workspace")
router.register(r"workspaces/(?P<workspace_pk>[0-9]+)/members", views.MembershipViewSet, basename="membership")
router.register("tokens", views.ApiTokenViewSet, basename="token")
router.register("audit", views.AuditEntryViewSet, basename="audit-entry")

urlpatterns = router.urls
