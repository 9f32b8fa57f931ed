"""Incremental reconcile (reconcile/incremental.py) on a real PostgreSQL source and DuckDB
warehouse, at small scale.

After a clean full reconcile, `reconcile --incremental` (what run.reconcile_every runs):
  - compares only the rows changed since and a due share of buckets, not the table;
  - finds a change committed behind the checkpoint (cursor before it, after the last
    reconcile) at once, and the row that was in flight at the checkpoint once it is loaded;
  - finds a damaged warehouse row in a cold bucket within run.reconcile_reverify /
    run.reconcile_every runs (here 4h / 1h: 4), and keeps reporting it until it is repaired;
  - after differences, the next reconcile is a full one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml

from steadyflow.reconcile.runner import Options, TableReport, reconcile
from steadyflow.reconcile.table import TableReconciler
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

N = 640
BASE = datetime(2024, 6, 1, tzinfo=UTC)
CONTRACT = {
    "primary_key": ["sale_id"], "cursor": "updated_at",
    "columns": {"sale_id": {"type": "int64", "nullable": False},
                "qty": {"type": "int32"},
                "note": {"type": "string"},
                "updated_at": {"type": "timestamp", "nullable": False}},
}


def _setup(tmp_path: Path, pg_dsn: str) -> Path:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE sales (sale_id bigint PRIMARY KEY, qty int, note text, "
                     "updated_at timestamptz NOT NULL)")
        conn.execute("INSERT INTO sales SELECT g, g %% 7, 'n' || g, %s + g * interval '1 minute'"
                     " FROM generate_series(1, %s::int) g", [BASE, N])
        conn.execute("CREATE INDEX ON sales (updated_at, sale_id)")
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump({
        "name": "inc", "contracts": {"sales": CONTRACT},
        "warehouse": {"kind": "duckdb", "path": "warehouse.duckdb"},
        "run": {"reconcile_every": "1h", "reconcile_reverify": "4h"},
        "sources": [{"name": "pg", "kind": "postgres", "dsn": pg_dsn,
                     "tables": [{"name": "sales", "contract": "sales"}]}]}))
    return path


def _reconcile(config: Path, incremental: bool = True, repair: bool = False) -> TableReport:
    with Pipeline.from_yaml(config) as pipeline:
        (report,) = reconcile(pipeline, options=Options(incremental=incremental, repair=repair,
                                                        examples=100))
    assert report.error is None, report.error
    return report


def _run(config: Path) -> None:
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once().ok


def _warehouse(tmp_path: Path, sql: str, params: list[Any] | None = None) -> None:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute(sql, params or [])


def _keys(report: TableReport, kind: str) -> set[int]:
    return {int(k[0]) for k in report.examples.get(kind, [])}


def test_incremental_reconcile_compares_changes_and_rolls_over_cold_buckets(
        tmp_path: Path, pg_dsn: str) -> None:
    config = _setup(tmp_path, pg_dsn)
    _run(config)
    first = _reconcile(config)  # nothing remembered yet: a full one
    assert first.clean and first.incremental is None and first.rows_compared == N

    # unchanged: a share of the buckets only (a quarter: 4h / 1h), no rows by cursor
    quiet = _reconcile(config)
    assert quiet.clean and quiet.incremental is not None
    assert quiet.incremental["buckets"] == -(-quiet.incremental["of"] // 4) > 0
    assert 0 < quiet.rows_compared < N / 2

    # new rows, an update, and a change behind the checkpoint (cursor moved back into the
    # window since the last reconcile, committed after the run: extraction will not see it)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        late = BASE + timedelta(minutes=N + 30)
        conn.execute("INSERT INTO sales SELECT g, 1, 'new', %s + g * interval '1 minute' "
                     "FROM generate_series(%s::int, %s::int) g", [BASE, N + 1, N + 60])
        conn.execute("UPDATE sales SET qty = 99, updated_at = %s WHERE sale_id = 5",
                     [BASE + timedelta(minutes=N + 61)])
    _run(config)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE sales SET note = 'behind', updated_at = %s WHERE sale_id = 7",
                     [late])
    behind = _reconcile(config)
    assert _keys(behind, "mismatched") == {7}, behind.examples
    assert behind.rows_compared < N  # still not the table
    _reconcile(config, repair=True)  # repaired: clean again, and remembered as a full one
    assert _reconcile(config, incremental=False).clean
    assert _reconcile(config).clean

    # a warehouse row damaged in a cold bucket: found within 4 runs, then on every run
    # until repaired (a reconcile after differences is a full one)
    _warehouse(tmp_path, "UPDATE sales SET qty = -1 WHERE sale_id = 100")
    found_at = None
    for n in range(1, 5):
        report = _reconcile(config)
        if _keys(report, "mismatched") == {100}:
            found_at = n
            break
        assert report.clean
    assert found_at is not None, "the cold row was not found within the period"
    again = _reconcile(config)
    assert again.incremental is None and _keys(again, "mismatched") == {100}
    assert _reconcile(config, repair=True).clean


def test_row_in_flight_at_the_checkpoint_is_compared_once_loaded(
        tmp_path: Path, pg_dsn: str) -> None:
    """Two rows share the checkpoint's cursor; the one past the checkpoint's key is in
    flight. Once a run loads it, the next incremental reconcile compares it (its cursor is
    at `since`), so damage to it is found at once, not only by the rolling share."""
    config = _setup(tmp_path, pg_dsn)
    _run(config)
    last = BASE + timedelta(minutes=N)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO sales VALUES (%s, 1, 'tie', %s)", [N + 1, last])
    first = _reconcile(config)
    assert first.clean  # sale N+1 shares the checkpoint's cursor, past its key: in flight
    assert first.in_flight == 1
    _run(config)
    _warehouse(tmp_path, "UPDATE sales SET note = 'damaged' WHERE sale_id = ?", [N + 1])
    report = _reconcile(config)
    assert report.incremental is not None
    assert _keys(report, "mismatched") == {N + 1}, report.examples


def test_rows_loaded_while_a_reconcile_ran_are_compared_by_the_next(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `run --follow` beside a reconcile (cron) moves the checkpoint between the
    comparison and the moment the reconcile remembers `since`. `since` came from the
    checkpoint then, so the rows loaded meanwhile were in no comparison and the next
    incremental one started past them: a loaded row lost there was found only by the
    rolling share. `since` is now the checkpoint the comparison ran against."""
    config = _setup(tmp_path, pg_dsn)
    _run(config)
    assert _reconcile(config).clean  # full: remembers `since` at the checkpoint
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO sales SELECT g, 1, 'new', %s + g * interval '1 minute' "
                     "FROM generate_series(%s::int, %s::int) g", [BASE, N + 1, N + 20])
    compare = TableReconciler.compare
    follower = []

    def compare_then_follow(self: TableReconciler) -> Any:
        result = compare(self)
        if not follower:  # the follower's run lands and loads the new rows meanwhile
            follower.append(1)
            _run(config)
        return result

    monkeypatch.setattr(TableReconciler, "compare", compare_then_follow)
    during = _reconcile(config)
    assert during.clean and during.incremental is not None
    monkeypatch.undo()
    _warehouse(tmp_path, "DELETE FROM sales WHERE sale_id = ?", [N + 10])  # a lost row
    report = _reconcile(config)
    assert report.incremental is not None
    assert _keys(report, "missing") == {N + 10}, report
