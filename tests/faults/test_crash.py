"""Crash tests for the core pipeline: a real SIGKILL at every stage boundary, and at random.

Each test runs the real CLI in a child process, kills it (a named failpoint, or a plain
SIGKILL at a random moment), restarts it, and then proves that nothing was lost, doubled
or left half-done:

- the warehouse equals the source row for row (`compare_target`), and independently its
  row count and an order-independent content checksum equal those of the source rows that
  are not malformed (computed here straight from the store files, without the validator);
- every batch id is in the ledger once, and the ledger and the manifest agree;
- the quarantine holds exactly the malformed rows;
- every file in the landing zone is a whole Parquet file; no temp file survives the rerun;
- a restart resumes from its checkpoint instead of starting over.

A late UPDATE stamped older than the version already loaded must reach the warehouse too.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.conftest import steadyflow, write_pipeline
from tests.support.gen import Col, Table
from tests.support.jetstream import NATS_URL, fresh_stream
from tests.support.oracle import diff, read_source, read_warehouse

from steadyflow.config import PipelineConfig, load_config
from steadyflow.demo.stores import (
    COLUMNS,
    MALFORMED_RULES,
    TS_FORMAT,
    StoreWriter,
    count_malformed,
    create_stores,
    format_ts,
)
from steadyflow.failpoints import POINTS
from steadyflow.land.parquet import TEMP_PREFIX
from steadyflow.reconcile.compare import compare_target

pytestmark = pytest.mark.faults

ROWS_PER_STORE = 6_000
PAGE_SIZE = 1_000
TARGET = "sales"
LEDGER = "_steadyflow_ledger"
IS_MALFORMED = " OR ".join(f"coalesce({pred}, 0)" for _, _, pred in MALFORMED_RULES.values())
Row = tuple[Any, ...]
ALONE = {"kind": "duckdb", "path": "warehouse.duckdb", "group_batches": 1}


# --- setup -------------------------------------------------------------------------------
def sources(paths: list[Path], page_size: int = PAGE_SIZE, **table: Any
            ) -> list[dict[str, Any]]:
    """One source per store of create_stores (store_id 1, 2, ... in order), each owning
    its store's rows of the shared target."""
    return [{"name": p.stem, "kind": "sqlite", "path": str(p),
             "tables": [{"name": "sales", "contract": "sales", "lookback": "15s",
                         "page_size": page_size, "warehouse_filter": {"store_id": store},
                         **table}]} for store, p in enumerate(paths, start=1)]


def crash(cfg: Path, spec: str) -> None:
    """Run the pipeline with failpoint `spec` armed; it must die by SIGKILL there."""
    proc = steadyflow("run", "-c", str(cfg), env={"STEADYFLOW_FAILPOINT": spec})
    assert proc.returncode == -signal.SIGKILL, (
        f"expected SIGKILL at {spec}, got {proc.returncode}\n{proc.stdout}\n{proc.stderr}")


def catch_up(cfg: Path) -> dict[str, Any]:
    """Run without failpoints until caught up; it must succeed. Returns its JSON summary."""
    proc = steadyflow("run", "-c", str(cfg), "--json", env={"STEADYFLOW_FAILPOINT": ""})
    assert proc.returncode == 0, f"rerun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["errors"] == []
    return summary


def state_rows(directory: Path, sql: str) -> list[Row]:
    with closing(sqlite3.connect(directory / "state" / "state.db", timeout=30)) as db:
        return db.execute(sql).fetchall()


def checkpoints(directory: Path) -> dict[tuple[str, str], str]:
    return {(s, t): w for s, t, w in state_rows(
        directory, "SELECT source, tbl, watermark FROM checkpoints")}


def positions(directory: Path) -> dict[tuple[str, str], str]:
    """Every recorded read position: checkpoints, and the key position of an initial load
    (run/extract.py: TableExtractor.backfill) not finished yet."""
    return {**checkpoints(directory), **{(s, t): a for s, t, a in state_rows(
        directory, "SELECT source, tbl, after FROM backfills WHERE after IS NOT NULL")}}


