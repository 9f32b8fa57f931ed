"""Bucket dimensions on the embedded engines (SQLite as a source stores text, DuckDB as a
warehouse stores types): every dimension gives equal buckets on both for equal rows, and
the bucket arithmetic is exact at the ends of int64. Plus the MariaDB error a bucket query
used to raise there: a value out of range is not a connection problem."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import pymysql
import pytest

from steadyflow.config import ContractConfig, SourceConfig
from steadyflow.errors import FatalError, SourceUnavailable
from steadyflow.extract.dialects import MysqlDialect
from steadyflow.reconcile.bisect import Agg, Range
from steadyflow.reconcile.encoding import register_sqlite
from steadyflow.reconcile.engines import engine_for
from steadyflow.reconcile.sides import Dim, SqlSide, cursor_us

I64 = (-(2 ** 63), 2 ** 63 - 1)
CONTRACT = ContractConfig.model_validate({
    "primary_key": ["k", "name"],
    "cursor": "cur",
    "columns": {
        "k": {"type": "int64", "nullable": False},
        "name": {"type": "string", "nullable": False},
        "day": {"type": "date", "nullable": False},
        "cur": {"type": "decimal(12,2)", "nullable": False},
        "v": {"type": "int64"},
    },
}).to_contract()
KEYS = [I64[0], I64[0] + 1, -1, 0, 1, 2 ** 62, I64[1] - 1, I64[1]]
ROWS = [(k, f"{'Zaé|~'[i % 5]}{i}", date(1, 1, 1) + timedelta(days=i * 400_000),
         Decimal(f"{-5000 + i * 1234}.{i:02d}"), None if i % 3 else i)
        for i, k in enumerate(KEYS)]
DIMS = {
    "int64 key": Dim("k"),
    "date": Dim("day", "date"),
    "decimal": Dim("cur", "decimal", scale=2),
    "key hash": Dim("", "hash", key=(("k", "int64"), ("name", "string"))),
}
Run = Callable[[str, list[Any]], list[tuple[Any, ...]]]


def sqlite_side(dim: Dim) -> SqlSide:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("CREATE TABLE t (k INTEGER, name TEXT, day TEXT, cur TEXT, v INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)",
                     [(k, n, d.isoformat(), str(c), v) for k, n, d, c, v in ROWS])
    register_sqlite(conn)
    engine = engine_for("sqlite")
    return SqlSide(engine, engine.q("t"), CONTRACT,
                   lambda sql, params: conn.execute(sql, params).fetchall(), [dim])


def duckdb_side(dim: Dim) -> SqlSide:
    conn = duckdb.connect()
    conn.execute("CREATE TABLE t (k BIGINT, name VARCHAR, day DATE, cur DECIMAL(12,2), "
                 "v BIGINT)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", [list(r) for r in ROWS])
    engine = engine_for("duckdb")
    return SqlSide(engine, engine.q("t"), CONTRACT,
                   lambda sql, params: conn.sql(sql, params=params or None).fetchall(), [dim])


def buckets(side: SqlSide, parts: int) -> tuple[tuple[int, int], dict[int, Agg]]:
    bounds = side.bounds(())
    assert bounds is not None
    rng = Range((), bounds[0], bounds[1] + 1)
    return bounds, side.aggregate(rng, rng.split(parts))


@pytest.mark.parametrize("name", DIMS)
@pytest.mark.parametrize("parts", [1, 2, 3, 64])
def test_every_dimension_buckets_alike_on_sqlite_and_duckdb(name: str, parts: int) -> None:
    lite, duck = buckets(sqlite_side(DIMS[name]), parts), buckets(duckdb_side(DIMS[name]), parts)
    assert lite == duck
    assert sum(a.rows for a in lite[1].values()) == len(ROWS)


def test_int64_extremes_fall_in_the_right_buckets() -> None:
    """(k - min) // width spans 2**64: SQLite turned it into a float, DuckDB overflowed."""
    for side in (sqlite_side(Dim("k")), duckdb_side(Dim("k"))):
        (lo, hi), found = buckets(side, 4)
        assert (lo, hi) == I64
        width = Range((), lo, hi + 1).split(4)
        expected: dict[int, int] = {}
        for k in KEYS:
            expected[(k - lo) // width] = expected.get((k - lo) // width, 0) + 1
        assert {b: a.rows for b, a in found.items()} == expected
        top = side.leaf(Range((), I64[1], I64[1] + 1))  # a bound past the largest bigint
        assert [r.raw[0] for r in top] == [I64[1]]


def test_cursor_units() -> None:
    assert cursor_us(Decimal("1003.57"), 2) == 100357
    assert cursor_us(Decimal("-0.001"), 2) == -1  # the floor, like the dimension's
    assert cursor_us(I64[1], 0) == I64[1]
    assert cursor_us(date(1970, 1, 2)) == 1


def test_a_mariadb_value_out_of_range_is_not_a_connection_problem() -> None:
    dialect = MysqlDialect(SourceConfig(name="s", kind="mysql", dsn="mysql://root@h/db",
                                        tables=[{"name": "t", "contract": "c"}]))  # type: ignore[list-item]
    error = dialect.error(pymysql.err.OperationalError(
        1690, "BIGINT value is out of range in 'cast(`k` as signed) - -9223372036854775808'"),
        "t")
    assert isinstance(error, FatalError) and not error.retryable
    assert error.message.startswith("query failed") and error.table == "t"
    lost = dialect.error(pymysql.err.OperationalError(2013, "Lost connection"), "t")
    assert isinstance(lost, SourceUnavailable)


def test_sqlite_bucket_functions_are_exact() -> None:
    with closing(sqlite3.connect(":memory:")) as conn:
        register_sqlite(conn)
        engine = engine_for("sqlite")
        sql = engine.bucket(str(I64[1]), I64[0], 3, wide=True)
        assert conn.execute(f"SELECT {sql}").fetchone() == ((2 ** 64 - 1) // 3,)
        sql = engine.bucket(str(I64[1]), I64[0], 2 ** 63, wide=True)  # width past 64 bits
        assert conn.execute(f"SELECT {sql}").fetchone() == (1,)
        assert conn.execute("SELECT sf_scaled('12.345', 2), sf_scaled(X'312E35', 1), "
                            "sf_days('1970-01-11'), sf_days('soon')").fetchone() == (
            1234, 15, 10, None)
