"""Moving the portal's data to another database (the embedded SQLite to PostgreSQL, say) without losing a secret.

``dumpdata`` writes every encrypted field as ``********`` (so that no secret leaks through it), which makes its
output useless for a move: loaded back, every cluster token, kubeconfig and SSH key would be the mask. The export
here writes the same objects, with each secret as Fernet ciphertext under the primary key of
``FIELD_ENCRYPTION_KEYS``; the import decrypts them with the same keys and stores them encrypted again. The file
never holds a secret in clear, and it is not a fixture ``loaddata`` accepts (it would store the ciphertext as the
secret): it is a JSON object, ``{"format": "rke2portal-database", ...}``.

Content types, permissions and sessions are not exported: the target's migrations create the first two (objects
refer to them by natural key), and sessions are bound to the old server. The target must be migrated to the same
migrations as the source and hold no clusters, credentials or jobs yet.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.apps import apps
from django.core import serializers
from django.core.management.color import no_style
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from .. import crypto
from ..exceptions import ApplicationError
from ..fields import EncryptedTextField, reveal
from ..models import Cluster, Job, SSHCredential

__all__ = ["FORMAT", "TransferError", "TransferReport", "database_export", "database_export_to", "database_import"]

FORMAT = "rke2portal-database"
VERSION = 1
# Created by the target's migrations (content types, permissions) or bound to the old server (sessions).
EXCLUDED = frozenset({"contenttypes.contenttype", "auth.permission", "sessions.session"})
_CHUNK = 500


class TransferError(ApplicationError):
    """The export cannot be written, or the file cannot be imported into this database."""

    code = "transfer_error"


@dataclass
class TransferReport:
    objects: dict[str, int] = field(default_factory=dict)  # model label -> objects written or loaded
    secrets: int = 0  # encrypted values carried (not counting empty ones)

    @property
    def total(self) -> int:
        return sum(self.objects.values())


def _models() -> list[type]:
    """Every model to move, parents before the models that refer to them."""
    app_list = [(config, None) for config in apps.get_app_configs() if config.models_module is not None]
    ordered = serializers.sort_dependencies(app_list, allow_cycles=True)
    return [
        model
        for model in ordered
        if model._meta.label_lower not in EXCLUDED and model._meta.managed and not model._meta.proxy
    ]


def _encrypted_fields(model: type) -> list[EncryptedTextField]:
    return [item for item in model._meta.concrete_fields if isinstance(item, EncryptedTextField)]


def _applied_migrations(alias: str) -> dict[str, list[str]]:
    recorder = MigrationRecorder(connections[alias])
    applied: dict[str, list[str]] = {}
    for app, name in sorted(recorder.applied_migrations()):
        applied.setdefault(app, []).append(name)
    return applied


def _objects(model: type, report: TransferReport) -> Iterator[dict[str, Any]]:
    secret_fields = _encrypted_fields(model)
    queryset = model._default_manager.using(router.db_for_read(model)).order_by(model._meta.pk.name)
    chunk: list[Any] = []

    def flush() -> Iterator[dict[str, Any]]:
        items = serializers.serialize("python", chunk, use_natural_foreign_keys=True, use_natural_primary_keys=True)
        for instance, item in zip(chunk, items, strict=True):
            for secret_field in secret_fields:
                plain = reveal(getattr(instance, secret_field.attname))
                # Ciphertext under the primary key: decryptable wherever the same keys are configured.
                item["fields"][secret_field.name] = crypto.encrypt(plain) if plain else ""
                report.secrets += 1 if plain else 0
            yield item

    for instance in queryset.iterator(chunk_size=_CHUNK):
        chunk.append(instance)
        if len(chunk) >= _CHUNK:
            yield from flush()
            chunk = []
    if chunk:
        yield from flush()


def database_export(stream: IO[str], *, progress: Callable[[str, int], None] | None = None) -> TransferReport:
    """Write every object of the database to ``stream`` (see the module docstring). Raises
    :class:`TransferError` when a secret cannot be decrypted with the configured keys."""
    report = TransferReport()
    header = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": timezone.now().isoformat(),
        "source": connections[DEFAULT_DB_ALIAS].vendor,
        "secrets": "Fernet ciphertext under FIELD_ENCRYPTION_KEYS; import with the same keys",
        "migrations": _applied_migrations(DEFAULT_DB_ALIAS),
    }
    stream.write(json.dumps(header)[:-1] + ', "objects": [\n')
    first = True
    try:
        # One snapshot of the data, even on a live database.
        with transaction.atomic():
            for model in _models():
                count = 0
                for item in _objects(model, report):
                    stream.write(("" if first else ",\n") + json.dumps(item, cls=DjangoJSONEncoder))
                    first = False
                    count += 1
                report.objects[model._meta.label] = count
                if progress is not None:
                    progress(model._meta.label, count)
    except crypto.DecryptionError as exc:
        raise TransferError(
            f"A stored secret cannot be decrypted with FIELD_ENCRYPTION_KEYS ({exc}); nothing usable was written."
        ) from exc
    stream.write("\n]}\n")
    return report


def database_export_to(path: Path, **kwargs: Any) -> TransferReport:
    """:func:`database_export` into a new file readable by its owner only (an existing file is not replaced)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise TransferError(f"{path} already exists; give a new file name.") from None
    except OSError as exc:
        raise TransferError(f"{path}: cannot be created ({exc.strerror}).") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            return database_export(handle, **kwargs)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TransferError(f"{path}: no such file.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TransferError(f"{path}: not an export of this portal ({exc}).") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise TransferError(f"{path}: not an export of this portal (made with manage.py export_database).")
    if document.get("version") != VERSION:
        raise TransferError(f"{path}: export format version {document.get('version')!r}; this portal reads {VERSION}.")
    if not isinstance(document.get("objects"), list):
        raise TransferError(f"{path}: the export has no list of objects.")
    return document


def _decrypt_secrets(objects: list[dict[str, Any]]) -> int:
    """Replace each secret's ciphertext with its plain value (in memory only, for the model to encrypt again)."""
    count = 0
    fields_by_label: dict[str, list[str]] = {}
    for item in objects:
        label = str(item.get("model") or "")
        if label not in fields_by_label:
            try:
                model = apps.get_model(label)
            except (LookupError, ValueError):
                raise TransferError(f"The export holds objects of an unknown model {label!r}.") from None
            fields_by_label[label] = [secret_field.name for secret_field in _encrypted_fields(model)]
        values = item.get("fields") or {}
        for name in fields_by_label[label]:
            ciphertext = values.get(name)
            if not ciphertext:
                continue
            try:
                values[name] = crypto.decrypt(str(ciphertext))
            except crypto.DecryptionError:
                raise TransferError(
                    f"{label} {item.get('pk')!r}: its {name} cannot be decrypted with FIELD_ENCRYPTION_KEYS. The export "
                    "was written under other keys: configure the source's FIELD_ENCRYPTION_KEYS here and import again."
                ) from None
            count += 1
    return count


def database_import(path: Path, *, progress: Callable[[str, int], None] | None = None) -> TransferReport:
    """Load an export written by :func:`database_export` into this (freshly migrated, empty) database, in one
    transaction: every secret is decrypted with the configured keys and stored encrypted again."""
    document = _read(path)
    alias = DEFAULT_DB_ALIAS
    applied = _applied_migrations(alias)
    expected = document.get("migrations") or {}
    differing = sorted(app for app in set(expected) | set(applied) if expected.get(app) != applied.get(app))
    if differing:
        raise TransferError(
            f"This database is not migrated like the source ({', '.join(differing)} differ): run manage.py migrate "
            "with the same version of the portal as the source, then import again."
        )
    present = [
        str(model._meta.verbose_name_plural) for model in (Cluster, SSHCredential, Job) if model.objects.exists()
    ]
    if present:
        raise TransferError(
            f"This database already holds {', '.join(present)}: import into a new, freshly migrated database."
        )
    objects = document["objects"]
    report = TransferReport(secrets=_decrypt_secrets(objects))
    connection = connections[alias]
    loaded_models: set[type] = set()
    with transaction.atomic(using=alias):
        with connection.constraint_checks_disabled():
            deferred = []
            for loaded in serializers.deserialize("python", objects, using=alias, handle_forward_references=True):
                loaded.save(using=alias)
                model = type(loaded.object)
                loaded_models.add(model)
                report.objects[model._meta.label] = report.objects.get(model._meta.label, 0) + 1
                if loaded.deferred_fields:
                    deferred.append(loaded)
            for loaded in deferred:
                loaded.save_deferred_fields(using=alias)
        connection.check_constraints(table_names=[model._meta.db_table for model in loaded_models])
        statements = connection.ops.sequence_reset_sql(no_style(), list(loaded_models))
        if statements:
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
    if progress is not None:
        for label, count in report.objects.items():
            progress(label, count)
    return report
