from __future__ import annotations

from rest_framework.routers import DefaultRouter

from cluster.api import views

router = DefaultRouter(trailing_slash=True)
router.register("nodes", views.NodeViewSet, basename="node")
router.register("accelerators", views.AcceleratorViewSet, basename="accelerator")
router.register("cache", views.CacheViewSet, basename="cache")

urlpatterns = router.urls
