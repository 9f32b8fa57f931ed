"""Source trouble that is not the network: slow queries, locks, bad credentials, a full
landing disk, schema changes while running, a skewed clock; and the cost of a page query.

Every scenario that moves data ends with the warehouse equal to the source row for row
(`compare_target`), so a mechanism that "worked" by losing rows fails here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from tests.conftest import SALES_CONTRACT, require_tool, write_pipeline
from tests.faults.test_network import (
    assert_warehouse_equals_sources,
    metric,
    mysql_connect,
    on_checkpoint,
    open_pipeline,
    position,
    seed_mysql,
    seed_pg,
    sql_source,
    warehouse_rows,
)
from tests.support.disk import tmpfs

from steadyflow.config import PipelineConfig, load_config, parse_config
from steadyflow.demo.flaky_api import FlakyApiServer, create_api_db, mutate
from steadyflow.extract.sql import SqlSource
from steadyflow.land.parquet import TEMP_PREFIX
from steadyflow.model import Watermark
from steadyflow.reconcile.compare import compare_target
from steadyflow.run.pipeline import Pipeline
from steadyflow.state import SqliteStateStore

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def truth(sources: list[dict[str, Any]]) -> PipelineConfig:
    """A config that reads the sources directly and patiently: what the warehouse must equal."""
    return parse_config({"contracts": {"sales": SALES_CONTRACT}, "sources": sources})


def assert_equal(config: PipelineConfig, pipeline: Pipeline, target: str = "sales",
                 min_rows: int = 1) -> Any:
    cmp = compare_target(config, target, warehouse_rows(pipeline, target))
    assert cmp.expected_rows >= min_rows, cmp
    assert (cmp.missing, cmp.extra, cmp.duplicates, cmp.mismatched) == (0, 0, 0, 0), cmp
    return cmp


def record_page_sizes(pipeline: Pipeline) -> list[int]:
    sizes: list[int] = []
    original = pipeline.metrics.page_size

    def record(source: str, table: str, rows: int) -> None:
        sizes.append(rows)
        original(source, table, rows)

    pipeline.metrics.page_size = record  # type: ignore[method-assign]
    return sizes


# --- statement timeouts → smaller pages ------------------------------------------------------
def test_slow_source_statement_timeout_shrinks_pages_and_completes(
        tmp_path: Path, pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """Every row costs ~1 ms (pg_sleep in a view): a 2 000-row page takes ~2.4 s and hits the
    1 s statement_timeout; the page is retried at half the size, never as the same query."""
    seed_pg(pg_dsn, 2_000, table="sales_base")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE VIEW sales AS SELECT * FROM sales_base "
                     "WHERE pg_sleep(0.0005) IS NOT NULL")
    with open_pipeline(tmp_path, [sql_source("pg", "postgres", pg_dsn, page_size=2_000,
                                             statement_timeout=1)]) as pipeline:
        sizes = record_page_sizes(pipeline)
        limits: list[int] = []  # the LIMIT of every page query sent, in order
        original = SqlSource.page_query

        def page_query(self: SqlSource, table: str, contract: Any, after: Any, since: Any,
                       limit: int, where: Any = None, **bounds: Any) -> Any:
            limits.append(limit)
            return original(self, table, contract, after, since, limit, where, **bounds)

        SqlSource.page_query = page_query  # type: ignore[method-assign]
        try:
            summary = pipeline.run_once()
        finally:
            SqlSource.page_query = original  # type: ignore[method-assign]
        assert summary.ok, summary.errors
        timeouts = metric(pipeline, "steadyflow_timeouts_total", source="pg")
        assert timeouts >= 2
        # each timed-out query was followed by a smaller one: 2000 → 1000 → 500 ...
        assert limits[:3] == [2_000, 1_000, 500], limits
        assert sizes[:2] == [1_000, 500], sizes
        assert max(limits[2:]) <= 500
        assert summary.extracted_rows == 2_000
        logged = [r.getMessage() for r in caplog.records]  # visible to an operator too
        assert any("timeout; page size 2000 -> 1000" in m for m in logged), logged
        assert any("retrying after: statement timeout" in m for m in logged), logged
        base = sql_source("pg", "postgres", pg_dsn, table="sales_base", statement_timeout=60)
        assert_equal(truth([base]), pipeline, min_rows=2_000)


def test_lock_contention_times_out_pages_then_they_grow_back(
        tmp_path: Path, pg_dsn: str) -> None:
    """A transaction holds ACCESS EXCLUSIVE for 3 s mid-run: pages time out (1 s), shrink,
    and once the lock is gone, fast pages grow back to the configured size."""
    seed_pg(pg_dsn, 8_000)
    with open_pipeline(tmp_path, [sql_source("pg", "postgres", pg_dsn, page_size=1_000,
                                             statement_timeout=1)]) as pipeline:
        sizes = record_page_sizes(pipeline)
        locked = threading.Event()

        def hold_lock() -> None:
            with psycopg.connect(pg_dsn) as conn:
                conn.execute("LOCK TABLE sales IN ACCESS EXCLUSIVE MODE")
                locked.set()
                time.sleep(3)
                conn.commit()

        holder = threading.Thread(target=hold_lock)
        on_checkpoint(pipeline, 1, lambda: (holder.start(), locked.wait(5)))
        summary = pipeline.run_once()
        holder.join()
        assert summary.ok, summary.errors
        assert metric(pipeline, "steadyflow_timeouts_total", source="pg") >= 2
        smallest = min(sizes)
        assert smallest <= 250, sizes
        shrink_end = sizes.index(smallest)
        assert sizes[shrink_end:] == sorted(sizes[shrink_end:])  # then it only grows
        assert sizes[-1] == 1_000, sizes  # back to the configured page size
        assert_equal(pipeline.config, pipeline, min_rows=8_000)


# --- fatal errors are not retried ------------------------------------------------------------
def test_wrong_credentials_and_missing_table_fail_fast(
        tmp_path: Path, pg_dsn: str, mysql_dsn: str) -> None:
    user, password = f"sf_{uuid.uuid4().hex[:8]}", "right-pw-1"
    db = mysql_dsn.rsplit("/", 1)[1]
    seed_mysql(mysql_dsn, 10)
    with mysql_connect(mysql_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        cur.execute(f"GRANT SELECT ON `{db}`.* TO '{user}'@'%'")
    try:
        slow_retries = {"retries": 6, "backoff_initial": 2, "backoff_max": 5}
        bad_pw = mysql_dsn.replace("root@", f"{user}:wrong-pw-9@")
        nobody = pg_dsn.replace("postgres@", "nobody_here@")
        sources = [
            sql_source("my_pw", "mysql", bad_pw, **slow_retries),
            sql_source("pg_role", "postgres", nobody, **slow_retries),
            sql_source("pg_table", "postgres", pg_dsn, table="no_such_table", store_id=3,
                       **slow_retries),
            sql_source("my_table", "mysql", mysql_dsn, table="no_such_table", store_id=4,
                       **slow_retries),
        ]
        with open_pipeline(tmp_path, sources, run={"max_parallel_sources": 4}) as pipeline:
            started = time.monotonic()
            summary = pipeline.extract()
            elapsed = time.monotonic() - started
            assert elapsed < 2.0, elapsed  # one retry alone would wait up to 2 s
            errors = dict(e.split(": ", 1) for e in summary.errors)
            assert set(errors) == {"my_pw.sales", "pg_role.sales", "pg_table.no_such_table",
                                   "my_table.no_such_table"}, errors
            assert "authentication failed" in errors["my_pw.sales"]
            assert "wrong-pw-9" not in errors["my_pw.sales"]
            assert "authentication failed" in errors["pg_role.sales"]
            assert "table not found" in errors["pg_table.no_such_table"]
            assert "table not found" in errors["my_table.no_such_table"]
            for source in ("my_pw", "pg_role", "pg_table", "my_table"):
                for reason in ("timeout", "connection", "other"):
                    assert metric(pipeline, "steadyflow_retries_total", source=source,
                                  reason=reason) == 0
    finally:
        with mysql_connect(mysql_dsn) as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")


# --- landing disk full ---------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "landing", 2) as mount:
        yield mount


def test_landing_disk_full_clear_error_no_corrupt_file_checkpoint_holds(
        tmp_path: Path, pg_dsn: str, small_disk: Path) -> None:
    seed_pg(pg_dsn, 20_000)
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 150_000))  # room for a few pages only
    with open_pipeline(tmp_path, [sql_source("pg", "postgres", pg_dsn, page_size=1_000)],
                       landing={"path": str(small_disk)}) as pipeline:
        first = pipeline.run_once(raise_on_error=False)
        assert not first.ok
        assert len(first.errors) == 1
        assert "cannot land batch" in first.errors[0] and "No space left" in first.errors[0]
        landed = [pipeline.state.batch(b["batch_id"])
                  for b in pipeline.state.batches("pg", "sales")]
        assert 1 <= len(landed) < 20
        # no torn file is visible: every file is a whole, checksummed batch in the manifest
        assert not list(small_disk.rglob(f"{TEMP_PREFIX}*"))
        visible = {p.name.removesuffix(".parquet") for p in pipeline.landing.visible_files()}
        assert visible == {b.batch_id for b in landed if b}
        for batch in landed:
            assert batch is not None
            assert pipeline.landing.read(batch).num_rows == batch.rows
        # the read position is the high of the last landed page: it did not move past it
        mark = position(pipeline, "pg")
        assert mark is not None
        assert mark.as_tuple() == max(b.high.as_tuple() for b in landed if b and b.high)
        assert sum(b.rows for b in landed if b) < 20_000

        filler.unlink()  # space is freed: the next run resumes from the checkpoint
        second = pipeline.run_once()
        assert second.ok, second.errors
        assert second.extracted_rows == 20_000 - sum(b.rows for b in landed if b)
        assert_warehouse_equals_sources(pipeline, 20_000)


# --- schema drift while running --------------------------------------------------------------
def test_schema_drift_while_running(
        tmp_path: Path, pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """Runs in --follow mode while the source changes under it:
    - an added column: `schema_drift: ignore` loads on and warns naming the column at every
      run; `schema_drift: stop` stops that table loudly, the other table goes on;
    - a widened type (integer → bigint) loads values that need the width;
    - an incompatible change (numeric(12,2) → numeric(14,4)) quarantines the rows that no
      longer fit, with the reason; nothing is rounded or truncated silently."""
    for table, store in (("sales", 1), ("sales_b", 2)):
        seed_pg(pg_dsn, 500, store_id=store, table=table)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE sales ALTER COLUMN qty TYPE integer")
    source = sql_source("pg", "postgres", pg_dsn, page_size=200)
    source["tables"] = [
        {"name": "sales", "contract": "sales", "page_size": 200, "schema_drift": "ignore"},
        {"name": "sales_b", "contract": "sales", "page_size": 200, "schema_drift": "stop"}]
    caplog.set_level(logging.WARNING, logger="steadyflow")
    with open_pipeline(tmp_path, [source], run={"interval": 0.2}) as pipeline:
        runner = threading.Thread(target=pipeline.run, kwargs={"follow": True})
        runner.start()
        try:
            def loaded(table: str, rows: int) -> Callable[[], bool]:
                return lambda: any(h.table == table and h.rows_loaded >= rows
                                   for h in pipeline.state.health())

            wait_for(loaded("sales", 500), 20, "the first load of sales")
            wait_for(loaded("sales_b", 500), 20, "the first load of sales_b")
            mark_b = pipeline.state.checkpoint("pg", "sales_b")
            now = "timestamptz '2026-02-01 00:00:00+00'"
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                for table in ("sales", "sales_b"):
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN note text")
                conn.execute("ALTER TABLE sales ALTER COLUMN qty TYPE bigint")  # widened
                conn.execute(f"INSERT INTO sales VALUES (1, 10001, 'wide', 3000000000, 1.50, "
                             f"'USD', {now}, {now}, 'a note')")
                conn.execute("ALTER TABLE sales ALTER COLUMN unit_price TYPE numeric(14,4)")
                conn.execute(f"INSERT INTO sales VALUES (1, 10002, 'fine', 2, 2.5, 'EUR', "
                             f"{now}, {now} + interval '1 ms', NULL), "
                             f"(1, 10003, 'too precise', 2, 2.3456, 'EUR', {now}, "
                             f"{now} + interval '2 ms', NULL)")
                conn.execute(f"INSERT INTO sales_b VALUES (2, 10001, 'new', 1, 1.00, 'USD', "
                             f"{now}, {now}, 'x')")
            wait_for(loaded("sales", 502), 20, "the rows after the changes")
            wait_for(lambda: any("schema drift" in (h.last_error or "")
                                 for h in pipeline.state.health() if h.table == "sales_b"),
                     20, "sales_b to stop on the new column")
        finally:
            pipeline.stop()
            runner.join(30)
        assert not runner.is_alive()
        # ignore: loaded on, and said so, naming the column
        warnings_ = [r.getMessage() for r in caplog.records if "schema drift" in r.getMessage()]
        assert any("note" in w and "schema_drift: ignore" in w for w in warnings_), warnings_
        # stop: loud, named, and the checkpoint did not move past the change
        health_b = next(h for h in pipeline.state.health() if h.table == "sales_b")
        assert "note" in (health_b.last_error or "") and "schema_drift: stop" in (
            health_b.last_error or "")
        assert pipeline.state.checkpoint("pg", "sales_b") == mark_b
        assert health_b.rows_loaded == 500
        # the incompatible value is quarantined with its reason, never rounded to 2.35
        parked = pipeline.state.quarantined("open")
        assert sum(q["rows"] for q in parked) == 1
        assert any("unit_price" in r for q in parked for r in q["reasons"])
        wh = warehouse_rows(pipeline)
        by_id = {r["sale_id"]: r for r in wh.to_pylist()}
        assert 10003 not in by_id
        assert by_id[10001]["qty"] == 3_000_000_000  # the widened value, exactly
        cmp = assert_equal(pipeline.config, pipeline, min_rows=502)
        assert cmp.quarantined == 1


# --- clock skew ------------------------------------------------------------------------------
def test_clock_skew_cursors_come_from_source_values(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline host runs 2 h ahead (faketime). Rows committed at the sources' real
    'now' are 2 h in the pipeline's past; a cursor taken from the local clock (or a
    `since = now() - lookback`) would skip them. Checkpoints must be source values."""
    faketime = require_tool("faketime", "faketime")
    seed_pg(pg_dsn, 1_000)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE sales SET updated_at = now() - (3000 - sale_id) * interval '1 ms'")
    api_db = tmp_path / "api.db"
    create_api_db(api_db, 600, seed=3)
    with FlakyApiServer(api_db) as api:
        sources = [
            {**sql_source("pg", "postgres", pg_dsn, page_size=300), "tables": [
                {"name": "sales", "contract": "sales", "page_size": 300, "lookback": "1m",
                 "warehouse_filter": {"store_id": 1}}]},
            {"name": "api", "kind": "http", "url": api.url, "tables": [
                {"name": "sales", "contract": "sales", "endpoint": "/v1/sales",
                 "page_size": 250, "lookback": "1m", "warehouse_filter": {"store_id": 900}}]}]
        cfg = write_pipeline(tmp_path, sources)

        def run_skewed() -> dict[str, Any]:
            proc = subprocess.run(
                [faketime, "-f", "+2h", sys.executable, "-m", "steadyflow", "run", "-c",
                 str(cfg), "--json"], capture_output=True, text=True, timeout=90)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return json.loads(proc.stdout)  # type: ignore[no-any-return]

        probe = subprocess.run([faketime, "-f", "+2h", sys.executable, "-c",
                                "import time; print(time.time())"],
                               capture_output=True, text=True, check=True)
        assert float(probe.stdout) - time.time() > 7_000  # the skew is really in effect
        first = run_skewed()
        # every row; the PostgreSQL table's whole 1 s of cursor values is inside the lookback
        # window, so the cursor pass after its key-order load reads it again
        assert first["extracted_rows"] >= 1_600
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE sales SET qty = qty + 1, updated_at = now() "
                         "WHERE sale_id % 10 = 0")
            conn.execute("INSERT INTO sales SELECT store_id, sale_id + 5000, sku, qty, "
                         "unit_price, currency, sold_at, now() FROM sales WHERE sale_id <= 50")
        mutate(api_db, inserts=40, updates=25)
        second = run_skewed()
        assert second["loaded_rows"] >= 100 + 50 + 40 + 25
        config = load_config(cfg)
        with duckdb.connect(str(config.resolve("warehouse.duckdb")), read_only=True) as con:
            wh = con.sql("SELECT * FROM main.sales").to_arrow_table()
        state_db = config.resolve(config.state_dir) / "state.db"
    truth_sources = [
        sql_source("pg", "postgres", pg_dsn),
        {"name": "api", "kind": "sqlite", "path": str(api_db),
         "sqlite_timestamp_format": "%Y-%m-%dT%H:%M:%S.%fZ",
         "tables": [{"name": "sales", "contract": "sales",
                     "warehouse_filter": {"store_id": 900}}]}]
    cmp = compare_target(truth(truth_sources), "sales", wh)
    assert cmp.expected_rows == 1_000 + 50 + 640
    assert (cmp.missing, cmp.extra, cmp.duplicates, cmp.mismatched) == (0, 0, 0, 0), cmp
    state = SqliteStateStore(state_db)
    try:
        real_now = datetime.now(UTC)
        for source in ("pg", "api"):
            mark = state.checkpoint(source, "sales")
            assert mark is not None and isinstance(mark.cursor, datetime)
            # a source value (<= the sources' real now), not the pipeline's skewed clock
            assert mark.cursor <= real_now, (source, mark)
    finally:
        state.close()


