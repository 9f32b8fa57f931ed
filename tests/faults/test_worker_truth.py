"""What operators see of a pipeline run by `steadyflow worker` processes must be true: the
status (its word and exit code), the status page and each worker's /metrics.

Each test has its own source and warehouse databases (the state in the warehouse's), its
own JetStream stream and its own landing folder. The pipeline: one PostgreSQL store with
two small tables, read into a PostgreSQL warehouse.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from tests.conftest import steadyflow
from tests.faults.test_multihost import Nats
from tests.support.faultproxy import FaultProxy
from tests.support.jetstream import NATS_PORT, fresh_stream

from steadyflow.observe.web import StatusServer
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration]

TABLES = ("t1", "t2")
CONTRACT = {"primary_key": ["id"], "cursor": "updated_at", "columns": {
    "id": {"type": "int64", "nullable": False},
    "v": {"type": "string"},
    "updated_at": {"type": "timestamp", "nullable": False}}}


@pytest.fixture
def stream() -> Iterator[str]:
    with fresh_stream("sf_wtruth") as name:
        yield name


def make_pipeline(work: Path, source_dsn: str, warehouse_dsn: str, stream: str,
                  rows: int = 3) -> Path:
    """The source's tables (`rows` rows each) and pipeline.yml; returns its path."""
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        for t in TABLES:
            conn.execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, v text, "
                         "updated_at timestamptz NOT NULL DEFAULT now())")
            conn.execute(f"INSERT INTO {t} SELECT g, 'v' || g, now() - interval '1 hour' "
                         f"FROM generate_series(1, {rows}) g")
    config: dict[str, Any] = {
        "name": "wtruth",
        "state": {"kind": "postgres", "dsn": warehouse_dsn, "schema": "sf_state"},
        "buffer": {"kind": "jetstream", "stream": stream, "capacity": 64, "lease": "5s"},
        "warehouse": {"kind": "postgres", "dsn": warehouse_dsn, "schema": "wh"},
        "landing": {"path": str(work / "landing")},
        "run": {"interval": 0.5},
        "contracts": {"c": CONTRACT},
        "sources": [{"name": "s", "kind": "postgres", "dsn": source_dsn,
                     "resilience": {"retries": 1, "backoff_initial": "0.1s", "backoff_max": "0.2s"},
                     "tables": [{"name": t, "contract": "c"} for t in TABLES]}],
    }
    path = work / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def metric(body: str, name: str, table: str) -> float:
    """One sample of a /metrics body, by name and table label."""
    for line in body.splitlines():
        if line.startswith(name + "{") and f'table="{table}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for table {table} not in /metrics:\n{body}")


def test_a_worker_reports_the_polls_and_loads_of_the_others(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str, stream: str) -> None:
    """A worker's /metrics (`worker --serve`) gave, for a table another worker polls, the
    last poll of its own start (SteadyflowPollFailing after 15 min on a healthy idle
    pipeline) and, for a table it polled once and another worker loaded, the lag of its own
    poll's high minus what it loaded itself (SteadyflowTableStale). Both are the pipeline's
    now, as the shared state has them."""
    cfg = make_pipeline(tmp_path, pg_dsn, pg_warehouse_dsn, stream)
    with Pipeline.from_yaml(cfg) as watcher, Pipeline.from_yaml(cfg) as other:
        watcher.shared = other.shared = True
        # the watcher polls t1 once: it sees rows, and it is the other worker that loads
        watcher.extract(["t1"])
        server = StatusServer(watcher, "127.0.0.1", 0, live=True, sample_every=60).start()
        try:
            time.sleep(0.2)
            before = time.time()
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO t1 VALUES (100, 'new', now() - interval '30 min')")
            other.run_once()  # polls both tables, loads every batch (the watcher's too)
            with urllib.request.urlopen(server.url + "metrics", timeout=10) as resp:
                body = resp.read().decode()
        finally:
            server.stop()
        polls = other.state.polls()
    for t in TABLES:
        polled_at = polls[("s", t)][1]
        assert polled_at >= before
        assert metric(body, "steadyflow_last_poll_success_timestamp_seconds", t) == \
            pytest.approx(polled_at, abs=0.01), t
        assert metric(body, "steadyflow_lag_seconds", t) == 0.0, t


