"""Scanning the whole database for secret values: every table of every model the app registry knows (many-to-many
tables included), every other table the database has, and every column of each row, read with plain SQL (so an
encrypted column is seen as its ciphertext, never decrypted)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.db import connection


@dataclass
class ScanReport:
    tables: list[str] = field(default_factory=list)
    rows: int = 0
    values: int = 0
    # "table.column (row n): needle" for every value holding a needle.
    findings: list[str] = field(default_factory=list)


def needles_for(secret: str) -> list[str]:
    """What must not be stored of ``secret``: itself, its first 16 characters (a secret cut short at a length limit
    still leaks) and the core of its base64 encoding."""
    secret = secret.strip()
    found = [secret]
    if len(secret) > 16:
        found.append(secret[:16])
    encoded = base64.b64encode(secret.encode()).decode()
    if len(encoded) > 12:
        found.append(encoded[:-4])
    return found


def _as_text(value: Any) -> str:
    if value is None or isinstance(value, (bool, int, float)):
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def model_tables() -> list[str]:
    """The tables of every model in the app registry, auto-created many-to-many tables included."""
    tables = {
        model._meta.db_table
        for model in apps.get_models(include_auto_created=True)
        if model._meta.managed and not model._meta.proxy
    }
    return sorted(tables)


def scan_database(secrets: Iterable[str]) -> ScanReport:
    """Every value of every table that holds one of ``secrets`` (see :func:`needles_for`)."""
    needles = [needle for secret in secrets if secret for needle in needles_for(secret)]
    present = set(connection.introspection.table_names())
    registry = model_tables()
    missing = [table for table in registry if table not in present]
    assert not missing, f"tables of models not in the database: {missing}"
    report = ScanReport(tables=sorted(present))
    quote = connection.ops.quote_name
    for table in report.tables:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT * FROM {quote(table)}")  # noqa: S608 - table names from the schema
            columns = [column[0] for column in cursor.description]
            for number, row in enumerate(cursor.fetchall(), start=1):
                report.rows += 1
                for column, value in zip(columns, row, strict=True):
                    text = _as_text(value)
                    report.values += 1
                    for needle in needles:
                        if needle in text:
                            report.findings.append(f"{table}.{column} (row {number}): {needle[:6]}...")
    return report
