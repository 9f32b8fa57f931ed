"""Adversarial review: cursor values a keyset page cannot continue after, in a real store.

A row stamped in the future moved a fixed window's checkpoint past every row written later
with a correct clock (test_a_row_stamped_in_the_future_holds_no_later_row_back); stepping
back from now instead still lost every row written between two runs more than the lookback
before the second (the cron tests: a gap longer than the lookback is slept explicitly, so
they do not depend on how fast a run is). Each compares the source, read with its own
driver, with the DuckDB warehouse key by key.

A number cursor holding NaN or +Infinity (PostgreSQL numeric sorts NaN after every number,
SQLite stores 9e999 as an infinite REAL) cannot be loaded: validation quarantines its row.
But it is the table's greatest cursor, so a page ending on it moved the checkpoint there,
and no row written afterwards could sort after it: every later row was lost while every
run said ok. Such a cursor must be refused before any page is read, naming the column.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pymysql
import pytest
import yaml
from tests.conftest import steadyflow

from steadyflow.model import Watermark
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CONTRACT = {"primary_key": ["id"], "cursor": "v",
            "columns": {"id": {"type": "int64", "nullable": False},
                        "v": {"type": "decimal(12,2)", "nullable": False}}}


def run(tmp: Path, source: dict[str, Any], contract: dict[str, Any] = CONTRACT,
        **table: Any) -> RunSummary:
    config = {"name": "edges", "contracts": {"c": contract},
              "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "landing")},
              "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"),
                            "schema": "main"},
              "sources": [{"name": "s", **source, "resilience": {"retries": 0},
                           "tables": [{"name": "t", "contract": "c", "page_size": 2,
                                       **table}]}]}
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(path) as p:
        return p.run_once(raise_on_error=False)


def loaded_ids(tmp: Path) -> list[int]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return sorted(r[0] for r in con.sql("SELECT id FROM main.t").fetchall())


def check(tmp: Path, source: dict[str, Any], write: Any, shown: str) -> None:
    """Rows 1, 2 and a row 3 whose cursor is `shown`: the run refuses the table naming
    the cursor column and the value (without the refusal it loaded 1 and 2, and then
    never row 4, written later with an ordinary cursor); once row 3 gets a real cursor,
    every row arrives."""
    first = run(tmp, source)
    assert "s.t" in first.failed_tables, first
    assert any("cursor column v" in e and shown in e for e in first.errors), first.errors
    write("INSERT INTO t VALUES (4, 30)")
    again = run(tmp, source)
    assert "s.t" in again.failed_tables, again
    write("UPDATE t SET v = 40 WHERE id = 3")
    fixed = run(tmp, source)
    assert fixed.ok, fixed.errors
    assert loaded_ids(tmp) == [1, 2, 3, 4]


@pytest.mark.parametrize("shown", ["NaN", "Infinity"])
def test_postgres_numeric_cursor_past_every_number(tmp_path: Path, pg_dsn: str,
                                                   shown: str) -> None:
    def write(sql: str) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.encode())

    # an unconstrained numeric: numeric(12,2) cannot hold Infinity
    write("CREATE TABLE t (id bigint PRIMARY KEY, v numeric NOT NULL)")
    write("CREATE INDEX t_v ON t (v, id)")
    write(f"INSERT INTO t VALUES (1, 10), (2, 20), (3, '{shown}')")
    check(tmp_path, {"kind": "postgres", "dsn": pg_dsn}, write, shown)


def test_sqlite_infinite_real_cursor(tmp_path: Path) -> None:
    db = tmp_path / "store.db"

    def write(sql: str) -> None:
        with closing(sqlite3.connect(db)) as conn:
            conn.execute(sql)
            conn.commit()

    write("CREATE TABLE t (id INTEGER PRIMARY KEY, v NUMERIC NOT NULL)")
    write("CREATE INDEX t_v ON t (v, id)")
    write("INSERT INTO t VALUES (1, 10), (2, 20), (3, 9e999)")
    check(tmp_path, {"kind": "sqlite", "path": str(db)}, write, "Infinity")


TIMED = {"primary_key": ["id"], "cursor": "ts",
         "columns": {"id": {"type": "int64", "nullable": False},
                     "ts": {"type": "timestamp", "nullable": False}}}
FUTURE = "2099-01-01 00:00:00.000000"


def config_file(tmp: Path, source: dict[str, Any], contract: dict[str, Any],
                run: dict[str, Any] | None = None, **table: Any) -> Path:
    config: dict[str, Any] = {
        "name": "edges", "contracts": {"c": contract}, **({"run": run} if run else {}),
        "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "landing")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "sources": [{"name": "s", **source, "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "page_size": 2, **table}]}]}
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sqlite_writer(db: Path) -> Any:
    def write(sql: str, *params: Any) -> None:
        with closing(sqlite3.connect(db)) as conn:
            conn.execute(sql, params)
            conn.commit()
    return write


def stamp_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def micros(value: datetime) -> int:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def sqlite_rows(db: Path) -> dict[int, int]:
    """The source's rows (id -> cursor as epoch microseconds), read with sqlite3."""
    with closing(sqlite3.connect(db)) as conn:
        return {i: micros(datetime.fromisoformat(ts))
                for i, ts in conn.execute("SELECT id, ts FROM t").fetchall()}


