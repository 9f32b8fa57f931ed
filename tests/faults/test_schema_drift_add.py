"""`schema_drift: add`: source columns the contract does not name reach the warehouse.

A PostgreSQL source gains two columns between runs; the next run adds them to the warehouse
table (rows loaded before hold NULL until they change), loads their values exactly, and the
contract's columns still equal the source. Reconciliation compares and repairs the added
columns too: a damaged added value is found, and its repair keeps every other added value.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.faults.test_network import (
    assert_warehouse_equals_sources,
    open_pipeline,
    seed_pg,
    sql_source,
    warehouse_rows,
)

from steadyflow.reconcile.options import Options
from steadyflow.reconcile.runner import reconcile

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]


def _source_values(dsn: str) -> dict[tuple[int, int], tuple[Any, Any]]:
    with psycopg.connect(dsn) as conn:
        return {(s, i): (d, c) for s, i, d, c in conn.execute(
            "SELECT store_id, sale_id, discount, channel FROM sales").fetchall()}


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"])
def test_added_source_columns_reach_the_warehouse(
        tmp_path: Path, pg_dsn: str, warehouse: str) -> None:
    seed_pg(pg_dsn, 600)
    source = sql_source("pg", "postgres", pg_dsn, page_size=200)
    source["tables"][0]["schema_drift"] = "add"
    wh = ({"kind": "postgres", "dsn": pg_dsn, "schema": "wh"} if warehouse == "postgres"
          else None)
    with open_pipeline(tmp_path, [source], warehouse=wh) as pipeline:
        pipeline.run()
        assert_warehouse_equals_sources(pipeline, min_rows=600)
        assert "discount" not in warehouse_rows(pipeline).column_names

        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE sales ADD COLUMN discount numeric(5,2)")
            conn.execute("ALTER TABLE sales ADD COLUMN channel text")
            conn.execute("UPDATE sales SET discount = (sale_id % 100) / 4.0, "
                         "channel = CASE WHEN sale_id % 3 = 0 THEN NULL ELSE 'web-' || sale_id "
                         "END, updated_at = updated_at + interval '1 day' "
                         "WHERE sale_id % 2 = 0")
            conn.execute("UPDATE sales SET channel = 'store', "
                         "updated_at = updated_at + interval '1 day' WHERE sale_id = 5")
            conn.execute("INSERT INTO sales VALUES (1, 9001, 'SKU-9001', 2, 1.25, 'EUR', "
                         "now(), timestamptz '2027-01-01 00:00:00+00', 0.05, 'app')")
        pipeline.run()

        rows = warehouse_rows(pipeline)
        assert {"discount", "channel"} <= set(rows.column_names)
        got = {(r["store_id"], r["sale_id"]): (r["discount"], r["channel"])
               for r in rows.to_pylist()}
        expected = _source_values(pg_dsn)
        assert len(got) == len(expected) == 601
        assert got == expected  # NULL where the source is NULL, the values exactly
        assert got[(1, 9001)] == (Decimal("0.05"), "app")
        assert got[(1, 5)] == (None, "store")
        assert got[(1, 1)] == (None, None)  # never changed: NULL
        assert_warehouse_equals_sources(pipeline, min_rows=601)

        # reconcile sees the added columns: damage one in the warehouse only
        table = "wh.sales" if warehouse == "postgres" else "main.sales"
        if warehouse == "postgres":
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute(f"UPDATE {table} SET channel = 'damaged' WHERE sale_id = 4")
        else:
            pipeline.warehouse.query(  # type: ignore[attr-defined]
                f"UPDATE {table} SET channel = 'damaged' WHERE sale_id = 4")
        found = reconcile(pipeline)[0]
        assert found.error is None, found.error
        assert (found.missing, found.extra, found.mismatched) == (0, 0, 1), found.examples
        repaired = reconcile(pipeline, options=Options(repair=True))[0]
        assert repaired.after is not None and repaired.clean, repaired.after
        rows = warehouse_rows(pipeline)
        got = {(r["store_id"], r["sale_id"]): (r["discount"], r["channel"])
               for r in rows.to_pylist()}
        assert got == _source_values(pg_dsn)  # the repaired row and every other added value


def test_a_new_column_that_is_not_a_plain_identifier_stops_the_table(
        tmp_path: Path, pg_dsn: str) -> None:
    seed_pg(pg_dsn, 100)
    source = sql_source("pg", "postgres", pg_dsn)
    source["tables"][0]["schema_drift"] = "add"
    with open_pipeline(tmp_path, [source]) as pipeline:
        pipeline.run()
        mark = pipeline.state.checkpoint("pg", "sales")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute('ALTER TABLE sales ADD COLUMN "bad name" text')
            conn.execute("UPDATE sales SET updated_at = updated_at + interval '1 day'")
        pipeline.run()
        health = next(h for h in pipeline.state.health() if h.table == "sales")
        assert "'bad name'" in (health.last_error or "") and "schema_drift: add" in (
            health.last_error or "")
        assert pipeline.state.checkpoint("pg", "sales") == mark
        assert "bad name" not in warehouse_rows(pipeline).column_names
