"""What a database refusal means: an ``IntegrityError`` mapped to the constraint it names, and that constraint to
the field it guards and its own message.

The constraint is read from the error itself: PostgreSQL reports its name (``diag.constraint_name``); SQLite names
a constraint or index (``UNIQUE constraint failed: index 'clusters_node_unique_hostname'``, ``CHECK constraint
failed: clusters_sshcredential_port_range``) or lists the columns (``UNIQUE constraint failed: clusters_cluster.name``).
The name is looked up in the models' ``Meta.constraints`` first, then in the database's own constraints (unique
columns, foreign keys, checks). An error that names no known constraint is reported as such, with the name, never
as a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import NON_FIELD_ERRORS, FieldDoesNotExist
from django.db import DatabaseError, connection, models

__all__ = ["Refusal", "integrity_error_messages", "integrity_refusal"]

_SQLITE_INDEX = re.compile(r"UNIQUE constraint failed: index '(?P<name>[^']+)'")
_SQLITE_COLUMNS = re.compile(r"(?:UNIQUE|NOT NULL) constraint failed: (?P<columns>[\w.]+(?:, [\w.]+)*)")
_SQLITE_CHECK = re.compile(r"CHECK constraint failed: (?P<name>.+)$", re.MULTILINE)
_QUOTED_NAME = re.compile(r'constraint "(?P<name>[^"]+)"')
_JSON_VALID = re.compile(r'JSON_VALID\("(?P<column>\w+)"\)', re.IGNORECASE)
_COLUMN_IN_EXPRESSION = re.compile(r'"(?P<column>\w+)"')


@dataclass(frozen=True)
class Refusal:
    """What the database refused: the constraint (its name, or its text when it has none), the model field it
    guards ("" for the record as a whole) and the message for people."""

    constraint: str
    field: str
    message: str


def _constraint_text(exc: BaseException) -> tuple[str, list[str]]:
    """(constraint name, [table.column, ...]) named by the error; either may be empty."""
    cause = exc.__cause__ or exc
    diag = getattr(cause, "diag", None)
    name = getattr(diag, "constraint_name", None) or ""
    text = str(exc)
    if name:
        return name, []
    match = _SQLITE_INDEX.search(text)
    if match:
        return match["name"], []
    match = _SQLITE_COLUMNS.search(text)
    if match:
        return "", [column.strip() for column in match["columns"].split(",")]
    match = _SQLITE_CHECK.search(text)
    if match:
        return match["name"].strip(), []
    match = _QUOTED_NAME.search(text)
    return (match["name"], []) if match else ("", [])


def _field_by_column(model: type[models.Model], column: str) -> models.Field | None:
    for field in model._meta.concrete_fields:
        if field.column == column:
            return field
    return None


def _guarded_field(model: type[models.Model], names: Iterable[str]) -> str:
    """The field an error about these fields is shown next to: the last one that is not the parent relation."""
    plain = []
    for name in names:
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            continue
        if not field.is_relation:
            plain.append(field.name)
    return plain[-1] if plain else ""


def _from_meta(model: type[models.Model], name: str) -> Refusal | None:
    for constraint in model._meta.constraints:
        if constraint.name != name:
            continue
        custom = constraint.violation_error_message != constraint.default_violation_error_message
        if isinstance(constraint, models.UniqueConstraint) and constraint.fields:
            fields = list(constraint.fields)
            message = str(constraint.get_violation_error_message()) if custom else _unique_message(model, fields)
            return Refusal(name, _guarded_field(model, fields), message)
        return Refusal(name, "", str(constraint.get_violation_error_message()))
    return None


def _meta_unique_on(model: type[models.Model], columns: list[str]) -> Refusal | None:
    """The unique constraint of the model's ``Meta`` on exactly these columns (SQLite names the columns of a
    partial unique index, not the index)."""
    wanted = set(columns)
    for constraint in model._meta.constraints:
        if isinstance(constraint, models.UniqueConstraint) and constraint.fields:
            own = {model._meta.get_field(name).column for name in constraint.fields}
            if own == wanted:
                return _from_meta(model, constraint.name)
    return None


def _unique_message(model: type[models.Model], fields: list[str]) -> str:
    error = model().unique_error_message(model, tuple(fields))
    return str(error.message) % error.params if error.params else str(error.message)


def _from_columns(model: type[models.Model], name: str, columns: list[str], info: dict) -> Refusal:
    fields = [field for column in columns if (field := _field_by_column(model, column)) is not None]
    names = [field.name for field in fields]
    guarded = _guarded_field(model, names) or (names[-1] if names else "")
    if info.get("foreign_key") and fields:
        label = fields[0].verbose_name
        return Refusal(name, fields[0].name, f"The selected {label} no longer exists; reload and choose another.")
    if info.get("unique") and names:
        return Refusal(name, guarded, _unique_message(model, names))
    if info.get("not_null") and fields:
        return Refusal(name, fields[0].name, "This field cannot be empty.")
    if info.get("json") and fields:
        return Refusal(name, fields[0].name, "Enter valid JSON (numbers must be finite).")
    return Refusal(name, guarded, f"The value breaks the database rule {name}.")


def _from_database(model: type[models.Model], name: str) -> Refusal | None:
    table = model._meta.db_table
    try:
        with connection.cursor() as cursor:
            constraints = connection.introspection.get_constraints(cursor, table)
    except DatabaseError:
        return None
    info = constraints.get(name)
    if info is None:
        return None
    return _from_columns(model, name, list(info.get("columns") or []), info)


def _from_sqlite_text(models_: tuple[type[models.Model], ...], name: str, columns: list[str], text: str) -> Refusal:
    if columns:
        by_table: dict[str, list[str]] = {}
        for item in columns:
            table, _, column = item.rpartition(".")
            by_table.setdefault(table, []).append(column)
        for model in models_:
            if model._meta.db_table in by_table:
                if not text.startswith("NOT NULL"):
                    named = _meta_unique_on(model, by_table[model._meta.db_table])
                    if named is not None:
                        return named
                kind = {"not_null": True} if text.startswith("NOT NULL") else {"unique": True}
                label = ", ".join(columns)
                return _from_columns(model, label, by_table[model._meta.db_table], kind)
    if name:
        json_column = _JSON_VALID.search(name)
        column_match = json_column or _COLUMN_IN_EXPRESSION.search(name)
        if column_match:
            for model in models_:
                field = _field_by_column(model, column_match["column"])
                if field is not None:
                    kind = {"json": True} if json_column else {}
                    return _from_columns(model, name, [field.column], kind)
    return Refusal(name, "", "")


def integrity_refusal(exc: BaseException, *models_: type[models.Model]) -> Refusal:
    """The constraint an ``IntegrityError`` names, looked up among ``models_``."""
    name, columns = _constraint_text(exc)
    if name:
        for model in models_:
            refusal = _from_meta(model, name) or _from_database(model, name)
            if refusal is not None:
                return refusal
    refusal = _from_sqlite_text(models_, name, columns, str(exc))
    if refusal.message:
        return refusal
    named = name or ", ".join(columns) or str(exc).strip().splitlines()[0]
    return Refusal(named, "", f"The database refused the change: it breaks the rule {named}.")


def integrity_error_messages(
    exc: BaseException, *models_: type[models.Model], prefix: str = ""
) -> dict[str, list[str]]:
    """``{field path: [message]}`` for a ``ValidationError``: the field the refused constraint guards (under
    ``prefix``, such as ``nodes[2]``), or the record as a whole."""
    refusal = integrity_refusal(exc, *models_)
    if refusal.field:
        key = f"{prefix}.{refusal.field}" if prefix else refusal.field
    else:
        key = prefix or NON_FIELD_ERRORS
    return {key: [refusal.message]}
