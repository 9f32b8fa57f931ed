"""Reconcile hashes a row's canonical text as UTF-8 bytes whatever a server or column holds it in.

PostgreSQL's md5(text) hashes the text's bytes in the server's encoding (LATIN1 holds 'é' in
one byte, UTF-8 in two), MariaDB's MD5() in the string's character set: each non-ASCII row of
a LATIN1 database or a latin1 column hashed unlike the same row anywhere else, was reported
mismatched for ever, and `--repair` rewrote it on every run (engines.PostgresEngine.md5,
MysqlEngine.md5). SQLite passes a text's bytes in the database's encoding to the functions
that hash it: in a UTF-16 database every row differed (SqliteEngine.utf16). Here: a LATIN1
PostgreSQL warehouse or source, a latin1 MariaDB column, a UTF-16 SQLite database, each
holding 'é' and 'ß' ('€', which LATIN1 cannot hold, is quarantined on load): no row differs,
and a one-letter change is still found and repaired.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from tests.conftest import _fresh_pg_database, write_pipeline

from steadyflow.reconcile.report import TableReport
from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BASE = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
N = 60
EURO = 7  # the sale whose sku holds '€'


def sku(i: int) -> str:
    """Non-ASCII text in every row, two characters past ASCII; '€' in one row."""
    return f"SKU-{i:03d} {'€' if i == EURO else 'é'} Straße"


def sales(latin1_only: bool = False) -> list[tuple[Any, ...]]:
    return [(1, i, sku(i).replace("€", "ÿ") if latin1_only else sku(i), 1 + i % 9,
             f"{i}.{i % 100:02d}", ("USD", "EUR", "GBP")[i % 3], BASE + timedelta(minutes=i),
             BASE + timedelta(seconds=i)) for i in range(1, N + 1)]


def _latin1_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database in LATIN1 (C locale: LATIN1 allows no other here)."""
    for dsn in _fresh_pg_database(prefix):
        admin, name = dsn.rsplit("/", 1)
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}"')
            conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' "
                         "LC_CTYPE 'C' TEMPLATE template0")
        yield dsn


@pytest.fixture
def latin1_dsn() -> Iterator[str]:
    yield from _latin1_database("sflatin")


PG_CREATE = ("CREATE TABLE sales (store_id bigint NOT NULL, sale_id bigint NOT NULL, sku text "
             "NOT NULL, qty bigint, unit_price numeric(12,2), currency text, sold_at "
             "timestamptz, updated_at timestamptz NOT NULL, PRIMARY KEY (store_id, sale_id))")
MY_CREATE = ("CREATE TABLE sales (store_id BIGINT NOT NULL, sale_id BIGINT NOT NULL, sku "
             "VARCHAR(40) CHARACTER SET latin1 NOT NULL, qty BIGINT, unit_price "
             "DECIMAL(12,2), currency VARCHAR(3) CHARACTER SET latin1, sold_at DATETIME(6), "
             "updated_at DATETIME(6) NOT NULL, PRIMARY KEY (store_id, sale_id)) "
             "DEFAULT CHARSET = latin1")


def _pg_source(dsn: str, data: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET client_encoding = 'UTF8'")
        conn.execute(PG_CREATE)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO sales VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", data)
        conn.execute("CREATE INDEX ON sales (updated_at, store_id, sale_id)")


def _my_conn(dsn: str) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                           database=dsn.rsplit("/", 1)[1], autocommit=True,
                           charset="utf8mb4")


def _my_source(dsn: str, data: list[tuple[Any, ...]]) -> None:
    conn = _my_conn(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(MY_CREATE)
            cur.executemany("INSERT INTO sales VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                            [(*r[:6], r[6].replace(tzinfo=None), r[7].replace(tzinfo=None))
                             for r in data])
            cur.execute("CREATE INDEX cursor_order ON sales (updated_at, store_id, sale_id)")
    finally:
        conn.close()


