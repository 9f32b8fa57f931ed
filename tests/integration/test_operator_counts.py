"""Counts that mean one thing each: rows changed in the warehouse, rows re-read without
effect, rows quarantined.

A lookback window re-reads every row of its window on every run; counting those as loads
made `status` report 3.5-6x the rows the warehouse really received. Here a table whose
lookback covers all of it runs three times (first load; some updates and inserts; nothing
new), and the changed rows that `status --json`, the status page and the run summaries
report are compared with the warehouse's real changes, counted independently by diffing
snapshots read with the warehouse's own driver.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from tests.conftest import steadyflow, write_pipeline

from steadyflow.demo.stores import create_stores, format_ts
from steadyflow.observe.page import render_page
from steadyflow.observe.status import collect
from steadyflow.run.pipeline import Pipeline

pytestmark = pytest.mark.integration

ROWS, UPDATED, ADDED = 600, 7, 5
Snapshot = dict[tuple[Any, ...], tuple[Any, ...]]


def change_store(store: Path) -> None:
    """Update UPDATED rows (new qty, newer cursor) and append ADDED rows."""
    with closing(sqlite3.connect(store)) as db:
        last, newest = db.execute("SELECT max(sale_id), max(updated_at) FROM sales").fetchone()
        base = datetime.strptime(newest, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        for i in range(UPDATED):
            db.execute("UPDATE sales SET qty = qty + 100, updated_at = ? "
                       "WHERE store_id = 1 AND sale_id = ?",
                       (format_ts(base + timedelta(milliseconds=1 + i)), 10 + i * 50))
        db.executemany(
            "INSERT INTO sales (store_id, sale_id, sku, qty, unit_price, currency, sold_at, "
            "updated_at) VALUES (1, ?, 'SKU-NEW', 1, '1.00', 'USD', ?, ?)",
            [(int(last) + 1 + i, format_ts(base), format_ts(
                base + timedelta(milliseconds=100 + i))) for i in range(ADDED)])
        db.commit()


def reader(kind: str, root: Path, dsn: str | None) -> Callable[[], Snapshot]:
    """The warehouse's rows by key, read with its own driver (not through steadyflow)."""
    sql = ("SELECT store_id, sale_id, sku, qty, unit_price, currency, "
           "CAST(sold_at AS TEXT), CAST(updated_at AS TEXT) FROM {schema}.sales")

    def read() -> Snapshot:
        if kind == "duckdb":
            con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
            try:
                rows = con.execute(sql.format(schema="main")).fetchall()
            finally:
                con.close()
        else:
            with psycopg.connect(dsn or "") as conn:
                rows = conn.execute(sql.format(schema="main").encode()).fetchall()
        return {row[:2]: row[2:] for row in rows}

    return read


def changes(before: Snapshot, after: Snapshot) -> int:
    return sum(1 for key, row in after.items() if before.get(key) != row)


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_changed_rows_equal_the_warehouse_real_changes_under_lookback(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    dsn = request.getfixturevalue("pg_dsn") if kind == "postgres" else None
    [store] = create_stores(tmp_path / "stores", 1, ROWS)
    warehouse = {"kind": "postgres", "dsn": dsn} if dsn else None
    config = write_pipeline(tmp_path, [{
        "name": "store_001", "kind": "sqlite", "path": str(store),
        "tables": [{"name": "sales", "contract": "sales", "page_size": 200,
                    "lookback": "3h"}]}], warehouse)  # the window covers the whole table
    read = reader(kind, tmp_path, dsn)

    runs = [json.loads(steadyflow("run", "--json", "-c", str(config), check=True).stdout)]
    first = read()
    change_store(store)
    runs.append(json.loads(steadyflow("run", "--json", "-c", str(config), check=True).stdout))
    second = read()
    runs.append(json.loads(steadyflow("run", "--json", "-c", str(config), check=True).stdout))
    assert read() == second

    real = [len(first), changes(first, second), 0]
    assert real[1] == UPDATED + ADDED
    assert [r["changed_rows"] for r in runs] == real
    # the first run read the table twice (its initial load, then the lookback window)
    assert runs[0]["reread_rows"] == runs[0]["loaded_rows"] - len(first) > 0
    assert runs[1]["reread_rows"] == runs[1]["loaded_rows"] - real[1] > 0

    status = json.loads(steadyflow("status", "--json", "-c", str(config), check=True).stdout)
    [table] = status["tables"]
    assert table["rows_changed"] == sum(real)
    assert table["rows_reread"] == sum(r["reread_rows"] for r in runs) > 0
    assert table["rows_quarantined"] == sum(r["quarantined_rows"] for r in runs) > 0
    assert [r["rows"] for r in reversed(status["runs"])] == real

    with Pipeline.from_yaml(config) as pipeline:
        page = render_page(collect(pipeline), {})
    cells = re.findall(r'<td class="num">([\d,]+)</td>',
                       page.split('data-table="store_001.sales"')[1].split("</tr>")[0])
    assert int(cells[0].replace(",", "")) == sum(real)  # the table's "rows changed" column


def test_a_batch_landed_again_after_gc_is_not_counted_again(tmp_path: Path) -> None:
    """A loaded batch whose file gc deleted ('gone') can be landed again under the same id
    (StateStore.record_landed: a `replay-quarantine` of an item still open passes the same
    rows again). Its load is then a ledger duplicate, which the redelivery or the sweeper
    marks with the counts its ledger row kept; they were counted when it first loaded,
    so the table's health must not grow by them again."""
    stores = create_stores(tmp_path / "stores", stores=1, rows_per_store=300, seed=5)
    cfg = write_pipeline(tmp_path, [{
        "name": "store", "kind": "sqlite", "path": str(stores[0]),
        "tables": [{"name": "sales", "contract": "sales", "page_size": 100}]}])
    with Pipeline.from_yaml(cfg) as p:
        assert p.run().ok
        before = [(h.rows_loaded, h.rows_changed, h.rows_quarantined)
                  for h in p.state.health()]
        assert len(before) == 1 and before[0][1] > 0
        first, second = (p.state.batch(b["batch_id"]) for b in p.state.batches()[:2])
        assert first is not None and second is not None
        p.state.mark_gone([first.batch_id, second.batch_id])  # gc
        p.state.record_landed(first)  # landed again, loaded by its lander
        assert not p.loader.load_and_mark(first).loaded
        p.state.record_landed(second)  # landed again, its lander died: the sweeper's
        p.sweep()
        after = [(h.rows_loaded, h.rows_changed, h.rows_quarantined)
                 for h in p.state.health()]
        assert p.state.pending_batches() == []
    assert after == before
