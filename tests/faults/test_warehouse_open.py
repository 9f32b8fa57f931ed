"""A warehouse that cannot be opened, now that run_once opens it beside the extraction.

`steadyflow run` opens its DuckDB warehouse on the loader thread while the extraction
connects and reads its first page (run/pipeline.py `_consume`; bench/NOTES.md, session 14).
What an operator saw before must hold: the run fails with the warehouse's error and exit 1
(not 2: no table failed), it ends (no hang: the extraction's first number waits for the
warehouse's highest one, `StateStore.floor_seq`, and is given up with the run's halt), and
nothing is lost: the next run loads every row. The oracle reads the store file and the
warehouse through their own drivers.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import duckdb
import pytest
from tests.conftest import steadyflow, write_pipeline

from steadyflow.demo.stores import MALFORMED_RULES, create_stores

pytestmark = pytest.mark.faults

ROWS, PAGE = 3_000, 200
GOOD = " AND ".join(f"NOT coalesce({pred}, 0)" for _, _, pred in MALFORMED_RULES.values())


def source_rows(store: Path) -> tuple[set[tuple[int, int]], int]:
    """The store's rows the contract accepts: their keys and sum(qty)."""
    with closing(sqlite3.connect(store)) as db:
        rows = db.execute(f"SELECT store_id, sale_id, qty FROM sales WHERE {GOOD}").fetchall()
    return {(int(s), int(k)) for s, k, _ in rows}, sum(int(q) for *_, q in rows)


def warehouse_rows(path: Path) -> tuple[set[tuple[int, int]], int]:
    with closing(duckdb.connect(str(path), read_only=True)) as db:
        rows = db.execute("SELECT store_id, sale_id, qty FROM main.sales").fetchall()
    return {(int(s), int(k)) for s, k, _ in rows}, sum(int(q) for *_, q in rows)


def test_a_warehouse_that_cannot_be_opened_fails_the_run_and_loses_nothing(
        tmp_path: Path) -> None:
    [store] = create_stores(tmp_path / "stores", 1, ROWS)
    config = write_pipeline(tmp_path, [{
        "name": "store_001", "kind": "sqlite", "path": str(store),
        "tables": [{"name": "sales", "contract": "sales", "page_size": PAGE}]}],
        buffer={"capacity": 2})  # 15 pages: the extraction soon waits for buffer space
    warehouse = tmp_path / "warehouse.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('holding', flush=True); time.sleep(120)", str(warehouse)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        # the open takes 2 s before DuckDB refuses it: the extraction runs meanwhile
        held = steadyflow("run", "-c", str(config), "--json", timeout=60,
                          env={"STEADYFLOW_FAILPOINT": "warehouse.open:1:sleep2"})
    finally:
        holder.kill()
        holder.communicate()
    assert held.returncode == 1, (held.returncode, held.stdout, held.stderr)
    report = json.loads(held.stdout)
    assert len(report["errors"]) == 1, report                # the warehouse's, no table's
    assert "another process may hold the file" in report["errors"][0], report
    # the extraction connected and probed while it opened, but took no extraction number:
    # the first waits for the warehouse's highest one (the sequence's floor, which this
    # warehouse cannot answer), so nothing was read and the run still ended
    assert report["loaded_batches"] == 0, report
    assert report["extracted_rows"] == 0, report

    again = steadyflow("run", "-c", str(config), "--json", timeout=60, check=True)
    assert json.loads(again.stdout)["errors"] == []
    keys, qty = source_rows(store)
    assert warehouse_rows(warehouse) == (keys, qty)
