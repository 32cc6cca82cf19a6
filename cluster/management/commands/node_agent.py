from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from cluster.agent import internal_address

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'50G' -> 53687091200; plain numbers are bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text.upper())
    if not match:
        raise CommandError(f"“{text}” is not a size; write e.g. 500M, 50G or 2T.")
    return int(float(match[1]) * UNITS[match[2]])


class Command(BaseCommand):
    help = "Runs this host's node agent: a Celery worker on the queue node.<name> that reports inventory and fills the artifact cache."

    def add_arguments(self, parser):
        parser.add_argument("--name", default=socket.gethostname().split(".")[0].lower())
        parser.add_argument(
            "--address", default="127.0.0.1",
            help="This node's internal address: its model servers listen only there, and the web process must reach "
            "it. Never 0.0.0.0 or ::.",
        )  # fmt: skip
        parser.add_argument("--cache-dir", required=True)
        parser.add_argument("--cache-quota", default="50G")
        parser.add_argument("--concurrency", type=int, default=4)

    def handle(self, *args, name, address, cache_dir, cache_quota, concurrency, **options):
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            raise CommandError(f"“{name}” is not a node name: use lowercase letters, digits and dashes.")
        try:
            internal_address(address)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        env = dict(
            os.environ,
            PLUGBOARD_NODE_NAME=name,
            PLUGBOARD_NODE_ADDRESS=address,
            PLUGBOARD_NODE_CACHE_DIR=str(Path(cache_dir).resolve()),
            PLUGBOARD_NODE_CACHE_QUOTA=str(parse_size(cache_quota)),
        )
        celery = str(Path(sys.executable).with_name("celery"))
        # One process with a thread pool: a SIGKILL takes the whole agent down at once (no orphaned
        # children), and the fetches it leaves behind resume when it starts again.
        argv = [celery, "-A", "config", "worker", "-n", f"node.{name}@%h", "-Q", f"node.{name},nodes",
                "--pool", "threads", "-c", str(concurrency), "-l", "INFO", "--without-gossip", "--without-mingle"]  # fmt: skip
        os.execve(celery, argv, env)
