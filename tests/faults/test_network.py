"""Network faults between steadyflow and real PostgreSQL / MariaDB, through a FaultProxy.

Each test ends with the warehouse equal to the sources row for row (`compare_target`:
missing == extra == duplicates == mismatched == 0), and checks the mechanism that got it
there (retries, timeouts, breaker, backpressure) in the metrics, so a run that merely got
lucky would not pass:

- a connection reset in the middle of a page is retried on a new connection;
- a link cut for 8 s (30 s in the issue; shortened to keep CI time) is waited out;
- added latency plus a bandwidth cap: slow pages shrink, the run still completes;
- a black-holed connection (data vanishes, nothing is reset) cannot hang a query: the
  client-side watchdog (PostgreSQL) / read timeout (MariaDB) ends it at
  statement_timeout + grace;
- a dead store and a slow store delay only themselves; the dead store's breaker opens,
  and closes when the store returns;
- the PostgreSQL warehouse down for 10 s: extraction fills landing + buffer until
  backpressure holds it, loading resumes by itself, nothing is lost;
- follow mode keeps source connections between cycles; when they die between two cycles,
  the next cycle reconnects and catches up.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow as pa
import pymysql
import pytest
from tests.conftest import write_pipeline
from tests.support.faultproxy import FaultProxy

from steadyflow.config import ResilienceConfig, SourceConfig, load_config
from steadyflow.errors import SourceTimeout, SteadyflowError
from steadyflow.extract.sql import SqlSource
from steadyflow.model import Watermark
from steadyflow.reconcile.compare import compare_target
from steadyflow.run.extract import TableExtractor
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]

FAST: dict[str, Any] = {"connect_timeout": 2, "statement_timeout": 2, "retries": 8,
                        "backoff_initial": 0.05, "backoff_max": 0.5, "breaker_failures": 20,
                        "breaker_reset": 1}


# --- helpers shared with test_resilience_faults.py ----------------------------------------
def seed_pg(dsn: str, rows: int, store_id: int = 1, table: str = "sales",
            start: int = 1) -> None:
    """A sales table with the (cursor, key) index, ties on the cursor (4 rows per value)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"""CREATE TABLE IF NOT EXISTS {table} (
            store_id bigint NOT NULL, sale_id bigint NOT NULL, sku text NOT NULL, qty bigint,
            unit_price numeric(12,2), currency text, sold_at timestamptz,
            updated_at timestamptz NOT NULL, PRIMARY KEY (store_id, sale_id))""")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_cursor "
                     f"ON {table} (updated_at, store_id, sale_id)")
        conn.execute(f"""INSERT INTO {table}
            SELECT {store_id}, g, 'SKU-' || g, 1 + g % 7, (g % 1000) / 8.0,
                   (ARRAY['USD','EUR','GBP'])[1 + g % 3], ts, ts
            FROM generate_series({start}, {start + rows - 1}) g,
                 LATERAL (SELECT timestamptz '2026-01-01 00:00:00+00'
                          + (g / 4) * interval '1 millisecond' AS ts) t""")
        conn.execute(f"ANALYZE {table}")


def seed_mysql(dsn: str, rows: int, store_id: int = 2, table: str = "sales",
               start: int = 1) -> None:
    with mysql_connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"""CREATE TABLE IF NOT EXISTS {table} (
            store_id BIGINT NOT NULL, sale_id BIGINT NOT NULL, sku VARCHAR(40) NOT NULL,
            qty BIGINT, unit_price DECIMAL(12,2), currency VARCHAR(3), sold_at DATETIME(6),
            updated_at DATETIME(6) NOT NULL, PRIMARY KEY (store_id, sale_id),
            KEY {table}_cursor (updated_at, store_id, sale_id))""")
        cur.execute(f"""INSERT INTO {table}
            SELECT {store_id}, seq, CONCAT('SKU-', seq), 1 + seq % 7, (seq % 1000) / 8,
                   ELT(1 + seq % 3, 'USD', 'EUR', 'GBP'), ts, ts
            FROM (SELECT seq, TIMESTAMP'2026-01-01 00:00:00'
                         + INTERVAL (seq DIV 4) * 1000 MICROSECOND AS ts
                  FROM seq_{start}_to_{start + rows - 1}) x""")
        cur.execute(f"ANALYZE TABLE {table}")
        cur.fetchall()


