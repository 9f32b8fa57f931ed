"""A warehouse row of a shared target that no table's warehouse_filter owns is extra.

Several source tables feed one target, each naming its rows with `warehouse_filter`, and
each compares only those. A row owned by none (damage, a restore, a store taken out of the
config) was in no comparison: every table reconciled clean, `--repair` too, while the
warehouse held a row no source has. Now the target's first table reports such rows as
extra, and its repair (mirror_deletes) deletes them. Two PostgreSQL source tables into
each warehouse, read back through its driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml

from steadyflow.reconcile.runner import Options, TableReport, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CONTRACT = {
    "primary_key": ["store_id", "sale_id"], "cursor": "updated_at",
    "columns": {"store_id": {"type": "int32", "nullable": False},
                "sale_id": {"type": "int64", "nullable": False},
                "note": {"type": "string"},
                "updated_at": {"type": "timestamp", "nullable": False}},
}


def _reconcile(config: Path, repair: bool = False) -> dict[str, TableReport]:
    with Pipeline.from_yaml(config) as pipeline:
        reports = reconcile(pipeline, options=Options(repair=repair, examples=100))
    assert all(r.error is None for r in reports), reports
    return {r.table: r for r in reports}


def _warehouse(kind: str, tmp_path: Path, pg_dsn: str, sql: str) -> list[tuple[Any, ...]]:
    if kind == "duckdb":
        with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
            return con.execute(sql.replace("{t}", "main.sales")).fetchall()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        cur = conn.execute(sql.replace("{t}", "wh.sales").encode())
        return cur.fetchall() if cur.description else []


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_row_no_tables_filter_owns_is_extra_and_repaired(
        kind: str, tmp_path: Path, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for i in (1, 2):
            conn.execute(f"CREATE TABLE s{i} (store_id int NOT NULL, sale_id bigint, note text,"
                         " updated_at timestamptz NOT NULL, PRIMARY KEY (store_id, sale_id))")
            conn.execute(f"INSERT INTO s{i} SELECT {i}, g, 'n' || g, '2024-06-01 00:00:00+00'"
                         "::timestamptz + g * interval '1 minute' FROM generate_series(1, 20) g")
            conn.execute(f"CREATE INDEX ON s{i} (updated_at, store_id, sale_id)")
    warehouse = ({"kind": "duckdb", "path": "warehouse.duckdb"} if kind == "duckdb"
                 else {"kind": "postgres", "dsn": pg_dsn, "schema": "wh"})
    config = tmp_path / "pipeline.yml"
    config.write_text(yaml.safe_dump({
        "name": "owned", "contracts": {"sales": CONTRACT}, "warehouse": warehouse,
        "sources": [{"name": "pg", "kind": "postgres", "dsn": pg_dsn, "tables": [
            {"name": f"s{i}", "contract": "sales", "target": "sales", "mirror_deletes": True,
             "warehouse_filter": {"store_id": i}} for i in (1, 2)]}]}))
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once().ok
    assert all(r.clean for r in _reconcile(config).values())
    _warehouse(kind, tmp_path, pg_dsn, "INSERT INTO {t} (store_id, sale_id, note, updated_at, "
               "_steadyflow_seq) VALUES (3, 1, 'ghost', '2024-06-01 00:05:00+00', 1)")

    reports = _reconcile(config)
    assert (reports["s1"].extra, reports["s1"].examples) == (1, {"extra": [[3, 1]]})
    assert reports["s2"].clean  # reported once, by the target's first table

    repaired = _reconcile(config, repair=True)
    assert all(r.after is None or r.after.clean for r in repaired.values())
    assert repaired["s1"].after is not None
    assert _warehouse(kind, tmp_path, pg_dsn,
                      "SELECT store_id, count(*) FROM {t} GROUP BY 1 ORDER BY 1") == [
        (1, 20), (2, 20)]
