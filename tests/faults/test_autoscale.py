"""`steadyflow autoscale`: a spike of source writes adds workers, its end removes them, and
nothing is lost on the way.

Three store databases (two PostgreSQL, one MariaDB; the TPC-H-shaped tables of
tests/support/chaos_tables.py), the state in PostgreSQL, the buffer a JetStream stream, the
warehouse PostgreSQL: the setup of tests/faults/test_workers.py, run by one `autoscale`
process with small thresholds. A writer burst on every store must make it add workers (its
/metrics and `status` both show them), quiet after the burst must make it drain them back
to the minimum (each removed worker exits 0, none is SIGKILLed, none dies by itself), its
own SIGTERM must stop the last one cleanly, and the independent oracle must then find every
warehouse table equal to its source.

A second test drives the process management alone on stand-in workers (no services): a
drain that exits cleanly, one that ignores SIGTERM and is SIGKILLed after the grace period,
and a worker that dies by itself and is restarted.
"""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from tests.support.chaos_tables import (
    COLUMNS,
    TABLES,
    SourceDb,
    create_tables,
    cursor,
    line_row,
    order_row,
)
from tests.support.jetstream import fresh_stream
from tests.support.workers import (
    diffs,
    status_json,
    store_databases,
    write_config,
)

from steadyflow.run.autoscale import Autoscaler, Policy, Sample, WorkerProcesses

CUSTOMERS, ORDERS = 30, 40
SPIKE_ROWS_PER_SECOND = 600   # per store at first; doubled every SPIKE_RAMP s, up to x8,
SPIKE_RAMP = 4.0              # until workers are added (a faster machine needs more)
SPIKE_MAX = 40.0              # the spike ends this long after it began at the latest ...
SPIKE_AFTER_SCALE_UP = 2.0    # ... or this long after the autoscaler added workers
SETTLE = 45.0                 # after the spike: back to the minimum within this
AUTOSCALE = ["--min", "1", "--max", "3", "--backlog-high", "3", "--backlog-low", "0",
             "--lag-high", "4s", "--lag-low", "1s", "--up-after", "1s", "--down-after", "3s",
             "--cooldown", "2s", "--sample-every", "0.5s", "--drain-grace", "30s",
             "--heartbeat", "1"]


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def stores() -> Iterator[list[SourceDb]]:
    yield from store_databases(2, 1)


@pytest.fixture
def stream() -> Iterator[str]:
    with fresh_stream("sf_autoscale") as name:
        yield name


# --- the spike -----------------------------------------------------------------------------
class Spike:
    """On every store, as long as it runs: new orders with their lines and updates of
    existing rows, in transactions paced to about `rate` rows a second."""

    def __init__(self, dbs: list[SourceDb], next_order: int) -> None:
        self.dbs = dbs
        self.next_order = next_order
        self.rows = 0
        self.rate = float(SPIKE_ROWS_PER_SECOND)
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(db, i), daemon=True)
                         for i, db in enumerate(dbs)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(30)
        if self.errors:
            raise AssertionError(f"spike writer failed: {self.errors[0]!r}")

    def _keys(self, n: int) -> range:
        with self._lock:
            first = self.next_order
            self.next_order += n
            return range(first, first + n)

    def _write(self, db: SourceDb, seed: int) -> None:
        rng = random.Random(seed)
        cols = {t: ", ".join(COLUMNS[t]) for t in TABLES}
        marks = {t: ", ".join(["%s"] * (len(COLUMNS[t]) - 1)) for t in TABLES}
        try:
            conn = db.connect()
            try:
                while not self._stop.is_set():
                    started = time.monotonic()
                    rows = 0
                    with cursor(conn) as cur:
                        for key in self._keys(20):
                            cur.execute(f"INSERT INTO orders ({cols['orders']}) VALUES "
                                        f"({marks['orders']}, {db.now})",
                                        order_row(rng, key, CUSTOMERS))
                            lines = [line_row(rng, key, n) for n in range(1, rng.randint(2, 7))]
                            cur.executemany(f"INSERT INTO lineitem ({cols['lineitem']}) VALUES "
                                            f"({marks['lineitem']}, {db.now})", lines)
                            rows += 1 + len(lines)
                        cur.execute(f"UPDATE customer SET c_acctbal = c_acctbal + 1, "
                                    f"updated_at = {db.now} WHERE c_custkey = %s",
                                    (rng.randint(1, CUSTOMERS),))
                        rows += 1
                    conn.commit()
                    with self._lock:
                        self.rows += rows
                    pause = rows / self.rate - (time.monotonic() - started)
                    if pause > 0:
                        self._stop.wait(pause)
            finally:
                conn.close()
        except Exception as exc:  # surfaced by stop()
            self.errors.append(exc)


# --- watching the autoscaler ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gauges(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.findall(r"^(steadyflow_autoscale_\w+?)(?:_total)?(?:\{[^}]*\})? (\S+)$", text,
                       re.M)
    values: dict[str, float] = {}
    for name, value in found:
        values[name] = values.get(name, 0.0) + float(value)
    return values


