"""The adaptive lookback for a cursor numbered by the source (a sequence, AUTO_INCREMENT).

An application's transaction takes the next number, holds it while it does other work, and
commits after a later number was extracted and checkpointed: keyset order alone skips the
held row forever, every run "ok". A number is taken after its transaction began, so every
row still uncommitted at a poll is numbered after every number committed before the oldest
open transaction began; the adaptive lookback keeps, per poll, the greatest number the pass
saw and when (the source's clock, after that snapshot), and the next poll re-reads from the
greatest number seen before the oldest transaction open now began. The test holds such a
transaction across two polls and shows its row arrives, also after a restart (the start is
then restored from the last landed page); the same with the fixed window (lookback 0) loses
it: the test can see the problem. With no transaction open, polls stop re-reading.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml
from tests.integration.test_adaptive_lookback import Store as SalesStore

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CONTRACT = {"primary_key": ["id"], "cursor": "id",
            "columns": {"id": {"type": "int64", "nullable": False},
                        "note": {"type": "string"}}}


class Store(SalesStore):
    """A store database of either kind whose `orders` rows the source numbers."""

    def create(self, rows: int, stamped: str = "") -> None:
        serial = "bigserial" if self.kind == "postgres" else "bigint AUTO_INCREMENT"
        with self.connect() as conn:
            self.execute(conn, f"CREATE TABLE orders (id {serial} PRIMARY KEY, note text)")
            for i in range(rows):
                self.insert(conn, f"n{i}")

    def insert(self, conn: Any, note: str) -> int:  # type: ignore[override]
        """Insert a row numbered by the source; its number."""
        if self.kind == "postgres":
            row = conn.execute("INSERT INTO orders (note) VALUES (%s) RETURNING id",
                               [note]).fetchone()
            return int(row[0])
        with conn.cursor() as cur:
            cur.execute("INSERT INTO orders (note) VALUES (%s)", [note])
            return int(cur.lastrowid)


@pytest.fixture(params=["postgres", "mysql"])
def store(request: pytest.FixtureRequest) -> Store:
    dsn = request.getfixturevalue("pg_dsn" if request.param == "postgres" else "mysql_dsn")
    return Store(request.param, dsn)


def pipeline(tmp_path: Path, store: Store, **table: Any) -> Path:
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump({
        "name": "test", "contracts": {"orders": CONTRACT},
        "warehouse": {"kind": "duckdb", "path": "warehouse.duckdb"},
        "sources": [{"name": "store", "kind": store.kind, "dsn": store.dsn,
                     "tables": [{"name": "orders", "contract": "orders", **table}]}]},
        sort_keys=False))
    return path


def warehouse_ids(tmp_path: Path) -> set[int]:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        return {int(i) for (i,) in con.sql("SELECT id FROM main.orders").fetchall()}


@pytest.mark.parametrize(("mode", "restart", "arrives"), [
    ("auto", False, True), ("auto", True, True), ("fixed", False, False)],
    ids=["adaptive", "adaptive-after-restart", "fixed-window-misses"])
def test_a_number_held_by_a_late_transaction_arrives(
        tmp_path: Path, store: Store, mode: str, restart: bool, arrives: bool) -> None:
    store.create(20)
    config = pipeline(tmp_path, store, lookback_mode=mode)
    p = Pipeline.from_yaml(config)
    assert p.run_once().ok  # the initial load
    assert p.run_once().ok  # a poll with nothing open: the next one starts after it
    time.sleep(1.1)  # MariaDB's trx_started has whole seconds
    late = store.connect(autocommit=False)  # an application's transaction, held open
    try:
        held = store.insert(late, "late")
        with store.connect() as other:
            newer = store.insert(other, "newer")  # a later number, committed at once
        assert newer > held
        first = p.run_once()
        assert first.ok and first.extracted_rows >= 1, first  # the newer row, not the held
        late.commit()
    finally:
        late.close()
    if restart:
        p.close()
        p = Pipeline.from_yaml(config)
    with p:
        second = p.run_once()
        third = p.run_once()
    assert second.ok and third.ok, (second.errors, third.errors)
    ids = warehouse_ids(tmp_path)
    assert len(ids) == (22 if arrives else 21), sorted(ids)
    assert (held in ids) is arrives


def test_with_nothing_open_polls_stop_rereading(tmp_path: Path, pg_dsn: str) -> None:
    """PostgreSQL: only this test's sessions use its database, so nothing else is open."""
    store = Store("postgres", pg_dsn)
    store.create(50)
    with Pipeline.from_yaml(pipeline(tmp_path, store)) as p:
        assert p.run_once().ok
        with store.connect() as conn:
            for i in range(10):
                store.insert(conn, f"m{i}")
        busy = p.run_once()
        settle = p.run_once()  # re-reads what the busy poll read (a number taken then)
        idle = p.run_once()
    assert busy.extracted_rows == 10, busy
    assert settle.extracted_rows <= 11, settle
    assert idle.extracted_rows == 0, idle
    assert len(warehouse_ids(tmp_path)) == 60


