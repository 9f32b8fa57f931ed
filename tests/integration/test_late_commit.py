"""A row that commits after the cursor has passed its timestamp.

A long store transaction stamps `updated_at = now() - X` but commits after a newer row was
already extracted and checkpointed. Keyset order alone skips it forever; the lookback window
re-reads the last `lookback` of cursor values on every run and picks it up, and the merge makes
the overlap harmless. The same scenario runs with lookback 0 and must miss the row: that proves
the test can see the problem it guards against. Both pin `lookback_mode: fixed`: the adaptive
lookback (the default on PostgreSQL) is tests/integration/test_adaptive_lookback.py's.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import psycopg
import pytest
from tests.conftest import write_pipeline

from steadyflow.config import load_config
from steadyflow.reconcile.compare import compare_target
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LATE_BY = "30 seconds"  # X: how far behind "now" the late row's cursor is
LATE_KEY = (1, 500)


@pytest.mark.parametrize(("lookback", "arrives"), [("2m", True), (0, False)],
                         ids=["lookback-covers-X", "lookback-0-misses"])
def test_late_commit(pg_dsn: str, tmp_path: Path, lookback: str | int, arrives: bool) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(
            "CREATE TABLE sales (store_id bigint NOT NULL, sale_id bigint NOT NULL, "
            "sku text NOT NULL, qty bigint, unit_price numeric(12,2), currency text, "
            "sold_at timestamptz, updated_at timestamptz NOT NULL, "
            "PRIMARY KEY (store_id, sale_id))")
        admin.execute(
            "INSERT INTO sales SELECT 1, i, 'SKU-' || i, 1 + i % 5, i * 1.25, 'EUR', "
            "clock_timestamp() - interval '10 minutes', "
            "clock_timestamp() - interval '10 minutes' + i * interval '1 second' "
            "FROM generate_series(1, 20) i")
    config = write_pipeline(tmp_path, [{
        "name": "store", "kind": "postgres", "dsn": pg_dsn,
        "tables": [{"name": "sales", "contract": "sales", "lookback": lookback,
                    "lookback_mode": "fixed"}]}])  # the window alone: test_adaptive_lookback

    late = psycopg.connect(pg_dsn)  # a long store transaction, still open
    try:
        late_ts: datetime = late.execute(
            "INSERT INTO sales VALUES (%s, %s, 'SKU-LATE', 3, 9.99, 'USD', NULL, "
            f"clock_timestamp() - interval '{LATE_BY}') RETURNING updated_at",
            list(LATE_KEY)).fetchone()[0]
        with psycopg.connect(pg_dsn, autocommit=True) as other:  # a newer row, committed
            other.execute("INSERT INTO sales VALUES (1, 501, 'SKU-NEW', 1, 1.00, 'GBP', NULL, "
                          "clock_timestamp())")

        with Pipeline.from_yaml(config) as p:
            first = p.run_once()
            mark = p.state.checkpoint("store", "sales")
        # 21 rows; the key-order initial load hands over to the cursor pass, whose window
        # re-reads the newest row (the merge absorbs it): without a lookback, the rows
        # tying the checkpoint's time, written a moment before (TableExtractor._ties_open)
        assert first.errors == [] and first.loaded_rows == 22
        assert mark is not None and mark.key == (1, 501)
        assert mark.cursor > late_ts  # the cursor has passed the uncommitted row's timestamp
        late.commit()
    finally:
        late.close()

    with Pipeline.from_yaml(config) as p:
        second = p.run_once()
    assert second.errors == []

    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        wh = con.sql("SELECT * FROM main.sales").to_arrow_table()
    keys = {(r["store_id"], r["sale_id"]) for r in wh.select(["store_id", "sale_id"]).to_pylist()}
    assert len(keys) == wh.num_rows  # no duplicates, whatever was re-read
    cmp = compare_target(load_config(config), "sales", wh)
    assert cmp.source_rows == 22 and cmp.duplicates == 0 and cmp.extra == 0
    assert cmp.mismatched == 0
    if arrives:
        assert LATE_KEY in keys
        assert cmp.clean, cmp
        # the window re-read the late row and the newer one; the merge absorbed the overlap
        assert second.extracted_rows == 2
    else:
        # lookback 0 provably loses the late row: the problem this test guards against
        assert LATE_KEY not in keys
        assert second.extracted_rows in (0, 1)  # the checkpoint's tie, while still recent
        assert cmp.missing == 1 and cmp.examples["missing"] == [list(LATE_KEY)]
