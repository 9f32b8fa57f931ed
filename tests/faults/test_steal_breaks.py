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
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.faults.test_network import FAST, mysql_connect, open_pipeline
from tests.support.gen import Col, Table
from tests.support.oracle import diff, read_source, read_warehouse

from steadyflow.extract.sql import SqlSource
from steadyflow.run import steal
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]

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


def _oracle(cols: list[Col]) -> Table:
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
