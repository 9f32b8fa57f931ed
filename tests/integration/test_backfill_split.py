"""When a first load is split into key ranges (run/backfill.py `chunk_rows`): only when
ranges would be read side by side, by several threads or by workers. One reader reads the
table in one piece, without the split's walk over the key index before its first page."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import write_pipeline

from steadyflow.run import backfill
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROWS = 3_000


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEADYFLOW_BACKFILL_CHUNK_ROWS", raising=False)
    monkeypatch.setattr(backfill, "CHUNK_ROWS", 1_000)


def store(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE sales (sale_id INTEGER PRIMARY KEY, store_id INTEGER NOT "
                     "NULL, sku TEXT NOT NULL, qty INTEGER, unit_price REAL, currency TEXT, "
                     "sold_at TEXT, updated_at TEXT NOT NULL)")
        conn.execute("CREATE INDEX sales_cursor ON sales (updated_at, sale_id)")
        conn.executemany("INSERT INTO sales VALUES (?, 1, 'SKU', 1, 1.5, 'EUR', ?, ?)",
                         [(i, f"2026-01-01 00:00:{i % 60:02d}",
                           f"2026-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}")
                          for i in range(1, ROWS + 1)])
        conn.commit()


def load(tmp_path: Path, threads: int, worker: bool = False) -> list[Any]:
    store(tmp_path / "store.db")
    cfg = write_pipeline(tmp_path, [{
        "name": "s", "kind": "sqlite", "path": str(tmp_path / "store.db"),
        "resilience": {"max_concurrent_queries": threads},
        "tables": [{"name": "sales", "contract": "sales", "page_size": 400}]}])
    with Pipeline.from_yaml(cfg) as pipeline:
        if worker:  # another worker of this pipeline is running
            pipeline.state.register_worker("elsewhere:1:x", "elsewhere", 1, 3600.0)
        summary = pipeline.run_once()
        assert summary.errors == []
        assert pipeline.state.checkpoint("s", "sales") is not None
        count = pipeline.warehouse.query(  # type: ignore[attr-defined]
            "SELECT count(*) AS n FROM main.sales").column("n").to_pylist()[0]
        assert count == ROWS
        return pipeline.state.backfill_chunks("s", "sales")


def test_one_reader_loads_in_one_piece(tmp_path: Path) -> None:
    assert load(tmp_path, threads=1) == []


def test_reader_threads_split_the_load(tmp_path: Path) -> None:
    chunks = load(tmp_path, threads=2)
    assert [(c.status, c.rows) for c in chunks] == [("done", 1000)] * 3


def test_a_running_worker_splits_the_load(tmp_path: Path) -> None:
    chunks = load(tmp_path, threads=1, worker=True)
    assert [(c.status, c.rows) for c in chunks] == [("done", 1000)] * 3
