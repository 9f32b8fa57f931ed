"""Repair batches are durable like any batch, deletes included, and a repair takes turns
with the table's extractors.

A repair batch's delete keys used to travel only in memory beside the batch: when the
process died before loading it, the sweeper loaded the upserts of the batch and silently
dropped its deletes.
"""

from __future__ import annotations

import signal
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from tests.conftest import steadyflow

from steadyflow.run.lease import new_holder
from steadyflow.state import SqliteStateStore

pytestmark = pytest.mark.faults

ROWS = 300
GONE = (5, 6, 7)

ITEMS: dict[str, Any] = {
    "primary_key": ["id"], "cursor": "rev",
    "columns": {"id": {"type": "int64", "nullable": False},
                "rev": {"type": "int64", "nullable": False},
                "val": {"type": "string"}}}


DUCKDB = {"kind": "duckdb", "path": "warehouse.duckdb", "schema": "main"}


def setup(directory: Path, warehouse: dict[str, Any] = DUCKDB) -> Path:
    """A loaded SQLite source of ROWS items whose GONE keys were then deleted at the source
    only (mirror_deletes on): what a repair has to delete. Returns the pipeline config."""
    with closing(sqlite3.connect(directory / "source.db")) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL, "
                   "val TEXT)")
        db.executemany("INSERT INTO items VALUES (?,?,?)",
                       [(i, i, f"v{i}") for i in range(1, ROWS + 1)])
        db.commit()
    config = {
        "name": "repair", "state_dir": "state", "landing": {"path": "landing"},
        "warehouse": warehouse,
        "contracts": {"items": ITEMS},
        "sources": [{"name": "s", "kind": "sqlite", "path": "source.db",
                     "tables": [{"name": "items", "contract": "items", "page_size": 50,
                                 "mirror_deletes": True}]}],
    }
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    steadyflow("run", "-c", str(path), check=True)
    with closing(sqlite3.connect(directory / "source.db")) as db:
        db.execute(f"DELETE FROM items WHERE id IN {GONE}")  # gone at the source only
        db.commit()
    return path


def warehouse_ids(directory: Path) -> set[int]:
    con = duckdb.connect(str(directory / "warehouse.duckdb"), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT id FROM main.items").fetchall()}
    finally:
        con.close()


def test_a_repair_batch_loaded_by_the_sweeper_after_a_crash_still_deletes(
        tmp_path: Path) -> None:
    config = setup(tmp_path)
    crashed = steadyflow("reconcile", "-c", str(config), "--repair",
                         env={"STEADYFLOW_FAILPOINT": "load.after_merge"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    assert set(GONE) <= warehouse_ids(tmp_path)  # the repair's transaction never committed

    steadyflow("load", "-c", str(config), check=True)  # the sweeper loads the repair batch
    assert warehouse_ids(tmp_path) == set(range(1, ROWS + 1)) - set(GONE)
    clean = steadyflow("reconcile", "-c", str(config), "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_a_repair_skips_a_table_an_extractor_holds(tmp_path: Path) -> None:
    config = setup(tmp_path)
    state = SqliteStateStore(tmp_path / "state" / "state.db")
    try:
        assert state.try_lease("s", "items", new_holder(), 60) is not None
        proc = steadyflow("reconcile", "-c", str(config), "--repair", "--json")
    finally:
        state.close()
    assert proc.returncode != 0
    assert "skipped (reconcile --repair)" in proc.stdout + proc.stderr
    assert set(GONE) <= warehouse_ids(tmp_path)  # nothing repaired behind the holder's back


def test_a_repair_of_many_long_keys_crashed_midway_is_loaded_through_jetstream(
        tmp_path: Path) -> None:
    """A repair batch carries the keys it deletes in its reference (its manifest entry);
    10,000 keys a batch, so 10,000 keys of 100 characters made a reference of over 1 MB,
    the NATS server's default max_payload. Loaded by the repair itself, nothing was
    published; but after a crash the sweeper must publish it, JetStream refused it for good,
    and the deletes were never applied (the repair batch stuck 'landed', rows the source
    deleted kept in the warehouse, every later run ok)."""
    from tests.support.jetstream import NATS_URL, fresh_stream
    gone = 10_000
    keys = [f"{i:0100d}" for i in range(1, gone + 51)]
    with closing(sqlite3.connect(tmp_path / "source.db")) as db:
        db.execute("CREATE TABLE items (id TEXT PRIMARY KEY, rev INTEGER NOT NULL, val TEXT)")
        db.executemany("INSERT INTO items VALUES (?,?,?)",
                       [(k, i, f"v{i}") for i, k in enumerate(keys)])
        db.commit()
    contract = {**ITEMS, "columns": {**ITEMS["columns"],
                                     "id": {"type": "string", "nullable": False}}}
    with fresh_stream("sf_repair") as stream:
        config = {
            "name": "repair", "state_dir": "state", "landing": {"path": "landing"},
            "warehouse": DUCKDB, "contracts": {"items": contract},
            "buffer": {"kind": "jetstream", "url": NATS_URL, "stream": stream},
            "sources": [{"name": "s", "kind": "sqlite", "path": "source.db",
                         "tables": [{"name": "items", "contract": "items",
                                     "page_size": 5_000, "mirror_deletes": True}]}],
        }
        path = tmp_path / "pipeline.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        steadyflow("run", "-c", str(path), check=True)
        with closing(sqlite3.connect(tmp_path / "source.db")) as db:
            db.executemany("DELETE FROM items WHERE id = ?", [(k,) for k in keys[:gone]])
            db.commit()
        crashed = steadyflow("reconcile", "-c", str(path), "--repair",
                             env={"STEADYFLOW_FAILPOINT": "load.after_merge"}, timeout=300)
        assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr

        steadyflow("load", "-c", str(path), check=True, timeout=300)  # the sweep's turn
        state = SqliteStateStore(tmp_path / "state" / "state.db")
        try:
            entries = [b for b in state.batches(limit=10_000) if ".repair" in b["batch_id"]]
        finally:
            state.close()
        assert entries and {b["status"] for b in entries} == {"loaded"}, [
            (b["batch_id"], b["status"], b["error"]) for b in entries]
        # the crash cut the repair short after its first batch: the next one does the rest
        steadyflow("reconcile", "-c", str(path), "--repair", check=True, timeout=300)
        con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
        try:
            left = {r[0] for r in con.execute("SELECT id FROM main.items").fetchall()}
        finally:
            con.close()
        assert left == set(keys[gone:]), f"{len(left) - 50} deleted rows left"
        clean = steadyflow("reconcile", "-c", str(path), "--json", timeout=300)
        assert clean.returncode == 0, clean.stdout + clean.stderr
