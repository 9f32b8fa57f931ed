"""`steadyflow extract` and `steadyflow load` run side by side on a DuckDB warehouse.

Each stage runs alone (DESIGN.md); a DuckDB file has one writer, so an `extract` started
while a `load` (or `run`) holds the file cannot open it. The sequence's floor (the first
extraction number above the warehouse's highest, `StateStore.floor_seq`) made `extract`
open the warehouse, and so fail every table while a loader held it (exit 2). Now `extract`
alone takes its numbers without asking when another process holds the file, and `load`
asks the floor when it opens the warehouse, so an update read after the state was lost
still replaces the warehouse's row. The oracle reads the store and the warehouse through
sqlite3 and duckdb.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import duckdb
import pytest
from tests.conftest import steadyflow, write_pipeline

from steadyflow.demo.stores import create_stores

pytestmark = pytest.mark.integration

ROWS, CHANGED = 400, 5


def holding(warehouse: Path) -> subprocess.Popen[str]:
    """Another process with the DuckDB file open (as a `load --follow` has it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('holding', flush=True); time.sleep(120)", str(warehouse)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def update(store: Path) -> None:
    """A later version of the first CHANGED sales, in the store's own cursor spelling."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with closing(sqlite3.connect(store)) as db:
        db.execute("UPDATE sales SET qty = qty + 100, updated_at = ? WHERE sale_id <= ?",
                   [now, CHANGED])
        db.commit()


def qty(store: Path, warehouse: Path) -> tuple[dict[int, int], dict[int, int]]:
    with closing(sqlite3.connect(store)) as db:
        source = dict(db.execute("SELECT sale_id, qty FROM sales WHERE sale_id <= ?",
                                 [CHANGED]).fetchall())
    with closing(duckdb.connect(str(warehouse), read_only=True)) as db:
        loaded = dict(db.execute("SELECT sale_id, qty FROM sales WHERE sale_id <= ?",
                                 [CHANGED]).fetchall())
    return source, loaded


def test_extract_alone_beside_a_process_holding_the_warehouse_and_after_a_lost_state(
        tmp_path: Path) -> None:
    [store] = create_stores(tmp_path / "stores", 1, ROWS)
    config = write_pipeline(tmp_path, [{
        "name": "store_001", "kind": "sqlite", "path": str(store),
        "tables": [{"name": "sales", "contract": "sales", "page_size": 100}]}])
    warehouse = tmp_path / "warehouse.duckdb"
    steadyflow("run", "-c", str(config), check=True)
    for _ in range(3):  # the changed sales' warehouse rows carry a higher number than the
        update(store)  # first pages of a re-read from an empty state will
        steadyflow("run", "-c", str(config), check=True)

    # the state is lost beside the kept warehouse: its sequence counts from 1 again
    state_files = sorted((tmp_path / "state").glob("state.db*"))
    assert state_files
    for path in state_files:
        path.unlink()
    # `load` alone (nothing to load) asks the floor when it opens the warehouse
    steadyflow("load", "-c", str(config), check=True)

    update(store)
    holder = holding(warehouse)
    try:  # `extract` alone while another process holds the DuckDB file
        extracted = steadyflow("extract", "-c", str(config), "--json", timeout=60)
    finally:
        holder.kill()
        holder.communicate()
    assert extracted.returncode == 0, extracted.stdout + extracted.stderr
    assert json.loads(extracted.stdout)["extracted_rows"] >= CHANGED

    steadyflow("load", "-c", str(config), check=True)
    source, loaded = qty(store, warehouse)
    assert loaded == source  # the updates replaced the rows loaded before the state was lost