def mysql_connect(dsn: str) -> pymysql.connections.Connection[Any]:
    parts = urlsplit(dsn)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                           user=parts.username or "root", password=parts.password or "",
                           database=parts.path.lstrip("/"), autocommit=True)


def via(dsn: str, proxy: FaultProxy) -> str:
    """The same DSN, through the proxy."""
    parts = urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{proxy.address}"))


def sql_source(name: str, kind: str, dsn: str, table: str = "sales", page_size: int = 1_000,
               store_id: int | None = None, **resilience: Any) -> dict[str, Any]:
    """`store_id`: the rows its table owns in the target (default: seed_pg's and
    seed_mysql's), so stores sharing a target each name theirs."""
    store = store_id if store_id is not None else {"postgres": 1, "mysql": 2}[kind]
    return {"name": name, "kind": kind, "dsn": dsn, "resilience": {**FAST, **resilience},
            "tables": [{"name": table, "target": "sales", "contract": "sales",
                        "page_size": page_size, "min_page_size": 50,
                        "warehouse_filter": {"store_id": store}}]}


def open_pipeline(tmp_path: Path, sources: list[dict[str, Any]], **extra: Any) -> Pipeline:
    return Pipeline(load_config(write_pipeline(tmp_path, sources, **extra)))


def warehouse_rows(pipeline: Pipeline, target: str = "sales") -> pa.Table:
    schema = pipeline.config.warehouse.schema_
    with warnings.catch_warnings():  # DuckDB warns that DB-API → Arrow makes a copy
        warnings.simplefilter("ignore", UserWarning)
        return pipeline.warehouse.query(  # type: ignore[attr-defined,no-any-return]
            f'SELECT * FROM "{schema}"."{target}"')


def assert_warehouse_equals_sources(pipeline: Pipeline, min_rows: int = 1) -> None:
    cmp = compare_target(pipeline.config, "sales", warehouse_rows(pipeline))
    assert cmp.expected_rows >= min_rows, cmp
    assert (cmp.missing, cmp.extra, cmp.duplicates, cmp.mismatched) == (0, 0, 0, 0), cmp


def metric(pipeline: Pipeline, name: str, **labels: str) -> float:
    return pipeline.metrics.value(name, **labels) or 0.0


def on_checkpoint(pipeline: Pipeline, nth: int, action: Callable[[], None],
                  source: str | None = None) -> None:
    """Run `action` right after the nth move of a read position (the checkpoint, or an
    initial load's key position) of `source`, or of any source: a deterministic 'mid-run',
    with the source's connection open."""
    calls = [0]

    def hook(name: str) -> None:
        original = getattr(pipeline.state, name)

        def hooked(src: str, *args: Any, **kwargs: Any) -> None:
            original(src, *args, **kwargs)
            if source is None or src == source:
                calls[0] += 1
                if calls[0] == nth:
                    action()

        setattr(pipeline.state, name, hooked)

    hook("advance_checkpoint")
    hook("advance_backfill")


def position(pipeline: Pipeline, source: str, table: str = "sales") -> Watermark | None:
    """Where the next run starts reading: the checkpoint, else an unfinished initial load's
    key position."""
    mark = pipeline.state.checkpoint(source, table)
    started = pipeline.state.backfill(source, table)
    return mark if started is None else started[1]


@pytest.fixture
def pg_proxy() -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", 5432) as proxy:
        yield proxy


@pytest.fixture
def my_proxy() -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", 3306) as proxy:
        yield proxy


