from __future__ import annotations

from django.urls import path

from registry import views

app_name = "registry"

urlpatterns = [
    path("models/", views.artifact_list, name="artifact_list"),
    path("models/register/", views.artifact_register, name="artifact_register"),
    path("models/<int:pk>/", views.artifact_detail, name="artifact_detail"),
    path("models/<int:pk>/edit/", views.artifact_edit, name="artifact_edit"),
    path("models/<int:pk>/delete/", views.artifact_delete, name="artifact_delete"),
    path("models/<int:pk>/reinspect/", views.artifact_reinspect, name="artifact_reinspect"),
    path("connections/", views.connection_list, name="connection_list"),
    path("connections/new/", views.connection_create, name="connection_create"),
    path("connections/<int:pk>/", views.connection_detail, name="connection_detail"),
    path("connections/<int:pk>/edit/", views.connection_edit, name="connection_edit"),
    path("connections/<int:pk>/test/", views.connection_test, name="connection_test"),
    path("connections/<int:pk>/delete/", views.connection_delete, name="connection_delete"),
]
