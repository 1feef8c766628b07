"""Re-encrypting the secrets at rest under the primary encryption key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from django.apps import apps
from django.db import connections, router, transaction

from .. import crypto
from ..fields import EncryptedTextField

__all__ = ["ColumnRotation", "encrypted_columns", "encryption_keys_rotate"]


@dataclass
class ColumnRotation:
    """What rotation did to one encrypted column."""

    label: str  # "app.Model.field"
    rotated: int = 0  # re-encrypted under the primary key
    current: int = 0  # already under the primary key
    empty: int = 0  # empty or NULL: nothing to encrypt
    changed_meanwhile: int = 0  # written by someone else during the run (already under the primary key)
    unreadable: list[object] = field(default_factory=list)  # primary keys of values no configured key opens


def encrypted_columns() -> list[tuple[type, EncryptedTextField]]:
    """Every encrypted field of every installed model."""
    found = []
    for model in apps.get_models():
        for model_field in model._meta.concrete_fields:
            if isinstance(model_field, EncryptedTextField):
                found.append((model, model_field))
    return found


def _rotate_column(model: type, model_field: EncryptedTextField, batch_size: int) -> ColumnRotation:
    meta = model._meta  # type: ignore[attr-defined]
    result = ColumnRotation(label=f"{meta.label}.{model_field.name}")
    alias = router.db_for_write(model)
    connection = connections[alias]
    quote = connection.ops.quote_name
    table, pk_column, column = quote(meta.db_table), quote(meta.pk.column), quote(model_field.column)
    select = f"SELECT {pk_column}, {column} FROM {table} WHERE {pk_column} > %s ORDER BY {pk_column}"  # noqa: S608
    update = f"UPDATE {table} SET {column} = %s WHERE {pk_column} = %s AND {column} = %s"  # noqa: S608
    last_pk: object = None
    while True:
        # One transaction per batch keeps locks short; the conditional UPDATE leaves alone a value that was
        # rewritten since it was read (that write used the primary key already).
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            if last_pk is None:
                cursor.execute(
                    f"SELECT {pk_column}, {column} FROM {table} ORDER BY {pk_column}"  # noqa: S608
                    f" {connection.ops.limit_offset_sql(None, batch_size)}"
                )
            else:
                cursor.execute(f"{select} {connection.ops.limit_offset_sql(None, batch_size)}", [last_pk])
            rows = cursor.fetchall()
            for pk, ciphertext in rows:
                if not ciphertext:
                    result.empty += 1
                    continue
                if crypto.is_current(ciphertext):
                    result.current += 1
                    continue
                try:
                    rotated = crypto.rotate(ciphertext)
                except crypto.DecryptionError:
                    result.unreadable.append(pk)
                    continue
                cursor.execute(update, [rotated, pk, ciphertext])
                if cursor.rowcount == 1:
                    result.rotated += 1
                else:
                    result.changed_meanwhile += 1
        if len(rows) < batch_size:
            return result
        last_pk = rows[-1][0]


def encryption_keys_rotate(
    *, batch_size: int = 500, progress: Callable[[ColumnRotation], None] | None = None
) -> list[ColumnRotation]:
    """Re-encrypt every encrypted column under the primary (first) key of ``FIELD_ENCRYPTION_KEYS``.

    Values already under the primary key are left untouched, so running it again changes nothing. Rows are read
    and written ``batch_size`` at a time, each batch in its own transaction. Values that no configured key opens
    are counted in ``unreadable`` (by primary key) and left as they are.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    crypto.encrypt("")  # fail fast, before touching any row, when the keys are missing or malformed
    results = []
    for model, model_field in encrypted_columns():
        result = _rotate_column(model, model_field, batch_size)
        results.append(result)
        if progress is not None:
            progress(result)
    return results
