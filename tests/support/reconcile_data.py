"""The same awkward rows in every engine, to prove the canonical checksum is engine-free.

Used by tests/unit/test_reconcile_encoding.py (SQLite, DuckDB) and
tests/integration/test_reconcile.py (PostgreSQL, MariaDB as well).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from steadyflow.config import ContractConfig
from steadyflow.reconcile.bisect import Agg, Range
from steadyflow.reconcile.encoding import canonical, register_sqlite, row_hash
from steadyflow.reconcile.engines import engine_for
from steadyflow.reconcile.sides import Dim, SqlSide

CONTRACT = ContractConfig.model_validate({
    "primary_key": ["id"],
    "cursor": "seen_at",
    "columns": {
        "id": {"type": "int64", "nullable": False},
        "grp": {"type": "int32"},
        "name": {"type": "string"},
        "price": {"type": "decimal(12,2)"},
        "big": {"type": "decimal(38,10)"},
        "ratio": {"type": "float64"},
        "flag": {"type": "bool"},
        "on_day": {"type": "date"},
        "seen_at": {"type": "timestamp", "nullable": False},
        "note": {"type": "string"},
    },
}).to_contract()
NAMES = CONTRACT.names
TYPES = [c.type for c in CONTRACT.columns]
T0 = datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC)

SPECIAL: list[tuple[Any, ...]] = [
    (1, None, None, None, None, None, None, None, T0, None),
    (2, 0, "", Decimal("0.00"), Decimal("0"), 0.0, False, date(1970, 1, 1),
     datetime(1970, 1, 1, tzinfo=UTC), ""),
    (3, -7, "a|b", Decimal("-0.01"), Decimal("-1.0000000001"), -1.5, True,
     date(1969, 7, 20), datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "~N"),
    (4, 2_147_483_647, "a", Decimal("12.50"), Decimal("123456789012345678.1234567890"), 0.1,
     True, date(2024, 2, 29), datetime(2999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "|b"),
    (5, 1, "~", Decimal("9999999999.99"), Decimal("0.0000000001"), 1e9 + 0.5, False,
     date(2038, 1, 19), datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC), "a~|b"),
    (6, 2, "é 日本 it's", Decimal("-5.00"), Decimal("5"), 3.141592653589793, None, None,
     T0, "trailing space "),
    (7, 3, "back\\slash %s %% ?", Decimal("1.00"), None, -0.000001, True, date(2000, 1, 1),
     T0 + timedelta(microseconds=1), "\ttab\nnewline"),
    (8_000_000_000, -2_147_483_648, "big key", Decimal("0.10"), Decimal("-0.5"), 2.5, False,
     date(1999, 12, 31), T0 - timedelta(days=400), None),
]


def rows(n_random: int = 200, seed: int = 5) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    out = list(SPECIAL)
    for i in range(n_random):
        out.append((
            100 + i, rng.randrange(-1000, 1000), f"name {rng.random():.6f}",
            Decimal(rng.randrange(-10**6, 10**6)) / 100,
            Decimal(rng.randrange(-10**12, 10**12)) / 10**10, rng.uniform(-1e6, 1e6),
            rng.random() < 0.5, date(2020, 1, 1) + timedelta(days=rng.randrange(2000)),
            T0 + timedelta(microseconds=rng.randrange(10**12)),
            None if rng.random() < 0.2 else f"n{rng.randrange(50)}"))
    return out


def reference_hashes(data: list[tuple[Any, ...]]) -> dict[tuple[str, ...], str]:
    """What every engine must compute, from the Python definition in encoding.py."""
    return {(str(r[0]),): row_hash([canonical(v, t) for v, t in zip(r, TYPES, strict=True)])
            for r in data}


# --- how each engine stores them ----------------------------------------------------------
DDL = {
    "postgres": "CREATE TABLE awkward (id bigint PRIMARY KEY, grp integer, name text, "
                "price numeric(12,2), big numeric(38,10), ratio double precision, "
                "flag boolean, on_day date, seen_at timestamptz NOT NULL, note text)",
    "mysql": "CREATE TABLE awkward (id BIGINT PRIMARY KEY, grp INT, name VARCHAR(100), "
             "price DECIMAL(12,2), big DECIMAL(38,10), ratio DOUBLE, flag BOOLEAN, "
             "on_day DATE, seen_at DATETIME(6) NOT NULL, note TEXT) DEFAULT CHARSET=utf8mb4",
    # a store's SQLite file: prices and times as text, booleans as integers
    "sqlite": "CREATE TABLE awkward (id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, "
              "price TEXT, big TEXT, ratio REAL, flag INTEGER, on_day TEXT, "
              "seen_at TEXT NOT NULL, note TEXT)",
    "duckdb": "CREATE TABLE awkward (id BIGINT, grp INTEGER, name VARCHAR, "
              "price DECIMAL(12,2), big DECIMAL(38,10), ratio DOUBLE, flag BOOLEAN, "
              "on_day DATE, seen_at TIMESTAMPTZ NOT NULL, note VARCHAR)",
}


def stored(kind: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row as the engine's driver should receive it."""
    out: list[Any] = []
    for i, v in enumerate(row):
        if kind == "mysql" and isinstance(v, datetime):
            v = v.astimezone(UTC).replace(tzinfo=None)
        if kind == "sqlite":
            if isinstance(v, datetime):
                v = v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            elif isinstance(v, Decimal):
                v = str(v.normalize()) if i == 3 and row[0] % 2 else str(v)  # '12.5' too
            elif isinstance(v, date):
                v = v.isoformat()
            elif isinstance(v, bool):
                v = int(v)
        out.append(v)
    return tuple(out)


def side(kind: str, run: Callable[[str, list[Any]], list[tuple[Any, ...]]],
         table: str = "awkward") -> SqlSide:
    engine = engine_for(kind)
    return SqlSide(engine, engine.q(table), CONTRACT, run, [Dim("id")])


def fingerprint(s: SqlSide) -> tuple[dict[int, Agg], dict[tuple[str, ...], str]]:
    """Bucket aggregates over the whole key space (16 buckets) and every row's hash."""
    bounds = s.bounds(())
    assert bounds is not None
    rng = Range((), bounds[0], bounds[1] + 1)
    return s.aggregate(rng, rng.split(16)), {r.key: r.hash for r in s.leaf(rng)}


def sqlite_run(conn: Any) -> Callable[[str, list[Any]], list[tuple[Any, ...]]]:
    register_sqlite(conn)
    return lambda sql, params: conn.execute(sql, params).fetchall()


def duckdb_run(conn: Any) -> Callable[[str, list[Any]], list[tuple[Any, ...]]]:
    return lambda sql, params: conn.sql(sql, params=params or None).fetchall()
