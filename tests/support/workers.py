"""The setup of the many-worker fault tests (tests/faults/test_workers.py, test_multihost.py,
test_autoscale.py): store databases holding the chaos tables, one pipeline that reads
every store into a PostgreSQL warehouse (its state in the same database, its buffer a
JetStream stream: tests/support/jetstream.py), the `steadyflow worker` processes, and the
oracle's verdict on every table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pymysql
import pytest
import yaml

from tests.conftest import MY_HOST, MY_PORT, _fresh_pg_database, steadyflow
from tests.support.chaos_tables import (
    CONTRACTS,
    TABLES,
    SourceDb,
    shape,
    source_rows,
    warehouse_rows,
)
from tests.support.table_oracle import Diff, compare

# how a worker is started: (argv, its log file, its environment) -> the process
Launch = Callable[[list[str], IO[str], dict[str, str]], subprocess.Popen[bytes]]


def store_databases(postgres: int, mysql: int) -> Iterator[list[SourceDb]]:
    """Fresh store databases, the PostgreSQL ones first, dropped afterwards (a fixture's
    body: `yield from store_databases(3, 3)`)."""
    pg = [_fresh_pg_database("sfstore") for _ in range(postgres)]
    dbs = [SourceDb("postgres", next(gen)) for gen in pg]
    names = [f"sf_{uuid.uuid4().hex[:12]}" for _ in range(mysql)]
    admin = pymysql.connect(host=MY_HOST, port=MY_PORT, user="root", password="",
                            autocommit=True)
    with admin.cursor() as cur:
        for name in names:
            cur.execute(f"CREATE DATABASE `{name}`")
    dbs += [SourceDb("mysql", f"mysql://root@{MY_HOST}:{MY_PORT}/{n}") for n in names]
    yield dbs
    for gen in pg:
        next(gen, None)
    with admin.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()


def write_config(directory: Path, name: str, dbs: list[SourceDb], warehouse_dsn: str,
                 buffer: dict[str, Any], table: dict[str, Any],
                 resilience: dict[str, Any] | None = None,
                 tables: tuple[str, ...] = TABLES,
                 reach: Callable[[str], str] = str) -> Path:
    """pipeline.yml: store `i`'s `tables` into `store{i}_<table>` of the warehouse's schema
    `wh`, the state in schema `sf_state` of the same database, a JetStream `buffer`;
    `table` and `resilience` add to each table's and each store's settings, and `reach`
    maps every DSN to how the workers reach it."""
    config: dict[str, Any] = {
        "name": name,
        "contracts": {t: CONTRACTS[t] for t in tables},
        "state": {"kind": "postgres", "dsn": reach(warehouse_dsn), "schema": "sf_state"},
        "buffer": {"kind": "jetstream", **buffer},
        "warehouse": {"kind": "postgres", "dsn": reach(warehouse_dsn), "schema": "wh"},
        "run": {"interval": 0.5, "max_parallel_sources": 3},
        "sources": [{
            "name": f"store{i}", "kind": db.kind, "dsn": reach(db.dsn),
            "resilience": {"retries": 2, "backoff_max": "1s", **(resilience or {})},
            "tables": [{"name": t, "target": f"store{i}_{t}", "contract": t, **table}
                       for t in tables],
        } for i, db in enumerate(dbs)],
    }
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _popen(argv: list[str], out: IO[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


class Workers:
    """The worker processes of a test, started and signalled by name; each logs to
    `logs/<name>.log`."""

    def __init__(self, cfg: Path, logs: Path, lease: float) -> None:
        self.cfg, self.logs, self.lease = cfg, logs, lease
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: dict[str, IO[str]] = {}
        self.exits: dict[str, int] = {}
        self._n = 0

    def start(self, launch: Launch = _popen, failpoint: str | None = None) -> str:
        name = f"w{self._n:02d}"
        self._n += 1
        out = self.files[name] = (self.logs / f"{name}.log").open("w")
        env = {**os.environ, "PYTHONFAULTHANDLER": "1",
               "STEADYFLOW_EXTRACT_LEASE": str(self.lease)}
        if failpoint:
            env["STEADYFLOW_FAILPOINT"] = failpoint
        self.procs[name] = launch(
            [sys.executable, "-m", "steadyflow", "--log-level", "info", "worker",
             "--heartbeat", "1", "-c", str(self.cfg)], out, env)
        return name

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.files.pop(name).close()

    def terminate(self, name: str, timeout: float = 60) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread
            proc.wait()
            pytest.fail(f"worker {name} did not stop within {timeout:g}s of SIGTERM:\n"
                        + self.tail(name, 6000))
        finally:
            self.files.pop(name).close()
        self.exits[name] = code
        return code

    def alive(self) -> list[str]:
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        for name in dead:
            self.exits[name] = self.procs.pop(name).returncode
            self.files.pop(name).close()
        return list(self.procs)

    def stop_all(self) -> None:
        """SIGTERM every live worker: each must exit 0 (and one at least must be alive)."""
        assert self.alive(), f"every worker died: {self.exits}"
        for name in list(self.procs):
            assert self.terminate(name) == 0, self.tail(name)

    def log_size(self, name: str) -> int:
        self.files[name].flush()
        return (self.logs / f"{name}.log").stat().st_size

    def log_since(self, name: str, offset: int) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[offset:]

    def tail(self, name: str, chars: int = 4000) -> str:
        """The end of a worker's log, for a failure message."""
        return self.log_since(name, 0)[-chars:]


def status_json(cfg: Path) -> dict[str, Any]:
    proc = steadyflow("status", "--json", "-c", str(cfg), timeout=60)
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"status --json printed no JSON ({proc.returncode}):\n{proc.stdout}\n"
                    f"{proc.stderr[-3000:]}")
    return report


def diffs(dbs: list[SourceDb], warehouse_dsn: str, tables: tuple[str, ...] = TABLES
          ) -> list[Diff]:
    """The oracle's verdict on every table of `write_config`'s pipeline (a table the workers
    have not created yet is empty)."""
    warehouse = {"kind": "postgres", "dsn": warehouse_dsn, "schema": "wh"}
    out = []
    for i, db in enumerate(dbs):
        for t in tables:
            try:
                wh = warehouse_rows(warehouse, f"store{i}_{t}", t)
            except psycopg.errors.UndefinedTable:
                wh = []
            out.append(compare(f"store{i}_{t}", shape(t), source_rows(db, t), wh))
    return out


def assert_equal(found: list[Diff], cfg: Path, events: list[str]) -> None:
    """Every warehouse table equal to its source (and none empty); a failure shows the
    diffs, what the test did and what `status` says."""
    dirty = [d for d in found if not d.clean]
    assert not dirty, ("warehouse differs from the sources\n"
                       + "\n".join(d.report() for d in dirty) + f"\nevents: {events}\n"
                       + steadyflow("status", "-c", str(cfg), timeout=60,
                                    env={"COLUMNS": "200"}).stdout[-4000:])
    assert all(d.source_rows > 0 for d in found)
