"""A bad row re-read by the lookback window is quarantined once, not once per re-read."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.conftest import write_pipeline

from steadyflow.run.pipeline import Pipeline

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
