"""Order and fencing: an older read never overwrites a newer row.

The merge keeps the row from the batch with the highest extraction sequence number. That
number is now taken before a page is read (it was taken when the batch landed, so a read
that stalled between reading and landing won over every later one), and each table has an
extraction lease whose generation is checked where a batch is recorded and where the
checkpoint moves: an extractor that stalled past its lease records nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from tests.conftest import steadyflow

from steadyflow.errors import ExtractionFenced
from steadyflow.model import BatchRef, Watermark
from steadyflow.run.lease import new_holder
from steadyflow.state import SqliteStateStore

pytestmark = pytest.mark.faults

ROWS = 200
LEASE = 2.0  # seconds (STEADYFLOW_EXTRACT_LEASE): the stalled extractor sleeps past it

ITEMS: dict[str, Any] = {
    "primary_key": ["id"], "cursor": "rev",
    "columns": {"id": {"type": "int64", "nullable": False},
                "rev": {"type": "int64", "nullable": False},
                "val": {"type": "string"}}}


def setup(directory: Path) -> Path:
    with closing(sqlite3.connect(directory / "source.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")  # the test writes while the stalled one reads
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL, "
                   "val TEXT)")
        db.executemany("INSERT INTO items VALUES (?,?,?)",
                       [(i, i, "v1") for i in range(1, ROWS + 1)])
        db.commit()
    config = {
        "name": "fencing", "state_dir": "state", "landing": {"path": "landing"},
        "warehouse": {"kind": "duckdb", "path": "warehouse.duckdb", "schema": "main"},
        "contracts": {"items": ITEMS},
        "sources": [{"name": "s", "kind": "sqlite", "path": "source.db",
                     # one page: no read-ahead thread is mid-query when the process stops
                     "tables": [{"name": "items", "contract": "items", "page_size": 1000}]}],
    }
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def update_all(directory: Path, version: str) -> None:
    with closing(sqlite3.connect(directory / "source.db")) as db:
        db.execute("UPDATE items SET val = ?, rev = rev + 1000", (version,))
        db.commit()


def durable_state(directory: Path) -> tuple[list[Any], ...]:
    with closing(sqlite3.connect(directory / "state" / "state.db", timeout=30)) as db:
        return tuple(db.execute(sql).fetchall() for sql in (
            "SELECT batch_id, status FROM manifest ORDER BY batch_id",
            "SELECT source, tbl, watermark FROM checkpoints",
            "SELECT * FROM backfills"))


def queued(directory: Path) -> int:
    with closing(sqlite3.connect(directory / "state" / "buffer.db", timeout=30)) as db:
        return int(db.execute("SELECT count(*) FROM queue").fetchone()[0])


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


def test_an_extractor_stalled_past_its_lease_records_nothing_and_never_wins(
        tmp_path: Path) -> None:
    config = setup(tmp_path)
    env = {"STEADYFLOW_EXTRACT_LEASE": str(LEASE), "STEADYFLOW_FAILPOINT": ""}
    steadyflow("run", "-c", str(config), env=env, check=True)  # v1 everywhere
    update_all(tmp_path, "v2")

    # A reads v2, then stops (SIGSTOP) just before landing it: a paused process
    stale = subprocess.Popen(
        [sys.executable, "-m", "steadyflow", "extract", "-c", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env, "STEADYFLOW_FAILPOINT": "extract.before_land:1:SIGSTOP"})
    try:
        deadline = time.monotonic() + 60
        while not stopped(stale.pid):
            assert stale.poll() is None, stale.communicate()
            assert time.monotonic() < deadline, "the extractor never reached its failpoint"
            time.sleep(0.05)
        time.sleep(LEASE + 1.0)  # past its lease

        # B takes the table over and loads the newer version v3
        update_all(tmp_path, "v3")
        takeover = steadyflow("run", "-c", str(config), env=env, timeout=120)
        assert takeover.returncode == 0, takeover.stdout + takeover.stderr
        before = durable_state(tmp_path)
    finally:
        stale.send_signal(signal.SIGCONT)
    out, err = stale.communicate(timeout=120)
    woke = durable_state(tmp_path), queued(tmp_path)

    # whatever runs next, the warehouse keeps the newest version of every row
    after = steadyflow("run", "-c", str(config), env=env, timeout=120)
    assert after.returncode == 0, after.stdout + after.stderr
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT id, rev, val FROM main.items ORDER BY id").fetchall()
    finally:
        con.close()
    assert rows == [(i, i + 2000, "v3") for i in range(1, ROWS + 1)]

    # A woke up fenced, said so, and recorded, queued and advanced nothing
    assert woke == (before, 0)
    assert stale.returncode == 1, out + err
    assert "lost its extraction lease" in out + err


def test_a_second_extractor_skips_a_table_a_live_one_holds(tmp_path: Path) -> None:
    config = setup(tmp_path)
    state = SqliteStateStore(tmp_path / "state" / "state.db")
    try:
        lease = state.try_lease("s", "items", new_holder(), 60)  # this (live) process
        assert lease is not None
        proc = steadyflow("extract", "-c", str(config), "--json", timeout=60)
        assert proc.returncode == 1, proc.stdout + proc.stderr  # not ok, not a failed table
        assert "skipped (extract): another extractor" in proc.stdout
        assert durable_state(tmp_path) == ([], [], [])  # it recorded nothing
        state.renew_lease(lease)  # still ours
    finally:
        state.close()


def test_a_dead_holders_lease_is_taken_at_once(tmp_path: Path) -> None:
    state = SqliteStateStore(tmp_path / "state.db")
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        holder = f"{os.uname().nodename}:{dead.stdout.strip()}:x"
        first = state.try_lease("s", "t", holder, 600)
        assert first is not None and first.generation == 1
        second = state.try_lease("s", "t", new_holder(), 600)  # no waiting out 600 s
        assert second is not None and second.generation == 2
        assert state.try_lease("s", "t", new_holder(), 600) is None  # a live holder's
    finally:
        state.close()


def test_a_fenced_lease_cannot_record_or_advance(tmp_path: Path) -> None:
    state = SqliteStateStore(tmp_path / "state.db")
    try:
        old = state.try_lease("s", "t", new_holder(), 0.01)
        assert old is not None
        time.sleep(0.05)  # expired
        new = state.try_lease("s", "t", new_holder(), 60)
        assert new is not None and new.generation == old.generation + 1
        batch = BatchRef("b1", "s", "t", "p", 1, 1, "c", None, None, time.time())
        mark = Watermark(5, (5,))
        for step in (lambda: state.record_landed(batch, lease=old),
                     lambda: state.advance_checkpoint("s", "t", mark, lease=old),
                     lambda: state.start_backfill("s", "t", mark, lease=old),
                     lambda: state.advance_backfill("s", "t", mark, lease=old),
                     lambda: state.finish_backfill("s", "t", lease=old),
                     lambda: state.renew_lease(old)):
            with pytest.raises(ExtractionFenced, match="lost its extraction lease"):
                step()
        assert state.batch("b1") is None and state.checkpoint("s", "t") is None
        state.record_landed(batch, lease=new)
        state.advance_checkpoint("s", "t", mark, lease=new)
        assert state.batch("b1") is not None and state.checkpoint("s", "t") == mark
    finally:
        state.close()


@pytest.mark.parametrize("marks", [
    # pages in a database collation's order (PostgreSQL en_US: 'a' < 'B'; Python: 'B' < 'a')
    [Watermark("a", ("a",)), Watermark("B", ("B",))],
    # a cursor whose stored values mix types Python cannot order (int and text)
    [Watermark(5, (1,)), Watermark("2024-01-01", (2,))],
])
def test_the_checkpoint_follows_the_pages_not_pythons_order(
        tmp_path: Path, marks: list[Watermark]) -> None:
    state = SqliteStateStore(tmp_path / "state.db")
    try:
        for mark in marks:
            state.advance_checkpoint("s", "t", mark)
        assert state.checkpoint("s", "t") == marks[-1]
    finally:
        state.close()
