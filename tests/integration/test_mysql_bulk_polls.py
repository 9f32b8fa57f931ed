"""MariaDB polls that keep finding hundreds of rows are read by connectorx from the next
poll on (extract/mysql_arrow.py BULK_ROWS); a poll that finds a few stays on the kept
pymysql connection. Which path read a page is seen on the wire: connectorx opens a
connection per page, pymysql reuses the one the source keeps (tests/support/wirecount.py
counts connections through a proxy). The values are the same on both paths (the
read-path suite), and here the warehouse ends equal to the store.
"""

from __future__ import annotations

from pathlib import Path

import pymysql
import pytest
from tests.conftest import write_pipeline
from tests.faults.test_network import assert_warehouse_equals_sources
from tests.support.wirecount import WireCounter

from steadyflow.extract.mysql_arrow import BULK_ROWS
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def insert(dsn: str, first: int, rows: int) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", password="",
                           database=dsn.rsplit("/", 1)[1], autocommit=True)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS sales (store_id bigint NOT NULL, sale_id "
                    "bigint NOT NULL, sku text NOT NULL, qty bigint, unit_price "
                    "decimal(12,2), currency text, sold_at datetime(6) NULL, updated_at "
                    "datetime(6) NOT NULL, PRIMARY KEY (store_id, sale_id), "
                    "INDEX sales_cursor (updated_at, store_id, sale_id))")
        cur.execute(f"INSERT INTO sales SELECT 2, seq, 'SKU', 1, 1.25, 'EUR', NULL, "
                    f"TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND "
                    f"FROM seq_{first}_to_{first + rows - 1}")


def test_polls_finding_hundreds_of_rows_go_to_connectorx(tmp_path: Path,
                                                         mysql_dsn: str) -> None:
    insert(mysql_dsn, 1, 100)
    counter = WireCounter(3306, "mysql")
    via = mysql_dsn.replace(":3306/", f":{counter.port}/")
    config = write_pipeline(tmp_path, [{
        "name": "store", "kind": "mysql", "dsn": via,
        "tables": [{"name": "sales", "contract": "sales", "warehouse_filter": {"store_id": 2}}]}])
    try:
        with Pipeline.from_yaml(config) as p:
            assert p.run_once().extracted_rows == 100

            def poll(first: int, rows: int) -> int:
                """New connections opened by a poll that finds `rows` new rows."""
                insert(mysql_dsn, first, rows)
                before = counter.connections
                assert p.run_once().extracted_rows == rows
                return counter.connections - before

            assert poll(101, 20) == 0  # a few rows: the kept connection
            assert poll(121, BULK_ROWS * 2) == 0  # the first long page: still pymysql
            assert poll(121 + BULK_ROWS * 2, BULK_ROWS * 2) >= 1  # then connectorx
            assert poll(121 + BULK_ROWS * 4, 10) >= 1  # connectorx finds it short...
            assert poll(131 + BULK_ROWS * 4, 10) == 0  # ...and the next poll is pymysql's
            assert_warehouse_equals_sources(p, 140 + BULK_ROWS * 4)
    finally:
        counter.close()
