"""What runs on each accelerator, for the Cluster page. The deployments app
knows and registers its finder here from its AppConfig.ready, so the cluster
shows occupants without importing the app above it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

# accelerators -> {accelerator id: the rows running there}, in one query whatever their number
Finder = Callable[[list], dict[int, list]]

_finder: Finder | None = None


def register(finder: Finder) -> None:
    global _finder
    _finder = finder


def running_on(accelerators: Iterable) -> dict[int, list]:
    accelerators = list(accelerators)
    return _finder(accelerators) if _finder is not None and accelerators else {}