# --- tests ----------------------------------------------------------------------------------
def test_connection_reset_mid_page_is_retried(
        tmp_path: Path, pg_dsn: str, mysql_dsn: str, pg_proxy: FaultProxy,
        my_proxy: FaultProxy) -> None:
    seed_pg(pg_dsn, 8_000)
    seed_mysql(mysql_dsn, 8_000)
    pg_proxy.reset_after(100_000)  # a 2 000-row page is ~150 kB: cut in the middle of one
    my_proxy.reset_after(100_000)
    with open_pipeline(tmp_path, [
            sql_source("pg", "postgres", via(pg_dsn, pg_proxy), page_size=2_000),
            sql_source("my", "mysql", via(mysql_dsn, my_proxy), page_size=2_000)]) as pipeline:
        original = pipeline.metrics.retry
        seen: dict[str, int] = {"pg": 0, "my": 0}

        def heal_after_two(source: str, reason: Any) -> None:
            original(source, reason)
            seen[source] += 1
            if seen[source] == 2:  # two resets mid-page per source, then the link heals
                (pg_proxy if source == "pg" else my_proxy).reset_after(None)

        pipeline.metrics.retry = heal_after_two  # type: ignore[method-assign]
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        for source in ("pg", "my"):
            assert metric(pipeline, "steadyflow_retries_total", source=source,
                          reason="connection") >= 2
        assert_warehouse_equals_sources(pipeline, 16_000)


def test_follow_cycles_reuse_connections_and_reconnect_after_they_die(
        tmp_path: Path, pg_dsn: str, mysql_dsn: str, pg_proxy: FaultProxy,
        my_proxy: FaultProxy) -> None:
    seed_pg(pg_dsn, 3_000)
    seed_mysql(mysql_dsn, 3_000)
    with open_pipeline(tmp_path, [
            sql_source("pg", "postgres", via(pg_dsn, pg_proxy)),
            sql_source("my", "mysql", via(mysql_dsn, my_proxy))]) as pipeline:
        assert pipeline.run_once().ok
        pg_before, my_before = pg_proxy.connections_total, my_proxy.connections_total
        seed_pg(pg_dsn, 500, start=3_001)
        seed_mysql(mysql_dsn, 500, start=3_001)
        second = pipeline.run_once()
        assert second.ok, second.errors
        assert second.extracted_rows >= 1_000
        # kept: MariaDB's one connection, and PostgreSQL's: through this in-process proxy
        # ADBC cannot tell its socket from the proxy's, so pages take the psycopg path, and
        # the probe and the pass's end position then share that connection instead of
        # closing it (a cycle opened one or two connections before)
        assert my_proxy.connections_total == my_before
        assert pg_proxy.connections_total == pg_before

        pg_proxy.reset_all()  # both stores drop every connection between two cycles
        my_proxy.reset_all()
        seed_pg(pg_dsn, 500, start=3_501)
        seed_mysql(mysql_dsn, 500, start=3_501)
        third = pipeline.run_once()
        assert third.ok, third.errors
        assert my_proxy.connections_total > my_before
        assert pg_proxy.connections_total > pg_before  # reconnected after the reset
        assert metric(pipeline, "steadyflow_retries_total", source="my",
                      reason="connection") >= 1
        assert_warehouse_equals_sources(pipeline, 8_000)


def test_link_cut_for_a_while_then_restored(
        tmp_path: Path, pg_dsn: str, mysql_dsn: str, pg_proxy: FaultProxy,
        my_proxy: FaultProxy) -> None:
    """The issue says 30 s; 8 s exercises the same path (breaker, backoff) in CI time."""
    outage = 8.0
    seed_pg(pg_dsn, 6_000)
    seed_mysql(mysql_dsn, 6_000)
    patient = {"retries": 40, "backoff_max": 1.0, "breaker_failures": 3, "breaker_reset": 1}
    with open_pipeline(tmp_path, [
            sql_source("pg", "postgres", via(pg_dsn, pg_proxy), **patient),
            sql_source("my", "mysql", via(mysql_dsn, my_proxy), **patient)]) as pipeline:
        cut_at: list[float] = []

        def cut() -> None:
            pg_proxy.cut()
            my_proxy.cut()
            cut_at.append(time.monotonic())
            threading.Timer(outage, lambda: (pg_proxy.restore(), my_proxy.restore())).start()

        on_checkpoint(pipeline, 2, cut)  # mid-run: after two pages have landed
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        assert cut_at and time.monotonic() - cut_at[0] >= outage
        for source in ("pg", "my"):
            assert metric(pipeline, "steadyflow_retries_total", source=source,
                          reason="connection") >= 2
            assert metric(pipeline, "steadyflow_breaker_opened_total", source=source) >= 1
            assert metric(pipeline, "steadyflow_breaker_state", source=source) == 0  # closed
        assert_warehouse_equals_sources(pipeline, 12_000)


