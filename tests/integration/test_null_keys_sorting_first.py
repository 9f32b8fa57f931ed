"""A key column holding NULL where NULL sorts first (MariaDB, SQLite) is refused at probe
time, naming the column, as on PostgreSQL.

A UNIQUE index over a nullable column (MariaDB), or SQLite's PRIMARY KEY (which admits NULL
in a rowid table), lets a row's key be NULL. Such a row cannot load (a contract key is NOT
NULL), and where it was the table's greatest (cursor, key) the pass ended at it with
`k2 <= NULL`, so it was never read, nor quarantined: a row missing without a trace, every
run ok; where a page ended on it instead, the table failed mid-load (page size decided).
The sources are written and read through pymysql and sqlite3, the warehouses through
psycopg and duckdb.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pymysql
import pytest
from tests.conftest import write_pipeline

from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROWS = "('a', 5, '2024-01-01 00:00:00', 1), ('a', 7, '2024-01-02 00:00:00', 2), " \
       "('b', NULL, '2024-01-02 00:00:00', 3)"
CONTRACT = {"primary_key": ["k1", "k2"], "cursor": "at", "columns": {
    "k1": {"type": "string", "nullable": False}, "k2": {"type": "int64", "nullable": False},
    "at": {"type": "timestamp", "nullable": False}, "n": {"type": "int64"}}}


def mariadb(dsn: str) -> Callable[[str], list[Any]]:
    parts = urlsplit(dsn)

    def execute(sql: str) -> list[Any]:
        with closing(pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                                     user="root", password="", autocommit=True,
                                     database=parts.path.lstrip("/"))) as conn, \
                conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())

    execute("CREATE TABLE t (k1 VARCHAR(5) NOT NULL, k2 INT NULL, at DATETIME NOT NULL, "
            "n INT, UNIQUE KEY u (k1, k2), KEY c (at, k1, k2))")
    execute(f"INSERT INTO t VALUES {ROWS}")
    return execute


def sqlite(path: Path) -> Callable[[str], list[Any]]:
    def execute(sql: str) -> list[Any]:
        with closing(sqlite3.connect(path)) as conn:
            rows = conn.execute(sql).fetchall()
            conn.commit()
            return rows

    execute("CREATE TABLE t (k1 TEXT NOT NULL, k2 INTEGER, at TEXT NOT NULL, n INTEGER, "
            "PRIMARY KEY (k1, k2))")
    execute("CREATE INDEX c ON t (at, k1, k2)")
    execute(f"INSERT INTO t VALUES {ROWS}")
    return execute


def run(tmp: Path, source: dict[str, Any], warehouse: dict[str, Any], page_size: int,
        initial_load: str) -> RunSummary:
    config = write_pipeline(tmp, [{**source, "resilience": {"retries": 0}, "tables": [
        {"name": "t", "contract": "c", "page_size": page_size,
         "initial_load": initial_load}]}], warehouse, contracts={"c": CONTRACT},
        state_dir=str(tmp / "state"), landing={"path": str(tmp / "landing")})
    with Pipeline.from_yaml(config) as p:
        return p.run_once(raise_on_error=False)


@pytest.mark.parametrize("initial_load", ["cursor", "key"])
@pytest.mark.parametrize("engine", ["mariadb", "sqlite"])
def test_a_null_key_is_refused_until_filled(tmp_path: Path, request: pytest.FixtureRequest,
                                            engine: str, initial_load: str) -> None:
    """Without the refusal (initial_load cursor): rows 1 and 2 loaded, row 3 neither
    loaded nor quarantined, run ok. Once its key is filled every row loads, the nullable
    column no longer refused."""
    if engine == "mariadb":
        dsn, wh = request.getfixturevalue("mysql_dsn"), request.getfixturevalue("pg_dsn")
        execute = mariadb(dsn)
        source: dict[str, Any] = {"name": "s", "kind": "mysql", "dsn": dsn}
        warehouse: dict[str, Any] = {"kind": "postgres", "dsn": wh, "schema": "public"}
    else:
        execute = sqlite(tmp_path / "s.db")
        source = {"name": "s", "kind": "sqlite", "path": str(tmp_path / "s.db")}
        warehouse = {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"), "schema": "main"}
    refused = run(tmp_path, source, warehouse, 1, initial_load)
    assert refused.failed_tables == ["s.t"], refused
    assert refused.extracted_rows == 0, refused
    assert any("key column k2 holds NULLs" in e for e in refused.errors), refused.errors
    execute("UPDATE t SET k2 = 9 WHERE k2 IS NULL")
    summary = run(tmp_path, source, warehouse, 1, initial_load)
    assert summary.ok, summary.errors
    want = sorted(tuple(r) for r in execute("SELECT k1, k2, n FROM t"))
    if engine == "mariadb":
        with psycopg.connect(wh) as conn:
            got = sorted(conn.execute("SELECT k1, k2, n FROM public.t").fetchall())
    else:
        with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
            got = sorted(con.sql("SELECT k1, k2, n FROM main.t").fetchall())
    assert got == want and len(want) == 3