def wait_for(what: str, check: Any, timeout: float, log: Path,
             scaler: subprocess.Popen[bytes]) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        if scaler.poll() is not None:
            pytest.fail(f"autoscale exited with {scaler.returncode} while waiting for "
                        f"{what}:\n" + log.read_text()[-6000:])
        try:
            value = check()
        except (OSError, psycopg.Error, pymysql.Error):  # not up yet, or mid-DDL
            value = None
        if value:
            return value  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:g}s; autoscaler log:\n"
                        + decisions(log)[-6000:])
        time.sleep(0.3)


def autoscale_lines(log: Path) -> list[str]:
    """The autoscaler's own log messages (its workers log to the same file)."""
    out = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("logger") == "steadyflow.autoscale":
            out.append(f"{entry['level']}: {entry['msg']}")
    return out


def decisions(log: Path) -> str:
    return "\n".join(autoscale_lines(log))


def running_workers(state_dsn: str) -> int:
    with psycopg.connect(state_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM sf_state.workers WHERE status = 'running'"
                           ).fetchone()
    return int(row[0]) if row else 0


# --- the tests -----------------------------------------------------------------------------
@pytest.mark.faults
@pytest.mark.integration
def test_a_spike_adds_workers_and_its_end_drains_them(
        tmp_path: Path, stores: list[SourceDb], pg_warehouse_dsn: str, stream: str) -> None:
    next_order = max(create_tables(db, CUSTOMERS, ORDERS, 70 + i)
                     for i, db in enumerate(stores))
    for db in stores:  # stamped now, not an hour ago: the first new row is not 1 h of lag
        conn = db.connect()
        with cursor(conn) as cur:
            for table in TABLES:
                cur.execute(f"UPDATE {table} SET updated_at = {db.now}")
        conn.commit()
        conn.close()
    # no lookback: one spike writer per store, so its rows commit in the order of their
    # stamps, and a poll never sees a newer row before an older one
    cfg = write_config(tmp_path, "autoscale", stores, pg_warehouse_dsn,
                       {"stream": stream, "capacity": 32, "lease": "10s"},
                       {"page_size": 100, "min_page_size": 50})
    port = free_port()
    log = tmp_path / "autoscale.log"
    with log.open("w") as out:
        scaler = subprocess.Popen(
            [sys.executable, "-m", "steadyflow", "--log-level", "info", "autoscale", "-c",
             str(cfg), *AUTOSCALE, "--serve", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT)
    spike = Spike(stores, next_order + 1_000)
    try:
        # the seed rows loaded, and one worker running: the quiet before the spike
        wait_for("the initial load", lambda: all(
            d.clean for d in diffs(stores, pg_warehouse_dsn)), 60, log, scaler)
        wait_for("one quiet worker", lambda: (g := gauges(port)).get(
            "steadyflow_autoscale_workers") == 1 and g.get(
            "steadyflow_autoscale_draining_workers") == 0 and g, 60, log, scaler)
        changes_before = gauges(port)["steadyflow_autoscale_changes"]

        spike.start()
        began = time.monotonic()
        def ramped_up() -> dict[str, float] | None:
            ramps = min(3, int((time.monotonic() - began) / SPIKE_RAMP))
            spike.rate = SPIKE_ROWS_PER_SECOND * 2 ** ramps
            g = gauges(port)
            return g if g.get("steadyflow_autoscale_desired_workers", 0) >= 2 else None

        grown = wait_for("a scale-up during the spike", ramped_up, SPIKE_MAX, log, scaler)
        assert grown["steadyflow_autoscale_changes"] > changes_before
        wait_for("the added workers running", lambda: (g := gauges(port)).get(
            "steadyflow_autoscale_workers", 0) >= 2 and g, 10, log, scaler)
        # they are real workers of this pipeline: each registered in the state store
        wait_for("the added workers registered", lambda: running_workers(pg_warehouse_dsn)
                 >= 2, 20, log, scaler)
        time.sleep(max(0.0, min(SPIKE_AFTER_SCALE_UP, SPIKE_MAX - (time.monotonic() - began))))
        spike.stop()

        # quiet again: drained back to the minimum, each removed worker exiting 0
        wait_for("the drain back to one worker", lambda: (g := gauges(port)).get(
            "steadyflow_autoscale_desired_workers") == 1 and g.get(
            "steadyflow_autoscale_workers") == 1 and g.get(
            "steadyflow_autoscale_draining_workers") == 0 and g, SETTLE, log, scaler)
        scaler.send_signal(signal.SIGTERM)
        code = scaler.wait(60)
    finally:
        spike.stop()
        if scaler.poll() is None:
            scaler.kill()
            scaler.wait()
            for pid in re.findall(r"\(pid (\d+)\)", decisions(log)):  # no orphan workers
                subprocess.run(["kill", "-9", pid], capture_output=True)

    lines = decisions(log)
    assert code == 0, lines[-6000:]
    drained = re.findall(r"worker \w+ \(pid \d+\) drained, exit code (\d+)", lines)
    started = len(re.findall(r"^info: started worker", lines, re.M))
    assert started >= 2 and len(drained) == started - 1, lines[-6000:]
    assert set(drained) == {"0"}, lines[-6000:]  # each removed worker left cleanly
    assert len(re.findall(r"worker \w+ \(pid \d+\) stopped, exit code 0$", lines, re.M)) == 1
    for bad in ("SIGKILLed", "exited by itself", "could not read"):
        assert bad not in lines, lines[-6000:]
    assert re.search(r"scale down \d+ -> \d+: backlog 0 batches", lines), lines
    assert spike.rows > 1_000

    # the last worker drained: nothing runs any more, and `status` says so
    report = status_json(cfg)
    assert report["queue_depth"] == 0 and report["pending_batches"] == 0, report
    assert not [w for w in report["workers"] if w["status"] == "running"], report["workers"]
    assert sum(w["status"] == "stopped" for w in report["workers"]) == started
    found = diffs(stores, pg_warehouse_dsn)
    dirty = [d for d in found if not d.clean]
    assert not dirty, "\n".join(d.report() for d in dirty) + "\n" + lines[-4000:]
    with psycopg.connect(pg_warehouse_dsn) as conn:
        unloaded = conn.execute("SELECT count(*) FROM sf_state.manifest WHERE "
                                "status = 'landed'").fetchone()
        assert unloaded == (0,), "landed batches were never loaded"


STAND_IN = """
import os, pathlib, signal, sys, time
mode = sys.argv[1]
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
pathlib.Path(__file__).with_name(f"ready.{os.getpid()}").touch()
time.sleep(0.3 if mode == "crash" else 600)
sys.exit(3)
"""


@pytest.mark.faults
def test_workers_are_drained_killed_after_the_grace_and_restarted(tmp_path: Path) -> None:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    scripted: list[Sample] = []
    policy = Policy(minimum=1, maximum=3, backlog_high=2, up_after=0.0, down_after=0.0,
                    cooldown=0.0)

    def probe(at: float) -> Sample:
        sample = scripted[-1] if scripted else Sample(at, 0, 0.0)
        return Sample(at, sample.backlog, sample.lag)

    def step(backlog: int) -> None:
        """One autoscaler round on this backlog; then wait until every worker has set its
        signal handler (a SIGTERM before that would kill, not stop it)."""
        scripted.append(Sample(0, backlog, 0.0))
        scaler.step()
        deadline = time.monotonic() + 20
        while not all((tmp_path / f"ready.{p.process.pid}").exists() for p in workers.running
                      if p.process.poll() is None):
            assert time.monotonic() < deadline, "stand-in workers did not start"
            time.sleep(0.05)

    # a clean drain: the youngest worker leaves on SIGTERM with 0, sent only once it is up
    # (registered in the state store: here, once the test says so)
    up: set[int] = set()
    workers = WorkerProcesses([sys.executable, str(script), "clean"], grace=10)
    scaler = Autoscaler(probe, workers, policy, sample_every=0, registered=lambda: set(up))
    step(0)
    assert len(workers.running) == 1
    step(20)  # x10 pressure: capped at the maximum
    assert scaler.desired == 3 and len(workers.running) == 3
    youngest = workers.running[-1]
    step(0)
    assert scaler.desired == 2 and workers.draining == [youngest]
    assert youngest.drain_deadline is None and youngest.process.poll() is None  # not up yet
    up.add(youngest.process.pid)
    step(0)
    assert youngest.drain_deadline is not None
    youngest.process.wait(10)
    exits = workers.reap()
    assert [(e.name, e.code, e.drained, e.killed) for e in exits] == [
        (youngest.name, 0, True, False)]
    up.update(p.process.pid for p in workers.procs)
    assert scaler.shutdown() is True and not workers.procs

    # a worker that ignores SIGTERM is SIGKILLed once its grace is over
    workers = WorkerProcesses([sys.executable, str(script), "stubborn"], grace=0.5)
    scaler = Autoscaler(probe, workers, policy, sample_every=0)
    scripted.clear()
    step(0)
    assert scaler.shutdown() is False and not workers.procs

    # a worker that dies by itself is restarted (after a back-off: it crashed at once)
    workers = WorkerProcesses([sys.executable, str(script), "crash"], grace=5)
    scaler = Autoscaler(probe, workers, policy, sample_every=0)
    scripted.clear()
    step(0)
    first = workers.running[0]
    first.process.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
            workers.running and workers.running[0] is not first):
        scaler.step()
        time.sleep(0.1)
    assert workers.running and workers.running[0] is not first
    assert (scaler.metrics.registry.get_sample_value("steadyflow_autoscale_restarts_total")
            or 0) >= 1
    scaler.shutdown()