def _sqlite_source(path: Path, encoding: str, data: list[tuple[Any, ...]]) -> None:
    """Text stored in `encoding`; sale 5's sku a blob of UTF-8 bytes (extraction decodes
    it), sale 9's no text in `encoding` (quarantined)."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA encoding = '{encoding}'")
        conn.execute("CREATE TABLE sales (store_id INTEGER NOT NULL, sale_id INTEGER NOT NULL, "
                     "sku TEXT NOT NULL, qty INTEGER, unit_price TEXT, currency TEXT, sold_at "
                     "TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (store_id, sale_id))")
        conn.execute("CREATE INDEX cursor_order ON sales (updated_at, store_id, sale_id)")
        conn.executemany("INSERT INTO sales VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [(*r[:6], r[6].isoformat(" "), r[7].isoformat(" ")) for r in data])
        conn.execute("UPDATE sales SET sku = ? WHERE sale_id = 5", [sku(5).encode()])
        conn.execute("UPDATE sales SET sku = CAST(? AS TEXT) WHERE sale_id = 9",
                     [NO_TEXT[encoding]])
        conn.commit()


NO_TEXT = {"UTF-8": b"\xff", "UTF-16le": b"\x00\xd8", "UTF-16be": b"\xd8\x00"}


def _config(tmp_path: Path, kind: str, src: str, wh: str) -> Path:
    table = {"name": "sales", "contract": "sales", "page_size": 25}
    where = {"path": src} if kind == "sqlite" else {"dsn": src}
    return write_pipeline(tmp_path, [{"name": "src", "kind": kind, **where,
                                      "tables": [table]}],
                          warehouse={"kind": "postgres", "dsn": wh, "schema": "wh"})


def _edit_warehouse(dsn: str) -> None:
    """One letter of one row: 'é' becomes 'è' (one LATIN1 byte apart)."""
    with psycopg.connect(dsn, autocommit=True) as wh:
        wh.execute("UPDATE wh.sales SET sku = replace(sku, 'é', 'è') WHERE sale_id = 17")


def _assert_equal_then_one_change_found(pipeline: Pipeline, wh_dsn: str,
                                        quarantined: int) -> None:
    assert pipeline.run_once().ok
    (clean,) = reconcile(pipeline)
    assert clean.hash == "md5"
    assert _counts(clean) == (0, 0, 0, quarantined), clean
    assert clean.rows_compared == N - quarantined
    _edit_warehouse(wh_dsn)
    (found,) = reconcile(pipeline, options=Options(repair=True))
    assert _counts(found) == (0, 0, 1, quarantined), found
    assert [k[1] for k in found.examples["mismatched"]] == [17]
    assert found.after is not None and _counts(found.after) == (0, 0, 0, quarantined)
    (again,) = reconcile(pipeline)  # repaired for good: nothing left to rewrite
    assert _counts(again) == (0, 0, 0, quarantined) and again.clean


def _counts(report: TableReport) -> tuple[int, int, int, int]:
    return report.missing, report.extra, report.mismatched, report.quarantined


def test_a_latin1_postgres_warehouse_hashes_non_ascii_rows_as_the_source_does(
        tmp_path: Path, pg_dsn: str, latin1_dsn: str) -> None:
    _pg_source(pg_dsn, sales())
    with Pipeline.from_yaml(_config(tmp_path, "postgres", pg_dsn, latin1_dsn)) as pipeline:
        _assert_equal_then_one_change_found(pipeline, latin1_dsn, quarantined=1)


def test_a_latin1_postgres_source_hashes_non_ascii_rows_as_the_warehouse_does(
        tmp_path: Path, pg_warehouse_dsn: str, latin1_dsn: str) -> None:
    _pg_source(latin1_dsn, sales(latin1_only=True))
    config = _config(tmp_path, "postgres", latin1_dsn, pg_warehouse_dsn)
    with Pipeline.from_yaml(config) as pipeline:
        _assert_equal_then_one_change_found(pipeline, pg_warehouse_dsn, quarantined=0)


def test_a_latin1_mariadb_column_into_a_latin1_warehouse_hashes_alike(
        tmp_path: Path, mysql_dsn: str, latin1_dsn: str) -> None:
    """MariaDB's latin1 is cp1252: it holds '€', the LATIN1 warehouse does not."""
    _my_source(mysql_dsn, sales())
    with Pipeline.from_yaml(_config(tmp_path, "mysql", mysql_dsn, latin1_dsn)) as pipeline:
        _assert_equal_then_one_change_found(pipeline, latin1_dsn, quarantined=1)


@pytest.mark.parametrize("encoding", ["UTF-16le", "UTF-16be", "UTF-8"])
def test_a_utf16_sqlite_database_hashes_its_text_as_utf8(
        tmp_path: Path, pg_warehouse_dsn: str, encoding: str) -> None:
    """SQLite hands the functions a text's bytes (engines.SqliteEngine._arg) in the
    database's encoding: in a UTF-16 one every row differed, ASCII ones too. UTF-8: a guard."""
    path = tmp_path / "source.db"
    _sqlite_source(path, encoding, sales())
    with Pipeline.from_yaml(_config(tmp_path, "sqlite", str(path), pg_warehouse_dsn)
                            ) as pipeline:
        _assert_equal_then_one_change_found(pipeline, pg_warehouse_dsn, quarantined=1)
