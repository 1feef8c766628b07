"""A job's ``result`` (JSON) as readable tables for the job page.

The shapes the engine stores are turned into tables generically: a list of mappings becomes one table (a column
per key), a mapping of mappings a table with a row per key, other mappings a two-column table of names and values.
Nested values that do not fit a cell are shown as compact JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ResultTable", "result_tables"]

MAX_ROWS = 500
MAX_CELL_CHARS = 2000


@dataclass
class ResultTable:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    truncated: int = 0


def _label(key: Any) -> str:
    return str(key).replace("_", " ")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, str)):
        text = str(value)
    elif isinstance(value, Sequence) and all(isinstance(item, (str, int, float)) for item in value):
        text = ", ".join(str(item) for item in value) or "—"
    elif isinstance(value, Mapping) and all(
        isinstance(item, (str, int, float, bool)) or item is None for item in value.values()
    ):
        text = "; ".join(f"{key}: {_cell(item)}" for key, item in value.items()) or "—"
    else:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS] + "…"


def _records_table(title: str, records: Sequence[Mapping[str, Any]]) -> ResultTable:
    columns: list[str] = []
    for record in records:
        for key in record:
            if key not in columns:
                columns.append(key)
    table = ResultTable(title=title, columns=[_label(column) for column in columns])
    for record in records[:MAX_ROWS]:
        table.rows.append([_cell(record.get(column)) for column in columns])
    table.truncated = max(len(records) - MAX_ROWS, 0)
    return table


def _table_for(title: str, value: Any) -> ResultTable | None:
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and value
        and all(isinstance(item, Mapping) for item in value)
    ):
        return _records_table(title, value)
    if isinstance(value, Mapping) and value:
        if all(isinstance(item, Mapping) for item in value.values()):
            records = [{"name": key, **item} for key, item in value.items()]
            return _records_table(title, records)
        table = ResultTable(title=title, columns=["name", "value"])
        items = list(value.items())
        table.rows = [[_label(key), _cell(item)] for key, item in items[:MAX_ROWS]]
        table.truncated = max(len(items) - MAX_ROWS, 0)
        return table
    return None


def result_tables(result: Any) -> list[ResultTable]:
    """Tables for a job's result: one per top-level entry that holds a list or mapping, then one "Summary" table
    of the remaining scalar entries."""
    if not isinstance(result, Mapping) or not result:
        return []
    tables: list[ResultTable] = []
    scalars: dict[str, Any] = {}
    for key, value in result.items():
        table = _table_for(_label(key).capitalize(), value)
        if table is not None:
            tables.append(table)
        elif value not in ({}, [], None, ""):
            scalars[key] = value
    if scalars:
        tables.insert(
            0,
            ResultTable(
                title="Summary",
                columns=["name", "value"],
                rows=[[_label(key), _cell(value)] for key, value in scalars.items()],
            ),
        )
    return tables