def warehouse_rows(tmp: Path) -> dict[int, int]:
    """The warehouse's rows (id -> cursor as epoch microseconds), read with duckdb."""
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return dict(con.sql("SELECT id, epoch_us(ts) FROM main.t").fetchall())


def future_row_table(tmp: Path, now_rows: int = 1) -> tuple[Path, Any]:
    """A SQLite store (its path, its `sqlite_writer`) with table t (id, ts text) indexed
    in keyset order: rows 1..`now_rows` stamped now, the next one stamped FUTURE."""
    db = tmp / "store.db"
    write = sqlite_writer(db)
    write("CREATE TABLE t (id INTEGER PRIMARY KEY, ts TEXT NOT NULL)")
    write("CREATE INDEX t_ts ON t (ts, id)")
    write("INSERT INTO t VALUES " + ", ".join(["(?, ?)"] * (now_rows + 1)),
          *[p for i in range(1, now_rows + 1) for p in (i, stamp_now())],
          now_rows + 1, FUTURE)
    return db, write


def write_between_runs(write: Any, row: int, lookback: float) -> None:
    """A row written with a correct clock after a run ended, then a gap longer than the
    lookback before the next run starts (a cron interval longer than the lookback): the
    next run's now minus the lookback lies after the row, whatever the machine's speed."""
    time.sleep(0.05)
    write("INSERT INTO t VALUES (?, ?)", row, stamp_now())
    time.sleep(lookback + 1.5)


@pytest.mark.parametrize("lookback", [0, 1, 60])
def test_a_row_stamped_in_the_future_holds_no_later_row_back(tmp_path: Path,
                                                             lookback: int) -> None:
    """A fixed window steps back from the checkpoint: a row stamped years ahead (a
    mistyped year, a client clock ahead) moved it past every row written afterwards with
    a correct clock, and they were skipped while every run said ok. From such a
    checkpoint the window steps back from the start of the previous poll; the future row
    is re-read, harmlessly. Row 4 is written after the first run ended and before the
    second starts (lookback 60: within the window, the case stepping back from now also
    covered; 0 and 1: the gap is longer than the lookback, which stepping back from now
    lost, every run ok)."""
    db, write = future_row_table(tmp_path, 2)
    source = {"kind": "sqlite", "path": str(db)}
    assert run(tmp_path, source, TIMED, lookback=lookback).ok
    write_between_runs(write, 4, min(lookback, 1))
    assert run(tmp_path, source, TIMED, lookback=lookback).ok
    assert warehouse_rows(tmp_path) == sqlite_rows(db)
    assert loaded_ids(tmp_path) == [1, 2, 3, 4]


@pytest.mark.parametrize("lookback", [0, 1])
def test_cron_runs_past_a_future_row_lose_no_row_written_between_them(
        tmp_path: Path, lookback: int) -> None:
    """`steadyflow run` as separate processes (a cron job) with a future-stamped row in
    the table: each row written between two runs, more than the lookback before the
    second, arrives; also after a run that landed nothing new (its start is remembered
    from the last landed page, an earlier one: a longer re-read, never a skipped row)."""
    db, write = future_row_table(tmp_path)
    path = config_file(tmp_path, {"kind": "sqlite", "path": str(db)}, TIMED,
                       lookback=lookback)
    steadyflow("run", "-c", str(path), check=True)
    steadyflow("run", "-c", str(path), check=True)  # nothing new
    for row in (3, 4, 5):
        write_between_runs(write, row, lookback)
        steadyflow("run", "-c", str(path), check=True)
        assert warehouse_rows(tmp_path) == sqlite_rows(db), row


@pytest.mark.parametrize(("lookback", "state"), [(0, "sqlite"), (1, "sqlite"),
                                                  (0, "postgres")])
