"""Adversarial review: a time cursor stored coarser than the clock that stamps it.

MariaDB's DATETIME and TIMESTAMP keep whole seconds unless declared otherwise, SQLite's
CURRENT_TIMESTAMP is spelled to the second, PostgreSQL's timestamp(0) rounds now() to one.
Rows written within one unit share a cursor value, and a poll continues strictly after its
checkpoint's (cursor, key): a row written after a poll into the checkpoint's second with a
lower key (an insert, or an update of an older row) sorts behind the checkpoint and was
never read, every run ok.

- Without a lookback (fixed mode, lookback 0: SQLite always, or `lookback_mode: fixed`) the
  rows tying the checkpoint's time are read again until the last poll began more than the
  time's unit after it (TableExtractor._ties_open).
- Under the adaptive lookback the bound (the oldest open transaction's start, or the
  source's now) is a clock reading: a transaction begun after the observation stamps
  12:00:05.3, stored 12:00:05 by a timestamp(0) column, before the bound 12:00:05.2. The
  bound steps back by what the column's unit may cut or round away
  (Dialect.stored_margin).

Each test reads both ends through their own drivers (sqlite3, pymysql, psycopg against
duckdb) and compares every key's value and cursor.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pymysql
import pytest
import yaml
from tests.support.sql_exec import execute

from steadyflow.extract.sql import SqlSource
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# kind: (the table, an upsert of (k, v) that stamps the source's clock now)
TABLES = {
    "sqlite": (("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL, "
                "u TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)", "CREATE INDEX t_u ON t (u, k)"),
               "INSERT INTO t (k, v) VALUES ({k}, {v}) ON CONFLICT (k) DO UPDATE SET "
               "v = excluded.v, u = CURRENT_TIMESTAMP"),
    # DATETIME is naive, read as UTC: stamped in UTC
    "mysql": (("CREATE TABLE t (k int PRIMARY KEY, v bigint NOT NULL, u datetime NOT NULL, "
               "KEY t_u (u, k))",),
              "INSERT INTO t (k, v, u) VALUES ({k}, {v}, UTC_TIMESTAMP()) ON DUPLICATE KEY "
              "UPDATE v = VALUES(v), u = UTC_TIMESTAMP()"),
    "postgres": (("CREATE TABLE t (k int PRIMARY KEY, v bigint NOT NULL, "
                  "u timestamptz(0) NOT NULL DEFAULT now())", "CREATE INDEX t_u ON t (u, k)"),
                 "INSERT INTO t (k, v) VALUES ({k}, {v}) ON CONFLICT (k) DO UPDATE SET "
                 "v = excluded.v, u = now()"),
}
CONTRACT = {"primary_key": ["k"], "cursor": "u",
            "columns": {"k": {"type": "int64", "nullable": False},
                        "v": {"type": "int64", "nullable": False},
                        "u": {"type": "timestamp", "nullable": False}}}


def store(kind: str, request: pytest.FixtureRequest, tmp: Path) -> tuple[str, dict[str, Any]]:
    """A fresh source of this kind holding the empty table: (its DSN or path, the
    source's config)."""
    if kind == "sqlite":
        at = str(tmp / "s.db")
        source: dict[str, Any] = {"kind": "sqlite", "path": at}
    else:
        at = request.getfixturevalue("pg_dsn" if kind == "postgres" else "mysql_dsn")
        source = {"kind": kind, "dsn": at}
    execute(kind, at, *TABLES[kind][0])
    return at, source


def pipeline(tmp: Path, source: dict[str, Any], **table: Any) -> Path:
    config = {"name": "coarse", "contracts": {"c": CONTRACT},
              "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "landing")},
              "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"),
                            "schema": "main"},
              "run": {"interval": 0.5},
              "sources": [{"name": "s", **source, "resilience": {"retries": 0},
                           "tables": [{"name": "t", "contract": "c", **table}]}]}
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _micros(value: Any) -> int:
    """A cursor value as UTC epoch microseconds (a naive or text time is UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def source_rows(kind: str, at: str) -> dict[int, tuple[int, int]]:
    return {int(k): (int(v), _micros(u))
            for k, v, u in execute(kind, at, "SELECT k, v, u FROM t")}


def warehouse_rows(tmp: Path) -> dict[int, tuple[int, int]]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return {int(k): (int(v), int(u)) for k, v, u in
                con.sql("SELECT k, v, epoch_us(u) FROM main.t").fetchall()}


@contextmanager
def connected(kind: str, at: str) -> Iterator[Callable[[str], None]]:
    """One connection of the source's own driver, each statement committed."""
    if kind == "postgres":
        with psycopg.connect(at, autocommit=True) as pg:
            yield lambda sql: pg.execute(sql.encode()) and None
    elif kind == "mysql":
        parts = urlsplit(at)
        my = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                             database=parts.path.lstrip("/"), autocommit=True)
        with closing(my), my.cursor() as cur:
            yield lambda sql: cur.execute(sql) and None
    else:
        with closing(sqlite3.connect(at, isolation_level=None, timeout=30)) as lite:
            yield lambda sql: lite.execute(sql) and None


