"""PostgreSQL to PostgreSQL record hash (15b5dbf) when the two sides declare columns
differently: a domain, varchar vs text, numeric of another precision, a timestamp without
zone, a citext. Those columns enter the record as canonical text; the reconcile must find
the table clean after a load and exactly the rows changed afterwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from tests.conftest import write_pipeline

from steadyflow.reconcile.runner import reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BASE = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("zones", [("UTC", "UTC"), ("America/New_York", "Asia/Kolkata")])
@pytest.mark.parametrize("sku", ["varchar(40)", "citext"])
def test_columns_declared_otherwise_on_each_side_reconcile_clean_and_find_changes(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str, sku: str,
        zones: tuple[str, str]) -> None:
    for dsn, zone in zip((pg_dsn, pg_warehouse_dsn), zones, strict=True):
        with psycopg.connect(dsn, autocommit=True) as conn:
            name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
            conn.execute(f'ALTER DATABASE "{name}" SET TimeZone = \'{zone}\'')
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        if sku == "citext":
            conn.execute("CREATE EXTENSION IF NOT EXISTS citext")
        conn.execute("CREATE DOMAIN sale_no AS bigint CHECK (VALUE > 0)")
        conn.execute("CREATE TABLE sales (store_id bigint NOT NULL, sale_id sale_no NOT NULL, "
                     f"sku {sku} NOT NULL, qty integer, unit_price numeric(12,2), "
                     "currency char(3), sold_at timestamp, updated_at timestamptz NOT NULL, "
                     "PRIMARY KEY (store_id, sale_id))")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sales VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [(1, i, f"SKU-{i:05d} é", 1 + i % 9, f"{i % 1000}.{i % 100:02d}",
                  ("USD", "EUR", "GBP")[i % 3], (BASE + timedelta(minutes=i)).replace(
                      tzinfo=None), BASE + timedelta(seconds=i, microseconds=i))
                 for i in range(1, 301)])
    table = {"name": "sales", "contract": "sales", "page_size": 100}
    cfg = write_pipeline(tmp_path, [{"name": "pg", "kind": "postgres", "dsn": pg_dsn,
                                     "tables": [table]}],
                         warehouse={"kind": "postgres", "dsn": pg_warehouse_dsn,
                                    "schema": "wh"})
    with Pipeline.from_yaml(cfg) as pipeline:
        assert pipeline.run_once().ok
        with psycopg.connect(pg_warehouse_dsn, autocommit=True) as wh:
            wh.execute("ALTER TABLE wh.sales ALTER unit_price TYPE numeric(14,2)")
            print(wh.execute("SELECT attname, format_type(atttypid, atttypmod) FROM "
                             "pg_attribute WHERE attrelid = 'wh.sales'::regclass AND "
                             "attnum > 0").fetchall())
        (clean,) = reconcile(pipeline)
        print(clean.hash, clean)
        assert clean.rows_compared == 300 and clean.clean, clean
        with psycopg.connect(pg_warehouse_dsn, autocommit=True) as wh:
            wh.execute("UPDATE wh.sales SET unit_price = unit_price + 0.01 WHERE sale_id = 17")
            wh.execute("UPDATE wh.sales SET sku = sku || ' ' WHERE sale_id = 33")
            wh.execute("UPDATE wh.sales SET sold_at = sold_at + interval '1 microsecond' "
                       "WHERE sale_id = 98")
            wh.execute("UPDATE wh.sales SET currency = 'GBQ' WHERE sale_id = 100")
        (found,) = reconcile(pipeline)
        assert (found.missing, found.extra, found.mismatched) == (0, 0, 4), found
        assert {k[1] for k in found.examples["mismatched"]} == {17, 33, 98, 100}
