"""The independent oracle: read a source table and a warehouse table through their drivers and
compare canonical values key by key. It uses no steadyflow code, so it cannot share a bug.

Canonical forms (the documented contract of what the warehouse holds):
  text      the exact string; CHAR(n) without its trailing pad blanks
  json      the parsed document (so key order and spacing do not matter)
  uuid      lowercase hyphenated text
  decimal   the exact number (1.50 == 1.5)
  timestamp the UTC instant in microseconds; a naive source value is UTC
  float     the IEEE value, NaN equal to NaN
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pymysql

from tests.support.gen import Col, Table

Canon = tuple[Any, ...]
_SQLITE_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?"
    r"(Z|[+-]\d{2}:?\d{2})?$")


def parse_text_time(text: str) -> datetime:
    m = _SQLITE_TIME.match(text)
    if not m:
        raise ValueError(f"not a time: {text!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    micro = int((m.group(7) or "0").ljust(6, "0"))
    zone = m.group(8)
    tz = UTC
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hh, mm = int(zone[1:3]), int(zone[-2:])
        tz = timezone(sign * timedelta(hours=hh, minutes=mm))
    return datetime(y, mo, d, h, mi, s, micro, tzinfo=tz).astimezone(UTC)


def canon(col: Col, value: Any) -> Any:
    """One comparable value for a source or warehouse value of this column."""
    if value is None:
        return None
    k = col.kind
    if k == "char":
        return str(value).rstrip(" ")
    if k == "json":
        doc = json.loads(value) if isinstance(value, str | bytes) else value
        return json.dumps(doc, sort_keys=True)
    if k == "uuid":
        return str(value).lower()
    if k == "dec":
        # a SQLite NUMERIC column hands 10.25 back as a float: its shortest repr is the number
        d = Decimal(repr(value) if isinstance(value, float) else value)
        return ("dec", d.normalize() if d else Decimal(0))
    if k == "ts":
        if isinstance(value, int):  # DuckDB: epoch_us (its Python TIMESTAMPTZ needs pytz)
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)
        if isinstance(value, str):
            return parse_text_time(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if k == "date":
        return date.fromisoformat(value) if isinstance(value, str) else value
    if k == "float":
        f = float(value)
        return "nan" if math.isnan(f) else f
    if k == "bool":
        return bool(value)
    if k in ("int32", "int64"):
        return int(value)
    if isinstance(value, bytes):  # a bin column: its UTF-8 text (other rows are quarantined)
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _rows(table: Table, raw: Iterable[tuple[Any, ...]]) -> dict[Canon, Canon]:
    out: dict[Canon, Canon] = {}
    names = [c.name for c in table.cols]
    for row in raw:
        values = tuple(canon(c, v) for c, v in zip(table.cols, row, strict=True))
        key = tuple(values[names.index(k)] for k in table.key)
        out[key] = values
    return out


def read_source(kind: str, where: str, table: Table) -> dict[Canon, Canon]:
    """Every row of the source table, canonical, by canonical key."""
    if kind == "postgres":
        cols = ", ".join(f'"{c.name}"' for c in table.cols)
        with psycopg.connect(where, options="-c TimeZone=UTC") as conn:
            return _rows(table, conn.execute(f'SELECT {cols} FROM "{table.name}"').fetchall())
    if kind == "mysql":
        from urllib.parse import urlsplit

        parts = urlsplit(where)
        conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                               password="", database=parts.path.lstrip("/"), charset="utf8mb4")
        with closing(conn), conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.execute(f"SELECT {', '.join(f'`{c.name}`' for c in table.cols)} "
                        f"FROM `{table.name}`")
            return _rows(table, cur.fetchall())
    with closing(sqlite3.connect(where)) as conn:
        cols = ", ".join(f'"{c.name}"' for c in table.cols)
        return _rows(table, conn.execute(f'SELECT {cols} FROM "{table.name}"').fetchall())


def read_warehouse(kind: str, where: str, schema: str, table: Table) -> dict[Canon, Canon]:
    cols = ", ".join(f'"{c.name}"' for c in table.cols)
    sql = f'SELECT {cols} FROM "{schema}"."{table.name}"'
    if kind == "postgres":
        with psycopg.connect(where, options="-c TimeZone=UTC") as conn:
            exists = conn.execute("SELECT to_regclass(%s)",
                                  [f'"{schema}"."{table.name}"']).fetchone()
            if exists is None or exists[0] is None:
                return {}
            return _rows(table, conn.execute(sql).fetchall())
    if not Path(where).exists():
        return {}
    sql = "SELECT {} FROM \"{}\".\"{}\"".format(", ".join(
        f'epoch_us("{c.name}")' if c.kind == "ts" else f'"{c.name}"' for c in table.cols),
        schema, table.name)
    with closing(duckdb.connect(where, read_only=True)) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        found = conn.execute("SELECT count(*) FROM information_schema.tables WHERE "
                             "table_schema = ? AND table_name = ?",
                             [schema, table.name]).fetchone()
        if not found or not found[0]:
            return {}
        return _rows(table, conn.execute(sql).fetchall())


def raw_key_value(col: Col, value: Any) -> Any:
    """A canonical key value back as a driver parameter for the warehouse column."""
    if isinstance(value, tuple) and value[:1] == ("dec",):
        return value[1]
    return value


def diff(expected: dict[Canon, Canon], actual: dict[Canon, Canon], limit: int = 5) -> str:
    """'' when equal; else the missing, extra and mismatched keys (first few of each)."""
    missing = [k for k in expected if k not in actual]
    extra = [k for k in actual if k not in expected]
    changed = [k for k in expected if k in actual and expected[k] != actual[k]]
    if not (missing or extra or changed):
        return ""
    lines = [f"missing {len(missing)}, extra {len(extra)}, mismatched {len(changed)}"]
    lines += [f"  missing {k!r}: {expected[k]!r}" for k in missing[:limit]]
    lines += [f"  extra {k!r}: {actual[k]!r}" for k in extra[:limit]]
    lines += [f"  mismatched {k!r}:\n    source    {expected[k]!r}\n    warehouse {actual[k]!r}"
              for k in changed[:limit]]
    return "\n".join(lines)
