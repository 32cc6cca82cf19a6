from __future__ import annotations

from rest_framework.routers import DefaultRouter

from deployments.api import views

router = DefaultRouter(trailing_slash=True)
router.register("deployments", views.DeploymentViewSet, basename="deployment")

urlpatterns = router.urls
