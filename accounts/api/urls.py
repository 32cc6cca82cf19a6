from __future__ import annotations

from rest_framework.routers import DefaultRouter

from accounts.api import views

router = DefaultRouter(trailing_slash=True)
router.register("workspaces", views.WorkspaceViewSet, basename="workspace")
router.register("tokens", views.ApiTokenViewSet, basename="token")

urlpatterns = router.urls