def test_latency_and_bandwidth_cap(
        tmp_path: Path, pg_dsn: str, mysql_dsn: str, pg_proxy: FaultProxy,
        my_proxy: FaultProxy) -> None:
    seed_pg(pg_dsn, 4_000)
    seed_mysql(mysql_dsn, 4_000)
    bandwidth = 150_000
    for proxy in (pg_proxy, my_proxy):
        proxy.set_latency(0.03, jitter=0.01)
        proxy.set_bandwidth(bandwidth)
    with open_pipeline(tmp_path, [
            sql_source("pg", "postgres", via(pg_dsn, pg_proxy), page_size=3_000,
                       statement_timeout=4),
            sql_source("my", "mysql", via(mysql_dsn, my_proxy), page_size=3_000,
                       statement_timeout=4)]) as pipeline:
        sizes: list[tuple[str, int]] = []
        original = pipeline.metrics.page_size

        def record(source: str, table: str, rows: int) -> None:
            sizes.append((source, rows))
            original(source, table, rows)

        pipeline.metrics.page_size = record  # type: ignore[method-assign]
        started = time.monotonic()
        summary = pipeline.run_once()
        elapsed = time.monotonic() - started
        assert summary.ok, summary.errors
        # the cap was really in force: each proxy moved its bytes no faster than it allows
        for proxy in (pg_proxy, my_proxy):
            assert proxy.bytes_down > 300_000
            assert elapsed >= proxy.bytes_down / bandwidth * 0.9
        # pages slower than statement_timeout/4 (1 s) were shrunk, none below the minimum
        assert any(rows < 3_000 for _, rows in sizes), sizes
        assert all(rows >= 50 for _, rows in sizes)
        for proxy in (pg_proxy, my_proxy):
            proxy.clear()  # the comparison reads the sources through the proxies too
        assert_warehouse_equals_sources(pipeline, 8_000)


def test_blackholed_connection_cannot_hang_a_query(
        tmp_path: Path, pg_dsn: str, mysql_dsn: str, pg_proxy: FaultProxy,
        my_proxy: FaultProxy) -> None:
    """A black hole ACKs nothing back and resets nothing: keepalives and tcp_user_timeout
    never fire through a proxy whose kernel ACKs, so only a client-side bound ends the wait."""
    seed_pg(pg_dsn, 5_000)
    seed_mysql(mysql_dsn, 5_000)
    hole = 5.0
    with open_pipeline(tmp_path, [
            sql_source("pg", "postgres", via(pg_dsn, pg_proxy), statement_timeout=1),
            sql_source("my", "mysql", via(mysql_dsn, my_proxy), statement_timeout=1)],
            run={"max_parallel_sources": 2}) as pipeline:
        def blackhole(proxy: FaultProxy) -> Callable[[], None]:
            def start() -> None:  # right after a page: the source's connection is open
                proxy.blackhole(True)
                threading.Timer(hole, proxy.blackhole, args=(False,)).start()
            return start

        on_checkpoint(pipeline, 1, blackhole(pg_proxy), source="pg")
        on_checkpoint(pipeline, 1, blackhole(my_proxy), source="my")
        result: list[Any] = []
        # in a thread: without a client-side bound the driver blocks in C, where even
        # pytest-timeout's signal cannot reach it; here the test fails instead of hanging
        worker = threading.Thread(target=lambda: result.append(pipeline.run_once()),
                                  daemon=True)
        worker.start()
        worker.join(hole + 20)
        assert not worker.is_alive(), "a query on a black-holed connection hung"
        summary = result[0]
        assert summary.ok, summary.errors
        # PostgreSQL: the watchdog shut the silent socket (a timeout), MariaDB: read timeout
        assert metric(pipeline, "steadyflow_timeouts_total", source="pg") >= 1
        assert metric(pipeline, "steadyflow_retries_total", source="my",
                      reason="connection") + metric(pipeline, "steadyflow_timeouts_total",
                                                    source="my") >= 1
        assert_warehouse_equals_sources(pipeline, 10_000)


