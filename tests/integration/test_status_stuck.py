"""What `status` and /metrics say of a `run --follow` that polls while its data does not
move, checked against the truth read with the drivers (the source, the warehouse, the
state's manifest).

- A loader blocked on a lock another warehouse session holds: its polls go on, land and
  record (last poll fresh), nothing loads. `status` said healthy, exit 0, for as long as it
  lasted, and steadyflow_consumer_lag_seconds stayed 0 (the loader reports it between
  groups, and a blocked one reports nothing), so no alert fired either.
- A table that fails every poll after it once loaded: its word was 'failing' (degraded,
  exit 1) for ever; a table not read to its end for 15 min while the loop runs is stalled
  (failing, exit 2), whether or not its polls left an error.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.conftest import steadyflow, write_pipeline

from steadyflow.buffer.sqlite import SCHEMA as BUFFER_SCHEMA
from steadyflow.demo.stores import SCHEMA, format_ts

pytestmark = pytest.mark.integration


def _store(root: Path, newest: datetime, n: int, first: int = 1) -> Path:
    path = root / "store.db"
    with closing(sqlite3.connect(path)) as db:
        if first == 1:
            for statement in SCHEMA:
                db.execute(statement)
        db.executemany("INSERT INTO sales VALUES (?,?,?,?,?,?,?,?)", [
            (1, i, f"SKU-{i}", 2, "3.50", "USD", format_ts(newest),
             format_ts(newest - timedelta(seconds=first + n - 1 - i)))
            for i in range(first, first + n)])
        db.commit()
    return path


def _status(config: Path) -> tuple[int, dict[str, Any]]:
    proc = steadyflow("status", "-c", str(config), "--json")
    return proc.returncode, json.loads(proc.stdout)


def _wait(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _follow(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(config.with_name("follow.log"), "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "steadyflow", "run", "-c",
                                 str(config), "--follow", *extra],
                                stdout=subprocess.DEVNULL, stderr=log)


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state(root: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The state file, read (or written: "twenty minutes pass") through the driver."""
    with closing(sqlite3.connect(root / "state" / "state.db", timeout=30)) as db:
        rows = db.execute(sql, params).fetchall()
        db.commit()
    return rows


def _metric(url: str, name: str) -> float:
    body = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{body}")


