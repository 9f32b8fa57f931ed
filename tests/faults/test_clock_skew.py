"""A worker whose host clock is off does not make `status` lie.

Leases are judged by the state database's clock, and the chaos runs (workers 3 min ahead
and behind, killed and replaced) found the warehouse exact. But a poll's time, a load's
and an error's were stamped by the writing worker's clock and aged by the reader's:
a worker 20 min behind that polled every second showed its tables 'stalled' (failing,
exit 2), and one ahead would have shown a table that stopped polling as fresh for as long
as it is ahead. The state's clock stamps them now, and status ages them by it.

One worker, its wall clock 20 min behind (tests/support/skew: SF_SKEW), on a PostgreSQL
store with live writers; after it has caught up and polled for a while, status must say
every table is ok, polled seconds ago, and exit 0.
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from tests.support.chaos_tables import SourceDb, Writers, create_tables
from tests.support.jetstream import fresh_stream
from tests.support.workers import Workers, status_json, write_config

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]

SKEW = Path(__file__).resolve().parents[1] / "support" / "skew"
TABLES = ("orders", "lineitem")


def behind(seconds: float) -> Any:
    """A launcher of workers whose wall clock reads `seconds` behind."""
    def launch(argv: list[str], out: IO[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        env = {**env, "SF_SKEW": str(-seconds),
               "PYTHONPATH": os.pathsep.join([str(SKEW), env.get("PYTHONPATH", "")])}
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    return launch


def test_a_worker_with_a_clock_behind_is_not_reported_stalled(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str) -> None:
    db = SourceDb("postgres", pg_dsn)
    writers = Writers(db, 20, create_tables(db, 20, 60, 5), 5)
    with fresh_stream("sf_skew") as stream:
        cfg = write_config(tmp_path, "skew", [db], pg_warehouse_dsn,
                           {"stream": stream, "capacity": 16, "lease": "5s"},
                           {"page_size": 100}, tables=TABLES)
        (tmp_path / "logs").mkdir()
        workers = Workers(cfg, tmp_path / "logs", 2.0)
        name = workers.start(launch=behind(1200))
        try:
            writers.start()
            deadline = time.monotonic() + 60
            while True:  # caught up: every table loaded and polled since
                report = status_json(cfg)
                if all(t["last_success"] and t["last_poll_seconds"] is not None
                       for t in report["tables"]):
                    break
                assert name in workers.alive() and time.monotonic() < deadline, (
                    workers.tail(name))
                time.sleep(1)
            time.sleep(3)
            report = status_json(cfg)
            states = {t["table"]: (t["state"], t["last_poll_human"]) for t in report["tables"]}
            assert all(state == "ok" for state, _ in states.values()), states
            assert all(t["last_poll_seconds"] < 60 for t in report["tables"]), states
            assert report["exit_code"] == 0, (report["health"], states)
            writers.stop()
            assert workers.terminate(name) == 0, workers.tail(name)
        finally:
            writers.stop()
            for left in workers.alive():
                workers.kill(left)


def test_a_worker_with_a_clock_ahead_reports_the_consumer_lag_by_the_states_clock(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str) -> None:
    """The consumer lag (/metrics steadyflow_consumer_lag_seconds) ages the manifest's
    landed_at, which the state's clock stamps: a `run --follow --serve` whose clock is
    20 min ahead showed 20 min of lag for a batch landed seconds ago (a false alert), one
    behind showed none for a batch waiting. Its loader is blocked on a lock (the batch
    waits); the truth is aged by PostgreSQL's clock, read through the driver."""
    import psycopg
    from tests.support.status_pipeline import config, follow, free_port, metric, store, wait

    path = store(tmp_path, datetime.now(UTC) - timedelta(minutes=5), n=50)
    conf = config(tmp_path, path,
                  warehouse={"kind": "postgres", "dsn": pg_warehouse_dsn, "schema": "wh",
                             "lock_timeout": "10m"},
                  state={"kind": "postgres", "dsn": pg_dsn, "schema": "sf_state"})
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "SF_SKEW": "1200",
           "PYTHONPATH": os.pathsep.join([str(SKEW), os.environ.get("PYTHONPATH", "")])}

    def loaded() -> int:
        with psycopg.connect(pg_warehouse_dsn, autocommit=True) as wh:
            if wh.execute("SELECT to_regclass('wh.sales')").fetchone()[0] is None:
                return 0
            return int(wh.execute("SELECT count(*) FROM wh.sales").fetchone()[0])

    def waited() -> float | None:  # the oldest landed batch's age by the state's clock
        with psycopg.connect(pg_dsn, autocommit=True) as st:
            row = st.execute("SELECT extract(epoch from clock_timestamp()) - min(landed_at)"
                             " FROM sf_state.manifest WHERE status='landed'").fetchone()
        return None if row[0] is None else float(row[0])

    locker = psycopg.connect(pg_warehouse_dsn)
    try:
        with follow(conf, "--serve", f"127.0.0.1:{port}", env=env):
            wait("the first 50 rows loaded", lambda: loaded() == 50)
            locker.execute("LOCK TABLE wh.sales IN SHARE MODE")  # every writer kept out
            store(tmp_path, datetime.now(UTC), n=10, first=51)
            wait("a batch of the new rows landed", lambda: waited() is not None)
            time.sleep(2)
            before = waited()
            lag = metric(url, "steadyflow_consumer_lag_seconds")
            after = waited()
            assert before is not None and after is not None
            assert before - 1.5 <= lag <= after + 1.5, (before, lag, after)
            assert loaded() == 50  # the truth: the batch waits
            locker.rollback()
            wait("the new rows loaded", lambda: loaded() == 60)
            wait("no lag once loaded",
                 lambda: metric(url, "steadyflow_consumer_lag_seconds") == 0)
    finally:
        locker.close()
