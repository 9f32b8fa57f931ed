"""reconcile/runner.py end to end on the embedded engines (SQLite stores → DuckDB): the cases
the multi-engine acceptance test does not cover — classification edge cases, cursor buckets
and --since, configuration errors, mirror_deletes off, a repair interrupted half-way, and
the scheduled reconciliation of follow mode."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import write_pipeline

from steadyflow.errors import ConfigError, WarehouseUnavailable
from steadyflow.reconcile.runner import Options, TableReport, parse_since, reconcile, text_report
from steadyflow.run.load import BatchLoader
from steadyflow.run.pipeline import Pipeline

BASE = datetime(2024, 3, 1, tzinfo=UTC)
N = 600
TS = "%Y-%m-%d %H:%M:%S.%f"


def make_store(path: Path, store: int, n: int = N) -> Callable[[str], None]:
    """A store's SQLite file; `sale_id` i was last updated BASE + i minutes (10 per day)."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE sales (store_id INTEGER NOT NULL, sale_id INTEGER NOT NULL, "
                   "sku TEXT, qty INTEGER, unit_price TEXT, currency TEXT, "
                   "sold_at TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (store_id, sale_id))")
        db.execute("CREATE INDEX sales_cursor ON sales (updated_at, store_id, sale_id)")
        db.executemany("INSERT INTO sales VALUES (?,?,?,?,?,?,?,?)", [
            (store, i, f"SKU-{i}", 1 + i % 5, f"{i % 50}.{i % 100:02d}", "EUR",
             (BASE + timedelta(hours=i * 2.4)).strftime(TS),
             (BASE + timedelta(hours=i * 2.4, seconds=1)).strftime(TS))
            for i in range(1, n + 1)])
        db.commit()

    def execute(sql: str) -> None:
        with closing(sqlite3.connect(path)) as conn:
            conn.execute(sql)
            conn.commit()
    return execute


def pipeline_for(tmp_path: Path, stores: int = 1, **table: Any) -> tuple[Path, list[Any]]:
    execs = [make_store(tmp_path / f"store{s}.db", s) for s in range(1, stores + 1)]
    config = write_pipeline(tmp_path, [
        {"name": f"store{s}", "kind": "sqlite", "path": f"store{s}.db",
         "tables": [{"name": "sales", "contract": "sales", "mirror_deletes": True,
                     **({"warehouse_filter": {"store_id": s}} if stores > 1 else {}), **table}]}
        for s in range(1, stores + 1)])
    return config, execs


def wh_exec(pipeline: Pipeline, sql: str) -> None:
    wh = pipeline.warehouse
    with wh._lock:  # type: ignore[attr-defined]
        wh._conn.execute(sql)  # type: ignore[attr-defined]


def only(reports: list[TableReport]) -> TableReport:
    assert len(reports) == 1
    assert reports[0].error is None, reports[0].error
    return reports[0]


def keys(report: TableReport, name: str) -> set[int]:
    return {k[-1] for k in report.examples.get(name, [])}


def test_several_feeders_need_a_warehouse_filter(tmp_path: Path) -> None:
    execs = [make_store(tmp_path / f"s{s}.db", s, 10) for s in (1, 2)]
    assert execs
    config = write_pipeline(tmp_path, [
        {"name": f"s{s}", "kind": "sqlite", "path": f"s{s}.db",
         "tables": [{"name": "sales", "contract": "sales"}]} for s in (1, 2)])
    # refused when the config is loaded (merged on the key alone, one store's rows could
    # replace the other's), so neither run nor reconcile ever sees such a pipeline
    with pytest.raises(ConfigError, match="add warehouse_filter"):
        Pipeline.from_yaml(config)


def test_stores_sharing_a_table_are_told_apart_by_their_filter(tmp_path: Path) -> None:
    config, execs = pipeline_for(tmp_path, stores=2)
    with Pipeline.from_yaml(config) as p:
        assert p.run_once().ok
        wh_exec(p, "DELETE FROM main.sales WHERE store_id = 2 AND sale_id = 9")
        execs[0]("DELETE FROM sales WHERE sale_id = 11")
        r1, r2 = reconcile(p)
    assert (r1.missing, r1.extra, r1.mismatched) == (0, 1, 0) and keys(r1, "extra") == {11}
    assert (r2.missing, r2.extra, r2.mismatched) == (1, 0, 0) and keys(r2, "missing") == {9}
    # the row at the checkpoint is compared too (nothing is in flight); store 1 lost one
    assert (r1.rows_compared, r2.rows_compared) == (N - 1, N)


