from __future__ import annotations

import os

from django.core.management.base import BaseCommand

from accounts.services import admin_ensure


class Command(BaseCommand):
    help = "Creates the administrator and the default workspace if missing (password from PLUGBOARD_ADMIN_PASSWORD, or generated and printed once)."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("PLUGBOARD_ADMIN_USER", "admin"))
        parser.add_argument("--workspace", default="Default")

    def handle(self, *args, username, workspace, **options):
        user, created, generated = admin_ensure(
            username=username, password=os.environ.get("PLUGBOARD_ADMIN_PASSWORD") or None, workspace_name=workspace
        )
        if generated:
            self.stdout.write(self.style.WARNING(f"Administrator “{username}” created with password: {generated}"))
            self.stdout.write("This password is shown once. Change it under /admin/ or set PLUGBOARD_ADMIN_PASSWORD.")
        elif created:
            self.stdout.write(f"Administrator “{username}” created with the password from PLUGBOARD_ADMIN_PASSWORD.")
        else:
            self.stdout.write(f"Administrator “{user.username}” exists.")
