"""A contract edited between runs of a table already loaded: the checkpoint is a position in
the (cursor, primary key) order it was taken in, and means nothing in another one."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pymysql
import pytest

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def contract(cursor: str, key: list[str]) -> dict[str, Any]:
    return {"primary_key": key, "cursor": cursor, "columns": {
        "id": {"type": "int64", "nullable": False},
        "created": {"type": "timestamp", "nullable": False},
        "updated": {"type": "timestamp", "nullable": False},
        "n": {"type": "int64", "nullable": False}}}


def run(tmp: Path, db: Path, spec: dict[str, Any]) -> RunSummary:
    raw = {"name": "changes", "contracts": {"c": spec}, "state_dir": str(tmp / "state"),
           "landing": {"path": str(tmp / "landing")},
           "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
           "sources": [{"name": "s", "kind": "sqlite", "path": str(db),
                        "tables": [{"name": "t", "contract": "c", "page_size": 2}]}]}
    with Pipeline(parse_config(raw)) as pipeline:
        return pipeline.run_once(raise_on_error=False)


def execute(db: Path, *statements: str) -> None:
    with closing(sqlite3.connect(db)) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.commit()


def warehouse(tmp: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return sorted(con.sql("SELECT id, n FROM main.t").fetchall())


@pytest.mark.parametrize("initial_load_moves", [False, True])
def test_a_changed_cursor_or_key_is_refused_naming_the_reset(tmp_path: Path,
                                                            initial_load_moves: bool) -> None:
    """The cursor switched from `created` to `updated` (the usual fix once updates are seen
    missing): the checkpoint, the newest `created`, was compared with `updated`, so a row
    updated before the switch, its `updated` behind that, was never read: the run said ok
    and the warehouse kept the old value. A changed primary key failed with "zip() argument
    2 is shorter than argument 1". Both are refused, naming the columns and the reset."""
    db = tmp_path / "s.db"
    execute(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, created TEXT NOT NULL, "
                "updated TEXT NOT NULL, n INTEGER NOT NULL)",
            *(f"INSERT INTO t VALUES ({i}, '2024-01-0{i} 00:00:00', '2024-01-0{i} 00:00:00', "
              f"{i})" for i in range(1, 6)))
    assert run(tmp_path, db, contract("created", ["id"])).ok
    if initial_load_moves:  # a later poll moved the checkpoint past the initial load's end
        execute(db, "INSERT INTO t VALUES (6, '2024-01-06 00:00:00', '2024-01-06 00:00:00', 6)")
        assert run(tmp_path, db, contract("created", ["id"])).ok
    # updated before the switch: its new `updated` lies behind the newest `created`
    execute(db, "UPDATE t SET updated = '2024-01-03 12:00:00', n = 20 WHERE id = 2")
    for changed, named in ((contract("updated", ["id"]), "updated"),
                           (contract("created", ["n"]), "n")):
        summary = run(tmp_path, db, changed)
        assert summary.failed_tables == ["s.t"], summary
        error = " ".join(summary.errors)
        assert named in error and "reset" in error, error
    before = [(i, i) for i in range(1, 7 if initial_load_moves else 6)]
    assert warehouse(tmp_path) == before  # nothing loaded from a position in another order


def numbered_source(kind: str, request: pytest.FixtureRequest) -> tuple[str, list[str]]:
    """A table whose integer cursor the source numbers (a sequence, AUTO_INCREMENT), and
    the statements that empty it and start its numbers again."""
    if kind == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, n int NOT NULL)")
        return dsn, ["TRUNCATE t RESTART IDENTITY"]
    dsn = request.getfixturevalue("mysql_dsn")
    my_execute(dsn, "CREATE TABLE t (id BIGINT AUTO_INCREMENT PRIMARY KEY, n INT NOT NULL)")
    return dsn, ["TRUNCATE t"]


