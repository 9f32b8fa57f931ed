"""A bad row re-read by the lookback window is quarantined once, not once per re-read,
whatever rule it breaks when re-read."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.conftest import SALES_CONTRACT, write_pipeline

from steadyflow.observe.status import collect
from steadyflow.run.pipeline import Pipeline
from steadyflow.run.replay import replay_quarantine

pytestmark = pytest.mark.integration
TS = "%Y-%m-%d %H:%M:%S.%f"


def _store(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE sales (store_id INTEGER NOT NULL, sale_id INTEGER NOT NULL, "
               "sku TEXT, qty INTEGER, unit_price TEXT, currency TEXT, sold_at TEXT, "
               "updated_at TEXT NOT NULL, PRIMARY KEY (store_id, sale_id))")
    return db


def _row(sale_id: int, currency: str = "USD") -> tuple[object, ...]:
    now = datetime.now(UTC).strftime(TS)
    return (1, sale_id, f"SKU-{sale_id}", 2, "3.50", currency, now, now)


def test_lookback_rereads_do_not_inflate_quarantine(tmp_path: Path) -> None:
    db = _store(tmp_path / "s.db")
    db.executemany("INSERT INTO sales VALUES (?,?,?,?,?,?,?,?)",
                   [_row(i) for i in range(1, 50)] + [_row(50, "XXX")])
    db.commit()
    cfg = write_pipeline(tmp_path, [{"name": "s", "kind": "sqlite", "path": str(tmp_path / "s.db"),
                                     "tables": [{"name": "sales", "contract": "sales",
                                                 "lookback": "1h"}]}])
    with Pipeline.from_yaml(cfg) as pipeline:
        first = pipeline.run_once()
        again = pipeline.run_once()  # the lookback re-reads every row, the bad one too
        assert (first.quarantined_rows, again.quarantined_rows) == (1, 0)
        assert again.extracted_rows == 50  # it really was re-read
        db.execute("INSERT INTO sales VALUES (?,?,?,?,?,?,?,?)", _row(51, "YYY"))
        db.commit()
        third = pipeline.run_once()
        assert third.quarantined_rows == 1  # a new bad row still counts
        parked = pipeline.state.quarantined("open")
        assert sum(q["rows"] for q in parked) == 2
        (health,) = pipeline.state.health()
        assert health.rows_quarantined == 2
        assert pipeline.metrics.value("steadyflow_quarantined_rows_total", source="s",
                                      table="sales") == 2


def test_a_reason_worded_anew_does_not_park_a_reread_row_again(tmp_path: Path,
                                                               where: str) -> None:
    """The contract allows one more currency: a still-bad row's reason reads 'not one of
    USD,EUR,GBP,XXX' now, and its digest held the reason, so the lookback's next re-read
    parked it again: two open entries held the row, rows_quarantined said 3 for 2 bad rows
    and status 2 rows held for 1. Truth: the parked files (pyarrow), the state (sqlite3)."""
    db = _store(tmp_path / "s.db")
    db.executemany("INSERT INTO sales VALUES (?,?,?,?,?,?,?,?)",
                   [_row(1), _row(2, "XXX"), _row(3, "YYY")])
    db.commit()
    warehouse = ({"kind": "postgres", "dsn": where, "schema": "public"}
                 if where.startswith("postgresql://") else {"kind": "duckdb", "path": where})
    source = [{"name": "s", "kind": "sqlite", "path": str(tmp_path / "s.db"),
               "tables": [{"name": "sales", "contract": "sales", "lookback": "1h"}]}]
    cfg = write_pipeline(tmp_path, source, warehouse)
    with Pipeline.from_yaml(cfg) as pipeline:
        assert pipeline.run_once().quarantined_rows == 2
    contract = {**SALES_CONTRACT, "columns": {**SALES_CONTRACT["columns"], "currency": {
        "type": "string", "allowed": ["USD", "EUR", "GBP", "XXX"]}}}
    cfg = write_pipeline(tmp_path, source, warehouse, contracts={"sales": contract})
    with Pipeline.from_yaml(cfg) as pipeline:
        assert replay_quarantine(pipeline, [])["still_quarantined"] == 1
        db.execute("INSERT INTO sales VALUES (?,?,?,?,?,?,?,?)", _row(4))
        db.commit()
        again = pipeline.run_once()  # a new batch: the lookback re-reads YYY's row too
        assert again.extracted_rows == 4 and again.quarantined_rows == 0
        (health,) = pipeline.state.health()
        assert health.rows_quarantined == 2
        [table] = collect(pipeline)["tables"]
        assert table["rows_in_quarantine"] == 1
    with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as state:
        paths = [row[0] for row in state.execute("SELECT path FROM quarantine")]
    held = [pq.read_table(tmp_path / "landing" / path).column("currency").to_pylist()
            for path in paths]
    assert held == [["XXX", "YYY"]]  # one entry, the row parked once
