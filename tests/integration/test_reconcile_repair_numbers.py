"""A repair outnumbers the warehouse rows it replaces, whatever the state store's sequence.

The merge keeps, per key, the row of the higher extraction number (`_steadyflow_seq`), and
a tombstone holds back a row numbered at most its own. A state store made anew beside a
kept warehouse (state_dir lost, or restored from an older backup) counts from 1 again: the
next run's re-read lost the source's updates (its numbers lower than the warehouse rows'),
reconcile found them, and `--repair` reported the rows upserted while its batches, numbered
lower still, changed nothing; a key deleted by an earlier repair and inserted again at the
source stayed held back by its tombstone. Every repair then reported the same differences.
Now a repair first raises the state's sequence above the highest number in the target and
its tombstones. SQLite state into DuckDB, PostgreSQL state into PostgreSQL; the warehouse
read back through its driver.
"""

from __future__ import annotations

import shutil
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
CHANGED, DELETED = 4, 5  # a row updated after the state was lost; one deleted, then back


def _source(pg_dsn: str, sql: str, params: list[Any] | None = None) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.encode(), params or [])


def _run(config: Path) -> None:
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once().ok


def _reconcile(config: Path, repair: bool = False) -> TableReport:
    with Pipeline.from_yaml(config) as pipeline:
        (report,) = reconcile(pipeline, options=Options(repair=repair, examples=100))
    assert report.error is None, report.error
    return report


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_repair_after_the_state_was_lost_replaces_the_warehouse_rows(
        kind: str, tmp_path: Path, pg_dsn: str) -> None:
    _source(pg_dsn, "CREATE TABLE sales (sale_id bigint PRIMARY KEY, note text, "
                    "updated_at timestamptz NOT NULL)")
    _source(pg_dsn, "INSERT INTO sales SELECT g, 'n' || g, '2024-06-01 00:00:00+00'::"
                    "timestamptz + g * interval '1 minute' FROM generate_series(1, 50) g")
    _source(pg_dsn, "CREATE INDEX ON sales (updated_at, sale_id)")
    config: dict[str, Any] = {
        "name": "numbers", "contracts": {"sales": CONTRACT},
        "warehouse": {"kind": "duckdb", "path": "warehouse.duckdb"},
        "sources": [{"name": "pg", "kind": "postgres", "dsn": pg_dsn,
                     "tables": [{"name": "sales", "contract": "sales", "page_size": 10,
                                 "mirror_deletes": True}]}]}
    if kind == "postgres":
        config["warehouse"] = {"kind": "postgres", "dsn": pg_dsn, "schema": "wh"}
        config["state"] = {"kind": "postgres", "dsn": pg_dsn, "schema": "sf_state"}
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(config))
    for i in range(1, 5):  # the rows touched again and again: high numbers in the warehouse
        _source(pg_dsn, "UPDATE sales SET note = note || 'x', updated_at = now() "
                        "WHERE sale_id <= %s", [i])
        _run(path)
    _source(pg_dsn, "DELETE FROM sales WHERE sale_id = %s", [DELETED])
    assert _reconcile(path, repair=True).after.clean  # type: ignore[union-attr]

    # the state is lost; the warehouse (and its tombstone of DELETED) is kept
    if kind == "postgres":
        _source(pg_dsn, "DROP SCHEMA sf_state CASCADE")
    else:
        shutil.rmtree(tmp_path / "state")
    _source(pg_dsn, "UPDATE sales SET note = 'CHANGED', updated_at = now() WHERE sale_id = %s",
            [CHANGED])
    _source(pg_dsn, "INSERT INTO sales VALUES (%s, 'back', now())", [DELETED])
    # no run first: a run now loads both itself (its first number above the warehouse's,
    # tests/integration/test_seq_floor.py), leaving the repair nothing to do

    report = _reconcile(path, repair=True)
    assert report.after is not None and report.after.clean, report.after
    if kind == "postgres":
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute("SELECT sale_id, note FROM wh.sales WHERE sale_id IN (%s, %s)",
                                [CHANGED, DELETED]).fetchall()
    else:
        with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
            rows = con.execute("SELECT sale_id, note FROM main.sales WHERE sale_id IN (?, ?)",
                               [CHANGED, DELETED]).fetchall()
    assert sorted(rows) == [(CHANGED, "CHANGED"), (DELETED, "back")]