# --- reading the warehouse ------------------------------------------------------------------
def duckdb_tables(directory: Path) -> tuple[pa.Table, list[Row]]:
    """(warehouse rows, ledger (batch_id, rows)) of the DuckDB warehouse; no process holds it."""
    con = duckdb.connect(str(directory / "warehouse.duckdb"), read_only=True)
    try:
        rows = con.sql(f'SELECT * FROM main."{TARGET}"').to_arrow_table()
        ledger = con.execute(f'SELECT batch_id, "rows" FROM main."{LEDGER}"').fetchall()
    finally:
        con.close()
    return rows, ledger


def postgres_tables(dsn: str, config: PipelineConfig, schema: str = "wh"
                    ) -> tuple[pa.Table, list[Row]]:
    contract = config.contract_of(config.sources[0].tables[0])
    with psycopg.connect(dsn, options="-c TimeZone=UTC") as conn:
        data = conn.execute(f"SELECT {', '.join(contract.names)} FROM {schema}.{TARGET}"
                            ).fetchall()
        ledger = conn.execute(f"SELECT batch_id, rows FROM {schema}.{LEDGER}").fetchall()
    columns = list(zip(*data, strict=True)) if data else [[] for _ in contract.names]
    rows = pa.table([pa.array(list(c), f.type) for c, f in zip(columns, contract.schema,
                                                              strict=True)],
                    schema=contract.schema)
    return rows, ledger


# --- independent expectations ------------------------------------------------------------
def _canonical(row: Row) -> bytes:
    """One spelling per row whatever it was read from: SQLite text or warehouse types."""
    store_id, sale_id, sku, qty, price, currency, sold_at, updated_at = row
    stamps = [v if isinstance(v, str) or v is None else v.astimezone(UTC).strftime(TS_FORMAT)
              for v in (sold_at, updated_at)]
    fields = [int(store_id), int(sale_id), sku, int(qty),
              str(Decimal(str(price)).quantize(Decimal("0.01"))), currency, *stamps]
    return repr(fields).encode()


def digest(rows: list[Row]) -> tuple[int, int]:
    """(count, order-independent checksum): a sum of row hashes, so duplicates count."""
    total = 0
    for row in rows:
        total += int.from_bytes(hashlib.blake2b(_canonical(row), digest_size=8).digest(), "big")
    return len(rows), total % 2**64


def source_good_rows(paths: list[Path]) -> list[Row]:
    """Source rows that are not malformed, by the demo's own predicates (not the validator)."""
    out: list[Row] = []
    for path in paths:
        with closing(sqlite3.connect(path, timeout=30)) as db:
            out += db.execute(f"SELECT {', '.join(COLUMNS)} FROM sales "
                              f"WHERE NOT ({IS_MALFORMED})").fetchall()
    return out


def source_malformed_keys(paths: list[Path]) -> set[tuple[int, int]]:
    keys: set[tuple[int, int]] = set()
    for path in paths:
        with closing(sqlite3.connect(path, timeout=30)) as db:
            keys |= set(db.execute(f"SELECT store_id, sale_id FROM sales WHERE {IS_MALFORMED}"
                                   ).fetchall())
    return keys


def warehouse_rows(rows: pa.Table) -> list[Row]:
    table = rows.select(list(COLUMNS))
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True))


# --- the verdict ----------------------------------------------------------------------------
def assert_equal(config: PipelineConfig, paths: list[Path], rows: pa.Table) -> None:
    """Warehouse == source, row for row, by two independent comparisons."""
    c = compare_target(config, TARGET, rows)
    assert (c.missing, c.extra, c.duplicates, c.mismatched) == (0, 0, 0, 0), (
        f"warehouse differs from source: {c}")
    assert c.warehouse_rows == c.expected_rows > 0
    expected = digest(source_good_rows(paths))
    actual = digest(warehouse_rows(rows))
    assert actual[0] == expected[0], f"count: warehouse {actual[0]} != source {expected[0]}"
    assert actual == expected, "content checksum of warehouse != source"


