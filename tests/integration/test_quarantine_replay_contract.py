"""`quarantine replay` of rows parked under another shape of the table than the one it runs
under: columns `schema_drift: add` extracted with the parked batch, a column the contract
gained since, and rows parked while `replay` applied landed batches again after the
warehouse was restored from an older backup. The source is read through sqlite3, the
warehouse through its own driver (duckdb, psycopg), the quarantine through the state."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml
from tests.conftest import steadyflow
from tests.support.warehouses import query

from steadyflow.errors import ConfigError
from steadyflow.run.pipeline import Pipeline
from steadyflow.run.replay import replay_batches, replay_quarantine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CONTRACT: dict[str, Any] = {"primary_key": ["id"], "cursor": "updated_at", "columns": {
    "id": {"type": "int64", "nullable": False},
    "v": {"type": "string", "allowed": ["a", "b"]},
    "n": {"type": "int64"},
    "updated_at": {"type": "int64", "nullable": False}}}


def _pipeline(tmp: Path, where: str, rows: list[tuple[Any, ...]], **table: Any) -> Path:
    with closing(sqlite3.connect(tmp / "s.db")) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER, "
                     "updated_at INTEGER NOT NULL)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
        conn.commit()
    postgres = where.startswith("postgresql://")
    config = tmp / "pipeline.yml"
    config.write_text(yaml.safe_dump({
        "name": "replayed", "state_dir": str(tmp / "state"),
        "landing": {"path": str(tmp / "landing")},
        "warehouse": ({"kind": "postgres", "dsn": where, "schema": "public"} if postgres
                      else {"kind": "duckdb", "path": where, "schema": "main"}),
        "contracts": {"c": CONTRACT},
        "sources": [{"name": "s", "kind": "sqlite", "path": str(tmp / "s.db"),
                     "tables": [{"name": "t", "contract": "c", **table}]}]}, sort_keys=False))
    return config


def _source(tmp: Path, *statements: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(tmp / "s.db")) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        return sorted(conn.execute("SELECT * FROM t").fetchall())


def _columns(config: Path, change: dict[str, Any]) -> None:
    raw = yaml.safe_load(config.read_text())
    raw["contracts"]["c"]["columns"].update(change)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))


def _run(config: Path) -> None:
    with Pipeline.from_yaml(config) as pipeline:
        summary = pipeline.run_once(raise_on_error=False)
    assert summary.errors == [], summary.errors


def _items(config: Path) -> list[tuple[str, int, int | None]]:
    with Pipeline.from_yaml(config) as pipeline:
        return [(q["status"], q["rows"], q["replayed_rows"])
                for q in pipeline.state.quarantined(None)]


def test_rows_parked_with_columns_drift_added_replay_with_their_values(
        tmp_path: Path, where: str) -> None:
    """Replay validated and landed the parked rows under the configured contract alone:
    the column `schema_drift: add` extracted with their batch was dropped from the
    replayed batch, whose load was then refused for good (the warehouse table holds the
    column) with a hint to DROP it, a column full of values; every later run failed on
    the replayed batch left landed. The rows now replay with their batch's columns."""
    config = _pipeline(tmp_path, where, [(1, "a", 1, 1)], schema_drift="add")
    _run(config)
    truth = _source(tmp_path, "ALTER TABLE t ADD COLUMN extra TEXT",
                    "INSERT INTO t VALUES (2, 'x', 2, 2, 'kept')",
                    "INSERT INTO t VALUES (3, 'b', 3, 3, 'E3')")
    _run(config)
    assert _items(config) == [("open", 1, None)]
    _columns(config, {"v": {"type": "string", "allowed": ["a", "b", "x"]}})

    with Pipeline.from_yaml(config) as pipeline:
        result = replay_quarantine(pipeline, [])
    assert result == {"batches": 1, "loaded_rows": 1, "changed_rows": 1,
                      "still_quarantined": 0}
    assert sorted(query(where, "SELECT id, v, n, updated_at, extra FROM {schema}.t")) == truth
    assert _items(config) == [("replayed", 1, 1)]
    _run(config)  # nothing left landed that fails

    # a row parked while the column was there, replayed once it was dropped at the source
    # and from the warehouse (as the load's refusal asks): the column is not added back
    _source(tmp_path, "INSERT INTO t VALUES (4, 'y', 4, 4, 'gone')")
    _run(config)
    truth = _source(tmp_path, "ALTER TABLE t DROP COLUMN extra",
                    "INSERT INTO t VALUES (5, 'b', 5, 5)")
    _execute(where, "ALTER TABLE {schema}.t DROP COLUMN extra")
    _run(config)
    _columns(config, {"v": {"type": "string", "allowed": ["a", "b", "x", "y"]}})
    with Pipeline.from_yaml(config) as pipeline:
        assert replay_quarantine(pipeline, [])["changed_rows"] == 1
    truth = _source(tmp_path, "INSERT INTO t VALUES (6, 'a', 6, 6)")
    _run(config)  # the next extraction loads: no column it lacks was added back
    assert sorted(query(where, "SELECT id, v, n, updated_at FROM {schema}.t")) == truth
    assert not query(where, "SELECT column_name FROM information_schema.columns WHERE "
                            "table_name = 't' AND column_name = 'extra'")


