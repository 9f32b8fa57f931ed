"""PostgreSQL to PostgreSQL: row terms in a hash both servers share, not md5.

engines.PostgresEngine.shared_hash: the same canonical text, hashed by the server's own 64-bit
hash (no md5, no hex), only when both ends are PostgreSQL servers that hash engines.HASH_PROBE
alike in the same encoding (table.TableReconciler._shared_hash); on 14+ (RECORD_PROBE alike),
the columns both sides declare with the same RECORD_SAFE type enter a hash_record_extended
record as their own values (record_columns), the others as canonical text. Every other pair
keeps the md5, whose results are the same on every engine (test_reconcile.py checks all four).

Here: two databases agree on it for the awkward rows and still tell each changed value apart
(a byte, a cent, a µs, a NULL, a letter's case under a case-blind collation); the key-hash
dimension stays the md5 term (equal to DuckDB's) under it; a reconcile into a PostgreSQL
warehouse uses it and finds each changed row; a warehouse in another encoding keeps md5.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from tests.conftest import _fresh_pg_database, write_pipeline
from tests.support.reconcile_data import (
    DDL,
    NAMES,
    duckdb_run,
    fingerprint,
    reference_hashes,
    rows,
    side,
    stored,
)

from steadyflow.reconcile.encoding import HASH_HEX
from steadyflow.reconcile.engines import PostgresEngine, record_fields
from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.reconcile.sides import Dim, SqlSide
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Run = Callable[[str, list[Any]], list[tuple[Any, ...]]]


CASE_BLIND = ("CREATE COLLATION case_blind (provider = icu, locale = 'und-u-ks-level2', "
              "deterministic = false)")


def _load_awkward(dsn: str) -> psycopg.Connection[Any]:
    """The awkward rows; `note` under a collation that calls 'A' and 'a' equal."""
    conn = psycopg.connect(dsn, autocommit=True, options="-c TimeZone=UTC")
    conn.execute(CASE_BLIND)
    conn.execute(DDL["postgres"].replace("note text", "note text COLLATE case_blind"))
    marks = ", ".join(["%s"] * len(NAMES))
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO awkward VALUES ({marks})",
                        [stored("postgres", r) for r in rows()])
    return conn


def _run(conn: psycopg.Connection[Any]) -> Run:
    return lambda sql, params: conn.execute(sql.encode(), params).fetchall()


def _shared(run: Run, record: bool = False) -> SqlSide:
    s = side("postgres", run)
    s.engine.shared_hash = True
    if record:  # both databases declare the table alike: every RECORD_SAFE column
        declared = run("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                       "WHERE attrelid = 'awkward'::regclass AND attnum > 0", [])
        s.engine.declare(dict(declared))
        s.engine.record_columns = record_fields(s.engine.native, s.engine.native)
        assert len(s.engine.record_columns) == len(NAMES) - 1  # all but the float
    return s


CHANGES = [  # (id, SET ...): each one value, each must be seen
    (6, "note = 'trailing space'"),  # one byte
    (4, "price = price + 0.01"),
    (5, "seen_at = seen_at + interval '1 microsecond'"),
    (2, "flag = NULL"),
    (3, "note = '~n'"),  # '~N' under a case-blind collation: equal to it, not the same text
    (100, "price = -price"),  # numeric's own hash ignores the sign
    (101, "big = -big"),
]


@pytest.mark.parametrize("record", [False, True], ids=["text", "record"])
def test_two_databases_agree_on_the_shared_hash_and_it_sees_each_change(
        pg_dsn: str, pg_warehouse_dsn: str, record: bool) -> None:
    with _load_awkward(pg_dsn) as a, _load_awkward(pg_warehouse_dsn) as b:
        aggs_a, hashes_a = fingerprint(_shared(_run(a), record))
        aggs_b, hashes_b = fingerprint(_shared(_run(b), record))
        assert (aggs_a, hashes_a) == (aggs_b, hashes_b)
        assert len(hashes_a) == len(rows()) and len(set(hashes_a.values())) == len(rows())
        # not the md5 of the engine-free pair: a different hash of the same text
        md5 = reference_hashes(rows())
        assert all(hashes_a[k] != md5[k] and len(md5[k]) == HASH_HEX for k in md5)

        for key, change in CHANGES:
            b.execute(f"UPDATE awkward SET {change} WHERE id = {key}")
            aggs_c, hashes_c = fingerprint(_shared(_run(b), record))
            assert {k for k in hashes_a if hashes_a[k] != hashes_c[k]} == {(str(key),)}, change
            assert aggs_c.keys() == aggs_a.keys()
            assert len([i for i in aggs_a if not aggs_a[i].same(aggs_c[i])]) == 1, change
            b.execute(f"DELETE FROM awkward WHERE id = {key}")  # back to one difference
            marks = ", ".join(["%s"] * len(NAMES))
            b.execute(f"INSERT INTO awkward VALUES ({marks})",
                      stored("postgres", next(r for r in rows() if r[0] == key)))
        assert fingerprint(_shared(_run(b), record)) == (aggs_a, hashes_a)


def test_only_columns_both_sides_declare_alike_and_safe_enter_the_record() -> None:
    src = {'"a"': "bigint", '"b"': "double precision", '"c"': "text", '"d"': "integer",
           '"e"': "numeric(12,2)", '"f"': "timestamp with time zone", '"g"': "jsonb",
           '"h"': "character varying(20)"}
    wh = {**src, '"d"': "bigint", '"e"': "numeric(14,2)", '"h"': "character varying(20)"}
    assert record_fields(src, wh) == {'"a"', '"c"', '"f"', '"h"'}


def test_the_key_hash_dimension_stays_the_md5_term_of_every_engine(pg_dsn: str) -> None:
    """A key bucketed by its hash (no integer key column): its range is [0, 2**60) and its
    value the md5 term, so a shared row hash must not change it."""
    with _load_awkward(pg_dsn) as pg, duckdb.connect() as duck:
        duck.execute(DDL["duckdb"])
        q = ", ".join("?" * len(NAMES))
        duck.executemany(f"INSERT INTO awkward VALUES ({q})",
                         [stored("duckdb", r) for r in rows()])
        key = (("name", "string"), ("id", "int64"))
        sql = "SELECT {k} AS d0 FROM awkward ORDER BY id"
        pg_side = _shared(_run(pg))
        duck_side = side("duckdb", duckdb_run(duck))
        dim = Dim("", "hash", key=key)
        on_pg = _run(pg)(sql.format(k=pg_side._expr(dim)), [])
        on_duck = duckdb_run(duck)(sql.format(k=duck_side._expr(dim)), [])
        assert on_pg == on_duck
        assert all(0 <= v < 2 ** 60 for (v,) in on_pg)


# --- through the pipeline -----------------------------------------------------------------
CREATE = ("CREATE TABLE sales (store_id bigint NOT NULL, sale_id bigint NOT NULL, sku text "
          "NOT NULL, qty bigint, unit_price numeric(12,2), currency text, sold_at timestamptz, "
          "updated_at timestamptz NOT NULL, PRIMARY KEY (store_id, sale_id))")
BASE = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)


def _source(dsn: str, n: int = 600, suffix: str = " é") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CREATE)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sales VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [(1, i, f"SKU-{i:05d}{suffix}", 1 + i % 9, f"{i % 1000}.{i % 100:02d}",
                  ("USD", "EUR", "GBP")[i % 3], BASE + timedelta(minutes=i),
                  BASE + timedelta(seconds=i, microseconds=i)) for i in range(1, n + 1)])
        conn.execute("CREATE INDEX ON sales (updated_at, store_id, sale_id)")


def _config(tmp_path: Path, src: str, wh: str) -> Path:
    table = {"name": "sales", "contract": "sales", "page_size": 200}
    return write_pipeline(tmp_path, [{"name": "pg", "kind": "postgres", "dsn": src,
                                      "tables": [table]}],
                          warehouse={"kind": "postgres", "dsn": wh, "schema": "wh"})


def test_postgres_to_postgres_uses_the_record_hash_and_finds_each_changed_row(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str) -> None:
    _source(pg_dsn)
    with Pipeline.from_yaml(_config(tmp_path, pg_dsn, pg_warehouse_dsn)) as pipeline:
        assert pipeline.run_once().ok
        (clean,) = reconcile(pipeline)
        assert clean.hash == "hash_record_extended" and clean.clean
        assert clean.rows_compared == 600
        with psycopg.connect(pg_warehouse_dsn, autocommit=True) as wh:
            wh.execute("UPDATE wh.sales SET unit_price = unit_price + 0.01 WHERE sale_id = 17")
            wh.execute("UPDATE wh.sales SET sku = sku || ' ' WHERE sale_id = 333")
            wh.execute("UPDATE wh.sales SET sold_at = sold_at + interval '1 microsecond' "
                       "WHERE sale_id = 598")
        (found,) = reconcile(pipeline)
        assert found.hash == "hash_record_extended"
        assert (found.missing, found.extra, found.mismatched) == (0, 0, 3)
        assert {k[1] for k in found.examples["mismatched"]} == {17, 333, 598}
        (fixed,) = reconcile(pipeline, options=Options(repair=True))
        assert fixed.clean and fixed.after is not None
        assert fixed.after.hash == "hash_record_extended"


def test_a_warehouse_in_another_encoding_keeps_md5(tmp_path: Path, pg_dsn: str) -> None:
    """hashtextextended hashes the server's bytes of a text: LATIN1 holds 'é' in one byte
    where UTF8 has two, so servers in different encodings do not share it, whatever the
    probe's hashes say. (md5 hashes the text converted to UTF-8 there, PostgresEngine.md5:
    test_reconcile_server_encodings.)"""
    _source(pg_dsn)
    for latin1 in _fresh_pg_database("sflatin"):
        admin = latin1.rsplit("/", 1)[0] + "/postgres"
        name = latin1.rsplit("/", 1)[1]
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}"')
            conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' "
                         "LC_CTYPE 'C' TEMPLATE template0")
        with Pipeline.from_yaml(_config(tmp_path, pg_dsn, latin1)) as pipeline:
            assert pipeline.run_once().ok
            (report,) = reconcile(pipeline)
            assert report.hash == "md5"
            assert report.rows_compared == 600 and report.clean, report


# pairs PostgreSQL's own hash folds alike (hashint8 xors the high half into the low one, and
# a timestamp hashes its µs since 2000 that way): the record must still tell them apart
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_T = _EPOCH + timedelta(microseconds=(5 << 32) | 6)
_T_FOLDED = _EPOCH + timedelta(microseconds=(4 << 32) | 7)  # 5 ^ 6 == 4 ^ 7
FOLDED = [("bigint", 1, 1 << 32), ("bigint", -1, -(1 << 32) - 2),
          ("timestamp with time zone", _T, _T_FOLDED),
          ("timestamp without time zone", _T.replace(tzinfo=None),
           _T_FOLDED.replace(tzinfo=None))]


@pytest.mark.parametrize(("native", "a", "b"), FOLDED, ids=lambda v: str(v)[:24])
def test_values_the_servers_hash_folds_alike_differ_in_the_record(
        pg_dsn: str, native: str, a: Any, b: Any) -> None:
    engine = PostgresEngine()
    engine.native = {'"v"': native}
    engine.record_columns = frozenset({'"v"'})
    engine.shared_hash = True
    expr = engine.row_hash([('"v"', "int64" if native == "bigint" else "timestamp")])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        folded = conn.execute(f"SELECT hash_record_extended(ROW(CAST(%s AS {native})), 0) = "
                              f"hash_record_extended(ROW(CAST(%s AS {native})), 0)",
                              [a, b]).fetchone()
        assert folded == (True,)  # the pair is one PostgreSQL's own hash folds alike
        hashes = [conn.execute(f"SELECT {expr} FROM (SELECT CAST(%s AS {native}) AS v) t",
                               [v]).fetchone() for v in (a, b)]
    assert hashes[0] != hashes[1], (native, a, b)


@pytest.mark.parametrize("native", ["timestamp without time zone", "timestamp(0) with time zone"])
def test_the_record_hash_takes_the_least_and_greatest_times_postgresql_holds(
        pg_dsn: str, native: str) -> None:
    """The record's high-half field of a timestamp (date_bin of 2^32 µs from 2000) raised
    'timestamp out of range' for a value in the first 53 minutes PostgreSQL can hold
    (4714-11-24 BC): the block's start is before them, so reconcile of a table holding
    one failed. Those values hash (each its own), and so do the infinities and year
    294276, each apart from its neighbours."""
    engine = PostgresEngine()
    engine.native = {'"v"': native}
    engine.record_columns = frozenset({'"v"'})
    engine.shared_hash = True
    expr = engine.row_hash([('"v"', "timestamp")])
    values = ["4714-11-24 00:00:00+00 BC", "4714-11-24 00:00:01+00 BC",
              "4714-11-24 00:53:22+00 BC", "4714-11-24 00:53:23+00 BC",
              "-infinity", "infinity", "294276-12-31 23:59:59+00", "2000-01-01 00:00:00+00",
              None]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        hashes = [conn.execute(f"SELECT {expr} FROM (SELECT CAST(%s AS {native}) AS v) t",
                               [v]).fetchone() for v in values]
    assert len(set(hashes)) == len(values), list(zip(values, hashes, strict=True))