# each way SqlSource reads through its own driver (psycopg here): one query, a query read
# in batches (SQLite key spellings), a script of statements in one round trip (a poll's end)
READS: dict[str, Callable[[SqlSource], object]] = {
    "query": lambda db: db._execute("t", "SELECT count(*) FROM t", []),
    "batches": lambda db: list(db._batches("t", "SELECT id FROM t", size=2)),
    "script": lambda db: db._script("t", ["BEGIN", "SELECT count(*) FROM t", "COMMIT"]),
}


def pg_source(dsn: str, **resilience: Any) -> SqlSource:
    return SqlSource(SourceConfig(
        name="pg", kind="postgres", dsn=dsn, tables=[{"name": "t", "contract": "c"}],
        resilience=ResilienceConfig(retries=0, **resilience)))


@pytest.mark.parametrize("read", sorted(READS))
def test_a_driver_read_on_a_blackholed_link_ends_at_the_client_watchdog(
        pg_dsn: str, pg_proxy: FaultProxy, read: str) -> None:
    """A psycopg read (the probe's, the reconciler's and every page ADBC does not read)
    whose answer never arrives fails as a timeout at statement_timeout + grace (1 + 1 s),
    naming the watchdog, and drops the connection; without the watchdog it waited for
    ever (the test's thread is left blocked and the test fails)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT generate_series(1, 5) AS id")
    db = pg_source(via(pg_dsn, pg_proxy), statement_timeout=1)
    try:
        READS[read](db)  # the connection is open and works
        pg_proxy.blackhole(True)
        failed: list[BaseException] = []

        def attempt() -> None:
            try:
                READS[read](db)
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                failed.append(exc)

        start = time.monotonic()
        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(15)
        assert not worker.is_alive(), f"a {read} on a black-holed connection hung"
        assert time.monotonic() - start < 10
        assert len(failed) == 1 and isinstance(failed[0], SourceTimeout), failed
        assert "client watchdog" in str(failed[0]) and db._conn is None
    finally:
        pg_proxy.blackhole(False)
        db.close()


def test_a_failed_script_drops_its_connection_a_failed_query_keeps_it(pg_dsn: str) -> None:
    """A script that fails may leave its transaction block open on the connection, so the
    connection is dropped; a single failed query (autocommit) leaves it usable."""
    db = pg_source(pg_dsn)
    try:
        with pytest.raises(SteadyflowError, match="division by zero"):
            db._execute("t", "SELECT 1 / 0", [])
        assert db._conn is not None
        with pytest.raises(SteadyflowError, match="division by zero"):
            db._script("t", ["BEGIN", "SELECT 1 / 0", "COMMIT"])
        assert db._conn is None
    finally:
        db.close()


def test_dead_and_slow_stores_delay_only_themselves_breaker_opens_and_closes(
        tmp_path: Path, pg_dsn: str, pg_proxy: FaultProxy,
        caplog: pytest.LogCaptureFixture) -> None:
    for i in range(1, 6):
        seed_pg(pg_dsn, 3_000, store_id=i, table=f"sales_{i}")
    with FaultProxy("127.0.0.1", 5432) as slow_proxy:
        slow_proxy.set_latency(0.1)
        pg_proxy.cut()  # store 1 is dead: every connection is reset
        dead = sql_source("store1", "postgres", via(pg_dsn, pg_proxy), table="sales_1",
                          store_id=1, retries=6, backoff_initial=0.3, backoff_max=1.0,
                          breaker_failures=2, breaker_reset=1.5)
        slow = sql_source("store2", "postgres", via(pg_dsn, slow_proxy), table="sales_2",
                          store_id=2)
        healthy = [sql_source(f"store{i}", "postgres", pg_dsn, table=f"sales_{i}",
                              store_id=i) for i in range(3, 6)]
        with open_pipeline(tmp_path, [dead, slow, *healthy],
                           run={"max_parallel_sources": 3}) as pipeline:
            lock, active, peak = threading.Lock(), [0], [0]
            original_run = TableExtractor.run

            def counted(self: TableExtractor, *args: Any, **kwargs: Any) -> Any:
                with lock:
                    active[0] += 1
                    peak[0] = max(peak[0], active[0])
                try:
                    return original_run(self, *args, **kwargs)
                finally:
                    with lock:
                        active[0] -= 1

            TableExtractor.run = counted  # type: ignore[method-assign]
            try:
                started = time.time()
                first = pipeline.run_once(raise_on_error=False)
                took = time.time() - started
            finally:
                TableExtractor.run = original_run  # type: ignore[method-assign]
            assert peak[0] == 3  # concurrent, and never above the global limit
            assert len(first.errors) == 1 and "store1" in first.errors[0]
            health = {h.source: h for h in pipeline.state.health()}
            assert "store1" not in health or health["store1"].rows_loaded == 0
            # the healthy stores were loaded long before the dead one gave up, though
            # the dead and the slow store each held one of the 3 extraction workers
            for i in range(3, 6):
                h = health[f"store{i}"]
                assert h.rows_loaded == 3_000
                assert h.last_success is not None and h.last_success - started < took / 2, (
                    h.last_success - started, took)
            assert health["store2"].rows_loaded == 3_000
            assert metric(pipeline, "steadyflow_breaker_opened_total", source="store1") >= 1
            assert metric(pipeline, "steadyflow_breaker_state", source="store1") >= 1
            assert metric(pipeline, "steadyflow_breaker_opened_total", source="store3") == 0

            pg_proxy.restore()  # the store comes back; after breaker_reset a probe closes it
            time.sleep(1.6)
            slow_proxy.set_latency(0)  # and the slow one is fast again: only store1 matters
            second = pipeline.run_once()
            assert second.ok, second.errors
            assert metric(pipeline, "steadyflow_breaker_state", source="store1") == 0
            assert {h.breaker for h in pipeline.state.health() if h.source == "store1"} == {
                "closed"}
            transitions = [r.getMessage() for r in caplog.records
                           if getattr(r, "source", None) == "store1"
                           and r.getMessage().startswith("circuit breaker")]
            assert transitions[0] == "circuit breaker open", transitions
            assert transitions[-2:] == ["circuit breaker half-open", "circuit breaker closed"]
            assert_warehouse_equals_sources(pipeline, 15_000)


def test_warehouse_down_for_6s_backpressure_then_resume(
        tmp_path: Path, pg_dsn: str, pg_proxy: FaultProxy) -> None:
    """6 s (was 10 s): the loader's retries of the first batch (1, 2, 4 s apart) still
    straddle the outage, the buffer is full well before it is observed (at 4 s), and the
    load resumes at the retry 7 s in instead of 15 s in."""
    seed_pg(pg_dsn, 6_000)
    capacity, outage = 2, 6.0
    warehouse = {"kind": "postgres", "dsn": via(pg_dsn, pg_proxy), "schema": "wh"}
    with open_pipeline(tmp_path, [sql_source("pg", "postgres", pg_dsn, page_size=500)],
                       warehouse=warehouse, buffer={"capacity": capacity}) as pipeline:
        # the process asks the warehouse once before its first extraction number
        # (StateStore.floor_seq); then it is down, from the run's start
        pipeline.state.floor_seq()
        pg_proxy.cut()
        during: dict[str, Any] = {}

        def observe_then_restore() -> None:
            time.sleep(outage - 2)
            during["landed"] = len(pipeline.state.batches("pg", "sales"))
            during["depth"] = pipeline.buffer.depth()
            during["loaded"] = sum(1 for b in pipeline.state.batches("pg", "sales")
                                   if b["status"] == "loaded")
            time.sleep(2)
            pg_proxy.restore()

        restorer = threading.Thread(target=observe_then_restore)
        restorer.start()
        started = time.monotonic()
        summary = pipeline.run_once()
        restorer.join()
        assert summary.ok, summary.errors
        assert time.monotonic() - started >= outage
        # backpressure: extraction went on into landing + buffer until the buffer was full,
        # then waited (one more page landed and blocked on put), it did not run ahead
        assert during == {"landed": capacity + 1, "depth": capacity, "loaded": 0}, during
        assert summary.loaded_rows == 6_000
        assert all(b["status"] == "loaded" for b in pipeline.state.batches("pg", "sales"))
        assert_warehouse_equals_sources(pipeline, 6_000)
