from __future__ import annotations

from django.urls import path

from deployments import views

app_name = "deployments"

urlpatterns = [
    path("deployments/", views.deployment_list, name="list"),
    path("deployments/new/", views.deploy_wizard_start, name="wizard_start"),
    path("deployments/new/preflight/", views.deploy_wizard_preflight, name="wizard_preflight"),
    path("deployments/<int:pk>/duplicate/", views.deploy_wizard_duplicate, name="duplicate"),
    path("deployments/new/<str:step>/", views.deploy_wizard, name="wizard"),
    path("deployments/<int:pk>/", views.deployment_detail, name="detail"),
    path("deployments/<int:pk>/events/", views.deployment_events, name="events"),
    path("deployments/<int:pk>/log/", views.deployment_log, name="log"),
    path("deployments/<int:pk>/log/download/", views.deployment_log_download, name="log_download"),
    path("deployments/<int:pk>/edit/", views.deployment_edit, name="edit"),
    path("deployments/<int:pk>/revisions/<int:number>/rollback/", views.deployment_rollback, name="rollback"),
    path("deployments/<int:pk>/stop/", views.deployment_stop, name="stop"),
    path("deployments/<int:pk>/start/", views.deployment_start, name="start"),
    path("deployments/<int:pk>/restart/", views.deployment_restart, name="restart"),
    path("deployments/<int:pk>/delete/", views.deployment_delete, name="delete"),
    path("deployments/<int:pk>/attach/", views.adapter_attach, name="attach"),
    path("deployments/<int:pk>/adapters/<str:served_name>/detach/", views.adapter_detach, name="detach"),
]
