from __future__ import annotations

from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"

    def ready(self) -> None:
        from cluster import occupancy
        from deployments import agent  # noqa: F401 (starts the supervisor in node agents)
        from deployments.selectors import deployments_using, running_by_accelerator
        from registry import dependents

        occupancy.register(running_by_accelerator)
        dependents.register(deployments_using)  # a model or adapter a deployment uses cannot be deleted
