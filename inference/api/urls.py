from __future__ import annotations

from rest_framework.routers import DefaultRouter

from inference.api import views

router = DefaultRouter(trailing_slash=True)
router.register("inference-keys", views.InferenceKeyViewSet, basename="inference-key")
router.register("usage", views.UsageViewSet, basename="usage")

urlpatterns = router.urls