# --- cheap extraction queries ------------------------------------------------------------------
def _pg_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _pg_nodes(child)


def _page_queries(source: SqlSource, table: str, contract: Any, mid: Watermark
                  ) -> list[tuple[str, list[Any]]]:
    source.probe(table, contract)  # finds the keyset index (MariaDB pins it)
    return [source.page_query(table, contract, None, None, 5_000),  # first page of a full load
            source.page_query(table, contract, mid, None, 5_000),  # a keyset page
            source.page_query(table, contract, None, mid.cursor, 5_000)]  # a lookback re-read


def test_keyset_page_queries_use_the_cursor_index(pg_dsn: str, mysql_dsn: str) -> None:
    """EXPLAIN each kind of page query: one range scan of the (cursor, key) index in index
    order; no full scan, no sort. The control (index dropped) shows the check can fail."""
    seed_pg(pg_dsn, 30_000)
    seed_mysql(mysql_dsn, 30_000)
    config = truth([sql_source("pg", "postgres", pg_dsn), sql_source("my", "mysql", mysql_dsn)])
    contract = config.contract_of(config.sources[0].tables[0])
    mid = Watermark(datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), (1, 4_000))

    def pg_plans(source: SqlSource) -> list[list[dict[str, Any]]]:
        plans = []
        for query, params in _page_queries(source, "sales", contract, mid):
            rows = source._execute("sales", "EXPLAIN (FORMAT JSON) " + query, params)
            plans.append(list(_pg_nodes(rows[0][0][0]["Plan"])))
        return plans

    pg = SqlSource(config.sources[0])
    try:
        for nodes in pg_plans(pg):
            types = [n["Node Type"] for n in nodes]
            assert "Seq Scan" not in types and "Sort" not in types, types
            assert any(n.get("Index Name") == "sales_cursor" for n in nodes), nodes
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # control: no index
            conn.execute("DROP INDEX sales_cursor")
        assert any("Sort" in [n["Node Type"] for n in nodes] for nodes in pg_plans(pg))
    finally:
        pg.close()

    my = SqlSource(config.sources[1])
    try:
        for query, params in _page_queries(my, "sales", contract, mid):
            rows = my._execute("sales", "EXPLAIN FORMAT=JSON " + query, params)
            text = rows[0][0]
            plan = json.loads(text)["query_block"]
            table = (plan.get("nested_loop") or [plan])[0]["table"]
            assert table["key"] == "sales_cursor", text
            assert table["access_type"] in ("range", "index"), text
            assert "filesort" not in text and "ALL" != table["access_type"], text
    finally:
        my.close()
