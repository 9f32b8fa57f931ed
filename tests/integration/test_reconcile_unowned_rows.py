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


def _reconcile(config: Path, repair: bool = False,
               tables: list[str] | None = None) -> dict[str, TableReport]:
    with Pipeline.from_yaml(config) as pipeline:
        reports = reconcile(pipeline, tables, options=Options(repair=repair, examples=100))
    assert all(r.error is None for r in reports), reports
    return {r.table: r for r in reports}


def _warehouse(kind: str, tmp_path: Path, pg_dsn: str, sql: str) -> list[tuple[Any, ...]]:
    if kind == "duckdb":
        with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
            return con.execute(sql.replace("{t}", "main.sales")).fetchall()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        cur = conn.execute(sql.replace("{t}", "wh.sales").encode())
        return cur.fetchall() if cur.description else []


def _shared_target(kind: str, tmp_path: Path, pg_dsn: str) -> Path:
    """Source tables s1 and s2 (20 rows each, stores 1 and 2) loaded into one target."""
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
    return config


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_row_no_tables_filter_owns_is_extra_and_repaired(
        kind: str, tmp_path: Path, pg_dsn: str) -> None:
    config = _shared_target(kind, tmp_path, pg_dsn)
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


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_reconcile_of_another_table_of_the_target_reports_the_unowned_row(
        kind: str, tmp_path: Path, pg_dsn: str) -> None:
    """`reconcile --table s2` (not the target's first table) was clean beside a row no
    table owns: only s1's reconcile looked for such rows. Now the first table of the
    target that a run compares reports them, once per run, and counts that query."""
    config = _shared_target(kind, tmp_path, pg_dsn)
    clean = _reconcile(config)  # alike but for their store: s1 looks for unowned rows
    assert clean["s1"].queries == clean["s2"].queries + 1  # and counts that query
    _warehouse(kind, tmp_path, pg_dsn, "INSERT INTO {t} (store_id, sale_id, note, updated_at, "
               "_steadyflow_seq) VALUES (3, 1, 'ghost', '2024-06-01 00:05:00+00', 1)")

    alone = _reconcile(config, tables=["s2"])
    assert list(alone) == ["s2"]
    assert (alone["s2"].extra, alone["s2"].examples) == (1, {"extra": [[3, 1]]})
    both = _reconcile(config, tables=["s1", "s2"])  # once per run: by the first compared
    assert (both["s1"].extra, both["s2"].extra) == (1, 0), both
    assert alone["s2"].queries == both["s1"].queries

    repaired = _reconcile(config, repair=True, tables=["s2"])
    assert repaired["s2"].after is not None and repaired["s2"].after.clean
    assert _warehouse(kind, tmp_path, pg_dsn,
                      "SELECT store_id, count(*) FROM {t} GROUP BY 1 ORDER BY 1") == [
        (1, 20), (2, 20)]