def test_cursor_buckets_and_since(tmp_path: Path) -> None:
    config, (store,) = pipeline_for(tmp_path)
    with Pipeline.from_yaml(config) as p:
        assert p.run_once().ok
        r = only(reconcile(p, options=Options(by="cursor")))
        assert r.by == "cursor" and r.buckets == 61  # 10 rows a day, the checkpoint's own
        assert r.clean and r.leaves == 0
        store("UPDATE sales SET sku = 'x' WHERE sale_id IN (50, 500)")  # no cursor bump
        wh_exec(p, "UPDATE main.sales SET updated_at = updated_at - INTERVAL 30 DAY "
                   "WHERE sale_id = 450")  # a cursor moved backwards: another day bucket
        r = only(reconcile(p, options=Options(by="cursor")))
        assert keys(r, "mismatched") == {50, 450, 500} and r.missing == r.extra == 0
        since = BASE + timedelta(hours=2.4 * 300)
        r = only(reconcile(p, options=Options(by="cursor", since=since)))
        assert keys(r, "mismatched") == {450, 500}  # 450 is found by key, across the bound
        assert r.rows_compared == N - 300 + 1  # 300..600: the checkpoint row included
        r = only(reconcile(p, options=Options(since=since)))  # key buckets, same answer
        assert keys(r, "mismatched") == {450, 500}


def test_rows_past_the_horizon_are_in_flight(tmp_path: Path) -> None:
    config, (store,) = pipeline_for(tmp_path)
    with Pipeline.from_yaml(config) as p:
        assert p.run_once().ok
        later = (BASE + timedelta(days=400)).strftime(TS)
        store(f"UPDATE sales SET qty = 3, updated_at = '{later}' WHERE sale_id = 20")
        store(f"INSERT INTO sales VALUES (1, 9999, 'new', 1, '1.00', 'USD', NULL, '{later}')")
        r = only(reconcile(p))
        assert r.clean and r.in_flight == 1  # changed row: next extraction brings it
        assert p.run_once().ok
        r = only(reconcile(p))
        assert r.clean and r.in_flight == 0


def test_validity_decides_between_missing_and_quarantine(tmp_path: Path) -> None:
    config, (store,) = pipeline_for(tmp_path)
    store("UPDATE sales SET currency = 'XXX' WHERE sale_id = 30")  # quarantined at load
    store("UPDATE sales SET sku = NULL WHERE sale_id = 31")
    with Pipeline.from_yaml(config) as p:
        assert p.run_once().ok
        assert only(reconcile(p)).clean
        store("UPDATE sales SET currency = 'EUR' WHERE sale_id = 30")  # fixed, no cursor bump
        store("UPDATE sales SET qty = 'many' WHERE sale_id = 40")  # broken, no cursor bump
        r = only(reconcile(p))
        assert keys(r, "missing") == {30}
        # 40's current row is in no quarantine (never extracted): a difference, not assumed
        # quarantined; 31 is in quarantine
        assert keys(r, "mismatched") == {40} and r.quarantined == 1
        r = only(reconcile(p, options=Options(repair=True)))
        assert r.repair is not None and r.repair["upserted"] == 1
        assert r.repair["quarantined"] == 1  # 40, parked by the repair batch's validation
        # the warehouse keeps 40's last valid version, as a load of that row would have
        assert r.clean and r.after is not None and r.after.quarantined == 2


def test_extras_are_kept_without_mirror_deletes(tmp_path: Path) -> None:
    config, (store,) = pipeline_for(tmp_path, mirror_deletes=False)
    with Pipeline.from_yaml(config) as p:
        assert p.run_once().ok
        store("DELETE FROM sales WHERE sale_id IN (5, 6)")
        r = only(reconcile(p, options=Options(repair=True)))
        assert r.repair is not None and r.repair["deleted"] == 0
        assert r.repair["deletes_skipped"] == 2
        assert r.after is not None and keys(r.after, "extra") == {5, 6} and not r.clean
        assert "mirror_deletes is off" in text_report([r])