def start_worker(cfg: Path, log: Path, *options: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A real `steadyflow worker` process (heartbeat every second, extraction lease 2 s),
    its output in `log`."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "steadyflow", "worker", "--heartbeat", "1", *options,
             "-c", str(cfg)],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "STEADYFLOW_EXTRACT_LEASE": "2", **(env or {})})


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:g}s")
        time.sleep(0.2)


def loaded(warehouse_dsn: str, table: str) -> int:
    """Rows of `table` in the warehouse (0 before the workers made it)."""
    try:
        with psycopg.connect(warehouse_dsn) as conn:
            row = conn.execute(f"SELECT count(*) FROM wh.{table}").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def status(cfg: Path) -> tuple[dict[str, Any], int]:
    """`steadyflow status --json`: its report and exit code."""
    proc = steadyflow("status", "--json", "-c", str(cfg), timeout=60)
    try:
        return json.loads(proc.stdout), proc.returncode
    except json.JSONDecodeError:
        pytest.fail(f"status --json printed no JSON ({proc.returncode}):\n{proc.stdout}\n"
                    f"{proc.stderr[-3000:]}")


def test_workers_killed_long_ago_still_fail_the_status(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str, stream: str) -> None:
    """Every worker SIGKILLed: status said failing while their heartbeats were less than an
    hour old, and healthy (exit 0, no worker listed) after that, though nothing had run the
    pipeline since. The last worker heard of stays listed, lost, and the status failing."""
    cfg = make_pipeline(tmp_path, pg_dsn, pg_warehouse_dsn, stream)
    proc = start_worker(cfg, tmp_path / "worker.log")
    try:
        wait_for(lambda: all(loaded(pg_warehouse_dsn, t) == 3 for t in TABLES),
                 "the worker loads both tables")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # two hours pass (by the state's clock, which measures heartbeat ages)
    with psycopg.connect(pg_warehouse_dsn, autocommit=True) as conn:
        conn.execute("UPDATE sf_state.workers SET started_at = started_at - 7200, "
                     "heartbeat_at = heartbeat_at - 7200")
    report, code = status(cfg)
    assert [(w["pid"], w["status"]) for w in report["workers"]] == [(proc.pid, "lost")]
    assert (report["health"], report["exit_code"], code) == ("failing", 2, 2)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[Nats]:
    """A nats-server of the test's own (JetStream on), to stop under running workers."""
    server = Nats("127.0.0.1", tmp_path / "nats", tmp_path / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_buffer_that_cannot_be_read_fails_the_status(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str, own_nats: Nats) -> None:
    """NATS stopped under a running worker: `status` printed only 'JetStream connect failed'
    (`--json` no JSON at all: no table, no worker to see) and the worker's status page and
    /api/status answered 500 'internal error'. Now each shows the tables and workers from
    the state, says the buffer cannot be read, and fails (exit 2)."""
    cfg = make_pipeline(tmp_path, pg_dsn, pg_warehouse_dsn, "sf_wtruth_nats")
    config = yaml.safe_load(cfg.read_text())
    config["buffer"]["url"] = own_nats.url
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    proc = start_worker(cfg, tmp_path / "worker.log", "--serve", f"127.0.0.1:{port}")
    try:
        wait_for(lambda: all(loaded(pg_warehouse_dsn, t) == 3 for t in TABLES),
                 "the worker loads both tables")
        own_nats.kill()
        report, code = status(cfg)
        assert (report["health"], report["exit_code"], code) == ("failing", 2, 2)
        assert "JetStream" in report["buffer_error"] and report["queue_depth"] is None
        assert [t["rows_changed"] for t in report["tables"]] == [3, 3]
        assert [w["pid"] for w in report["workers"]] == [proc.pid]
        text = steadyflow("status", "-c", str(cfg), timeout=60, env={"COLUMNS": "200"})
        assert text.returncode == 2 and "buffer cannot be read" in text.stdout, text.stdout
        # the worker's own page (/api/status is the same report as JSON)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            page = r.read().decode()
        assert "the buffer cannot be read" in page and "failing" in page
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def allow_connections(dsn: str, allowed: bool) -> None:
    """Open or shut the source database to new connections (and end the open ones)."""
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres",
                         autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                         "datname = %s AND pid <> pg_backend_pid()", (name,))


def breakers(warehouse_dsn: str) -> set[str | None]:
    """The breaker each table's health records (none before the state is made)."""
    try:
        with psycopg.connect(warehouse_dsn) as conn:
            return {r[0] for r in conn.execute("SELECT breaker FROM sf_state.table_health")}
    except psycopg.errors.UndefinedTable:
        return set()