@pytest.mark.parametrize("numbered", ["bigserial", "bigint GENERATED ALWAYS AS IDENTITY",
                                      "bigint DEFAULT nextval('orders_numbers')"])
def test_a_sequence_caching_numbers_per_session_is_refused_without_a_floor(
        tmp_path: Path, pg_dsn: str, numbered: str) -> None:
    """Two sessions of a CACHE 20 sequence: the second takes 21 and commits, the poll
    checkpoints it, then the first commits 2 in a short transaction begun after the poll."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE orders_numbers")
        conn.execute(f"CREATE TABLE orders (id {numbered} PRIMARY KEY, note text)")
        owned = conn.execute("SELECT pg_get_serial_sequence('orders', 'id')").fetchone()
        sequence = "orders_numbers" if "nextval" in numbered else (owned or [None])[0]
        conn.execute(f"ALTER SEQUENCE {sequence} CACHE 20")
    with psycopg.connect(pg_dsn, autocommit=True) as first, \
            psycopg.connect(pg_dsn, autocommit=True) as second:
        first.execute("INSERT INTO orders (note) VALUES ('a')")  # takes 1..20, writes 1
        second.execute("INSERT INTO orders (note) VALUES ('b')")  # takes 21..40, writes 21
        with Pipeline.from_yaml(pipeline(tmp_path, Store("postgres", pg_dsn))) as p:
            result = p.run_once(raise_on_error=False)
    assert not result.ok
    text = " ".join(str(e) for e in result.errors)
    assert "CACHE 20" in text and "id" in text and "ALTER SEQUENCE" in text, text
    floored = tmp_path / "floored"
    floored.mkdir()
    with Pipeline.from_yaml(pipeline(floored, Store("postgres", pg_dsn), lookback=200)) as p:
        assert p.run_once().ok  # a floor: loads, with a warning naming the cache


def test_a_restart_while_a_number_is_held_keeps_the_restored_start(
        tmp_path: Path, store: Store) -> None:
    """A restart while the transaction is still open: the new process's polls must keep
    the start its predecessor's pages recorded until one of its own polls is dated
    before that transaction began."""
    store.create(20)
    config = pipeline(tmp_path, store)
    p = Pipeline.from_yaml(config)
    assert p.run_once().ok  # the initial load
    assert p.run_once().ok
    time.sleep(1.1)
    late = store.connect(autocommit=False)
    try:
        held = store.insert(late, "late")
        with store.connect() as other:
            store.insert(other, "newer")
        assert p.run_once().ok  # checkpoints the newer row past the held one
        p.close()
        p = Pipeline.from_yaml(config)  # a new process, the transaction still open
        for _ in range(3):
            assert p.run_once().ok
            time.sleep(0.3)
        late.commit()
    finally:
        late.close()
    with p:
        for _ in range(2):
            assert p.run_once().ok
    ids = warehouse_ids(tmp_path)
    assert held in ids, sorted(ids)


def test_polls_under_a_long_open_transaction_keep_few_ends(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session left idle in a transaction (a forgotten psql) open since before the
    process's first poll leaves every poll's end undated for as long as it stays open:
    the ends kept per table stay bounded all the same."""
    from steadyflow.run import extract

    monkeypatch.setattr(extract, "MAX_NUMBERED_ENDS", 4)
    monkeypatch.setattr(extract, "FIRST_LOAD_SETTLE", 0.5)  # the first load's wait
    store = Store("postgres", pg_dsn)
    store.create(5)
    forgotten = store.connect(autocommit=False)
    try:
        forgotten.execute("SELECT 1")  # open since before the process, writing nothing
        with Pipeline.from_yaml(pipeline(tmp_path, store)) as p, store.connect() as conn:
            assert p.run_once().ok
            for i in range(12):
                store.insert(conn, f"m{i}")
                assert p.run_once().ok
            ends = [m.ends for m in p._memory.values()]
    finally:
        forgotten.close()
    assert ends and all(len(e) <= 5 for e in ends), [len(e) for e in ends]
    assert len(warehouse_ids(tmp_path)) == 17


