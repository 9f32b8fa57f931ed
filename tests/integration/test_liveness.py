"""Liveness: a run always returns, and never reports ok while a table failed.

- After a restart with a full buffer and more landed batches waiting in the manifest, the
  sweep used to `put` without a timeout before any loader ran: `run` hung forever (19 of 32
  restarts in a SIGKILL run, because extraction under backpressure waits exactly in `put`).
- An unexpected (non-steadyflow) exception in the loader killed the loader thread while
  the run was recorded "ok"; now it is that table's error and the other tables load.
- Batches that failed for good (a fatal merge error) were nacked for 300 s and kept their
  buffer slots: two of them filled a capacity-2 buffer, every table's extraction waited in
  `put` and `run` never returned. Now they leave the buffer and wait in the manifest.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from tests.conftest import steadyflow
from tests.support.jetstream import NATS_URL, delete_stream, fresh_stream

from steadyflow.buffer.jetstream import JetStreamBuffer
from steadyflow.buffer.sqlite import SqliteBuffer
from steadyflow.model import BatchRef
from steadyflow.run.pipeline import Pipeline

ROWS = 300
PAGE = 25  # 12 batches per table

ITEMS: dict[str, Any] = {
    "primary_key": ["id"], "cursor": "rev",
    "columns": {"id": {"type": "int64", "nullable": False},
                "rev": {"type": "int64", "nullable": False},
                "val": {"type": "string"}}}


def make_source(path: Path, tables: tuple[str, ...] = ("items",)) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for table in tables:
            db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL, "
                       "val TEXT)")
            db.executemany(f"INSERT INTO {table} VALUES (?,?,?)",
                           [(i, i, f"{table}-{i}") for i in range(1, ROWS + 1)])
        db.commit()


def write_config(directory: Path, capacity: int, tables: tuple[str, ...] = ("items",),
                 contracts: dict[str, Any] | None = None,
                 buffer: dict[str, Any] | None = None) -> Path:
    config = {
        "name": "liveness", "state_dir": "state", "landing": {"path": "landing"},
        "buffer": {"kind": "sqlite", **(buffer or {}), "capacity": capacity},
        "warehouse": {"kind": "duckdb", "path": "warehouse.duckdb", "schema": "main"},
        "contracts": contracts or {t: ITEMS for t in tables},
        "sources": [{"name": "s", "kind": "sqlite", "path": "source.db",
                     "tables": [{"name": t, "contract": t, "page_size": PAGE}
                                for t in tables]}],
    }
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def state_count(directory: Path, sql: str) -> int:
    path = directory / "state" / ("buffer.db" if "queue" in sql else "state.db")
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path, timeout=30)) as db:
        try:
            return int(db.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


def warehouse_rows(directory: Path, table: str = "items") -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(directory / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(f"SELECT id, rev, val FROM main.{table} ORDER BY id").fetchall()
    finally:
        con.close()


def run_must_return(config: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    try:
        return steadyflow("run", "-c", str(config), "--json", timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`steadyflow run` did not return within {timeout:.0f}s (hung)")


def test_run_returns_when_the_buffer_is_full_and_more_landed_batches_wait(
        tmp_path: Path) -> None:
    make_source(tmp_path / "source.db")
    config = write_config(tmp_path, capacity=50)
    steadyflow("extract", "-c", str(config), check=True)  # 12 batches landed and queued
    assert state_count(tmp_path, "SELECT count(*) FROM manifest") == ROWS // PAGE
    for suffix in ("", "-wal", "-shm"):  # a lost buffer: the manifest is the truth
        (tmp_path / "state" / f"buffer.db{suffix}").unlink(missing_ok=True)
    config = write_config(tmp_path, capacity=3)  # 3 fit, 9 wait in the manifest

    proc = run_must_return(config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert warehouse_rows(tmp_path) == [(i, i, f"items-{i}") for i in range(1, ROWS + 1)]
    assert state_count(tmp_path, "SELECT count(*) FROM manifest WHERE status='landed'") == 0


def test_a_kill_while_extraction_waits_for_buffer_space_does_not_hang_the_restart(
        tmp_path: Path) -> None:
    """The issue's case: extraction (no loader) blocks in `put` with its batch landed and
    recorded; SIGKILL there leaves a landed-but-unqueued batch beside a full buffer."""
    make_source(tmp_path / "source.db")
    config = write_config(tmp_path, capacity=2)
    proc = subprocess.Popen([sys.executable, "-m", "steadyflow", "extract", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "STEADYFLOW_FAILPOINT": ""})
    try:
        deadline = time.monotonic() + 60
        while (state_count(tmp_path, "SELECT count(*) FROM manifest") < 3
               or state_count(tmp_path, "SELECT count(*) FROM queue") < 2):
            assert proc.poll() is None, "extract ended instead of waiting for buffer space"
            assert time.monotonic() < deadline, "extract never filled the buffer"
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None  # still waiting in put
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert state_count(tmp_path, "SELECT count(*) FROM manifest") == 3
    assert state_count(tmp_path, "SELECT count(*) FROM queue") == 2

    run = run_must_return(config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert warehouse_rows(tmp_path) == [(i, i, f"items-{i}") for i in range(1, ROWS + 1)]


def test_extract_alone_on_a_full_buffer_stops_and_says_so_instead_of_waiting_forever(
        tmp_path: Path) -> None:
    """`steadyflow extract` runs no loader: on a buffer that stays full it waited in `put`
    for ever, silently. It now waits buffer.extract_wait, then the table fails (exit 2)
    naming the full buffer, counts the batches it did queue, and `run` finishes the rest."""
    make_source(tmp_path / "source.db")
    config = write_config(tmp_path, capacity=2, buffer={"extract_wait": "1s"})
    try:
        proc = steadyflow("extract", "-c", str(config), "--json", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("`steadyflow extract` on a full buffer did not return within 60s (hung)")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "buffer full (2 batches) for 1s" in proc.stderr
    assert json.loads(proc.stdout)["extracted_batches"] == 2
    # two queued, the third landed and recorded but not queued: its checkpoint waits
    assert state_count(tmp_path, "SELECT count(*) FROM queue") == 2
    assert state_count(tmp_path, "SELECT count(*) FROM manifest") == 3

    run = run_must_return(config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert warehouse_rows(tmp_path) == [(i, i, f"items-{i}") for i in range(1, ROWS + 1)]


def test_an_unexpected_load_error_is_its_tables_error_and_the_others_load(
        tmp_path: Path) -> None:
    """A contract column added while batches are pending: loading those batches raised a
    plain KeyError, which killed the loader thread while the run said ok."""
    make_source(tmp_path / "source.db", tables=("items", "other"))
    config = write_config(tmp_path, capacity=64, tables=("items", "other"))
    steadyflow("extract", "-c", str(config), "--table", "s.items", check=True)
    with closing(sqlite3.connect(tmp_path / "source.db")) as db:
        db.execute("ALTER TABLE items ADD COLUMN note TEXT")
        db.execute("UPDATE items SET note = 'n', rev = rev + 1000 WHERE id <= 10")
        db.commit()
    with_note = {**ITEMS, "columns": {**ITEMS["columns"], "note": {"type": "string"}}}
    config = write_config(tmp_path, capacity=64, tables=("items", "other"),
                          contracts={"items": with_note, "other": ITEMS})

    proc = run_must_return(config)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # not ok, and says so
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["errors"] and all("table=items" in e for e in summary["errors"])
    assert "KeyError" in summary["errors"][0]
    # the other table loaded in full, beside the failing one
    assert warehouse_rows(tmp_path, "other") == [(i, i, f"other-{i}")
                                                 for i in range(1, ROWS + 1)]

    status = steadyflow("status", "-c", str(config), "--json")
    assert status.returncode == 2, status.stderr  # a failing table: status exits 2
    tables = {t["table"]: t for t in json.loads(status.stdout)["tables"]}
    assert tables["s.items"]["state"] == "failing", tables["s.items"]
    assert tables["s.items"]["failing_batches"] == ROWS // PAGE
    assert "KeyError" in tables["s.items"]["last_error"]
    assert tables["s.other"]["state"] == "ok"
    runs = state_count(tmp_path, "SELECT count(*) FROM runs WHERE command='run' AND "
                                 "outcome='ok'")
    assert runs == 0

    again = run_must_return(config, timeout=60)  # retried at once, not after its backoff
    assert again.returncode == 1, again.stdout + again.stderr


@pytest.fixture(params=["sqlite", pytest.param("jetstream", marks=pytest.mark.integration)])
def buffer_config(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The buffer section: the embedded one, or a JetStream stream of its own."""
    if request.param == "sqlite":
        yield {"kind": "sqlite"}
        return
    with fresh_stream("sf_liveness") as stream:
        yield {"kind": "jetstream", "url": NATS_URL, "stream": stream}


