"""A run after the state store was lost, or restored from an older backup, beside a kept
warehouse loads the source's updates.

The merge keeps, per key, the row of the higher extraction number (`_steadyflow_seq`), and
a tombstone holds back a row numbered at most its own. A state store made anew (its SQLite
file deleted) or restored from an older dump counts from a number below the warehouse
rows': every row read afterwards lost to the warehouse's older version, and a key a repair
deleted and the source inserted again stayed held back, while `run_once().ok` was true.
Now the first number a process takes is above the highest one the warehouse's ledger holds
for the pipeline's targets. The oracle reads the source and the warehouse through their
drivers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml
from tests.support.contracts import NOTED_SALES

from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CONTRACT = NOTED_SALES
CHANGED, DELETED = 1, 7  # a row updated again and again; a key a repair deleted, then back


def _source(pg_dsn: str, sql: str, params: list[Any] | None = None) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.encode(), params or [])


def _source_rows(pg_dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_dsn) as conn:
        return sorted(conn.execute("SELECT sale_id, note FROM sales").fetchall())


def _run(config: Path) -> None:
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once().ok


def _pipeline(tmp_path: Path, pg_dsn: str, warehouse: dict[str, Any],
              state: dict[str, Any] | None = None) -> Path:
    _source(pg_dsn, "CREATE TABLE sales (sale_id bigint PRIMARY KEY, note text, "
                    "updated_at timestamptz NOT NULL)")
    _source(pg_dsn, "INSERT INTO sales SELECT g, 'n' || g, '2024-06-01 00:00:00+00'::"
                    "timestamptz + g * interval '1 minute' FROM generate_series(1, 50) g")
    _source(pg_dsn, "CREATE INDEX ON sales (updated_at, sale_id)")
    config: dict[str, Any] = {
        "name": "floor", "contracts": {"sales": CONTRACT}, "warehouse": warehouse,
        "sources": [{"name": "pg", "kind": "postgres", "dsn": pg_dsn,
                     "tables": [{"name": "sales", "contract": "sales",
                                 "mirror_deletes": True}]}]}
    if state is not None:
        config["state"] = state
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(config))
    _run(path)
    return path


def _touch(pg_dsn: str, config: Path, runs: int) -> None:
    """`runs` runs, each after an update of CHANGED: its warehouse row's number climbs."""
    for _ in range(runs):
        _source(pg_dsn, "UPDATE sales SET note = note || 'x', updated_at = now() "
                        "WHERE sale_id = %s", [CHANGED])
        _run(config)


def test_a_run_after_the_state_file_was_deleted_loads_the_updates(
        tmp_path: Path, pg_dsn: str) -> None:
    config = _pipeline(tmp_path, pg_dsn, {"kind": "duckdb", "path": "warehouse.duckdb"})
    _touch(pg_dsn, config, 4)
    _source(pg_dsn, "DELETE FROM sales WHERE sale_id = %s", [DELETED])
    with Pipeline.from_yaml(config) as pipeline:  # the delete leaves a tombstone
        (report,) = reconcile(pipeline, options=Options(repair=True))
    assert report.after is not None and report.after.clean, report.after

    state_files = sorted((tmp_path / "state").glob("state.db*"))
    assert state_files
    for path in state_files:  # the state is lost; the warehouse (and its tombstone) kept
        path.unlink()
    _source(pg_dsn, "UPDATE sales SET note = 'CHANGED', updated_at = now() WHERE sale_id = %s",
            [CHANGED])
    _source(pg_dsn, "INSERT INTO sales VALUES (%s, 'back', now())", [DELETED])
    _run(config)

    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        warehouse = sorted(con.execute("SELECT sale_id, note FROM main.sales").fetchall())
    assert warehouse == _source_rows(pg_dsn)
    assert (CHANGED, "CHANGED") in warehouse and (DELETED, "back") in warehouse


def test_a_run_after_the_state_schema_was_restored_from_an_older_dump_loads_the_updates(
        tmp_path: Path, pg_dsn: str) -> None:
    config = _pipeline(tmp_path, pg_dsn, {"kind": "postgres", "dsn": pg_dsn, "schema": "wh"},
                       {"kind": "postgres", "dsn": pg_dsn, "schema": "sf_state"})
    _touch(pg_dsn, config, 1)
    dump = subprocess.run(["pg_dump", "--schema=sf_state", "--no-owner", "-d", pg_dsn],
                          check=True, capture_output=True, timeout=60).stdout
    _touch(pg_dsn, config, 4)  # after the backup: higher numbers in the warehouse

    _source(pg_dsn, "DROP SCHEMA sf_state CASCADE")
    subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-d", pg_dsn], input=dump,
                   check=True, capture_output=True, timeout=60)
    with psycopg.connect(pg_dsn) as conn:  # the restored sequence is the older one
        (restored,), = conn.execute("SELECT last_value FROM sf_state.extract_seq").fetchall()
        (highest,), = conn.execute("SELECT max(_steadyflow_seq) FROM wh.sales").fetchall()
    assert restored < highest

    _source(pg_dsn, "UPDATE sales SET note = 'CHANGED', updated_at = now() WHERE sale_id = %s",
            [CHANGED])
    _run(config)

    with psycopg.connect(pg_dsn) as conn:
        warehouse = sorted(conn.execute("SELECT sale_id, note FROM wh.sales").fetchall())
    assert warehouse == _source_rows(pg_dsn)
    assert (CHANGED, "CHANGED") in warehouse
