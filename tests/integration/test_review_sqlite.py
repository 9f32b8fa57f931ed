"""Adversarial review (issue 10): SQLite tables shaped the way real applications make them."""

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


def run(tmp: Path, sources: list[dict[str, Any]], contracts: dict[str, Any]) -> Any:
    wh = tmp / "wh.duckdb"
    config = {"name": "review", "contracts": contracts, "state_dir": str(tmp / "state"),
              "warehouse": {"kind": "duckdb", "path": str(wh), "schema": "main"},
              "sources": sources}
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(path) as p:
        return p.run_once(raise_on_error=False)


def warehouse(tmp: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return sorted(con.sql(sql).fetchall())


def contract(key: str, cursor: str = "int64") -> dict[str, Any]:
    return {"c": {"primary_key": ["id"], "cursor": "v", "columns": {
        "id": {"type": key, "nullable": False}, "name": {"type": "string"},
        "v": {"type": cursor, "nullable": False}}}}


@pytest.mark.parametrize("key", ["int64", "string"])
def test_untyped_key_holding_1_and_text_1(tmp_path: Path, key: str) -> None:
    """A column declared without a type has no affinity: 1 and '1' are two distinct primary
    keys in SQLite. Under one contract type they are one key: the run loaded one row for
    two and reported ok. Now refused at probe time, naming the column and the fix."""
    db = tmp_path / "s.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (id PRIMARY KEY, name TEXT, v INTEGER NOT NULL)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                         [(1, "int one", 1), ("1", "text one", 2), (2, "two", 3)])
        conn.commit()
    summary = run(tmp_path, [{"name": "s", "kind": "sqlite", "path": str(db),
                              "tables": [{"name": "t", "contract": "c", "page_size": 2}]}],
                  contract(key))
    assert summary.failed_tables == ["s.t"], summary
    assert ("key column id holds values stored as integer and text" in summary.errors[0]
            and "CAST(id AS INTEGER)" in summary.errors[0]), summary.errors


def test_untyped_key_of_one_storage_class_loads(tmp_path: Path) -> None:
    """The refusal above is for mixed classes only: an untyped key holding integers and
    reals (equal when equal: 2 = 2.0) pages and loads every row."""
    db = tmp_path / "s.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (id PRIMARY KEY, name TEXT, v INTEGER NOT NULL)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                         [(1, "a", 1), (2.0, "b", 1), (3, "c", 2)])
        conn.commit()
    summary = run(tmp_path, [{"name": "s", "kind": "sqlite", "path": str(db),
                              "tables": [{"name": "t", "contract": "c", "page_size": 1}]}],
                  contract("int64"))
    assert summary.ok, summary.errors
    assert warehouse(tmp_path, "SELECT id, name FROM main.t") == [(1, "a"), (2, "b"),
                                                                  (3, "c")]


def test_two_tables_one_target_with_overlapping_keys(tmp_path: Path) -> None:
    """Two shards of one application (same contract, ids both starting at 1) loaded into
    one target: each key is then owned by two source rows. The later one silently replaces
    the earlier unless that is refused: without warehouse_filters telling them apart the
    config is refused, naming the target."""
    sources = []
    for shard in ("a", "b"):
        db = tmp_path / f"{shard}.db"
        with closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, "
                         "v INTEGER NOT NULL)")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                             [(i, f"{shard}{i}", i) for i in range(1, 4)])
            conn.commit()
        sources.append({"name": f"s{shard}", "kind": "sqlite", "path": str(db),
                        "tables": [{"name": "t", "contract": "c", "target": "all_t"}]})
    try:
        summary = run(tmp_path, sources, contract("int64"))
    except Exception as exc:  # a refusal at config time naming the target is correct
        assert "all_t" in str(exc)
        return
    rows = warehouse(tmp_path, "SELECT id, name FROM main.all_t")
    assert not (summary.ok and len(rows) < 6), (summary, rows)


def test_a_row_outside_its_tables_filter_is_quarantined(tmp_path: Path) -> None:
    """Two shards with filters on a key column: shard a also holds a row keyed as shard b's
    (shard 2, id 3). Loaded, it would replace b's row of that key (or b's it); it is
    quarantined with a reason naming the filter and the target, and the other rows load."""
    sources = []
    for shard, rows in ((1, [(1, 1), (1, 2), (2, 3)]), (2, [(2, 1), (2, 2), (2, 3)])):
        db = tmp_path / f"{shard}.db"
        with closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE t (shard INTEGER NOT NULL, id INTEGER NOT NULL, "
                         "name TEXT, v INTEGER NOT NULL, PRIMARY KEY (shard, id))")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                             [(s, i, f"from {shard}", i) for s, i in rows])
            conn.commit()
        sources.append({"name": f"s{shard}", "kind": "sqlite", "path": str(db),
                        "tables": [{"name": "t", "contract": "c", "target": "all_t",
                                    "warehouse_filter": {"shard": shard}}]})
    contracts = {"c": {"primary_key": ["shard", "id"], "cursor": "v", "columns": {
        "shard": {"type": "int64", "nullable": False}, "id": {"type": "int64", "nullable": False},
        "name": {"type": "string"}, "v": {"type": "int64", "nullable": False}}}}
    summary = run(tmp_path, sources, contracts)
    assert summary.ok and summary.quarantined_rows == 1, summary
    assert warehouse(tmp_path, "SELECT shard, id, name FROM main.all_t") == [
        (1, 1, "from 1"), (1, 2, "from 1"), (2, 1, "from 2"), (2, 2, "from 2"),
        (2, 3, "from 2")]
    with Pipeline.from_yaml(tmp_path / "pipeline.yml") as p:
        parked = p.state.quarantined("open")
    assert [(q["source"], q["reasons"]) for q in parked] == [("s1", {
        "shard: not 1 (outside the table's warehouse_filter); loaded into all_t, it could "
        "replace another source table's row": 1})]


def test_without_rowid_text_key_and_case(tmp_path: Path) -> None:
    """WITHOUT ROWID, a text key where case and trailing blanks make distinct keys
    (SQLite's BINARY collation), page size 1: every row arrives exactly."""
    db = tmp_path / "s.db"
    keys = ["a", "A", "a ", " a", "b", "B", "é", "e\u0301", "\U0001F600", ""]
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, v INTEGER NOT NULL) "
                     "WITHOUT ROWID")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                         [(k, f"n{i}", i // 3) for i, k in enumerate(keys)])
        conn.commit()
    summary = run(tmp_path, [{"name": "s", "kind": "sqlite", "path": str(db),
                              "tables": [{"name": "t", "contract": "c", "page_size": 1}]}],
                  contract("string"))
    assert summary.ok, summary.errors
    rows = warehouse(tmp_path, "SELECT id, name FROM main.t")
    assert rows == sorted((k, f"n{i}") for i, k in enumerate(keys))