def buffer_depth(buffer: dict[str, Any], directory: Path) -> int:
    if buffer["kind"] == "sqlite":
        return state_count(directory, "SELECT count(*) FROM queue")
    with closing(JetStreamBuffer(buffer["url"], buffer["stream"], capacity=2)) as stream:
        return stream.depth()


def test_batches_that_fail_for_good_leave_the_buffer_and_the_other_tables_load(
        tmp_path: Path, buffer_config: dict[str, Any]) -> None:
    """A target column of an incompatible type fails every merge of `bad` (fatal). Its
    batches must not hold the buffer: the run returns (not ok), `items` loads in full, the
    batches stay in the manifest with their error, and load once the target is fixed."""
    make_source(tmp_path / "source.db", tables=("bad", "items"))
    config = write_config(tmp_path, capacity=2, tables=("bad", "items"), buffer=buffer_config)
    with closing(duckdb.connect(str(tmp_path / "warehouse.duckdb"))) as con:
        con.execute("CREATE TABLE main.bad (id BIGINT, rev BIGINT, val INTEGER, "
                    "_steadyflow_seq BIGINT)")  # 'bad-1' is no INTEGER

    proc = run_must_return(config, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["errors"] and all("table=bad" in e for e in summary["errors"])
    assert warehouse_rows(tmp_path, "items") == [(i, i, f"items-{i}")
                                                 for i in range(1, ROWS + 1)]
    assert state_count(tmp_path, "SELECT count(*) FROM manifest WHERE tbl='bad' AND status="
                                 "'landed' AND error LIKE '%in the warehouse but%'") == ROWS // PAGE
    assert buffer_depth(buffer_config, tmp_path) == 0  # they hold no buffer slot
    status = steadyflow("status", "-c", str(config), "--json")
    assert status.returncode == 2, status.stderr  # a failing table: status exits 2
    tables = {t["table"]: t for t in json.loads(status.stdout)["tables"]}
    # never loaded, so "error" rather than "failing"; either way not ok, with the count
    assert tables["s.bad"]["state"] in ("failing", "error"), tables["s.bad"]
    assert tables["s.bad"]["failing_batches"] == ROWS // PAGE
    assert tables["s.items"]["state"] == "ok", tables["s.items"]
    assert state_count(tmp_path, "SELECT count(*) FROM runs WHERE outcome='ok'") == 0

    with closing(duckdb.connect(str(tmp_path / "warehouse.duckdb"))) as con:
        con.execute("DROP TABLE main.bad")  # the operator fixes the target
    again = run_must_return(config, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert warehouse_rows(tmp_path, "bad") == [(i, i, f"bad-{i}") for i in range(1, ROWS + 1)]
    assert state_count(tmp_path, "SELECT count(*) FROM manifest WHERE status='landed'") == 0
    status = steadyflow("status", "-c", str(config), "--json", check=True)
    assert {t["table"]: t["state"] for t in json.loads(status.stdout)["tables"]} == {
        "s.bad": "ok", "s.items": "ok"}


def test_a_follower_cycle_is_not_ok_while_parked_batches_wait_for_their_retry(
        tmp_path: Path) -> None:
    """`run --follow`: the cycles after the one that parked `bad`'s batches do not retry
    them (a fatal error waits minutes); they must still end "error", never "ok"."""
    make_source(tmp_path / "source.db", tables=("bad", "items"))
    config = write_config(tmp_path, capacity=2, tables=("bad", "items"))
    config.write_text(config.read_text() + "run:\n  interval: 0.2\n")
    with closing(duckdb.connect(str(tmp_path / "warehouse.duckdb"))) as con:
        con.execute("CREATE TABLE main.bad (id BIGINT, rev BIGINT, val INTEGER, "
                    "_steadyflow_seq BIGINT)")
    proc = subprocess.Popen([sys.executable, "-m", "steadyflow", "run", "--follow", "-c",
                             str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while state_count(tmp_path, "SELECT count(*) FROM runs WHERE ended_at IS NOT NULL "
                                    "AND command='run'") < 4:
            assert proc.poll() is None, "run --follow ended"
            assert time.monotonic() < deadline, "run --follow did not finish 4 cycles"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert state_count(tmp_path, "SELECT count(*) FROM runs WHERE outcome='ok'") == 0
    assert state_count(tmp_path, "SELECT count(*) FROM runs WHERE outcome='error' AND "
                                 "error LIKE '%s.bad: 12 batch(es)%'") >= 3
    assert warehouse_rows(tmp_path, "items") == [(i, i, f"items-{i}")
                                                 for i in range(1, ROWS + 1)]


def test_a_zero_buffer_lease_does_not_hand_a_leased_batch_out_again(tmp_path: Path) -> None:
    """config.py refuses a lease under a second; the buffer itself must not spin on one."""
    buffer = SqliteBuffer(tmp_path / "buffer.db", capacity=4, lease=0)
    try:
        ref = BatchRef("b1", "s", "t", "p", 1, 1, "c", None, None, time.time())
        buffer.put(ref)
        assert buffer.get() is not None
        assert buffer.get() is None  # leased: not delivered again at once
    finally:
        buffer.close()


@pytest.mark.integration
def test_a_batch_the_buffer_refuses_for_good_does_not_keep_the_sweep_from_the_others(
        tmp_path: Path) -> None:
    """A batch reference over the NATS server's max_payload (a repair batch carries its
    deleted keys in it: 10,000 long text keys pass 1 MB) can never be published. Taken for
    an unreachable server, it failed the sweep's put, and the sweep stopped there, at the
    oldest batch, every round: every landed batch after it was never queued again (a
    stream that lost its messages was never refilled) while runs went on."""
    make_source(tmp_path / "source.db")
    with fresh_stream("sf_sweep") as stream:
        config = write_config(tmp_path, capacity=50, buffer={
            "kind": "jetstream", "url": NATS_URL, "stream": stream})
        steadyflow("extract", "-c", str(config), check=True)  # 12 batches landed, queued
        delete_stream(stream)  # their messages lost: the manifest is the truth
        with Pipeline.from_yaml(config) as pipeline:
            huge = BatchRef(batch_id="huge", source="s", table="items",
                            path="s/items/huge.parquet", rows=1, nbytes=1, checksum="c",
                            low=None, high=None, landed_at=1.0, kind="repair",
                            meta={"deletes": [[f"{i:0100d}"] for i in range(12_000)]})
            pipeline.state.record_landed(huge)  # the oldest landed batch
            pipeline.sweep()
            assert pipeline.buffer.depth() == ROWS // PAGE, "the sweep stopped at the huge one"
            [entry] = [b for b in pipeline.state.batches() if b["batch_id"] == "huge"]
            assert entry["status"] == "landed" and "max_payload" in (entry["error"] or "")


def test_a_batch_of_a_table_the_config_no_longer_names_stops_no_other(tmp_path: Path) -> None:
    """Batches of t2 landed, then t2 was taken out of the config: the loader met the first
    of them while ordering its group by target ('no table s.t2 in the config') and
    stopped, so no batch of any table loaded and extraction stopped with it, on every run
    while t2's batches were pending (a worker's loop ended). Now that batch fails alone,
    naming its table, and is kept for a config that names t2 again; t1 loads."""
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        for t in ("t1", "t2"):
            conn.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, v TEXT)")
            conn.execute(f"INSERT INTO {t} VALUES (1, 'a'), (2, 'b')")
        conn.commit()
    config: dict[str, Any] = {
        "name": "removed", "state_dir": str(tmp_path / "state"),
        "warehouse": {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb")},
        "landing": {"path": str(tmp_path / "landing")},
        "contracts": {"c": {"primary_key": ["id"], "cursor": "id", "columns": {
            "id": {"type": "int64", "nullable": False}, "v": {"type": "string"}}}},
        "sources": [{"name": "s", "kind": "sqlite", "path": str(tmp_path / "s.db"),
                     "tables": [{"name": "t1", "contract": "c"},
                                {"name": "t2", "contract": "c"}]}]}
    both = tmp_path / "both.yml"
    both.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(both) as pipeline:
        assert pipeline.extract().extracted_batches == 2  # landed, queued, not loaded
    config["sources"][0]["tables"] = config["sources"][0]["tables"][:1]
    one = tmp_path / "one.yml"
    one.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(one) as pipeline:
        summary = pipeline.run_once(raise_on_error=False)
        pending = [(b.source, b.table) for b in pipeline.state.pending_batches()]
    assert summary.failed_tables == [], summary.errors
    assert len(summary.failed_batches) == 1, summary.errors
    assert [e for e in summary.errors if "s.t2" in e and "no longer names" in e], summary.errors
    assert pending == [("s", "t2")]  # kept: loaded once the config names t2 again
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT id, v FROM t1 ORDER BY id").fetchall() == [
            (1, "a"), (2, "b")]