def upsert(kind: str, at: str, k: int, v: int) -> None:
    execute(kind, at, TABLES[kind][1].format(k=k, v=v))


def stamp_of(kind: str, at: str, k: int) -> int:
    [(u,)] = execute(kind, at, f"SELECT u FROM t WHERE k = {k}")
    return _micros(u)


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_rows_written_into_the_checkpoints_second_without_a_lookback_are_read(
        request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    """Fixed window, lookback 0: a poll checkpoints (second s, key 100+i); then, within
    s, key 10+i is inserted and key 1 (an older row) updated, both stamped s. The next poll
    reads them (it continued strictly after the checkpoint: both lost, every run ok)."""
    at, source = store(kind, request, tmp_path)
    execute(kind, at, "INSERT INTO t (k, v, u) VALUES (1, 0, '2024-01-01 00:00:00')")
    mode = {} if kind == "sqlite" else {"lookback_mode": "fixed"}
    with Pipeline.from_yaml(pipeline(tmp_path, source, **mode)) as p:
        assert p.run_once(raise_on_error=False).ok
        for attempt in range(1, 6):
            upsert(kind, at, 100 + attempt, attempt)
            assert p.run_once(raise_on_error=False).ok
            stamped = stamp_of(kind, at, 100 + attempt)
            # the poll ended while the writers' clock was still in that second (a machine
            # stalled past it: the ties could no longer be written by a clock; again)
            if _micros(datetime.now(UTC)) < stamped + 900_000:
                break
        execute(kind, at, f"INSERT INTO t (k, v, u) SELECT {10 + attempt}, 7, u FROM t "
                          f"WHERE k = {100 + attempt}",
                f"UPDATE t SET v = 8, u = (SELECT u FROM (SELECT u FROM t "
                f"WHERE k = {100 + attempt}) AS s) WHERE k = 1")
        assert p.run_once(raise_on_error=False).ok
    truth = source_rows(kind, at)
    assert truth[1][1] == truth[10 + attempt][1] == stamp_of(kind, at, 100 + attempt)
    assert warehouse_rows(tmp_path) == truth


def test_a_postgres_row_rounded_back_to_the_checkpoints_second_is_read(
        request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """Adaptive lookback, timestamptz(0): a transaction begun just after a poll's
    observation (at s + 0.1) stamps now() = s + 0.1, stored s: before the bound, and tying
    the poll's checkpoint (s, 100+i) with key i. It commits after the poll; the next poll
    (strictly after the checkpoint, the bound being past it) never read it."""
    at, source = store("postgres", request, tmp_path)
    execute("postgres", at, "INSERT INTO t VALUES (1, 0, '2024-01-01 00:00:00+00')")
    late: list[int] = []
    open_late: list[psycopg.Connection[Any]] = []
    polled = SqlSource.poll_end

    def poll_end(self: SqlSource, *args: Any, **kwargs: Any) -> Any:
        seen = polled(self, *args, **kwargs)  # the observation, then the snapshot
        while late:  # a transaction begun after both, committed after the poll
            conn = psycopg.connect(at)
            conn.execute(TABLES["postgres"][1].format(k=late.pop(), v=7).encode())
            open_late.append(conn)
        return seen

    monkeypatch.setattr(SqlSource, "poll_end", poll_end)
    with Pipeline.from_yaml(pipeline(tmp_path, source)) as p:
        assert p.run_once(raise_on_error=False).ok
        for attempt in range(1, 11):
            while datetime.now(UTC).microsecond > 100_000:  # early in a second s
                time.sleep(0.005)
            upsert("postgres", at, 100 + attempt, attempt)  # stored s (rounded)
            late.append(attempt)
            try:
                assert p.run_once(raise_on_error=False).ok
            finally:
                for conn in open_late:
                    conn.commit()
                    conn.close()
                open_late.clear()
            if stamp_of("postgres", at, attempt) == stamp_of("postgres", at, 100 + attempt):
                break  # begun before s + 0.5: stored s, the case (else again)
        else:
            pytest.fail("no late row stored in its checkpoint's second in 10 tries")
        assert p.run_once(raise_on_error=False).ok
    assert warehouse_rows(tmp_path) == source_rows("postgres", at)


# (kind, lookback_mode): each coarse store under the mode that lost its rows
FOLLOWED = [("mysql", "fixed"), ("postgres", "auto"), ("sqlite", "auto")]


def settled(tmp: Path, proc: subprocess.Popen[str], quiet: float = 3.0) -> None:
    """Wait (up to 90 s: a loaded machine starts a process slowly) until the loop has a
    checkpoint, no landed page waits for its load, and neither changed for `quiet` s."""
    seen, since, deadline = None, time.monotonic(), time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the loop exited"
        try:
            with closing(sqlite3.connect(tmp / "state" / "state.db", timeout=5)) as state:
                now = (state.execute("SELECT watermark FROM checkpoints").fetchall(),
                       state.execute("SELECT count(*) FROM manifest "
                                     "WHERE status = 'landed'").fetchone())
        except sqlite3.OperationalError:  # not created yet, or busy
            now = None
        if now != seen or not now or not now[0] or now[1] != (0,):
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.2)
    raise AssertionError(f"the loop never settled: {seen}")


def followed(request: pytest.FixtureRequest, tmp: Path, kind: str, mode: str,
             seconds: float) -> None:
    """`run --follow` while two writers upsert random keys every few ms for `seconds`;
    then the writes stop, the loop runs quiet a while and stops: every key at its last
    value."""
    at, source = store(kind, request, tmp)
    upsert(kind, at, 0, 0)
    path = pipeline(tmp, source, lookback_mode=mode)
    proc = subprocess.Popen([sys.executable, "-m", "steadyflow", "run", "--follow", "-c",
                             str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=os.environ.copy())
    errors: list[BaseException] = []
    end = time.monotonic() + seconds

    def writer(seed: int) -> None:
        draw = random.Random(seed)
        try:
            with connected(kind, at) as write:
                while time.monotonic() < end:
                    write(TABLES[kind][1].format(k=draw.randint(1, 2000),
                                                 v=draw.randint(0, 10 ** 9)))
                    time.sleep(draw.random() * 0.004)
        except BaseException as exc:  # a failed write fails the test, not the thread
            errors.append(exc)

    try:
        settled(tmp, proc)  # its first load
        threads = [threading.Thread(target=writer, args=(seed,)) for seed in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        settled(tmp, proc)  # quiet: every page loaded, the checkpoint still
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert not errors and proc.returncode == 0, (errors, err)
    truth, loaded = source_rows(kind, at), warehouse_rows(tmp)
    assert loaded == truth, sorted(k for k in truth if loaded.get(k) != truth[k])


@pytest.mark.exhaustive
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("kind", "mode"), FOLLOWED)
def test_follow_under_writers_keeps_every_row_of_a_coarse_cursor(
        request: pytest.FixtureRequest, tmp_path: Path, kind: str, mode: str) -> None:
    """Long (exhaustive): whether the writes meet a poll inside one second depends on
    the machine's pace; on main's src 12 s lost rows on MariaDB and PostgreSQL at load
    ~10, 10 s on two of three, and none at load ~25. The tests above are the
    deterministic ones."""
    followed(request, tmp_path, kind, mode, seconds=45)
