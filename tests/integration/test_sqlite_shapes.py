"""SQLite tables whose values mix storage classes or are bytes, run through the pipeline and
read back by the drivers (adversarial shapes the generated tests do not draw)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def run(tmp: Path, db: Path, contract: dict[str, Any], initial_load: str = "cursor") -> Any:
    config = {"name": "shapes", "contracts": {"c": contract}, "state_dir": str(tmp / "state"),
              "landing": {"path": str(tmp / "landing")},
              "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
              "sources": [{"name": "s", "kind": "sqlite", "path": str(db),
                           "tables": [{"name": "t", "contract": "c", "page_size": 1,
                                       "initial_load": initial_load}]}]}
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(path) as p:
        return p.run_once(raise_on_error=False)


def execute(db: Path, *statements: str | tuple[str, tuple[Any, ...]]) -> None:
    with closing(sqlite3.connect(db)) as conn:
        for s in statements:
            conn.execute(*s) if isinstance(s, tuple) else conn.execute(s)
        conn.commit()


def warehouse(tmp: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return sorted(con.sql(sql).fetchall())


def contract(cursor: str) -> dict[str, Any]:
    return {"primary_key": ["id"], "cursor": "v", "columns": {
        "id": {"type": "int64", "nullable": False}, "n": {"type": "int64"},
        "v": {"type": cursor, "nullable": False}}}


def test_a_number_arriving_in_a_text_cursor_is_refused(tmp_path: Path) -> None:
    """A string cursor in an untyped column: a row stored as a number sorts before every
    text, so once the checkpoint was text the number's row was never read (row 2 lost,
    every run ok). The probe now refuses the mix, naming the column."""
    db = tmp_path / "s.db"
    execute(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, n INT, v NOT NULL)",
            "CREATE INDEX tc ON t (v, id)", "INSERT INTO t VALUES (1, 1, '2024-01-01 00:00:00')")
    summary = run(tmp_path, db, contract("string"))
    assert summary.ok, summary.errors
    execute(db, "INSERT INTO t VALUES (2, 2, 1704240000)",
            "INSERT INTO t VALUES (3, 3, '2024-01-05 00:00:00')")
    summary = run(tmp_path, db, contract("string"))
    assert summary.failed_tables == ["s.t"], summary
    assert "cursor column v (string) mixes stored types" in summary.errors[0], summary.errors


def test_one_stored_type_per_cursor_loads_every_row(tmp_path: Path) -> None:
    """The control: a string cursor of text only, or of numbers only, is not refused."""
    db = tmp_path / "s.db"
    execute(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, n INT, v NOT NULL)",
            "CREATE INDEX tc ON t (v, id)",
            *[f"INSERT INTO t VALUES ({i}, {i}, {10 - i})" for i in range(1, 6)])
    summary = run(tmp_path, db, contract("string"))
    assert summary.ok, summary.errors
    assert warehouse(tmp_path, "SELECT id, v FROM main.t") == [
        (i, str(10 - i)) for i in range(1, 6)]


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_blob_keys_without_rowid(tmp_path: Path, initial_load: str) -> None:
    """A BLOB key (WITHOUT ROWID) read as string: the checkpoint holds the key's bytes (it
    could not be written before: the table never loaded); a key that is not UTF-8 costs
    its row, with a reason."""
    db = tmp_path / "s.db"
    execute(db, "CREATE TABLE t (k BLOB PRIMARY KEY, n INT, v TEXT NOT NULL) WITHOUT ROWID",
            "CREATE INDEX tc ON t (v, k)",
            *[("INSERT INTO t VALUES (?, ?, ?)", (k, n, "2024-01-01 00:00:00"))
              for n, k in enumerate([b"b", b"B", b"\xff", b"a", "é".encode(), b""])])
    c = {"primary_key": ["k"], "cursor": "v", "columns": {
        "k": {"type": "string", "nullable": False}, "n": {"type": "int64"},
        "v": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, db, c, initial_load)
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 1
    execute(db, "UPDATE t SET n = 10, v = '2024-01-02 00:00:00' WHERE k = X'62'")
    summary = run(tmp_path, db, c, initial_load)
    assert summary.ok, summary.errors
    assert warehouse(tmp_path, "SELECT k, n FROM main.t") == sorted(
        [("b", 10), ("B", 1), ("a", 3), ("é", 4), ("", 5)])


@pytest.mark.parametrize("renamed", ["note", "v"])
def test_a_renamed_column_stops_the_table_naming_it(tmp_path: Path, renamed: str) -> None:
    """SQLite reads a double-quoted name that is no column as a string literal (its
    'double-quoted string literal' misfeature): after `RENAME COLUMN note TO memo` every
    page selected the text 'note' for it, so changed rows loaded note = 'note' and every
    run said ok (a renamed cursor was already refused, by its type probe). Identifiers are
    quoted with backticks, which SQLite never reads as a literal: the run fails, naming it."""
    db = tmp_path / "s.db"
    execute(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, note TEXT, "
                "v INTEGER NOT NULL)",
            "INSERT INTO t VALUES (1, 10, 'a', 1), (2, 20, 'b', 2)")
    spec = {**contract("int64"), "columns": {**contract("int64")["columns"],
                                              "note": {"type": "string"}}}
    assert run(tmp_path, db, spec).ok
    execute(db, f"ALTER TABLE t RENAME COLUMN {renamed} TO other",
            f"UPDATE t SET n = 11, {'other' if renamed == 'v' else 'v'} = 3 WHERE id = 1")
    summary = run(tmp_path, db, spec)
    assert "s.t" in summary.failed_tables, summary
    assert renamed in " ".join(summary.errors), summary.errors
    assert warehouse(tmp_path, "SELECT id, n, note FROM main.t") == [(1, 10, "a"), (2, 20, "b")]
