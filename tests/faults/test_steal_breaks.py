"""Breaking work stealing of first loads (run/steal.py), each at a deterministic moment: a
slot steals from inside the reader's own page recording (state.advance_backfill wrapped,
as tests/faults/test_network.on_checkpoint does), so the cut lands between two pages the
reader reads, every run. In one process whose source allows two queries (a stealer may
then cut this process's own reader) but runs one table slot (no stealer of its own
racing the hook's).

Oracle: both ends read through the drivers (tests/support/oracle.py), key by key.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.conftest import write_pipeline
from tests.faults.test_backfill_chunks import stopped
from tests.faults.test_network import FAST, mysql_connect, open_pipeline
from tests.faults.test_steal import _stop, _workers, stream  # noqa: F401
from tests.support.gen import Col, Table
from tests.support.oracle import diff, read_source, read_warehouse

from steadyflow.config import load_config
from steadyflow.extract.sql import SqlSource
from steadyflow.run import steal
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(240)]

CONTRACT: dict[str, Any] = {
    "primary_key": ["n"], "cursor": "updated_at",
    "columns": {"n": {"type": "int64", "nullable": False}, "val": {"type": "string"},
                "updated_at": {"type": "timestamp", "nullable": False}}}
ROWS = 1_200
PAGE = 50


@pytest.fixture(autouse=True)
def one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every first load in one piece: only a steal splits it."""
    monkeypatch.setenv("STEADYFLOW_BACKFILL_CHUNK_ROWS", "0")


def _source(kind: str, dsn: str, **table: Any) -> dict[str, Any]:
    return {"name": "s", "kind": kind, "dsn": dsn,
            "resilience": {**FAST, "max_concurrent_queries": 2},
            "tables": [{"name": "items", "contract": "items", "target": "items",
                        "page_size": PAGE, "min_page_size": PAGE, **table}]}


def _pipeline(tmp_path: Path, source: dict[str, Any]) -> Pipeline:
    return open_pipeline(tmp_path, [source], contracts={"items": CONTRACT},
                         run={"max_parallel_sources": 1})


