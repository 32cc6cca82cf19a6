from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.models import Workspace
from registry.demo import DEMO_BASE, demo_register


class Command(BaseCommand):
    help = "Registers the demo model and adapters (built by `make demo`) in a workspace, idempotently."

    def add_arguments(self, parser):
        parser.add_argument("--workspace", default="default", help="The workspace's slug.")
        parser.add_argument("--store", default=str(Path(settings.VAR_DIR) / "demo-store"))

    def handle(self, *args, workspace, store, **options):
        store_path = Path(store)
        if not (store_path / DEMO_BASE / ".complete").exists():
            raise CommandError(f"No demo content in {store_path}: run `make demo` first.")
        ws = Workspace.objects.filter(slug=workspace).first()
        if ws is None:
            raise CommandError(f"No workspace “{workspace}”.")
        for artifact in demo_register(workspace=ws, store=store_path):
            line = f"{artifact.get_kind_display():13} {artifact.name:28} {artifact.status}"
            self.stdout.write(line + (f": {'; '.join(artifact.problems)}" if artifact.problems else ""))