def assert_ledger(directory: Path, ledger: list[Row]) -> None:
    """Each batch id once in the ledger; the ledger and the manifest name the same batches."""
    dupes = [b for b, n in Counter(b for b, _ in ledger).items() if n > 1]
    assert not dupes, f"batch ids in the ledger more than once: {dupes}"
    manifest = dict(state_rows(directory, "SELECT batch_id, status FROM manifest"))
    assert {b for b, _ in ledger} == set(manifest), "ledger and manifest disagree"
    pending = {b: s for b, s in manifest.items() if s not in ("loaded", "duplicate")}
    assert not pending, f"manifest entries never loaded: {pending}"


def assert_counts(directory: Path, paths: list[Path]) -> None:
    """The table health an operator reads counts what reached the warehouse: on a source
    without updates each good row changed the warehouse once (a re-read of an equal row
    changes nothing), and each malformed row was quarantined once. A kill between the
    warehouse commit and the manifest mark must not lose a batch's counts."""
    changed, quarantined = state_rows(
        directory, "SELECT sum(rows_changed), sum(rows_quarantined) FROM table_health")[0]
    assert changed == len(source_good_rows(paths)), "table health: rows changed"
    assert quarantined == sum(count_malformed(paths).values()), "table health: quarantined"


def quarantined_keys(directory: Path) -> list[tuple[int, int]]:
    landing = directory / "landing"
    indexed = state_rows(directory, "SELECT path, rows FROM quarantine")
    keys: list[tuple[int, int]] = []
    for path, count in indexed:
        parked = pq.read_table(landing / path, columns=["store_id", "sale_id"])
        assert parked.num_rows == count, f"quarantine index says {count} rows, {path} has more"
        keys += [(int(s), int(i)) for s, i in zip(parked["store_id"].to_pylist(),
                                                   parked["sale_id"].to_pylist(), strict=True)]
    files = {str(p.relative_to(landing)) for p in (landing / "_quarantine").rglob("*.parquet")
             } if (landing / "_quarantine").exists() else set()
    assert files <= {p for p, _ in indexed}, "quarantine files that no index entry names"
    return keys


def assert_quarantine(directory: Path, paths: list[Path]) -> None:
    """Exactly the malformed rows are parked (a lookback re-read may park a row twice)."""
    keys = set(quarantined_keys(directory))
    expected = source_malformed_keys(paths)
    assert len(keys) == sum(count_malformed(paths).values()) == len(expected) > 0
    assert keys == expected, (f"not parked: {sorted(expected - keys)[:5]}; "
                              f"parked but fine: {sorted(keys - expected)[:5]}")


def assert_landing_clean(directory: Path) -> None:
    landing = directory / "landing"
    files = [p for p in landing.rglob("*") if p.is_file()]
    temps = [p for p in files if p.name.startswith(TEMP_PREFIX)]
    assert not temps, f"temp files left behind: {temps}"
    for p in files:
        try:
            pq.read_metadata(p)
            pq.read_table(p)
        except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
            raise AssertionError(f"{p} is not a whole Parquet file: {exc}") from exc
    for ref, rows in state_rows(directory, "SELECT ref, rows FROM manifest"):
        path = landing / json.loads(ref)["path"]
        assert pq.read_metadata(path).num_rows == rows, f"{path} does not hold {rows} rows"


# --- 1. a SIGKILL at every named failpoint -----------------------------------------------------
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("nth", [1, 3])
def test_sigkill_at_failpoint_loses_and_doubles_nothing(tmp_path: Path, point: str,
                                                        nth: int) -> None:
    paths = create_stores(tmp_path / "stores", stores=2, rows_per_store=ROWS_PER_STORE)
    # one batch per load transaction, so `nth` counts batches whatever the loader's pace
    # (how many are ready at once); grouped commits have their own tests below
    cfg = write_pipeline(tmp_path, sources(paths), warehouse=ALONE)
    total = 2 * ROWS_PER_STORE

    crash(cfg, f"{point}:{nth}")
    after_crash = positions(tmp_path)
    if nth >= 3:  # killed mid-run: the batches published before the kill moved a position
        assert after_crash, f"no position after {point}:{nth}; the kill came too early"

    summary = catch_up(cfg)
    if after_crash:  # the restart resumed from its position (minus the lookback window)
        assert summary["extracted_rows"] < total, (
            f"restart re-extracted {summary['extracted_rows']} of {total} rows: from scratch")
    assert checkpoints(tmp_path).keys() == {(p.stem, "sales") for p in paths}

    config = load_config(cfg)
    rows, ledger = duckdb_tables(tmp_path)
    assert_equal(config, paths, rows)
    assert_ledger(tmp_path, ledger)
    assert_quarantine(tmp_path, paths)
    assert_counts(tmp_path, paths)
    assert_landing_clean(tmp_path)