def test_a_loader_blocked_on_a_lock_is_not_healthy(tmp_path: Path,
                                                   pg_warehouse_dsn: str) -> None:
    store = _store(tmp_path, datetime.now(UTC) - timedelta(minutes=5), n=50)
    config = write_pipeline(tmp_path, [{
        "name": "s1", "kind": "sqlite", "path": str(store),
        "tables": [{"name": "sales", "contract": "sales", "page_size": 100}]}],
        warehouse={"kind": "postgres", "dsn": pg_warehouse_dsn, "schema": "wh"},
        run={"interval": "0.3s"})

    def in_warehouse() -> int:
        with psycopg.connect(pg_warehouse_dsn, autocommit=True) as wh:
            if wh.execute("SELECT to_regclass('wh.sales')").fetchone()[0] is None:
                return 0  # not created yet
            return int(wh.execute("SELECT count(*) FROM wh.sales").fetchone()[0])

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = _follow(config, "--serve", f"127.0.0.1:{port}")
    locker = psycopg.connect(pg_warehouse_dsn)
    try:
        _wait("the first 50 rows loaded", lambda: in_warehouse() == 50)
        # another session holds a lock that lets readers in and keeps every writer out
        locker.execute("LOCK TABLE wh.sales IN SHARE MODE")
        _store(tmp_path, datetime.now(UTC), n=10, first=51)  # 10 new rows at the source

        def blocked() -> bool:  # the loader's merge waits for the lock (the truth)
            with psycopg.connect(pg_warehouse_dsn, autocommit=True) as wh:
                return bool(wh.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND "
                    "relation = 'wh.sales'::regclass").fetchone()[0])

        _wait("the loader blocked on the lock", blocked)
        time.sleep(3)
        [(landed,)] = _state(tmp_path, "SELECT min(landed_at) FROM manifest "
                                       "WHERE status='landed'")
        assert landed is not None  # a batch of the new rows landed and is not loaded
        truth = time.time() - float(landed)
        assert _metric(url, "steadyflow_consumer_lag_seconds") == pytest.approx(truth,
                                                                                abs=1.5)

        # twenty minutes pass: the batch landed 20 min ago, the polls go on succeeding
        _state(tmp_path, "UPDATE manifest SET landed_at = landed_at - 1200 "
                         "WHERE status='landed'")
        code, report = _status(config)
        [table] = report["tables"]
        assert in_warehouse() == 50  # the truth: the 10 rows are not in the warehouse
        assert table["last_poll_seconds"] < 60  # polled: not stalled, lag measured
        assert table["state"] == "behind", table
        assert 1200 < table["unloaded_seconds"] < 1300, table
        assert (code, report["health"]) == (2, "failing"), report
        human = steadyflow("status", "-c", str(config))
        assert human.returncode == 2 and "behind" in human.stdout, human.stdout
        assert _metric(url, "steadyflow_consumer_lag_seconds") > 1200

        locker.rollback()  # the lock goes: the batch loads, the status clears
        _wait("the 10 new rows loaded", lambda: in_warehouse() == 60)
        _wait("status healthy again", lambda: _status(config)[0] == 0)
    finally:
        locker.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_table_that_fails_every_poll_for_15_min_is_stalled(tmp_path: Path) -> None:
    store = _store(tmp_path, datetime.now(UTC) - timedelta(minutes=5), n=20)
    config = write_pipeline(tmp_path, [{
        "name": "s1", "kind": "sqlite", "path": str(store),
        "tables": [{"name": "sales", "contract": "sales", "page_size": 100}]}],
        run={"interval": "0.3s"})
    proc = _follow(config)
    try:
        _wait("the first load", lambda: _status(config)[1]["tables"][0]["rows_changed"] == 20)
        with closing(sqlite3.connect(store)) as db:  # every poll of the table fails now
            db.execute("ALTER TABLE sales RENAME TO sales_gone")
            db.commit()
        _wait("the failing poll recorded", lambda: "sales" in (
            _status(config)[1]["tables"][0]["last_error"] or ""))
        # twenty minutes pass without a successful poll (none can succeed now)
        _state(tmp_path, "UPDATE source_polls SET polled_at = polled_at - 1200")
        code, report = _status(config)
        [table] = report["tables"]
        assert table["last_poll_seconds"] > 1200 and report["loop"]["status"] == "running"
        assert table["state"] == "stalled", table
        assert (code, report["health"]) == (2, "failing"), report
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_serve_run_whose_loop_ended_by_itself_fails_every_view(tmp_path: Path) -> None:
    """`serve --run` whose loop ends by itself (its loader stops on an error no retry
    covers: the SQLite buffer's queue table is gone, then made again) goes on serving.
    /healthz said 503, but /api/status and the page gave the verdict of the state alone
    (the failed round: degraded), steadyflow_up stayed 1 (SteadyflowDown could not fire)
    and the tables' polls stopped with nothing calling them stalled for 15 min. Every view
    now says the loop stopped: failing, exit code 2, steadyflow_up 0."""
    store = _store(tmp_path, datetime.now(UTC) - timedelta(minutes=5), n=20)
    config = write_pipeline(tmp_path, [{
        "name": "s1", "kind": "sqlite", "path": str(store),
        "tables": [{"name": "sales", "contract": "sales", "page_size": 100}]}],
        run={"interval": "0.3s"})
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "steadyflow", "serve", "-c",
                                 str(config), "--run", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=log)

    def api() -> dict[str, Any]:
        return dict(json.loads(urllib.request.urlopen(url + "api/status", timeout=10).read()))

    def healthz() -> int:
        try:
            return int(urllib.request.urlopen(url + "healthz", timeout=10).status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def answers() -> bool:
        try:
            return api()["tables"][0]["rows_changed"] == 20
        except OSError:
            return False

    try:
        _wait("the first load", answers)
        assert api()["exit_code"] == 0 and healthz() == 200
        with closing(sqlite3.connect(tmp_path / "state" / "buffer.db")) as db:
            db.execute("DROP TABLE queue")
            db.commit()
        _store(tmp_path, datetime.now(UTC), n=5, first=21)  # something for the loader
        _wait("the loop ended", lambda: healthz() == 503)
        assert proc.poll() is None  # the server goes on serving
        with closing(sqlite3.connect(tmp_path / "state" / "buffer.db")) as db:
            db.executescript(BUFFER_SCHEMA)  # the buffer is back; the loop is not
        report = api()
        assert (report["health"], report["exit_code"]) == ("failing", 2), report
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "pipeline stopped" in page
        assert _metric(url, "steadyflow_up") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_suspended_follow_loop_fails_status_at_once(tmp_path: Path) -> None:
    """`run --follow` stopped with SIGSTOP (Ctrl-Z in its terminal) holds its lock and
    moves nothing: status said healthy, exit 0, until its tables were 15 min without a
    poll. Now it fails at once and names the process; SIGCONT clears it."""
    store = _store(tmp_path, datetime.now(UTC) - timedelta(minutes=5), n=20)
    config = write_pipeline(tmp_path, [{
        "name": "s1", "kind": "sqlite", "path": str(store),
        "tables": [{"name": "sales", "contract": "sales", "page_size": 100}]}],
        run={"interval": "0.3s"})
    proc = _follow(config)
    try:
        _wait("the first load", lambda: _status(config)[1]["tables"][0]["rows_changed"] == 20)
        proc.send_signal(signal.SIGSTOP)
        _wait("the process stopped", lambda: Path(f"/proc/{proc.pid}/stat").read_text()
              .rpartition(")")[2].split()[0] == "T")
        code, report = _status(config)
        assert report["loop"]["status"] == "suspended" and report["loop"]["pid"] == proc.pid
        assert (code, report["health"]) == (2, "failing"), report
        human = steadyflow("status", "-c", str(config))
        assert human.returncode == 2 and "suspended" in human.stdout, human.stdout
        proc.send_signal(signal.SIGCONT)
        _wait("status healthy again", lambda: _status(config)[0] == 0)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
