"""A number cursor holding a value greater than every value of its contract type.

A MariaDB BIGINT UNSIGNED 18446744073709551615 read as int64, a DECIMAL(30,0) 10^25 read
as decimal(12,2), a SQLite REAL 9.3e18 in an int64 column, 2^40 in an int32 one: the row
cannot load (validation quarantines it), yet it is the table's greatest cursor, so a page
ending on it moved the checkpoint there, and every row written afterwards with an
ordinary cursor sorted behind it: never read, every run ok. As NaN and +Infinity are
(tests/integration/test_cursor_edges.py), such a cursor is refused before any page is read,
naming column and value, until the row is corrected; then every row arrives. The sources
are written and read through pymysql and sqlite3, the warehouses through psycopg and duckdb.
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

from steadyflow.model import Watermark
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Write = Callable[[str], None]


def mariadb(dsn: str, declared: str, big: str) -> Write:
    parts = urlsplit(dsn)

    def write(sql: str) -> None:
        with closing(pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                                     user="root", password="", autocommit=True,
                                     database=parts.path.lstrip("/"))) as conn, \
                conn.cursor() as cur:
            cur.execute(sql)

    write(f"CREATE TABLE t (id INT PRIMARY KEY, v {declared} NOT NULL, KEY c (v, id))")
    write(f"INSERT INTO t VALUES (1, 10), (2, 20), (3, {big})")
    return write


def sqlite(path: Path, big: str) -> Write:
    def write(sql: str) -> None:
        with closing(sqlite3.connect(path)) as conn:
            conn.execute(sql)
            conn.commit()

    write("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    write("CREATE INDEX c ON t (v, id)")
    write(f"INSERT INTO t VALUES (1, 10), (2, 20), (3, {big})")
    return write


CASES = {  # (source, declared, stored, contract type, shown in the refusal)
    "mariadb-ubigint": ("mysql", "BIGINT UNSIGNED", "18446744073709551615", "int64",
                        "18446744073709551615"),
    "mariadb-decimal": ("mysql", "DECIMAL(30,0)", "1" + "0" * 25, "decimal(12,2)",
                        "1" + "0" * 25),
    "sqlite-real": ("sqlite", "", "9.3e18", "int64", "9.3e+18"),
    "sqlite-int32": ("sqlite", "", str(2 ** 40), "int32", str(2 ** 40)),
}


def contract(kind: str) -> dict[str, Any]:
    return {"primary_key": ["id"], "cursor": "v", "columns": {
        "id": {"type": "int64", "nullable": False}, "v": {"type": kind, "nullable": False}}}


def run(tmp: Path, source: dict[str, Any], warehouse: dict[str, Any], kind: str
        ) -> RunSummary:
    config = write_pipeline(tmp, [{**source, "resilience": {"retries": 0}, "tables": [
        {"name": "t", "contract": "c", "page_size": 2, "initial_load": "cursor"}]}],
        warehouse, contracts={"c": contract(kind)}, landing={"path": str(tmp / "landing")},
        state_dir=str(tmp / "state"))
    with Pipeline.from_yaml(config) as p:
        return p.run_once(raise_on_error=False)


def setup(case: str, tmp: Path, mysql_dsn: Callable[[], str], pg_dsn: Callable[[], str]
          ) -> tuple[Write, dict[str, Any], dict[str, Any], Callable[[], list[int]]]:
    """The source (MariaDB into PostgreSQL, SQLite into DuckDB) and a reader of the ids
    the warehouse holds."""
    kind, declared, big, _, _ = CASES[case]
    if kind == "mysql":
        dsn, wh = mysql_dsn(), pg_dsn()

        def pg_ids() -> list[int]:
            with psycopg.connect(wh) as conn:
                return sorted(r[0] for r in conn.execute("SELECT id FROM public.t"))

        return (mariadb(dsn, declared, big), {"name": "s", "kind": "mysql", "dsn": dsn},
                {"kind": "postgres", "dsn": wh, "schema": "public"}, pg_ids)

    def duck_ids() -> list[int]:
        with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
            return sorted(r[0] for r in con.sql("SELECT id FROM main.t").fetchall())

    return (sqlite(tmp / "s.db", big), {"name": "s", "kind": "sqlite",
                                         "path": str(tmp / "s.db")},
            {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"}, duck_ids)


@pytest.mark.parametrize("case", list(CASES))
def test_a_cursor_past_its_type_is_refused_until_corrected(
        tmp_path: Path, request: pytest.FixtureRequest, case: str) -> None:
    """Without the refusal: rows 1 and 2 loaded, row 3 quarantined, and row 4 (cursor 30,
    written after the first run) never read, both runs ok."""
    write, source, warehouse, ids = setup(
        case, tmp_path, lambda: request.getfixturevalue("mysql_dsn"),
        lambda: request.getfixturevalue("pg_dsn"))
    kind, shown = CASES[case][3], CASES[case][4]
    first = run(tmp_path, source, warehouse, kind)
    assert first.failed_tables == ["s.t"], first
    assert any(f"cursor column v ({kind}) holds {shown}" in e for e in first.errors), \
        first.errors
    write("INSERT INTO t VALUES (4, 30)")
    assert run(tmp_path, source, warehouse, kind).failed_tables == ["s.t"]
    write("UPDATE t SET v = 40 WHERE id = 3")
    fixed = run(tmp_path, source, warehouse, kind)
    assert fixed.ok, fixed.errors
    assert ids() == [1, 2, 3, 4]


def test_a_checkpoint_past_its_type_is_refused_with_the_reset(tmp_path: Path) -> None:
    """A checkpoint an earlier version moved past the type (to a quarantined row's cursor)
    reads nothing after it: refused naming the reset, not polled on, every run ok."""
    write, source, warehouse, ids = setup("sqlite-real", tmp_path, str, str)
    write("UPDATE t SET v = 30 WHERE id = 3")
    assert run(tmp_path, source, warehouse, "int64").ok
    with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as state:
        state.execute("UPDATE checkpoints SET watermark = ?",
                      (Watermark(9.3e18, (3,)).to_json(),))
        state.commit()
    write("INSERT INTO t VALUES (4, 40)")
    refused = run(tmp_path, source, warehouse, "int64")
    assert refused.failed_tables == ["s.t"], refused
    assert any("steadyflow reset --table s.t" in e for e in refused.errors), refused.errors
    assert ids() == [1, 2, 3]
