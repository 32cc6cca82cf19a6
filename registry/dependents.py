"""Who uses an artifact. Apps above the registry (the cluster's cache leases,
deployments) register a finder here from their AppConfig.ready, so the
registry can refuse to delete an artifact in use and its page can name the
users, without importing the apps that use it."""

from __future__ import annotations

from collections.abc import Callable

Finder = Callable[[object], list[str]]  # artifact -> descriptions such as "deployment chat on gpu-1"

_finders: list[Finder] = []


def register(finder: Finder) -> None:
    if finder not in _finders:
        _finders.append(finder)


def users_of(artifact) -> list[str]:
    """What uses `artifact` now, as every registered finder describes it."""
    return [used_by for finder in _finders for used_by in finder(artifact)]
