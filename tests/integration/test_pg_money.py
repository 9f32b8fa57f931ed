"""A PostgreSQL money column read as a decimal loads its value, on every read path.

money::text is spelled by lc_monetary ('$1,234.56', '-$0.01'), which no decimal parses:
every row of such a table was quarantined (one column's type cost the whole table). The
page now reads money::numeric (exact). The oracle reads the source's money::numeric through
psycopg and the warehouse through its own driver; reconcile then finds the table clean.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml
from tests.integration.test_pg_read_paths import PATHS
from tests.support.read_paths import comparable, contract, read_all

from steadyflow.reconcile.runner import reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = pytest.mark.integration

VALUES = ["1234.56", "-0.01", "0", "92233720368547758.07", "-92233720368547758.08", None]


def _source(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET lc_monetary = 'C'")
        conn.execute("CREATE TABLE t (id int8 PRIMARY KEY, price money)")
        for i, v in enumerate(VALUES, 1):
            conn.execute("INSERT INTO t VALUES (%s, %s::numeric::money)", [i, v])


def _expected(pg_dsn: str) -> dict[int, Decimal | None]:
    with psycopg.connect(pg_dsn) as conn:
        return dict(conn.execute("SELECT id, price::numeric FROM t").fetchall())


def test_money_read_as_a_decimal_is_the_same_value_on_every_read_path(pg_dsn: str) -> None:
    _source(pg_dsn)
    c = contract(("id", "int64"), ("price", "decimal(20,2)"))
    rows = {path: comparable(read_all(make(pg_dsn), "t", c, 4)[0])
            for path, make in PATHS.items()}
    assert rows["adbc"] == rows["psycopg fallback"] == rows["SqlSource"]
    assert {r["id"]: r["price"] for r in rows["adbc"]} == _expected(pg_dsn)


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_money_column_under_a_decimal_contract_loads_every_row(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str, kind: str) -> None:
    _source(pg_dsn)
    warehouse: dict[str, Any] = ({"kind": "duckdb", "path": "warehouse.duckdb"}
                                 if kind == "duckdb" else
                                 {"kind": "postgres", "dsn": pg_warehouse_dsn, "schema": "wh"})
    config = tmp_path / "pipeline.yml"
    config.write_text(yaml.safe_dump({
        "name": "money", "warehouse": warehouse,
        "contracts": {"t": {"primary_key": ["id"], "cursor": "id", "columns": {
            "id": {"type": "int64", "nullable": False},
            "price": {"type": "decimal(20,2)"}}}},
        "sources": [{"name": "pg", "kind": "postgres", "dsn": pg_dsn,
                     "tables": [{"name": "t", "contract": "t"}]}]}))
    with Pipeline.from_yaml(config) as pipeline:
        summary = pipeline.run_once()
        assert summary.ok and summary.quarantined_rows == 0, summary
        [report] = reconcile(pipeline)
    assert report.clean, report
    if kind == "duckdb":
        with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as db:
            loaded = dict(db.execute("SELECT id, price FROM t").fetchall())
    else:
        with psycopg.connect(pg_warehouse_dsn) as conn:
            loaded = dict(conn.execute("SELECT id, price FROM wh.t").fetchall())
    assert loaded == _expected(pg_dsn)