# --- 2. SIGKILL at random moments while the stores take writes ---------------------------------
def run_count(directory: Path) -> int:
    if not (directory / "state" / "state.db").exists():
        return 0
    try:
        return int(state_rows(directory, "SELECT count(*) FROM runs")[0][0])
    except sqlite3.OperationalError:  # the schema is being created right now
        return 0


def wait_for_run_start(directory: Path, proc: subprocess.Popen[bytes], runs_before: int,
                       timeout: float = 60) -> bool:
    """Wait until `proc` has recorded the start of a run (its first one since launch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if run_count(directory) > runs_before:
            return True
        time.sleep(0.02)
    return False


def wait_for_a_load(directory: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until a batch is loaded (by `proc` or an earlier run), or `proc` ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if state_rows(directory, "SELECT 1 FROM manifest WHERE status='loaded' LIMIT 1"):
                return
        except sqlite3.OperationalError:  # the schema is being created right now
            pass
        time.sleep(0.05)


def test_sigkill_at_random_moments_while_stores_are_written(tmp_path: Path) -> None:
    paths = create_stores(tmp_path / "stores", stores=2, rows_per_store=3_000)
    cfg = write_pipeline(tmp_path, sources(paths), run={"interval": "0.3s"})
    log = tmp_path / "pipeline.log"
    rng = random.Random(20240611)
    writer = StoreWriter(paths, rate_per_second=300).start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(6):
            runs_before = run_count(tmp_path)
            with open(log, "ab") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "steadyflow", "run", "-c", str(cfg), "--follow"],
                    stdout=subprocess.DEVNULL, stderr=err,
                    env={**os.environ, "STEADYFLOW_FAILPOINT": ""})
            started = wait_for_run_start(tmp_path, proc, runs_before)
            assert started, f"pipeline did not start a run:\n{log.read_text()[-3000:]}"
            if attempt == 5:  # the last kill comes after a load, however busy the host: on
                wait_for_a_load(tmp_path, proc)  # one running other tests, 6 x 2.5 s loaded none
            delay = rng.uniform(0.3, 2.5)  # from the start of its first run: a busy host
            time.sleep(delay)  # can take seconds just to import, and that proves nothing
            assert proc.poll() is None, f"pipeline exited by itself:\n{log.read_text()[-3000:]}"
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        loaded_while_killed = len(state_rows(
            tmp_path, "SELECT 1 FROM manifest WHERE status='loaded'"))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        writer.stop()
    counts = writer.counts()
    assert counts["inserted"] > 0 and counts["updated"] > 0 and counts["late_commits"] > 0
    assert loaded_while_killed > 0, "the killed runs never loaded anything; the test is moot"

    catch_up(cfg)
    config = load_config(cfg)
    rows, ledger = duckdb_tables(tmp_path)
    assert_equal(config, paths, rows)
    assert_ledger(tmp_path, ledger)
    # updates can repair a parked row (its fixed version is then in the warehouse), so
    # every row malformed now is parked, and every other parked row was since repaired
    parked = set(quarantined_keys(tmp_path))
    malformed = source_malformed_keys(paths)
    assert malformed <= parked, f"malformed rows not parked: {sorted(malformed - parked)[:5]}"
    in_warehouse = set(zip(rows["store_id"].to_pylist(), rows["sale_id"].to_pylist(),
                           strict=True))
    assert parked - malformed <= in_warehouse
    assert_landing_clean(tmp_path)

    # quiet sources: two more runs re-read the same lookback window; its pages are the
    # batches already landed (same ids), so nothing is landed, queued or loaded again
    catch_up(cfg)
    again = catch_up(cfg)
    assert again["extracted_rows"] > 0, again  # the window was read ...
    assert again["duplicates_skipped"] == 0 and again["loaded_batches"] == 0, again  # ... only
    rows, ledger = duckdb_tables(tmp_path)
    assert_equal(config, paths, rows)
    assert_ledger(tmp_path, ledger)


def test_late_update_stamped_older_than_the_loaded_version(tmp_path: Path) -> None:
    """Not a crash, but what the random test above also meets: a long store transaction
    stamps `updated_at = now() - 5s` and updates a row that a newer transaction wrote after
    it began. The source now holds the late version, with the OLDER stamp; the lookback
    re-reads it, and the merge keeps it because it was extracted later (merge/plan.py).
    A "newer cursor wins" merge would throw it away.
    """
    paths = create_stores(tmp_path / "stores", stores=1, rows_per_store=300)
    cfg = write_pipeline(tmp_path, sources(paths))
    catch_up(cfg)
    with closing(sqlite3.connect(paths[0])) as db:
        sale_id, stamp = db.execute(
            "SELECT sale_id, updated_at FROM sales ORDER BY updated_at DESC LIMIT 1").fetchone()
        older = format_ts(datetime.strptime(stamp, TS_FORMAT).replace(tzinfo=UTC)
                          - timedelta(seconds=5))
        db.execute("UPDATE sales SET qty = 99, updated_at = ? WHERE sale_id = ?",
                   (older, sale_id))
        db.commit()
    catch_up(cfg)
    rows, _ = duckdb_tables(tmp_path)
    assert_equal(load_config(cfg), paths, rows)


# --- 3. PostgreSQL: a concurrent reader never sees a partial batch -------------------------------
def clean_stores(directory: Path, rows_per_store: int) -> list[Path]:
    """Store files without malformed rows: a first load where every batch adds its rows."""
    paths = create_stores(directory, stores=2, rows_per_store=rows_per_store, seed=3)
    for path in paths:
        with closing(sqlite3.connect(path)) as db:
            db.execute(f"DELETE FROM sales WHERE {IS_MALFORMED}")
            db.commit()
    assert sum(count_malformed(paths).values()) == 0
    return paths


def snapshot(conn: psycopg.Connection[Any]) -> tuple[int, int] | None:
    """(rows in wh.sales, rows the ledger says were loaded), read in one snapshot."""
    try:
        with conn.transaction():
            count = conn.execute("SELECT count(*) FROM wh.sales").fetchone()
            booked = conn.execute(f"SELECT coalesce(sum(rows), 0) FROM wh.{LEDGER}").fetchone()
    except psycopg.errors.UndefinedTable:
        return None  # the first batch has not created the tables yet
    assert count is not None and booked is not None
    return int(count[0]), int(booked[0])


@pytest.mark.integration
def test_reader_never_sees_a_partial_batch(tmp_path: Path, pg_dsn: str) -> None:
    paths = clean_stores(tmp_path / "stores", 6_000)
    # cursor order: each batch then adds only new rows, so in every snapshot the row count
    # must equal the rows the ledger books (a key-order load's hand-over re-reads some)
    cfg = write_pipeline(tmp_path, sources(paths, page_size=500, initial_load="cursor"),
                         warehouse={"kind": "postgres", "dsn": pg_dsn, "schema": "wh"})
    seen: list[tuple[int, int]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            with psycopg.connect(pg_dsn) as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                while not stop.is_set():
                    seen_now = snapshot(conn)
                    if seen_now is not None:
                        seen.append(seen_now)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    reader = threading.Thread(target=read, name="reader", daemon=True)
    reader.start()
    try:
        summary = catch_up(cfg)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not failures, failures
    assert summary["loaded_batches"] >= 20
    torn = [(n, booked) for n, booked in seen if n != booked]
    assert not torn, f"reader saw rows without their ledger entry (or the reverse): {torn[:5]}"
    partial = {n for n, _ in seen if 0 < n < 2 * 6_000}
    assert len(partial) >= 3, f"the reader saw too little of the load to prove anything: {partial}"
    rows, ledger = postgres_tables(pg_dsn, load_config(cfg))
    assert_equal(load_config(cfg), paths, rows)
    assert_ledger(tmp_path, ledger)


@pytest.mark.integration
def test_sigkill_after_merge_before_commit_postgres(tmp_path: Path, pg_dsn: str) -> None:
    paths = create_stores(tmp_path / "stores", stores=2, rows_per_store=ROWS_PER_STORE)
    cfg = write_pipeline(tmp_path, sources(paths), warehouse={
        "kind": "postgres", "dsn": pg_dsn, "schema": "wh", "group_batches": 1})
    crash(cfg, "load.after_merge:3")
    with psycopg.connect(pg_dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        after_crash = snapshot(conn)
        ledger_after_crash = conn.execute(f"SELECT count(*) FROM wh.{LEDGER}").fetchone()
    # the killed transaction left nothing: two whole batches, not a third half one
    assert after_crash is not None and after_crash[0] == after_crash[1] > 0
    assert ledger_after_crash == (2,)

    catch_up(cfg)
    config = load_config(cfg)
    rows, ledger = postgres_tables(pg_dsn, config)
    assert_equal(config, paths, rows)
    assert_ledger(tmp_path, ledger)
    assert_quarantine(tmp_path, paths)
    assert_counts(tmp_path, paths)
    assert_landing_clean(tmp_path)


# --- 4. a crash mid-write leaves only a hidden temp file --------------------------------------
def test_crash_mid_write_leaves_only_a_hidden_temp_file(tmp_path: Path) -> None:
    paths = create_stores(tmp_path / "stores", stores=1, rows_per_store=3_000)
    cfg = write_pipeline(tmp_path, sources(paths))
    landing = tmp_path / "landing"
    crash(cfg, "land.mid_write:3")

    temps = list(landing.rglob(f"{TEMP_PREFIX}*"))
    assert len(temps) == 1, temps
    temp = temps[0]
    assert temp.name.startswith(".")
    with pytest.raises(Exception):  # noqa: B017, PT011 - half a file: any read must fail
        pq.read_table(temp)
    visible = [p for p in landing.rglob("*.parquet") if not p.name.startswith(".")]
    assert len(visible) == 2 and temp not in visible
    half_id = temp.name.removeprefix(TEMP_PREFIX).split(".")[0]
    refs = [json.loads(r) for r, in state_rows(tmp_path, "SELECT ref FROM manifest")]
    assert len(refs) == 2 and all(half_id not in r["path"] and r["batch_id"] != half_id
                                  for r in refs)
    with closing(sqlite3.connect(tmp_path / "state" / "buffer.db")) as db:
        queued = [b for b, in db.execute("SELECT batch_id FROM queue")]
    assert half_id not in queued

    # a stage that reads what was landed works on the two whole batches and never opens it
    proc = steadyflow("transform", "-c", str(cfg), "--json", check=True)
    report = json.loads(proc.stdout)
    assert sorted(r["batch_id"] for r in report) == sorted(r["batch_id"] for r in refs)
    assert temp.exists()

    catch_up(cfg)
    assert not temp.exists() and not list(landing.rglob(f"{TEMP_PREFIX}*"))
    rows, ledger = duckdb_tables(tmp_path)
    assert_equal(load_config(cfg), paths, rows)
    assert_ledger(tmp_path, ledger)
    assert_quarantine(tmp_path, paths)
    assert_landing_clean(tmp_path)


# --- 5. grouped commits: a SIGKILL before a group's commit, after it, between its acks ---------
GROUP = 4
SALES = Table("sales", [
    Col("store_id", "int64", nullable=False), Col("sale_id", "int64", nullable=False),
    Col("sku", "text"), Col("qty", "int64"), Col("unit_price", "dec", 12, 2),
    Col("currency", "text"), Col("sold_at", "ts"), Col("updated_at", "ts")],
    key=["store_id", "sale_id"], cursor="updated_at")


@pytest.fixture(params=["sqlite", pytest.param("jetstream", marks=pytest.mark.integration)])
def buffer_section(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The embedded buffer, or a JetStream stream of its own with a short lease (a killed
    loader's batches come back after it, not after the default two minutes)."""
    if request.param == "sqlite":
        yield {"kind": "sqlite"}
        return
    with fresh_stream("sf_crash") as stream:
        yield {"kind": "jetstream", "url": NATS_URL, "stream": stream, "lease": "2s"}


