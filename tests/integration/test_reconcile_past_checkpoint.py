"""A warehouse row whose cursor is past the checkpoint is compared, not skipped.

Reconcile leaves rows at or past its horizon (just past the checkpoint's cursor) out of
both sides' buckets: at the source they may be in flight. In the warehouse no loaded batch
holds such a row, so one there (damage, a restore, a repair's row whose source row was
deleted before extraction caught up) was in no comparison: reconcile reported the table
clean, and `--repair` too, while the warehouse held a row the source has not. Now such rows
are looked up at the source: absent, they are extra (and a repair with mirror_deletes
deletes them); present past the horizon there too, they are in flight (a follower loaded
them meanwhile), not a difference. PostgreSQL source, both warehouses, read back through
the drivers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml
from tests.support.contracts import NOTED_SALES

from steadyflow.reconcile.runner import Options, TableReport, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CONTRACT = NOTED_SALES
GHOST, LATE = 9999, 60  # an extra warehouse row; a row loaded past the checkpoint at both ends


def _setup(tmp_path: Path, pg_dsn: str, warehouse: dict[str, Any]) -> Path:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE sales (sale_id bigint PRIMARY KEY, note text, "
                     "updated_at timestamptz NOT NULL)")
        conn.execute("INSERT INTO sales SELECT g, 'n' || g, "
                     "'2024-06-01 00:00:00+00'::timestamptz + g * interval '1 minute' "
                     "FROM generate_series(1, 50) g")
        conn.execute("CREATE INDEX ON sales (updated_at, sale_id)")
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump({
        "name": "past", "contracts": {"sales": CONTRACT}, "warehouse": warehouse,
        "sources": [{"name": "pg", "kind": "postgres", "dsn": pg_dsn,
                     "tables": [{"name": "sales", "contract": "sales",
                                 "mirror_deletes": True}]}]}))
    return path


def _reconcile(config: Path, repair: bool = False) -> TableReport:
    with Pipeline.from_yaml(config) as pipeline:
        (report,) = reconcile(pipeline, options=Options(repair=repair, examples=100))
    assert report.error is None, report.error
    return report


def _warehouse(kind: str, tmp_path: Path, pg_dsn: str
               ) -> Callable[[str], list[tuple[Any, ...]]]:
    """Run SQL on the warehouse through its own driver ({t}: the target table)."""
    def run(sql: str) -> list[tuple[Any, ...]]:
        if kind == "duckdb":
            with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
                return con.execute(sql.replace("{t}", "main.sales")).fetchall()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            cur = conn.execute(sql.replace("{t}", "wh.sales").encode())
            return cur.fetchall() if cur.description else []
    return run


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_warehouse_row_past_the_checkpoint_is_extra_or_in_flight(
        kind: str, tmp_path: Path, pg_dsn: str) -> None:
    warehouse = ({"kind": "duckdb", "path": "warehouse.duckdb"} if kind == "duckdb"
                 else {"kind": "postgres", "dsn": pg_dsn, "schema": "wh"})
    config = _setup(tmp_path, pg_dsn, warehouse)
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once().ok
    assert _reconcile(config).clean
    wh = _warehouse(kind, tmp_path, pg_dsn)
    future = "TIMESTAMPTZ '2030-01-01 00:00:00+00'"
    wh(f"INSERT INTO {{t}} (sale_id, note, updated_at, _steadyflow_seq) "
       f"VALUES ({GHOST}, 'ghost', {future}, 1)")
    # a row committed at the source past the checkpoint, loaded meanwhile (a follower)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO sales VALUES ({LATE}, 'late', {future})")
    wh(f"INSERT INTO {{t}} (sale_id, note, updated_at, _steadyflow_seq) "
       f"VALUES ({LATE}, 'late', {future}, 2)")

    report = _reconcile(config)
    assert (report.missing, report.extra, report.mismatched) == (0, 1, 0), report
    assert report.examples == {"extra": [[GHOST]]}
    assert report.in_flight == 1  # LATE: at the source too, past the horizon
    assert not report.clean

    repaired = _reconcile(config, repair=True)
    assert repaired.after is not None and repaired.after.clean
    keys = {int(k) for (k,) in wh("SELECT sale_id FROM {t}")}
    assert GHOST not in keys and LATE in keys and len(keys) == 51
