from __future__ import annotations

from django.urls import path

from inference import views

app_name = "inference"

urlpatterns = [
    path("inference/keys/", views.keys, name="keys"),
    path("inference/keys/<int:pk>/revoke/", views.key_revoke, name="key_revoke"),
    path("inference/usage/", views.usage, name="usage"),
]
