from __future__ import annotations

from django.apps import AppConfig


class ClusterConfig(AppConfig):
    name = "cluster"

    def ready(self) -> None:
        from cluster import agent  # noqa: F401 (connects the node agent's worker signals)
        from cluster.selectors import leases_of
        from registry import dependents

        dependents.register(leases_of)  # an artifact a node's cache leases is in use
