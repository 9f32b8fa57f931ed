"""A quiet table under a fixed lookback window lands nothing new poll after poll.

Each poll re-reads the window behind the checkpoint; when those rows are the same as the
last poll landed (same batch id, and the lease is the next generation: nobody else landed
anything between), landing, queueing and loading them again would only churn. The poll
moves the checkpoint as usual and lands nothing; a changed row in the window lands again.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from tests.conftest import write_pipeline

from steadyflow.run.pipeline import Pipeline

pytestmark = pytest.mark.integration


def landed_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*.parquet") if "_quarantine" not in p.parts)


def test_a_quiet_table_is_not_landed_again_each_poll(pg_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE sales (store_id bigint NOT NULL, sale_id bigint NOT NULL, "
                     "sku text NOT NULL, qty bigint, unit_price numeric(12,2), currency text, "
                     "sold_at timestamptz, updated_at timestamptz NOT NULL, "
                     "PRIMARY KEY (store_id, sale_id))")
        conn.execute("CREATE INDEX sales_cursor ON sales (updated_at, store_id, sale_id)")
        conn.execute("INSERT INTO sales SELECT 1, i, 'SKU', 1, 1.25, 'EUR', NULL, "
                     "now() - interval '10 s' + i * interval '10 ms' "
                     "FROM generate_series(1, 300) i")
    cfg = write_pipeline(tmp_path, [{
        "name": "s", "kind": "postgres", "dsn": pg_dsn,
        "tables": [{"name": "sales", "contract": "sales", "lookback": "1h",
                    "lookback_mode": "fixed", "page_size": 100}]}])
    with Pipeline.from_yaml(cfg) as pipeline:
        first = pipeline.run_once()
        assert first.loaded_batches >= 3
        files = landed_files(tmp_path / "landing")
        manifest = len(pipeline.state.batches())
        for _ in range(3):  # quiet: the window re-reads the same 300 rows each time
            again = pipeline.run_once()
            assert again.extracted_rows == 300  # read (the window) ...
            assert again.loaded_batches == 0 and again.duplicates_skipped == 0  # ... not landed
        assert landed_files(tmp_path / "landing") == files
        assert len(pipeline.state.batches()) == manifest
        assert pipeline.buffer.depth() == 0

        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a change inside the window
            conn.execute("UPDATE sales SET qty = 7, updated_at = now() WHERE sale_id = 150")
        changed = pipeline.run_once()
        assert changed.loaded_batches >= 1 and changed.changed_rows == 1
        wh = pipeline.warehouse
        rows = wh.query("SELECT qty FROM main.sales WHERE sale_id = 150")  # type: ignore
        assert rows.column(0).to_pylist() == [7]
