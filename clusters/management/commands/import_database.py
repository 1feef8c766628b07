"""Load a file written by export_database into this (freshly migrated, empty) database, secrets included."""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from clusters.services.transfer import TransferError, database_import


class Command(BaseCommand):
    help = (
        "Import a file written by export_database into the database of DATABASE_URL, in one transaction. Run "
        "manage.py migrate first (same portal version as the source); the database must hold no clusters, "
        "credentials or jobs yet. FIELD_ENCRYPTION_KEYS must be the source's: every secret is decrypted with them "
        "and stored encrypted again."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("file", help="A file written by export_database.")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        def progress(label: str, count: int) -> None:
            self.stdout.write(f"{label}: {count}")

        try:
            report = database_import(Path(options["file"]), progress=progress)
        except (TransferError, ImproperlyConfigured) as exc:
            raise CommandError(getattr(exc, "message", str(exc))) from exc
        self.stdout.write(f"Imported {report.total} objects ({report.secrets} secrets).")
