from __future__ import annotations

from rest_framework.routers import DefaultRouter

from registry.api import views

router = DefaultRouter(trailing_slash=True)
router.register("connections", views.ConnectionViewSet, basename="connection")
router.register("models", views.ModelViewSet, basename="model")
router.register("adapters", views.AdapterViewSet, basename="adapter")
router.register("compatibility", views.CompatibilityViewSet, basename="compatibility")

urlpatterns = router.urls
