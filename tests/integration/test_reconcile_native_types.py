"""The cheaper per-row encodings (a column's declared type known) give the very same text.

PostgreSQL and MariaDB skip casts and guards when the catalog says a column already has the
contract's type (engines.Engine.declare), and PostgreSQL reads a timestamp's µs from its
float8 epoch inside FAST_TIME. Each must equal the Python reference (encoding.canonical) and
the generic SQL, value by value, including the edges: the ends of FAST_TIME ± 1 µs, years 1
and 9999, microseconds either side of a minute, NaN and negative decimals, int extremes.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pymysql
import pytest
from tests.conftest import MY_HOST, MY_PORT

from steadyflow.reconcile.encoding import canonical, row_text
from steadyflow.reconcile.engines import FAST_TIME, engine_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _times() -> list[datetime]:
    edges = [datetime.fromisoformat(t).replace(tzinfo=UTC) for t in FAST_TIME]
    out = [e + timedelta(microseconds=d) for e in edges for d in (-60_000_001, -1, 0, 1)]
    out += [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999,
                                                     tzinfo=UTC),
            datetime(1970, 1, 1, tzinfo=UTC) - timedelta(microseconds=1),
            datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)]
    rnd = random.Random(15)
    for _ in range(3000):  # across the whole range, dense inside FAST_TIME
        year = rnd.choice([rnd.randint(1, 9998), rnd.randint(1900, 2039)])
        out.append(datetime(year, 1, 1, tzinfo=UTC) + timedelta(
            microseconds=rnd.randint(0, 365 * 86_400_000_000 - 1)))
    return out


DECIMALS = [Decimal("0.00"), Decimal("-0.01"), Decimal("12.50"), Decimal("-9999999999.99"),
            Decimal("9999999999.99"), Decimal("1.05")]
INTS = [0, -1, 2 ** 63 - 1, -(2 ** 63), 42]


def _encode(run: Any, engine_kind: str, table: str, cols: dict[str, str],
            declared: dict[str, str]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    plain, native = engine_for(engine_kind), engine_for(engine_kind).declare(declared)
    out = []
    for engine in (plain, native):
        select = ", ".join(engine.canon(engine.q(c), t) for c, t in cols.items())
        out.append(run(f"SELECT {select} FROM {table} ORDER BY {engine.q('i')}"))
    return out[0], out[1]


def test_postgres_declared_types_encode_like_the_reference(pg_dsn: str) -> None:
    times = _times()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (i int, ts timestamptz, d numeric(12,2), n bigint,"
                     " s integer)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s, %s, %s, %s)", [
                (i, t, DECIMALS[i % len(DECIMALS)], INTS[i % len(INTS)], i - 5)
                for i, t in enumerate(times)])
        conn.execute("INSERT INTO t VALUES (-1, 'infinity', 'NaN', NULL, NULL),"
                     " (-2, '-infinity', NULL, NULL, NULL)")
        declared = {str(n): str(t) for n, t in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 't'::regclass AND attnum > 0")}
        assert declared["ts"] == "timestamp with time zone"
        cols = {"ts": "timestamp", "d": "decimal(12,2)", "n": "int64", "s": "int32"}
        plain, native = _encode(lambda sql: conn.execute(sql).fetchall(), "postgres", "t",
                                cols, declared)
    assert native == plain
    expected = [(canonical(t, "timestamp"), canonical(DECIMALS[i % len(DECIMALS)],
                                                      "decimal(12,2)"),
                 canonical(INTS[i % len(INTS)], "int64"), canonical(i - 5, "int32"))
                for i, t in enumerate(times)]
    assert native[2:] == expected  # rows -2 and -1 first
    assert native[0][0] == "?-infinity" and native[1][:2] == ("?infinity", "?NaN")


def test_postgres_time_dimension_is_exact_at_the_fast_path_edges(pg_dsn: str) -> None:
    """The bucket dimension of a timestamp (ts_us) uses the same fast path."""
    times = _times()
    engine = engine_for("postgres")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (i int, ts timestamptz, naive timestamp)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s, %s)",
                            [(i, t, t.replace(tzinfo=None)) for i, t in enumerate(times)])
        conn.execute("SET TIME ZONE 'UTC'")
        got = conn.execute(f"SELECT {engine.ts_us('ts')}, {engine.ts_us('naive')} FROM t "
                           "ORDER BY i").fetchall()
    want = [int(canonical(t, "timestamp") or 0) for t in times]
    assert [g[0] for g in got] == want
    assert [g[1] for g in got] == want


def test_mariadb_declared_types_encode_like_the_reference(mysql_dsn: str) -> None:
    conn = pymysql.connect(host=MY_HOST, port=MY_PORT, user="root", password="",
                           database=mysql_dsn.rsplit("/", 1)[1], autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (i int, d decimal(12,2), n bigint, s int, "
                        "u int unsigned)")
            cur.executemany("INSERT INTO t VALUES (%s, %s, %s, %s, %s)", [
                (i, DECIMALS[i % len(DECIMALS)], INTS[i % len(INTS)], i - 5, i)
                for i in range(30)])
            cur.execute("SELECT column_name, column_type FROM information_schema.columns "
                        "WHERE table_schema = DATABASE() AND table_name = 't'")
            declared = {str(n): str(t) for n, t in cur.fetchall()}

            def run(sql: str) -> list[tuple[Any, ...]]:
                cur.execute(sql)
                return list(cur.fetchall())

            cols = {"d": "decimal(12,2)", "n": "int64", "s": "int32", "u": "int64"}
            plain, native = _encode(run, "mysql", "t", cols, declared)
    finally:
        conn.close()
    assert native == plain
    assert native == [(canonical(DECIMALS[i % len(DECIMALS)], "decimal(12,2)"),
                       canonical(INTS[i % len(INTS)], "int64"), canonical(i - 5, "int32"),
                       canonical(i, "int64")) for i in range(30)]


def test_postgres_row_text_of_declared_types_is_the_reference_row_by_row(pg_dsn: str) -> None:
    """PostgresEngine.row_text builds the common row (no NULL among the columns of a
    declared type, no NaN, times inside FAST_TIME) with one concat_ws of the typed values,
    and every other row with the generic text: both must be encoding.row_text of the
    reference encodings, whichever column is NULL or out of the fast path's conditions."""
    times = _times()[:600]
    texts = ["", "plain", "a~|b", "~N", "|", "é日本 ~~", "it's\ttab"]
    cols = {"n": "int64", "s": "int32", "m": "int32", "d": "decimal(12,2)", "ts": "timestamp",
            "t": "string", "b": "bool", "dt": "date"}
    rows = []
    for i, ts in enumerate(times):
        row: list[Any] = [INTS[i % len(INTS)], i - 300, i % 7 - 3, DECIMALS[i % len(DECIMALS)],
                          ts, texts[i % len(texts)], i % 2 == 0,
                          (datetime(2024, 1, 1) + timedelta(days=i - 300)).date()]
        if i % 5 == 0:  # each column NULL in turn, on every fifth row
            row[(i // 5) % len(row)] = None
        rows.append((i, *row))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE r (i int, n bigint, s integer, m smallint, d numeric(12,2),"
                     " ts timestamptz, t text, b boolean, dt date)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO r VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
        conn.execute("INSERT INTO r VALUES (-3, 1, 2, 3, 'NaN', '2024-01-01', 'x', true, NULL),"
                     " (-2, 1, 2, 3, 4.5, 'infinity', 'x', false, '2024-01-01'),"
                     " (-1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
        declared = {str(n): str(t) for n, t in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'r'::regclass AND attnum > 0")}
        engine = engine_for("postgres").declare(declared)
        text = engine.row_text([(engine.q(c), t) for c, t in cols.items()])
        assert "concat_ws" in text  # the fast path is in the query
        got = [r[0] for r in conn.execute(f"SELECT {text} FROM r ORDER BY i").fetchall()]
    expected = [row_text([canonical(v, t) for v, t in zip(r[1:], cols.values(), strict=True)])
                for r in rows]
    assert got[3:] == expected
    assert got[:3] == ["1|2|3|?NaN|1704067200000000|x|1|~N",
                       "1|2|3|4.50|?infinity|x|0|19723", "|".join(["~N"] * 8)]
