"""A deployment's states and the moves between them: the one table the
services check every status change against. Pure logic.

    pending ──▶ fetching ──▶ starting ──▶ ready ◀──▶ degraded
       │            │            │          │            │
       └────────────┴──────┬─────┴──────────┴────────────┘
                           ▼
          restarting (crashed, restart, new revision, moved) ──▶ ready
          stopping ──▶ stopped ──▶ pending (started again)
          failed (crash loop, base model not fetched) ──▶ pending, stopped

A move to the state a deployment is already in records no event; only the
states below that name themselves among their sources allow it (a fetch
still under way, another crash while restarting, a stopped server's
leftovers cleared)."""

from __future__ import annotations

PENDING, FETCHING, STARTING, READY = "pending", "fetching", "starting", "ready"
DEGRADED, RESTARTING, STOPPING, STOPPED, FAILED = "degraded", "restarting", "stopping", "stopped", "failed"
STATES = (PENDING, FETCHING, STARTING, READY, DEGRADED, RESTARTING, STOPPING, STOPPED, FAILED)
RUNNING = frozenset({PENDING, FETCHING, STARTING, READY, DEGRADED, RESTARTING})
SERVING = frozenset({READY, DEGRADED})  # its server answers: it has an uptime, and adapters loaded in it

# Each state, and the states a deployment may come to it from.
SOURCES: dict[str, frozenset[str]] = {
    # Started again by a person, after it stopped or failed (or while a stop is still under way).
    PENDING: frozenset({STOPPED, FAILED, STOPPING}),
    # The node fetches its base model or adapters before the first start (or a restart).
    FETCHING: frozenset({PENDING, FETCHING, RESTARTING}),
    # The server process was launched.
    STARTING: frozenset({PENDING, FETCHING}),
    # /health answered: after a start, a restart, or again after it stopped answering. From pending
    # or fetching too: an agent that restarts adopts a live server whatever the row said.
    READY: frozenset({PENDING, FETCHING, STARTING, RESTARTING, DEGRADED}),
    DEGRADED: frozenset({READY}),
    # A crash (again, while restarting), a restart asked for, a new revision, or a move to another node.
    RESTARTING: RUNNING,
    STOPPING: RUNNING,
    # Whatever it was doing, once it should stop and its server is gone.
    STOPPED: RUNNING | {STOPPING, STOPPED, FAILED},
    # Too many crashes in a row, or its base model cannot be fetched.
    FAILED: RUNNING,
}


class IllegalTransition(Exception):
    """A status change the table does not allow; nothing was written."""


def check(current: str, target: str) -> None:
    """Raises IllegalTransition unless a deployment in `current` may move to `target`."""
    if target not in SOURCES:
        raise IllegalTransition(f"“{target}” is not a deployment state.")
    if current not in SOURCES[target]:
        raise IllegalTransition(f"A deployment cannot go from {current} to {target}.")


def allowed(current: str, target: str) -> bool:
    return target in SOURCES and current in SOURCES[target]
