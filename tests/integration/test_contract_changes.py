"""A contract edited between runs of a table already loaded: the checkpoint is a position in
the (cursor, primary key) order it was taken in, and means nothing in another one."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
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