def my_execute(dsn: str, *statements: str) -> None:
    parts = urlsplit(dsn)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                           database=parts.path.lstrip("/"), autocommit=True)
    with closing(conn), conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def source_execute(kind: str, dsn: str, *statements: str) -> None:
    if kind == "mysql":
        my_execute(dsn, *statements)
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_numbers_started_again_below_the_checkpoint_are_refused(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    """A table emptied and its numbering restarted (TRUNCATE ... RESTART IDENTITY, MariaDB's
    TRUNCATE) hands out 1, 2, 3 again: all behind the checkpoint (5), never read, every run
    ok, the warehouse keeping the old rows under those keys. The probe compares the
    numbers the sequence or AUTO_INCREMENT handed out with the checkpoint and refuses."""
    dsn, restart = numbered_source(kind, request)
    source_execute(kind, dsn, "INSERT INTO t (n) VALUES (1), (2), (3), (4), (5)")
    raw = {"name": "renumbered", "contracts": {"c": {
               "primary_key": ["id"], "cursor": "id", "columns": {
                   "id": {"type": "int64", "nullable": False},
                   "n": {"type": "int64", "nullable": False}}}},
           "state_dir": str(tmp_path / "state"), "landing": {"path": str(tmp_path / "l")},
           "warehouse": {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"),
                         "schema": "main"},
           "sources": [{"name": "s", "kind": kind, "dsn": dsn, "resilience": {"retries": 0},
                        "tables": [{"name": "t", "contract": "c"}]}]}

    def run_once() -> RunSummary:
        with Pipeline(parse_config(raw)) as pipeline:
            return pipeline.run_once(raise_on_error=False)

    assert run_once().ok
    source_execute(kind, dsn, *restart, "INSERT INTO t (n) VALUES (10), (20), (30)")
    summary = run_once()
    assert summary.failed_tables == ["s.t"], summary
    error = " ".join(summary.errors)
    assert "reset" in error and "5" in error, error
    assert warehouse(tmp_path) == [(i, i) for i in range(1, 6)]  # nothing more loaded
    source_execute(kind, dsn, "INSERT INTO t (n) SELECT 40 FROM t LIMIT 1")  # still below
    assert run_once().failed_tables == ["s.t"]


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_column_added_to_the_contract_is_refused_until_added_and_read_again(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    """A column added to the contract after the table was loaded: the next changed row's
    batch failed for good on a merge naming a column not found (DuckDB's Binder Error),
    and added silently the column would stay NULL for every row loaded before. The load
    is refused naming the column, the ALTER TABLE and the reset; once both are done every
    row has its value."""
    db = tmp_path / "s.db"
    execute(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, created TEXT NOT NULL, "
                "updated TEXT NOT NULL, n INTEGER NOT NULL, note TEXT)",
            *(f"INSERT INTO t VALUES ({i}, '2024-01-0{i} 00:00:00', '2024-01-0{i} 00:00:00', "
              f"{i}, 'note {i}')" for i in range(1, 6)))
    if kind == "duckdb":
        warehouse_of: dict[str, Any] = {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"),
                                        "schema": "main"}
    else:
        warehouse_of = {"kind": "postgres", "dsn": request.getfixturevalue("pg_warehouse_dsn"),
                        "schema": "public"}
    narrow = contract("updated", ["id"])
    wide = {**narrow, "columns": {**narrow["columns"], "note": {"type": "string"}}}

    def run_with(spec: dict[str, Any]) -> RunSummary:
        raw = {"name": "added", "contracts": {"c": spec}, "state_dir": str(tmp_path / "state"),
               "landing": {"path": str(tmp_path / "landing")}, "warehouse": warehouse_of,
               "sources": [{"name": "s", "kind": "sqlite", "path": str(db),
                            "tables": [{"name": "t", "contract": "c", "page_size": 2}]}]}
        with Pipeline(parse_config(raw)) as pipeline:
            return pipeline.run_once(raise_on_error=False)

    def loaded(columns: str) -> list[tuple[Any, ...]]:
        if kind == "duckdb":
            with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
                return sorted(con.sql(f"SELECT {columns} FROM main.t").fetchall())
        with psycopg.connect(warehouse_of["dsn"], autocommit=True) as conn:
            return sorted(conn.execute(f"SELECT {columns} FROM public.t").fetchall())

    assert run_with(narrow).ok
    execute(db, "UPDATE t SET updated = '2024-02-01 00:00:00', n = 20 WHERE id = 2")
    summary = run_with(wide)
    error = " ".join(summary.errors)
    assert not summary.ok and "note" in error and "ADD COLUMN" in error, summary
    assert "reset --table s.t" in error, error
    assert loaded("id, n") == [(i, i) for i in range(1, 6)]  # nothing half-loaded

    ddl = 'ALTER TABLE {} ADD COLUMN "note" VARCHAR'
    if kind == "duckdb":
        with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
            con.execute(ddl.format("main.t"))
    else:
        with psycopg.connect(warehouse_of["dsn"], autocommit=True) as conn:
            conn.execute(ddl.format("public.t").encode())
    with Pipeline(parse_config({"name": "added", "contracts": {"c": wide},
                                "state_dir": str(tmp_path / "state"),
                                "landing": {"path": str(tmp_path / "landing")},
                                "warehouse": warehouse_of,
                                "sources": [{"name": "s", "kind": "sqlite", "path": str(db),
                                             "tables": [{"name": "t", "contract": "c"}]}]})
                  ) as pipeline:
        pipeline.state.reset_checkpoint("s", "t")
    for _ in range(2):  # the refused batch (5 failures at most) and the re-read
        run_with(wide)
    assert run_with(wide).ok
    assert loaded("id, n, note") == [(i, 20 if i == 2 else i, f"note {i}") for i in range(1, 6)]
