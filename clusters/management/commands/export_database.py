"""Write every object of the database to a file, secrets as ciphertext, for import_database on another database."""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from clusters.services.transfer import TransferError, database_export_to


class Command(BaseCommand):
    help = (
        "Export the whole database (clusters, nodes, credentials, jobs and their events, users, groups, API "
        "tokens, audit log) to a new file, to load it into another database with import_database. Unlike "
        "dumpdata, which masks them, secrets are written as ciphertext under FIELD_ENCRYPTION_KEYS: import with "
        "the same keys. Stop web, worker and beat first, so that nothing changes after the export."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("file", help="The file to write (it must not exist; it is created with mode 0600).")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        path = Path(options["file"])

        def progress(label: str, count: int) -> None:
            if options["verbosity"] >= 2 or count:
                self.stdout.write(f"{label}: {count}")

        try:
            report = database_export_to(path, progress=progress)
        except (TransferError, ImproperlyConfigured) as exc:
            raise CommandError(getattr(exc, "message", str(exc))) from exc
        self.stdout.write(f"Exported {report.total} objects ({report.secrets} secrets, encrypted) to {path}.")
