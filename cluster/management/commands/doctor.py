"""`manage.py doctor`: checks an install of the console and says what to fix. Exits 1 when anything fails."""

from __future__ import annotations

import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from cluster.models import Node
from config import health


def nodes() -> list[health.Check]:
    found = list(Node.objects.order_by("name"))
    if not found:
        return [health.Check("nodes", False, "no node agent has ever reported; start one (`manage.py node_agent`)")]
    checks = []
    for node in found:
        runtimes = ", ".join(f"{r.get('package', 'vllm')} {r.get('version', '?')}" for r in node.vllm_runtimes)
        if not node.is_online:
            seen = f"last seen {node.last_seen_at:%Y-%m-%d %H:%M:%S} UTC" if node.last_seen_at else "never seen"
            checks.append(health.Check(f"node {node.name}", False, f"offline ({seen}); is its agent running?"))
        elif not runtimes:
            checks.append(health.Check(f"node {node.name}", False, "online, but it found no vLLM runtime"))
        else:
            checks.append(health.Check(f"node {node.name}", True, f"online at {node.address}, {runtimes}"))
    return checks


def this_node() -> list[health.Check]:
    """For a node agent's container health check: its node reports, and its runtime is there."""
    name = os.environ.get("PLUGBOARD_NODE_NAME") or os.environ.get("NODE_NAME", "")
    node = Node.objects.filter(name=name).first()
    checks = [
        health.Check(f"node {name or '?'}", bool(node and node.is_online), "reporting" if node else "not registered")
    ]
    python = settings.PLUGBOARD_VLLM_PYTHON
    checks.append(health.Check("vllm runtime", python.exists(), str(python)))
    return checks


class Command(BaseCommand):
    help = (
        "Checks this install: database and Redis reachable, migrations applied, keys configured, "
        "each node online with its runtime, clocks in step."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--node-agent", action="store_true", help="Check only what a node agent needs (its container's health)."
        )

    def handle(self, *args, node_agent: bool, **options):
        checks = [health.database(), health.migrations(), health.broker()]
        if node_agent:
            checks += this_node()
        else:
            checks += [health.secrets_configured(), health.database_clock(), *nodes()]
        for check in checks:
            mark = self.style.SUCCESS("ok  ") if check.ok else self.style.ERROR("FAIL")
            self.stdout.write(f"{mark} {check.name}: {check.detail}")
        failed = [c.name for c in checks if not c.ok]
        if failed:
            raise CommandError(f"{len(failed)} check(s) failed: {', '.join(failed)}")
