"""An oracle independent of steadyflow's code: source and warehouse read through the drivers,
canonicalised here, compared key by key.

Canonical values (docs: the preamble's shared convention): CHAR(n) without its trailing pad,
json as the parsed document (numbers as exact decimals, key order irrelevant), decimals
exact, timestamps as UTC instants (a naive value is UTC), integers exact, other text exact
(a varchar keeps its trailing spaces). Only the SOURCE side's CHAR values are unpadded: a
warehouse that holds a padded value is wrong, and the diff must say so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

Key = tuple[Any, ...]
Row = dict[str, Any]


def canonical_json(value: Any) -> Any:
    """A json column as a Python document, whatever the driver returned (text, bytes, or a
    document psycopg already parsed)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        value = value.decode()
    if not isinstance(value, str):
        value = json.dumps(value)
    try:
        return json.loads(value, parse_float=Decimal)
    except json.JSONDecodeError:  # e.g. a Python repr stored as text: a mismatch to show
        return f"<not json: {value!r}>"


def canonical_time(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


@dataclass(frozen=True, slots=True)
class Shape:
    """How to canonicalise the columns of one table."""

    columns: tuple[str, ...]
    key: tuple[str, ...]
    chars: frozenset[str] = frozenset()
    jsons: frozenset[str] = frozenset()

    def canonical(self, raw: Sequence[Any], source: bool) -> Row:
        row: Row = {}
        for name, value in zip(self.columns, raw, strict=True):
            if value is None:
                row[name] = None
            elif name in self.jsons:
                row[name] = canonical_json(value)
            elif name in self.chars and source:
                row[name] = value.rstrip(" ")
            else:  # decimals, integers and text compare exactly as the drivers return them
                row[name] = canonical_time(value)
        return row

    def index(self, rows: Iterable[Sequence[Any]], source: bool) -> tuple[dict[Key, Row],
                                                                            list[Key]]:
        """Rows by key, and the keys seen more than once."""
        out: dict[Key, Row] = {}
        dupes: list[Key] = []
        for raw in rows:
            row = self.canonical(raw, source)
            key = tuple(row[k] for k in self.key)
            if key in out:
                dupes.append(key)
            out[key] = row
        return out, dupes


@dataclass
class Diff:
    """Source vs warehouse for one table."""

    table: str
    source_rows: int
    warehouse_rows: int
    missing: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)
    duplicates: list[Key] = field(default_factory=list)
    mismatched: list[tuple[Key, dict[str, tuple[Any, Any]]]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.duplicates or self.mismatched)

    def report(self, limit: int = 10) -> str:
        lines = [f"{self.table}: source {self.source_rows} rows, warehouse "
                 f"{self.warehouse_rows}; missing {len(self.missing)}, extra "
                 f"{len(self.extra)}, duplicated {len(self.duplicates)}, mismatched "
                 f"{len(self.mismatched)}"]
        for label, keys in (("missing", self.missing), ("extra", self.extra),
                            ("duplicated", self.duplicates)):
            if keys:
                lines.append(f"  {label} (first {limit}): {sorted(keys)[:limit]}")
        for key, cols in sorted(self.mismatched, key=lambda m: m[0])[:limit]:
            detail = "; ".join(f"{c}: source {_short(s)} != warehouse {_short(w)}"
                               for c, (s, w) in cols.items())
            lines.append(f"  mismatched {key}: {detail}")
        return "\n".join(lines)


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def compare(table: str, shape: Shape, source: Iterable[Sequence[Any]],
            warehouse: Iterable[Sequence[Any]]) -> Diff:
    want, _ = shape.index(source, source=True)
    have, dupes = shape.index(warehouse, source=False)
    diff = Diff(table, len(want), len(have) + len(dupes), duplicates=dupes)
    diff.missing = [k for k in want if k not in have]
    diff.extra = [k for k in have if k not in want]
    for key, row in want.items():
        got = have.get(key)
        if got is None:
            continue
        cols = {c: (v, got[c]) for c, v in row.items() if got[c] != v}
        if cols:
            diff.mismatched.append((key, cols))
    return diff