def test_the_first_load_waits_for_a_transaction_holding_a_number(
        tmp_path: Path, store: Store) -> None:
    """A busy table's first load: an application's transaction holds a number while a
    later one commits, and commits itself a moment later. The load notes its end (the
    later number), waits for the transactions open then to end, and only then reads its
    pages: the held row is in the warehouse after that one run, and the cursor pass
    after the load starts past its end (it re-reads nothing)."""
    store.create(20)
    late = store.connect(autocommit=False)
    try:
        held = store.insert(late, "late")
        with store.connect() as other:
            newer = store.insert(other, "newer")
        assert newer > held
        committer = threading.Timer(1.5, late.commit)
        committer.start()
        with Pipeline.from_yaml(pipeline(tmp_path, store)) as p:
            began = time.monotonic()
            first = p.run_once()
            waited = time.monotonic() - began
        committer.join()
        assert first.ok, first.errors
        ids = warehouse_ids(tmp_path)
        assert held in ids and len(ids) == 22, (sorted(ids), waited)
        time.sleep(1.1)  # MariaDB's trx_started has whole seconds
        with Pipeline.from_yaml(pipeline(tmp_path, store)) as p:
            again = p.run_once()  # resumes from the start the load's pages recorded
        assert again.ok and again.extracted_rows <= 1, again
    finally:
        late.close()
    assert waited >= 1.0, waited