def test_a_poll_killed_between_landing_and_checkpoint_keeps_the_earlier_start(
        tmp_path: Path, request: pytest.FixtureRequest, lookback: int, state: str) -> None:
    """A run SIGKILLed after landing the first page of its re-read past a future row and
    before moving the checkpoint past it (failpoint extract.after_land) leaves the
    earlier run's checkpoint (2099) with its own, later start on the newest page. The
    next run stepped back from that start and passed row 5 (written before the killed
    run, on a page it never reached): lost for good, every later run ok. A page landed
    after the checkpoint was last written is no record of its poll's start."""
    db, write = future_row_table(tmp_path)
    path = config_file(tmp_path, {"kind": "sqlite", "path": str(db)}, TIMED,
                       lookback=lookback)
    if state == "postgres":  # the state store workers share (checkpoints, manifest)
        config = yaml.safe_load(path.read_text())
        config["state"] = {"kind": "postgres", "dsn": request.getfixturevalue("pg_dsn")}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    steadyflow("run", "-c", str(path), check=True)
    time.sleep(0.05)
    for row in (3, 4, 5):  # pages [3, 4], [5, 2]: the kill comes after the first
        write("INSERT INTO t VALUES (?, ?)", row, stamp_now())
    time.sleep(lookback + 1.5)
    killed = steadyflow("run", "-c", str(path),
                        env={"STEADYFLOW_FAILPOINT": "extract.after_land:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    steadyflow("run", "-c", str(path), check=True)
    assert warehouse_rows(tmp_path) == sqlite_rows(db)


def test_one_pipeline_polling_past_a_future_row_loses_no_row(tmp_path: Path) -> None:
    """One process polling again (as `run --follow` does): the start of the previous
    completed poll is kept in the table's memory, and a row written between two polls
    more than the lookback before the second arrives."""
    db, write = future_row_table(tmp_path)
    path = config_file(tmp_path, {"kind": "sqlite", "path": str(db)}, TIMED, lookback=0)
    with Pipeline.from_yaml(path) as p:
        assert p.run_once(raise_on_error=False).ok
        for row in (3, 4):
            write_between_runs(write, row, 0)
            assert p.run_once(raise_on_error=False).ok
    assert warehouse_rows(tmp_path) == sqlite_rows(db)


def test_run_follow_past_a_future_row_loses_no_row(tmp_path: Path) -> None:
    """`steadyflow run --follow` (one process, polls every ~0.25-0.5 s): a row written
    between two polls is older than the next poll's now (lookback 0), which is where
    stepping back from now started; the previous poll's start is kept in memory."""
    db, write = future_row_table(tmp_path)
    path = config_file(tmp_path, {"kind": "sqlite", "path": str(db)}, TIMED,
                       run={"interval": 0.5}, lookback=0)
    proc = subprocess.Popen([sys.executable, "-m", "steadyflow", "run", "--follow", "-c",
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

    def checkpoint() -> str | None:
        try:
            with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as state:
                row = state.execute("SELECT watermark FROM checkpoints").fetchone()
        except sqlite3.OperationalError:  # not created yet
            return None
        return row[0] if row else None

    try:
        deadline = time.monotonic() + 60
        while "2099" not in (checkpoint() or ""):
            assert time.monotonic() < deadline and proc.poll() is None, "no first load"
            time.sleep(0.1)
        for row in (3, 4):
            write_between_runs(write, row, 0)
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert warehouse_rows(tmp_path) == sqlite_rows(db)


STORES = {  # kind: (table, a time stamped by the server's clock now, the future)
    "postgres": ("CREATE TABLE t (id bigint PRIMARY KEY, ts timestamptz NOT NULL)",
                 "clock_timestamp()", "'2099-01-01 00:00:00+00'"),
    # DATETIME is naive: steadyflow reads it as UTC, so it is written in UTC
    "mysql": ("CREATE TABLE t (id bigint PRIMARY KEY, ts datetime(6) NOT NULL)",
              "UTC_TIMESTAMP(6)", "'2099-01-01 00:00:00'"),
}


@pytest.mark.parametrize("kind", sorted(STORES))
def test_server_stores_cron_runs_past_a_future_row_lose_no_row(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    """The same on PostgreSQL (timestamptz) and MariaDB (DATETIME), stamped by the
    server's clock, with a fixed lookback of 1 s and 2.5 s between a row and the run."""
    dsn = request.getfixturevalue("pg_dsn" if kind == "postgres" else "mysql_dsn")
    create, now, future = STORES[kind]

    def query(sql: str) -> list[tuple[Any, ...]]:
        if kind == "postgres":
            with psycopg.connect(dsn, autocommit=True) as conn:
                cur = conn.execute(sql.encode())
                return cur.fetchall() if cur.description else []
        parts = urlsplit(dsn)
        with closing(pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                                     user="root", password="",
                                     database=parts.path.lstrip("/"),
                                     autocommit=True)) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())

    query(create)
    query("CREATE INDEX t_ts ON t (ts, id)")
    query(f"INSERT INTO t VALUES (1, {now}), (2, {future})")
    path = config_file(tmp_path, {"kind": kind, "dsn": dsn}, TIMED, lookback=1,
                       lookback_mode="fixed")
    steadyflow("run", "-c", str(path), check=True)
    for row in (3, 4):
        time.sleep(0.05)
        query(f"INSERT INTO t VALUES ({row}, {now})")
        time.sleep(2.5)
        steadyflow("run", "-c", str(path), check=True)
        source = {i: micros(ts) for i, ts in query("SELECT id, ts FROM t")}
        assert warehouse_rows(tmp_path) == source, row


def test_pages_of_an_older_version_make_a_future_checkpoint_re_read_all(
        tmp_path: Path) -> None:
    """Pages landed by an older version record no start: from a checkpoint ahead of the
    clock no later start can be proven safe (that version stepped back from now, and may
    have skipped rows written between its runs), so the table is read again from its
    start once: row 3, written between runs and skipped then, arrives."""
    db, write = future_row_table(tmp_path)
    source = {"kind": "sqlite", "path": str(db)}
    assert run(tmp_path, source, TIMED, lookback=0).ok
    with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as state:
        state.execute("UPDATE manifest SET ref = json_remove(ref, '$.meta.began')")
        state.commit()
    # a row an older version skipped: stamped well before this run, after the first
    write("INSERT INTO t VALUES (3, ?)", stamp_now())
    time.sleep(1.5)
    assert run(tmp_path, source, TIMED, lookback=0).ok
    assert warehouse_rows(tmp_path) == sqlite_rows(db)
    write_between_runs(write, 4, 0)
    assert run(tmp_path, source, TIMED, lookback=0).ok
    assert warehouse_rows(tmp_path) == sqlite_rows(db)


def test_a_sqlite_checkpoint_kept_as_a_parsed_future_time_re_reads_all(
        tmp_path: Path) -> None:
    """A SQLite checkpoint an older version kept as a parsed time is re-spelled as the
    day before it: from a future one (2099-01-01) that started the re-read at 2098-12-31,
    after every row written with a correct clock since the last run, which were lost.
    Ahead of the clock it is read again from its start once instead."""
    db, write = future_row_table(tmp_path)
    source = {"kind": "sqlite", "path": str(db)}
    assert run(tmp_path, source, TIMED, lookback=0).ok
    parsed = Watermark(datetime(2099, 1, 1), (2,), on=("ts", "id"))
    with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as state:
        state.execute("UPDATE checkpoints SET watermark = ?", (parsed.to_json(),))
        state.commit()
    write_between_runs(write, 3, 0)
    assert run(tmp_path, source, TIMED, lookback=0).ok
    assert warehouse_rows(tmp_path) == sqlite_rows(db)
    write_between_runs(write, 4, 0)
    assert run(tmp_path, source, TIMED, lookback=0).ok
    assert warehouse_rows(tmp_path) == sqlite_rows(db)


def test_a_checkpoint_left_at_nan_is_refused_with_its_fix(tmp_path: Path) -> None:
    """A checkpoint recorded at NaN before such cursors were refused at the probe stayed
    there: with the source row corrected, the probe passes, but no row sorts after NaN,
    so the table read nothing for ever, every run ok. It is refused, naming the reset."""
    db = tmp_path / "store.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v NUMERIC NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 10), (2, 20)")
        conn.commit()
    source = {"kind": "sqlite", "path": str(db)}
    assert run(tmp_path, source).ok
    with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as state:
        state.execute("UPDATE checkpoints SET watermark = ?",
                      (Watermark(Decimal("NaN"), (3,)).to_json(),))
        state.commit()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("INSERT INTO t VALUES (4, 30)")
        conn.commit()
    refused = run(tmp_path, source)
    assert "s.t" in refused.failed_tables, refused
    assert any("NaN" in e and "steadyflow reset" in e for e in refused.errors), refused.errors
    steadyflow("reset", "-c", str(tmp_path / "pipeline.yml"), "--table", "s.t", check=True)
    assert run(tmp_path, source).ok
    assert loaded_ids(tmp_path) == [1, 2, 4]