def test_a_source_read_again_by_another_worker_is_not_shown_down(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str, stream: str) -> None:
    """A worker whose breaker opened on a source that was down was killed; the source came
    back and a new worker read and loaded every table of it. The state kept the breaker
    the dead worker recorded (a process records its breaker's transitions only, and the new
    worker's never left 'closed'): status said 'source down', failing (exit 2), for ever.
    A successful poll now records its table's breaker closed."""
    cfg = make_pipeline(tmp_path, pg_dsn, pg_warehouse_dsn, stream)
    config = yaml.safe_load(cfg.read_text())
    config["sources"][0]["resilience"].update({"breaker_failures": 2, "retries": 0,
                                               "connect_timeout": "1s"})
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    allow_connections(pg_dsn, False)
    try:
        first = start_worker(cfg, tmp_path / "first.log")
        try:
            wait_for(lambda: breakers(pg_warehouse_dsn) == {"open"}, "the breaker opens")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
    finally:
        allow_connections(pg_dsn, True)
    second = start_worker(cfg, tmp_path / "second.log")
    try:
        wait_for(lambda: all(loaded(pg_warehouse_dsn, t) == 3 for t in TABLES),
                 "the second worker loads both tables")
        wait_for(lambda: breakers(pg_warehouse_dsn) == {"closed"},
                 "the source's breaker is recorded closed", timeout=15)
        report, code = status(cfg)
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait()
    assert [(t["state"], t["breaker"]) for t in report["tables"]] == [("ok", "closed")] * 2
    assert (report["health"], code) == ("healthy", 0)


def poll_age(warehouse_dsn: str, table: str) -> float:
    """Seconds since `table`'s last recorded successful poll (0 before the first)."""
    with psycopg.connect(warehouse_dsn) as conn:
        row = conn.execute("SELECT polled_at FROM sf_state.source_polls WHERE tbl = %s",
                           (table,)).fetchone()
    return time.time() - float(row[0]) if row else 0.0


def heartbeat_units(warehouse_dsn: str) -> list[str]:
    """The units the workers' last heartbeats said they held."""
    try:
        with psycopg.connect(warehouse_dsn) as conn:
            return [u for r in conn.execute("SELECT units FROM sf_state.workers")
                    for u in json.loads(r[0])]
    except psycopg.errors.UndefinedTable:
        return []


def test_a_killed_worker_is_not_shown_holding_a_table(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str, stream: str) -> None:
    """A worker SIGKILLed while it extracted a table was listed, lost, as holding that
    table (its last heartbeat's units) for as long as it was listed, though its lease had
    expired. It now holds what the leases say: nothing."""
    cfg = make_pipeline(tmp_path, pg_dsn, pg_warehouse_dsn, stream)
    proc = start_worker(cfg, tmp_path / "worker.log",
                        env={"STEADYFLOW_FAILPOINT": "extract.before_land:1:sleep4"})
    try:
        wait_for(lambda: bool(heartbeat_units(pg_warehouse_dsn)),
                 "a heartbeat names a table the worker extracts")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(3.5)  # its lease (2 s) expired, and three heartbeats (1 s) missed
    report, _ = status(cfg)
    assert [(w["status"], w["units"]) for w in report["workers"]] == [("lost", [])]
    assert [t["holder"] for t in report["tables"]] == [None, None]


