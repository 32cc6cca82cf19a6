from __future__ import annotations

from django.urls import path

from cluster import views

app_name = "cluster"

urlpatterns = [
    path("cluster/", views.cluster_page, name="cluster"),
    path("models/<int:pk>/nodes/", views.artifact_nodes, name="artifact_nodes"),
    path("models/<int:pk>/fetch/", views.artifact_fetch, name="artifact_fetch"),
    path("cache/<int:pk>/cancel/", views.cached_cancel, name="cached_cancel"),
    path("cache/<int:pk>/remove/", views.cached_remove, name="cached_remove"),
]
