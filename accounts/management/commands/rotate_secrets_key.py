from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.errors import DomainError
from config.vault import secrets_reseal


class Command(BaseCommand):
    help = (
        "Re-seals every stored secret with the current PLUGBOARD_SECRETS_KEY. Set the new key as "
        "PLUGBOARD_SECRETS_KEY and give the old one in PLUGBOARD_SECRETS_KEY_OLD or with --old-key-file."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--old-key-file",
            type=Path,
            action="append",
            default=[],
            help="A file holding a key that sealed some of the secrets (repeatable). Not on the command line "
            "itself: `ps` shows command lines to every user.",
        )

    def handle(self, *args, old_key_file: list[Path], **options):
        old_keys = []
        for path in old_key_file:
            try:
                old_keys.append(path.read_text().strip())
            except OSError as error:
                raise CommandError(f"Cannot read the old key from {path}: {error.strerror}.") from None
        if not old_keys and not settings.PLUGBOARD_SECRETS_KEY_OLD:
            self.stdout.write(
                self.style.WARNING(
                    "No old key given (PLUGBOARD_SECRETS_KEY_OLD or --old-key-file): only secrets the current key "
                    "already opens are re-sealed."
                )
            )
        try:
            report = secrets_reseal(old_keys=old_keys)
        except DomainError as error:
            raise CommandError(error.message) from None
        for label, count in sorted(report.resealed.items()):
            self.stdout.write(f"{label}: {count} re-sealed")
        self.stdout.write(
            self.style.SUCCESS(f"Re-sealed {report.total} secret(s) with the current PLUGBOARD_SECRETS_KEY.")
        )
        if report.total:
            self.stdout.write("The old key can now be removed from PLUGBOARD_SECRETS_KEY_OLD.")