def test_a_table_a_running_worker_cannot_poll_is_stalled(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str, stream: str) -> None:
    """NATS cut from the worker's host only: its extraction of new rows waits for ever to
    publish, its heartbeat goes on, and lag (measured at a successful poll) stays 0, so
    status said healthy, exit 0, however long it lasted. A table not read to its end for
    15 min while a worker runs is now 'stalled' (failing, exit 2)."""
    cfg = make_pipeline(tmp_path, pg_dsn, pg_warehouse_dsn, stream)
    proxy = FaultProxy("127.0.0.1", NATS_PORT).start()
    config = yaml.safe_load(cfg.read_text())
    config["buffer"]["url"] = f"nats://127.0.0.1:{proxy.port}"
    reached = tmp_path / "worker.yml"  # the worker's host reaches NATS through the proxy
    reached.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = start_worker(reached, tmp_path / "worker.log")
    try:
        wait_for(lambda: all(loaded(pg_warehouse_dsn, t) == 3 for t in TABLES),
                 "the worker loads both tables")
        proxy.cut()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO t1 VALUES (100, 'new', now())")
        time.sleep(3)  # the worker tries to poll t1 (its new row is not published)
        # twenty minutes pass (t1's last successful poll is that old). Until the backdating
        # holds: on a busy machine a poll of t1 that read before the insert (or the first
        # poll's record, written after the load) can land after the UPDATE, and a fresh poll
        # time read 'ok'. Polls of t1 are one at a time, and none after it can succeed
        for _ in range(10):
            with psycopg.connect(pg_warehouse_dsn, autocommit=True) as conn:
                conn.execute("UPDATE sf_state.source_polls SET polled_at = polled_at - 1200 "
                             "WHERE tbl = 't1' AND polled_at > %s", (time.time() - 600,))
            time.sleep(2)
            if poll_age(pg_warehouse_dsn, "t1") > 1200:
                break
        report, code = status(cfg)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proxy.stop()
    t1 = report["tables"][0]
    assert (t1["name"], t1["state"]) == ("t1", "stalled")
    assert 1200 < t1["last_poll_seconds"] < 1260 and t1["last_poll_human"].startswith("20.")
    assert [w["status"] for w in report["workers"]] == ["running"]
    assert (report["health"], code) == ("failing", 2)


def test_a_worker_whose_loop_ends_by_itself_says_it_failed(
        tmp_path: Path, pg_warehouse_dsn: str) -> None:
    """The loader stops on an error no retry covers (here the SQLite buffer's queue table
    is gone), which ends the worker's loop: the worker exited 0 and recorded itself
    'stopped', as one asked to stop does, so an operator saw a clean stop of a worker that
    had died. Now it exits nonzero, and its row says 'failed' with the error."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        conn.execute("CREATE TABLE t1 (id INTEGER PRIMARY KEY, v TEXT, updated_at TEXT)")
        conn.execute("INSERT INTO t1 VALUES (1, 'a', '2024-01-01T00:00:00+00:00')")
        conn.commit()
    config = {"name": "wdied", "state_dir": str(tmp_path / "state"),
              "warehouse": {"kind": "postgres", "dsn": pg_warehouse_dsn, "schema": "wh"},
              "landing": {"path": str(tmp_path / "landing")}, "run": {"interval": 0.5},
              "contracts": {"c": CONTRACT},
              "sources": [{"name": "s", "kind": "sqlite", "path": str(tmp_path / "s.db"),
                           "tables": [{"name": "t1", "contract": "c"}]}]}
    cfg = tmp_path / "pipeline.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = start_worker(cfg, tmp_path / "worker.log")
    try:
        wait_for(lambda: loaded(pg_warehouse_dsn, "t1") == 1, "the worker loads t1")
        with closing(sqlite3.connect(tmp_path / "state" / "buffer.db")) as conn:
            conn.execute("DROP TABLE queue")
            conn.commit()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    log = (tmp_path / "worker.log").read_text()
    assert code != 0, log[-3000:]
    with Pipeline.from_yaml(cfg) as pipeline:
        [worker] = pipeline.state.workers()
    assert worker["status"] == "failed", worker
    assert "no such table: queue" in worker["error"], worker
    report, exit_code = status(cfg)
    assert [w["status"] for w in report["workers"]] == ["failed"]
    assert (report["health"], exit_code) == ("failing", 2)


def test_a_table_without_an_index_is_reported_once_per_process(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str, stream: str) -> None:
    """'t1 has no index on (updated_at, id)' came with every probe of the table: each
    poll of a table with rows flowing (every BUSY_PROBE_EVERY), each idle poll a minute
    apart, each new connection; a worker's log repeated it for as long as it ran. Now
    once per table per process."""
    cfg = make_pipeline(tmp_path, pg_dsn, pg_warehouse_dsn, stream)
    proc = start_worker(cfg, tmp_path / "worker.log")
    try:
        wait_for(lambda: loaded(pg_warehouse_dsn, "t1") == 3, "the worker loads t1")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for i in range(40):  # 12 s of rows flowing: busy polls probe every 5 s
                conn.execute(f"INSERT INTO t1 VALUES ({100 + i}, 'x')".encode())
                time.sleep(0.3)
        wait_for(lambda: loaded(pg_warehouse_dsn, "t1") == 43, "the worker loads them")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    log = (tmp_path / "worker.log").read_text()
    assert [log.count(f"{t} has no index on (updated_at, id)") for t in TABLES] == [1, 1], \
        log[-3000:]