def test_a_column_the_parked_rows_lack_is_refused_naming_it(tmp_path: Path,
                                                            where: str) -> None:
    """A column added to (or renamed in) the contract after rows were parked: replay
    failed on Arrow's KeyError ('Field "w" does not exist in schema'), naming neither the
    batch nor a way out. It now refuses before anything is replayed, naming the batch,
    the table and the column; NULL would be a value the source never held."""
    config = _pipeline(tmp_path, where, [(1, "a", 1, 1), (2, "x", 2, 2)])
    _run(config)
    with Pipeline.from_yaml(config) as pipeline:
        [parked] = pipeline.state.quarantined("open")
    _columns(config, {"v": {"type": "string", "allowed": ["a", "b", "x"]},
                      "w": {"type": "string"}})

    with Pipeline.from_yaml(config) as pipeline, pytest.raises(ConfigError) as refused:
        replay_quarantine(pipeline, [])
    message = str(refused.value)
    assert parked["batch_id"] in message and "s.t: w" in message, message
    assert "quarantine resolve" in (refused.value.hint or "")
    assert _items(config) == [("open", 1, None)]
    assert query(where, "SELECT id, v FROM {schema}.t") == [(1, "a")]
    with Pipeline.from_yaml(config) as pipeline:  # nothing landed to fail later runs
        assert [ref.kind for ref, _ in pipeline.state.landed_batches()] == ["extract"]