def test_an_interrupted_repair_is_finished_by_the_sweeper(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A repair batch is landed and in the manifest before it is loaded: if loading fails,
    the next run's sweep loads it, once."""
    config, _ = pipeline_for(tmp_path)
    with Pipeline.from_yaml(config) as p:
        assert p.run_once().ok
        wh_exec(p, "DELETE FROM main.sales WHERE sale_id BETWEEN 100 AND 109")
        real = BatchLoader.load_and_mark

        def broken(self: BatchLoader, batch: Any) -> Any:
            raise WarehouseUnavailable("connection lost", stage="load")

        monkeypatch.setattr(BatchLoader, "load_and_mark", broken)
        report = reconcile(p, options=Options(repair=True))[0]
        assert report.error is not None and "repair failed" in report.error
        assert report.missing == 10
        pending = [b for b in p.state.pending_batches() if b.kind == "repair"]
        assert len(pending) == 1 and pending[0].rows == 10
        monkeypatch.setattr(BatchLoader, "load_and_mark", real)
        summary = p.run_once()  # sweep → buffer → load, like any landed batch
        assert summary.ok and summary.loaded_rows == 10
        assert only(reconcile(p)).clean
        assert p.run_once().loaded_rows == 0  # loaded once


def test_follow_mode_reconciles_on_schedule(tmp_path: Path) -> None:
    config, (store,) = pipeline_for(tmp_path)
    text = config.read_text() + "run: {interval: 0.05, reconcile_every: 0.2}\n"
    config.write_text(text)
    with Pipeline.from_yaml(config) as p:
        thread = threading.Thread(target=p.run, kwargs={"follow": True})
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(
                    [r for r in p.state.runs(50) if r["command"].startswith("reconcile")]) < 2:
                time.sleep(0.05)
        finally:
            p.stop()
            thread.join(30)
        runs = [r for r in p.state.runs(50) if r["command"] == "reconcile (scheduled)"]
        assert len(runs) >= 2 and runs[-1]["outcome"] == "clean"
        assert p.state.last_reconcile()[0]["missing"] == 0


def test_parse_since() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("2024-04-01", now) == datetime(2024, 4, 1, tzinfo=UTC)
    assert parse_since("2024-04-01T10:00:00+02:00", now) == datetime(2024, 4, 1, 8, tzinfo=UTC)
    with pytest.raises(ConfigError):
        parse_since("last tuesday", now)


def test_the_checkpoint_row_is_compared_and_a_tie_past_it_is_in_flight(tmp_path: Path) -> None:
    """With nothing in flight (no lookback, no landed batch waiting) the row at the checkpoint
    is loaded, so it is compared; a row sharing its cursor but with a key past it is not
    extracted yet (the next page starts after the checkpoint's key): in flight."""
    config, (store,) = pipeline_for(tmp_path)
    with Pipeline.from_yaml(config) as p:
        assert p.run_once().ok
        wh_exec(p, f"UPDATE main.sales SET sku = 'damaged' WHERE sale_id = {N}")
        last = (BASE + timedelta(hours=N * 2.4, seconds=1)).strftime(TS)
        store(f"INSERT INTO sales VALUES (1, {N + 1}, 'tie', 1, '1.00', 'EUR', NULL, '{last}')")
        r = only(reconcile(p))
        assert keys(r, "mismatched") == {N} and r.missing == 0 and r.in_flight == 1
        r = only(reconcile(p, options=Options(repair=True)))
        assert r.clean and r.after is not None and r.after.in_flight == 1
        assert p.run_once().ok
        r = only(reconcile(p))
        assert r.clean and r.in_flight == 0 and r.rows_compared == N + 1


def test_a_duckdb_error_fails_its_table_not_the_command(tmp_path: Path) -> None:
    """reconcile/table.py no longer imports duckdb (a PostgreSQL warehouse's reconcile never
    loads it, #15): once a DuckDB warehouse has loaded it, its errors still fail one table
    with a report, as psycopg's do, instead of ending the command."""
    config, _ = pipeline_for(tmp_path)
    with Pipeline.from_yaml(config) as p:
        assert p.run_once().ok
        # a value the warehouse side's canonical cast of qty (BIGINT) cannot take
        wh_exec(p, "ALTER TABLE main.sales ALTER qty TYPE VARCHAR")
        wh_exec(p, "UPDATE main.sales SET qty = 'x' WHERE sale_id = 7")
        (report,) = reconcile(p)
    assert report.error is not None and "'x'" in report.error, report.error