def ledger_groups(directory: Path) -> list[int]:
    """The batches of each committed load transaction, in commit order: DuckDB's now() is
    the transaction's start, the same for every ledger row of one group."""
    con = duckdb.connect(str(directory / "warehouse.duckdb"), read_only=True)
    try:
        return [int(n) for n, in con.execute(
            f'SELECT count(*) FROM main."{LEDGER}" GROUP BY loaded_at ORDER BY loaded_at'
        ).fetchall()]
    finally:
        con.close()


def assert_oracle_equal(directory: Path, paths: list[Path]) -> int:
    """The warehouse equals the stores by the independent oracle, without one duplicate;
    returns how many rows the stores hold."""
    expected: dict[Any, Any] = {}
    for path in paths:
        expected |= read_source("sqlite", str(path), SALES)
    where = str(directory / "warehouse.duckdb")
    found = diff(expected, read_warehouse("duckdb", where, "main", SALES))
    assert not found, f"warehouse differs from the stores:\n{found}"
    with closing(duckdb.connect(where, read_only=True)) as con:
        assert con.execute("SELECT count(*) FROM main.sales").fetchone() == (len(expected),)
    return len(expected)


@pytest.mark.parametrize(("point", "committed", "marked"), [
    ("load.after_merge:2", [GROUP], GROUP),  # the 2nd group merged, killed before its commit
    ("load.after_commit:2", [GROUP, GROUP], GROUP),  # the 2nd group committed, not marked
    ("load.after_mark:2", [GROUP, GROUP], 2 * GROUP),  # ... and marked, none of it acked
    (f"load.after_ack:{GROUP + 2}", [GROUP, GROUP], 2 * GROUP),  # 2 of its acks done
])
def test_sigkill_around_a_group_commit_loses_and_doubles_nothing(
        tmp_path: Path, buffer_section: dict[str, Any], point: str, committed: list[int],
        marked: int) -> None:
    paths = clean_stores(tmp_path / "stores", 3_000)
    cfg = write_pipeline(tmp_path, sources(paths, page_size=500), buffer=buffer_section,
                         warehouse={"kind": "duckdb", "path": "warehouse.duckdb",
                                    "group_batches": GROUP})
    # extracted, not loaded: the next run's loader finds every batch ready and takes them
    # GROUP at a time, oldest first (its own extraction only adds lookback re-reads behind)
    steadyflow("extract", "-c", str(cfg), check=True)
    queued = state_rows(tmp_path, "SELECT batch_id FROM manifest")
    assert len(queued) >= 3 * GROUP

    crash(cfg, point)
    assert ledger_groups(tmp_path) == committed, "not the groups this test is about"
    loaded = state_rows(tmp_path, "SELECT count(*) FROM manifest WHERE status = 'loaded'")
    assert loaded == [(marked,)]

    catch_up(cfg)
    rows = assert_oracle_equal(tmp_path, paths)
    _, ledger = duckdb_tables(tmp_path)
    assert_ledger(tmp_path, ledger)  # every batch once, the manifest agrees
    assert_landing_clean(tmp_path)
    # the counts operators see were added once per loaded batch, the crash's too: the
    # tables' loaded rows are what the manifest's loaded batches hold
    assert state_rows(tmp_path, "SELECT sum(rows_loaded) FROM table_health") == state_rows(
        tmp_path, "SELECT sum(good_rows) FROM manifest WHERE status = 'loaded'")
    # and the rows they changed are the stores' rows (no updates: each changed once)
    assert state_rows(tmp_path, "SELECT sum(rows_changed) FROM table_health") == [(rows,)]