def test_rows_parked_by_a_replay_after_a_restore_keep_their_batchs_number(
        tmp_path: Path, where: str) -> None:
    """The warehouse is restored from a backup older than a row's newest version, and
    `replay --table` applies the landed batches again under a contract that since
    refuses that version: it is parked under the replay's batch id, which has no
    manifest entry, and `quarantine replay` loaded it with extraction number 0, below the
    backup's older version: replayed, 'loaded_rows': 1, and the warehouse kept the old
    value. It now loads with the number of the batch that was applied again."""
    config = _pipeline(tmp_path, where, [(1, "a", 5, 1), (2, "a", 2, 1)])
    _run(config)
    for name in ("t", "_steadyflow_ledger"):  # the backup
        _execute(where, f"CREATE TABLE {{schema}}.{name}_backup AS SELECT * FROM {{schema}}.{name}")
    truth = _source(tmp_path, "UPDATE t SET n = 0, updated_at = 2 WHERE id = 1")
    _run(config)
    for name in ("t", "_steadyflow_ledger"):  # the restore
        _execute(where, f"DELETE FROM {{schema}}.{name}")
        _execute(where, f"INSERT INTO {{schema}}.{name} SELECT * FROM {{schema}}.{name}_backup")
    assert sorted(query(where, "SELECT id, n FROM {schema}.t")) == [(1, 5), (2, 2)]

    _columns(config, {"n": {"type": "int64", "min": 1}})  # n = 0 is refused now
    with Pipeline.from_yaml(config) as pipeline:
        replay_batches(pipeline, [], "s.t")
    assert _items(config) == [("open", 1, None)]
    _columns(config, {"n": {"type": "int64"}})  # and let through again
    with Pipeline.from_yaml(config) as pipeline:
        result = replay_quarantine(pipeline, [])
    assert result == {"batches": 1, "loaded_rows": 1, "changed_rows": 1,
                      "still_quarantined": 0}
    assert sorted(query(where, "SELECT id, v, n, updated_at FROM {schema}.t")) == truth
    # a version read later still wins over the replayed one
    truth = _source(tmp_path, "UPDATE t SET n = 7, updated_at = 3 WHERE id = 1")
    _run(config)
    with Pipeline.from_yaml(config) as pipeline:
        replay_batches(pipeline, [], "s.t")
    assert sorted(query(where, "SELECT id, v, n, updated_at FROM {schema}.t")) == truth


def test_a_replayed_version_older_than_the_one_loaded_since_loses_and_says_so(
        tmp_path: Path, where: str) -> None:
    """A parked row whose key the source updated since with a good value: the newer
    version stays, whichever replay runs (twice here), and the replay no longer reports
    the row as if it were loaded alone ('loaded_rows': 1): it changed nothing."""
    config = _pipeline(tmp_path, where, [(1, "a", 1, 1), (2, "x", 2, 2)])
    _run(config)
    truth = _source(tmp_path, "UPDATE t SET v = 'b', n = 20, updated_at = 3 WHERE id = 2")
    _run(config)
    _columns(config, {"v": {"type": "string", "allowed": ["a", "b", "x"]}})
    results = []
    for _ in range(2):
        with Pipeline.from_yaml(config) as pipeline:
            results.append(replay_quarantine(pipeline, []))
    assert results == [
        {"batches": 1, "loaded_rows": 1, "changed_rows": 0, "still_quarantined": 0},
        {"batches": 0, "loaded_rows": 0, "changed_rows": 0, "still_quarantined": 0}]
    assert sorted(query(where, "SELECT id, v, n, updated_at FROM {schema}.t")) == truth
    assert _items(config) == [("replayed", 1, 1)]


def test_a_batch_id_that_names_no_open_entry_is_refused(tmp_path: Path, where: str) -> None:
    """`quarantine replay --batch ID` with a mistyped id, or one replayed already, exited 0
    saying 'batches': 0: nothing was replayed and nothing said why. It is refused, naming
    the id, before anything is replayed (as `quarantine resolve` refuses it)."""
    config = _pipeline(tmp_path, where, [(1, "a", 1, 1), (2, "x", 2, 2)])
    _run(config)
    with Pipeline.from_yaml(config) as pipeline:
        [parked] = pipeline.state.quarantined("open")
    _columns(config, {"v": {"type": "string", "allowed": ["a", "b", "x"]}})
    proc = steadyflow("quarantine", "replay", "-c", str(config), "--batch", parked["batch_id"],
                      "--batch", "nosuchbatch")
    assert proc.returncode == 2 and "nosuchbatch" in proc.stdout + proc.stderr, proc
    assert _items(config) == [("open", 1, None)]
    assert query(where, "SELECT id FROM {schema}.t") == [(1,)]


def _execute(where: str, statement: str) -> None:
    """One statement on the warehouse, through its own driver."""
    if where.startswith("postgresql://"):
        with psycopg.connect(where, autocommit=True) as conn:
            conn.execute(statement.replace("{schema}", "public").encode())
        return
    with duckdb.connect(where) as conn:
        conn.execute(statement.replace("{schema}", "main"))
