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
