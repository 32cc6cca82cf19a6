from __future__ import annotations

from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"

    def ready(self) -> None:
        from cluster import occupancy
        from deployments import agent  # noqa: F401 (starts the supervisor in node agents)
        from deployments.selectors import running_by_accelerator

        occupancy.register(running_by_accelerator)