def test_a_number_held_across_the_first_load_arrives(
        tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same transaction stays open past the load's wait (a session idle in its
    transaction): the load goes ahead, and its cursor passes re-read the table from its
    start until the transaction has ended, so the held row arrives when it commits."""
    from steadyflow.run import extract

    monkeypatch.setattr(extract, "FIRST_LOAD_SETTLE", 1.0)
    store.create(20)
    late = store.connect(autocommit=False)
    try:
        held = store.insert(late, "late")
        with store.connect() as other:
            store.insert(other, "newer")
        p = Pipeline.from_yaml(pipeline(tmp_path, store))
        assert p.run_once().ok  # the initial load, and the cursor pass after it
        assert p.run_once().ok
        late.commit()
    finally:
        late.close()
    with p:
        for _ in range(3):
            assert p.run_once().ok
            time.sleep(0.5)
    assert held in warehouse_ids(tmp_path)


def test_a_number_held_while_innodb_trx_is_read_often_arrives(
        tmp_path: Path, mysql_dsn: str) -> None:
    store = Store("mysql", mysql_dsn)
    store.create(20)
    p = Pipeline.from_yaml(pipeline(tmp_path, store))
    assert p.run_once().ok
    assert p.run_once().ok
    stop = threading.Event()

    def monitor() -> None:  # reads innodb_trx every 50 ms, as several pollers together do
        with store.connect() as conn:
            while not stop.is_set():
                store.execute(conn, "SELECT COUNT(*) FROM information_schema.innodb_trx")
                time.sleep(0.05)

    reader = threading.Thread(target=monitor)
    reader.start()
    try:
        time.sleep(0.5)
        late = store.connect(autocommit=False)
        try:
            held = store.insert(late, "late")
            time.sleep(2.5)  # past the observation's one-second margin
            with store.connect() as other:
                store.insert(other, "newer")
            for _ in range(3):
                assert p.run_once().ok
                time.sleep(1.1)
            late.commit()
        finally:
            late.close()
        with p:
            for _ in range(3):
                assert p.run_once().ok
                time.sleep(0.3)
    finally:
        stop.set()
        reader.join()
    assert held in warehouse_ids(tmp_path)


def resumed_first_load_gets_the_held_row(tmp_path: Path, store: Store,
                                         monkeypatch: pytest.MonkeyPatch,
                                         interrupt: Callable[[Path], None]) -> None:
    """A transaction holds a number (a newer row committed past it) while `interrupt`
    (the pipeline file) cuts the first load short; the resumed load, the transaction
    still open, must wait again (FIRST_LOAD_SETTLE: 1 s), and the held row arrives once
    it commits."""
    from steadyflow.run import extract

    monkeypatch.setattr(extract, "FIRST_LOAD_SETTLE", 1.0)
    store.create(20)
    late = store.connect(autocommit=False)
    cfg = pipeline(tmp_path, store)
    try:
        held = store.insert(late, "late")
        with store.connect() as other:
            store.insert(other, "newer")
        interrupt(cfg)
        with Pipeline.from_yaml(cfg) as p:
            assert p.run_once().ok  # the resumed load, the transaction still open
        late.commit()
    finally:
        late.close()
    time.sleep(1.1)  # MariaDB's trx_started has whole seconds
    with Pipeline.from_yaml(cfg) as p:
        for _ in range(3):
            assert p.run_once().ok
            time.sleep(0.5)
    assert held in warehouse_ids(tmp_path)


def test_a_first_load_stopped_while_it_waits_still_waits_when_resumed(
        tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load is stopped (a shutdown) while it waits for a transaction holding a
    number. The next run must not take the wait as done: it resumes the load while that
    transaction is still open, so it waits again (and, past FIRST_LOAD_SETTLE, re-reads
    from the table's start), and the held row arrives once it commits. Before, the
    stopped wait recorded the load's start anyway and the resumed load skipped the wait:
    its pages passed the held row, the cursor pass started past it, lost, every run ok."""
    from steadyflow.run import extract

    def stop_while_waiting(cfg: Path) -> None:
        stopped = Pipeline.from_yaml(cfg)
        settle = extract.TableExtractor._settle
        stoppers: list[threading.Timer] = []

        def settle_then_stop(self: Any, *args: Any) -> bool:
            # the stop comes 0.5 s into the 1 s wait, counted from the wait's start: a fixed
            # 0.5 s from the run's start came before the wait on a busy machine (parallel
            # test workers), or during a query of it: 'stopping; store not retried'
            stoppers.append(threading.Timer(0.5, stopped.stop))
            stoppers[-1].start()
            return bool(settle(self, *args))

        monkeypatch.setattr(extract.TableExtractor, "_settle", settle_then_stop)
        with stopped:
            stopped.run_once(raise_on_error=False)
            for stopper in stoppers:
                stopper.join()
        monkeypatch.setattr(extract.TableExtractor, "_settle", settle)
        assert stoppers, "the first load never waited"

    resumed_first_load_gets_the_held_row(tmp_path, store, monkeypatch, stop_while_waiting)


def test_a_first_load_killed_before_its_first_page_still_waits_when_resumed(
        tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load waited its FIRST_LOAD_SETTLE for a transaction holding a number,
    went ahead (its passes to re-read from the table's start) and was killed before its
    first page landed: no page recorded that start. The resumed load, the transaction
    still open, must wait again rather than take the load's noted end as settled: the
    held row arrives once it commits. Before, it was lost, every run ok."""

    def kill_before_the_first_page(cfg: Path) -> None:
        script = ("import sys; from steadyflow.run import extract; "
                  "extract.FIRST_LOAD_SETTLE = 1.0; from steadyflow.cli.main import entry; "
                  f"sys.argv = ['steadyflow', 'run', '-c', {str(cfg)!r}]; entry()")
        killed = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=90,
            env={**os.environ, "STEADYFLOW_FAILPOINT": "extract.before_land:1"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr

    resumed_first_load_gets_the_held_row(tmp_path, store, monkeypatch,
                                         kill_before_the_first_page)
