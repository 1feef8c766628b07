"""Import the clusters of the previous RKE2 automation system."""

from argparse import RawDescriptionHelpFormatter

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from clusters.services.legacy_import import MAPPING_HELP, ImportReport, LegacySourceError, legacy_clusters_import


class Command(BaseCommand):
    help = (
        "Import clusters from the previous RKE2 automation system. SOURCE is a JSON export (a list of cluster "
        'objects, or {"clusters": [...]}) or that system\'s database: sqlite:///relative/path.db, '
        "sqlite:////absolute/path.db or postgres://user:password@host:port/dbname (read only).\n\n" + MAPPING_HELP
    )

    def create_parser(self, prog_name, subcommand, **kwargs):  # type: ignore[no-untyped-def]
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = RawDescriptionHelpFormatter
        return parser

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("source", metavar="SOURCE", help="JSON file, sqlite:///… or postgres://… URL.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Validate everything and show what would be imported; write nothing."
        )
        parser.add_argument("--table", default="clusters", help="The old system's clusters table (default: clusters).")
        parser.add_argument(
            "--nodes-table",
            default="nodes",
            help="Table holding the nodes when the clusters table has no nodes column (default: nodes).",
        )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        try:
            report = legacy_clusters_import(
                source=options["source"],
                dry_run=options["dry_run"],
                table=options["table"],
                nodes_table=options["nodes_table"],
            )
        except LegacySourceError as exc:
            raise CommandError(exc.message) from exc
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        self._print(report)

    def _print(self, report: ImportReport) -> None:
        verb = "would import" if report.dry_run else "imported"
        if report.dry_run:
            self.stdout.write(f"Dry run: nothing is written. Source: {report.source}")
        for outcome in report.outcomes:
            if outcome.action == "imported":
                nodes = f"{outcome.nodes} node{'s' if outcome.nodes != 1 else ''}"
                self.stdout.write(
                    self.style.SUCCESS(f"{verb}: {outcome.name}")
                    + f" ({nodes}, initial master {outcome.initial_master})"
                )
                for note in outcome.notes:
                    self.stdout.write(self.style.WARNING(f"    note: {outcome.name}: {note}"))
                self.stdout.write(
                    f"    next: {outcome.name}: assign an SSH credential, then run the adopt job; install, scale "
                    "and upgrade jobs are refused until it has read what runs on the nodes."
                )
            elif outcome.action == "exists":
                self.stdout.write(f"skipped: {outcome.name} (already present; left unchanged)")
            else:
                self.stdout.write(self.style.ERROR(f"skipped: {outcome.name} (invalid)"))
                for error in outcome.errors:
                    self.stdout.write(f"    {outcome.name}: {error}")
        self.stdout.write(
            f"Clusters: {report.count('imported')} {verb}, {report.count('exists')} already present, "
            f"{report.count('invalid')} invalid. "
            f"Nodes: {report.nodes_imported} {verb}, {report.nodes_skipped} skipped."
        )
        if report.count("invalid"):
            raise CommandError(f"{report.count('invalid')} cluster(s) skipped as invalid; see above.")
