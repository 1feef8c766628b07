"""Re-encrypt every stored secret under the primary encryption key."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from clusters.services.encryption import ColumnRotation, encryption_keys_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted column (cluster tokens and kubeconfigs, SSH private keys and passphrases) under "
        "the first key of FIELD_ENCRYPTION_KEYS. To rotate: put a new key in front of the list "
        "(FIELD_ENCRYPTION_KEYS=new,old), restart the portal, run this command, then remove the old key. Values "
        "already under the first key are left as they are, so the command can be run again safely. Exits with "
        "an error when a value cannot be decrypted with any configured key."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument(
            "--batch-size", type=int, default=500, help="Rows read and written per transaction (default 500)."
        )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")

        def report(result: ColumnRotation) -> None:
            line = (
                f"{result.label}: {result.rotated} re-encrypted, {result.current} already current, {result.empty} empty"
            )
            if result.changed_meanwhile:
                line += f", {result.changed_meanwhile} rewritten during the run"
            if result.unreadable:
                line += f", {len(result.unreadable)} UNREADABLE (ids {', '.join(map(str, result.unreadable[:20]))})"
            self.stdout.write(line)

        try:
            results = encryption_keys_rotate(batch_size=options["batch_size"], progress=report)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        rotated = sum(result.rotated for result in results)
        current = sum(result.current for result in results)
        unreadable = sum(len(result.unreadable) for result in results)
        self.stdout.write(f"Total: {rotated} re-encrypted, {current} already current, {unreadable} unreadable.")
        if unreadable:
            raise CommandError(
                f"{unreadable} value(s) cannot be decrypted with any key in FIELD_ENCRYPTION_KEYS: add the key they "
                "were written with (after the new one) and run the command again."
            )