def _at_page(pipeline: Pipeline, nth: int, action: Callable[[], None]) -> list[int]:
    """Run `action` in the reader's thread right after it recorded its nth page."""
    state, calls = pipeline.state, [0]
    original = state.advance_backfill

    def advance(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            action()

    state.advance_backfill = advance  # type: ignore[method-assign]
    return calls


def _steal_here(pipeline: Pipeline) -> Callable[[], None]:
    """A whole steal (run/steal.py steal_once): cut the reader and read the far part."""
    stolen: list[Any] = []

    def act() -> None:
        stolen.append(steal.steal_once(pipeline, None))
        assert stolen[-1] not in (None, "wait"), "nothing was stolen"

    return act


def _oracle(cols: list[Col] | None = None) -> Table:
    cols = [Col("val", "text")] if cols is None else cols
    return Table("items", [Col("n", "int64"), *cols, Col("updated_at", "ts")], ["n"],
                 "updated_at")


def _assert_exact(tmp_path: Path, kind: str, dsn: str, schema: str, table: Table) -> None:
    expected = read_source(kind, dsn, table)
    actual = read_warehouse("duckdb", str(tmp_path / "warehouse.duckdb"), schema, table)
    assert len(expected) >= ROWS - 10
    assert actual == expected, diff(expected, actual)


def test_a_stolen_range_carries_the_columns_schema_drift_added(
        tmp_path: Path, pg_dsn: str) -> None:
    """`schema_drift: add`: the table's reader extracts a source column the contract does
    not name. The stealer's extractor was built from the configured contract alone, so the
    stolen range's rows landed without the column: loaded before the reader's pages added
    it, the warehouse held NULL there for the stolen half of the table, every command ok
    (measured with the slots stealing on their own; the cursor pass never re-reads an
    unchanged row); loaded after (this test's order), every stolen batch was refused."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (n bigint PRIMARY KEY, val text, extra text, "
                     "updated_at timestamptz NOT NULL)")
        conn.execute("CREATE INDEX items_cursor ON items (updated_at, n)")
        conn.execute("INSERT INTO items SELECT g, 'v' || g, 'x' || g, timestamptz "
                     "'2026-01-01 00:00:00+00' + g * interval '1 second' "
                     f"FROM generate_series(1, {ROWS}) g")
    with _pipeline(tmp_path, _source("postgres", pg_dsn, schema_drift="add")) as pipeline:
        calls = _at_page(pipeline, 3, _steal_here(pipeline))
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        assert calls[0] >= 3
        stolen = pipeline.state.backfill_chunks("s", "items")
        assert stolen and all(c.status == "done" for c in stolen), stolen
        schema = pipeline.config.warehouse.schema_
    _assert_exact(tmp_path, "postgres", pg_dsn, schema,
                  _oracle([Col("val", "text"), Col("extra", "text")]))


@pytest.fixture
def slow_read_ahead(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Each page read ahead (run/extract.py `_pages`, on its `read-<table>` thread) spends
    0.3 s in the server first (SELECT SLEEP on the same connection): a page query that is
    slow in the database, as a large page of a cold table is. Yields the threads that
    sent a query on a connection another thread's query was still on."""
    original = SqlSource._execute
    busy: dict[int, int] = {}
    lock = threading.Lock()
    overlaps: list[str] = []

    def execute(self: SqlSource, table: str, query: str, *args: Any, **kw: Any) -> Any:
        with lock:
            busy[id(self)] = busy.get(id(self), 0) + 1
            if busy[id(self)] > 1:
                overlaps.append(threading.current_thread().name)
        try:
            if threading.current_thread().name.startswith("read-"):
                original(self, table, "SELECT SLEEP(0.3)", [])
            return original(self, table, query, *args, **kw)
        finally:
            with lock:
                busy[id(self)] -= 1

    monkeypatch.setattr(SqlSource, "_execute", execute)
    yield overlaps


def test_a_cut_reader_reads_on_only_after_its_page_read_ahead_ended(
        tmp_path: Path, mysql_dsn: str, slow_read_ahead: list[str]) -> None:
    """A cut reader's page is refused (LoadCut) while its next page is still being read
    ahead on its connection; it read on at once, on that same connection, from its last
    recorded key: two threads' queries on one MariaDB connection (PyMySQL is not
    thread-safe), 'Packet sequence number wrong' and the table failed."""
    with mysql_connect(mysql_dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE items (n BIGINT PRIMARY KEY, val VARCHAR(40), "
                    "updated_at DATETIME(6) NOT NULL, KEY items_cursor (updated_at, n))")
        cur.execute("INSERT INTO items SELECT seq, CONCAT('v', seq), TIMESTAMP'2026-01-01 "
                    f"00:00:00' + INTERVAL seq SECOND FROM seq_1_to_{ROWS}")
    os.environ.pop("STEADYFLOW_FAILPOINT", None)
    with _pipeline(tmp_path, _source("mysql", mysql_dsn)) as pipeline:
        # the cut alone (its range left to the reader's process): the reader's next page,
        # read against the old bound, is refused while the one after it is read ahead
        def cut() -> None:
            [reader] = pipeline.state.first_loads()
            s, t, ref = pipeline.config.table("s", "items")
            extractor = steal.TableExtractor(
                s, t, ref, pipeline.config.contract_of(t), pipeline.landing,
                pipeline.buffer, pipeline.state, pipeline.guards["s"], pipeline.metrics)
            db = steal.open_source(s)
            try:
                assert isinstance(db, SqlSource)
                lease = steal.steal(extractor, db, reader)
            finally:
                db.close()
            assert lease is not None, "not cut"
            pipeline.state.release_lease(lease)

        _at_page(pipeline, 2, cut)
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        stolen = pipeline.state.backfill_chunks("s", "items")
        assert stolen and all(c.status == "done" for c in stolen), stolen
        schema = pipeline.config.warehouse.schema_
    assert slow_read_ahead == [], "two queries at once on one connection"
    _assert_exact(tmp_path, "mysql", mysql_dsn, schema, _oracle([Col("val", "text")]))



def test_a_reader_that_records_a_page_while_it_is_counted_is_still_cut(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stealer counts the keys the reader has left, picks the cut key, then cuts only
    if the reader recorded nothing since it looked (its page in hand is fenced anyway).
    A reader recording a page every few tens of milliseconds always recorded one in
    between (listing, connect, count, offset: every steal among workers lost, 12,000
    rows in 50-row pages), and one lost race ended its slot's stealing for the run.
    Here the stealer's cut waits until the reader recorded its next page (pages
    0.2 s apart): the stealer must look again and cut the reader still short of the cut
    key. Nothing may be lost or read twice."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (n bigint PRIMARY KEY, val text, "
                     "updated_at timestamptz NOT NULL)")
        conn.execute("CREATE INDEX items_cursor ON items (updated_at, n)")
        conn.execute("INSERT INTO items SELECT g, 'v' || g, timestamptz '2026-01-01 "
                     "00:00:00+00' + g * interval '1 second' "
                     f"FROM generate_series(1, {ROWS}) g")
    monkeypatch.setenv("STEADYFLOW_FAILPOINT", "extract.after_enqueue:1:sleep0.2")
    with _pipeline(tmp_path, _source("postgres", pg_dsn)) as pipeline:
        state = pipeline.state
        original = state.cut
        stealer: list[threading.Thread] = []
        stolen: list[Any] = []

        def late_cut(reader: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() in stealer and len(stolen) == 0:
                stolen.append("moved")
                deadline = time.monotonic() + 10
                while state.load_bound("s", "items")[0] == reader.after:
                    assert time.monotonic() < deadline, "the reader recorded nothing"
                    time.sleep(0.01)
            return original(reader, *args, **kwargs)

        state.cut = late_cut  # type: ignore[method-assign]

        def steal_aside() -> None:
            thread = threading.Thread(
                target=lambda: stolen.append(steal.steal_once(pipeline, None)))
            stealer.append(thread)
            thread.start()

        _at_page(pipeline, 2, steal_aside)
        summary = pipeline.run_once()
        stealer[0].join(30)
        assert summary.ok, summary.errors
        assert stolen[0] == "moved" and stolen[-1] not in (None, "wait"), stolen
        ranges = state.backfill_chunks("s", "items")
        assert ranges and all(c.status == "done" for c in ranges), ranges
        # every row once: the reader's rows and the stolen range's tile the table
        assert summary.extracted_rows + stolen[-1][1].rows == ROWS
        schema = pipeline.config.warehouse.schema_
    _assert_exact(tmp_path, "postgres", pg_dsn, schema, _oracle())



def test_a_run_of_one_table_steals_from_no_other(tmp_path: Path, pg_dsn: str) -> None:
    """`extract --table s.a` (Pipeline.extract naming its tables) with a source allowing two
    queries: its idle slot looked at every table of the config, so it cut and read the
    first load of table `b` that another process was in the middle of, work the command
    was never asked for (and could take as long as that load). Process 1: `extract`
    of `b`, its pages slowed; process 2 (here): the extraction of `a` alone."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for name, rows in (("a", 100), ("b", ROWS)):
            conn.execute(f"CREATE TABLE {name} (n bigint PRIMARY KEY, val text, "
                         "updated_at timestamptz NOT NULL)")
            conn.execute(f"CREATE INDEX {name}_cursor ON {name} (updated_at, n)")
            conn.execute(f"INSERT INTO {name} SELECT g, 'v' || g, timestamptz '2026-01-01 "
                         "00:00:00+00' + g * interval '1 second' "
                         f"FROM generate_series(1, {rows}) g")
    source = _source("postgres", pg_dsn)
    source["tables"] = [{**source["tables"][0], "name": name, "target": name}
                        for name in ("a", "b")]
    with _pipeline(tmp_path, source) as pipeline:
        cfg = tmp_path / "pipeline.yml"
        other = subprocess.Popen(
            [sys.executable, "-m", "steadyflow", "extract", "-c", str(cfg), "--table", "s.b"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "STEADYFLOW_FAILPOINT": "extract.after_enqueue:1:sleep0.1"})
        try:
            deadline = time.monotonic() + 60
            while not [r for r in pipeline.state.first_loads() if r.after is not None]:
                assert other.poll() is None and time.monotonic() < deadline, "b not begun"
                time.sleep(0.1)
            summary = pipeline.extract(tables=["a"])
            assert summary.ok, summary.errors
            mine = [c for c in pipeline.state.backfill_chunks("s", "b")
                    if str(c.holder).split(":")[1] == str(os.getpid())]
            assert mine == []
            assert other.wait(120) == 0
        finally:
            if other.poll() is None:
                other.kill()


# --- between `steadyflow worker` processes (PostgreSQL state, JetStream buffer) ---------

WORKER_ROWS = 12_000
LEASE = 4.0


def _changing(dsn: str, done: threading.Event) -> threading.Thread:
    """Updates in every part of the key space and inserts past the table's end, every
    50 ms until `done`: rows change on both sides of every cut while the load runs."""
    def change() -> None:
        step = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not done.wait(0.05):
                step += 1
                conn.execute("UPDATE items SET val = val || '+', updated_at = now() "
                             "WHERE n IN (%s, %s, %s)",
                             [(step * 37) % WORKER_ROWS, (step * 911) % WORKER_ROWS,
                              WORKER_ROWS - 1 - step % 50])
                conn.execute("INSERT INTO items (n, val, updated_at) VALUES (%s, 'new', "
                             "now())", [WORKER_ROWS + step])

    thread = threading.Thread(target=change, daemon=True)
    thread.start()
    return thread


def _reading(dsn: str, state: Path | None, seconds: float = 60) -> None:
    """Wait until the one-piece reader has recorded a page (read through psycopg, or
    sqlite3 for the SQLite state file `state`)."""
    query = "SELECT 1 FROM {}backfills WHERE after IS NOT NULL"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if state is None:
                with psycopg.connect(dsn) as conn:
                    if conn.execute(query.format("st.")).fetchone():
                        return
            elif state.exists():
                with closing(sqlite3.connect(state)) as db:
                    if db.execute(query.format("")).fetchone():
                        return
        except (psycopg.errors.UndefinedTable, sqlite3.OperationalError):
            pass
        time.sleep(0.1)
    raise AssertionError("the first load did not start")


def _converged(dsn: str, cfg: Path, seconds: float = 90) -> None:
    """The load ended (checkpoint set, every range read) and the warehouse caught up
    with the source, read through psycopg key by key (the followers poll on)."""
    table = _oracle()
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        with Pipeline(load_config(cfg)) as pipeline:
            ended = pipeline.state.checkpoint("s", "items") is not None
            ranges = pipeline.state.backfill_chunks("s", "items")
        expected = read_source("postgres", dsn, table)
        actual = read_warehouse("postgres", dsn, "wh", table)
        if ended and actual == expected:
            assert ranges and all(c.status == "done" for c in ranges), ranges
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT count(*) - count(DISTINCT n) FROM wh.items"
                                    ).fetchone() == (0,)
            return
        last = f"ended={ended} {diff(expected, actual)}"
        time.sleep(1)
    raise AssertionError(f"not converged: {last}")


@pytest.mark.exhaustive  # ~80 s each: 12,000 rows in 50-row pages among 3 workers
@pytest.mark.parametrize(("scenario", "state"), [
    ("holder-killed", "postgres"), ("holder-stopped", "postgres"),
    ("thief-killed", "postgres"), ("holder-killed", "sqlite"), ("thief-killed", "sqlite")])
def test_workers_converge_whoever_dies_or_stalls_at_a_cut(
        tmp_path: Path, pg_dsn: str, stream: str, scenario: str,  # noqa: F811
        state: str) -> None:
    """Three workers, one table in one piece read by the first, rows changing meanwhile:
    - holder-killed: the reader SIGKILLed as it learns its bound was cut (failpoint
      extract.cut), its part between its last page and the cut key unread;
    - holder-stopped: the reader SIGSTOPped there and kept stopped past its lease (a
      third worker takes the table over), then SIGCONT: fenced, it lands nothing more;
    - thief-killed: the stealer SIGKILLed at its first page, its cut committed and its
      range (leased to the dead) unread.
    Every case must end the load (checkpoint set, every range done) and the warehouse
    must equal the source, with no key twice. On PostgreSQL state, and on a SQLite state
    file the workers of one host share (not the SIGSTOP: a worker stopped inside a
    SQLite transaction holds the others' writes)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (n bigint PRIMARY KEY, val text, "
                     "updated_at timestamptz NOT NULL)")
        conn.execute("CREATE INDEX items_cursor ON items (updated_at, n)")
        conn.execute("INSERT INTO items SELECT g, 'v' || g, timestamptz '2026-01-01 "
                     "00:00:00+00' + g * interval '1 second' FROM generate_series(0, "
                     f"{WORKER_ROWS - 1}) g")
    cfg = write_pipeline(tmp_path, [{**_source("postgres", pg_dsn), "resilience": FAST}],
                         contracts={"items": CONTRACT},
                         warehouse={"kind": "postgres", "dsn": pg_dsn, "schema": "wh"},
                         state={"kind": "postgres", "dsn": pg_dsn, "schema": "st"}
                         if state == "postgres" else {"kind": "sqlite"},
                         buffer={"kind": "jetstream", "stream": stream, "lease": "5s"},
                         run={"interval": 0.5})
    state_file = None if state == "postgres" else tmp_path / "state" / "state.db"
    base = {"STEADYFLOW_BACKFILL_CHUNK_ROWS": "0", "STEADYFLOW_EXTRACT_LEASE": str(LEASE),
            "STEADYFLOW_FAILPOINT": ""}
    holder_fp = {"holder-killed": "extract.cut:1", "holder-stopped": "extract.cut:1:SIGSTOP"
                 }.get(scenario, "")
    thief_fp = "extract.before_land:1" if scenario == "thief-killed" else ""
    done = threading.Event()
    procs = _workers(cfg, tmp_path, {**base, "STEADYFLOW_FAILPOINT": holder_fp}, 1,
                     ["holder"])
    changer = _changing(pg_dsn, done)
    try:
        _reading(pg_dsn, state_file)
        procs += _workers(cfg, tmp_path, {**base, "STEADYFLOW_FAILPOINT": thief_fp}, 1,
                          ["thief"])
        holder, thief = procs
        if scenario == "holder-killed":
            assert holder.wait(60) == -signal.SIGKILL
        elif scenario == "thief-killed":
            assert thief.wait(60) == -signal.SIGKILL
        else:
            deadline = time.monotonic() + 60
            while not stopped(holder.pid):
                assert holder.poll() is None and time.monotonic() < deadline, "not cut"
                time.sleep(0.05)
        procs += _workers(cfg, tmp_path, base, 1, ["third"])
        if scenario == "holder-stopped":
            time.sleep(LEASE + 4)  # past its lease: the table is taken over
            holder.send_signal(signal.SIGCONT)
        time.sleep(2)
        done.set()
        changer.join()
        _converged(pg_dsn, cfg)
    finally:
        done.set()
        _stop(procs)
