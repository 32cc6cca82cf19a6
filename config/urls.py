from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from deployments.views import dashboard
from inference.views import playground

api_v1 = [
    path("", include("accounts.api.urls")),
    path("", include("registry.api.urls")),
    path("", include("cluster.api.urls")),
    path("", include("deployments.api.urls")),
    path("", include("inference.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

urlpatterns = [
    path("", dashboard, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("registry.urls")),
    path("", include("accounts.urls")),
    path("", include("deployments.urls")),
    path("inference/", playground, name="playground"),
    path("", include("cluster.urls")),
    path("", include("inference.urls")),
    path("api/v1/", include(api_v1)),
]
