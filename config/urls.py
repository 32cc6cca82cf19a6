from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts.views import SignInView
from config import health
from deployments.views import dashboard
from inference.views import playground

api_v1 = [
    path("", include("accounts.api.urls")),
    path("", include("registry.api.urls")),
    path("", include("cluster.api.urls")),
    path("", include("deployments.api.urls")),
    path("", include("inference.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script from a URL: the Content-Security-Policy refuses inline ones.
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="api_docs.html"),
        name="api-docs",
    ),
]

urlpatterns = [
    path("", dashboard, name="home"),
    # For load balancers and orchestrators (config/health.py): no sign-in, no detail.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("login/", SignInView.as_view(), name="login"),
    # The admin's own sign-in form would bypass the sign-in rate limits: it uses the console's.
    path("admin/login/", login_not_required(RedirectView.as_view(pattern_name="login", query_string=True))),
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

# A path no URL matches: JSON under /api/ (an id that is not one, a misspelt list), Django's page elsewhere.
handler404 = "config.api.not_found"
# An uncaught error: 503 with Retry-After while the database cannot be reached (a restart), else Django's 500.
handler500 = "config.health.server_error"
