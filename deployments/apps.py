from __future__ import annotations

from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"

    def ready(self) -> None:
        from cluster import occupancy
        from deployments import agent  # noqa: F401 (starts the supervisor in node agents)
        from deployments.selectors import deployments_using, model_server_addresses, running_by_accelerator
        from registry import dependents
        from registry.sources import network

        occupancy.register(running_by_accelerator)
        dependents.register(deployments_using)  # a model or adapter a deployment uses cannot be deleted
        network.register_service_addresses(model_server_addresses)  # no connection may reach a model server
