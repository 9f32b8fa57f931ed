"""Chaos on several related tables: live writers, late commits and repeated SIGKILLs.

Issue 10's acceptance: TPC-H-shaped tables (a composite key, fixed-width CHAR and json
columns, exact decimals) on PostgreSQL and MariaDB, written to while `steadyflow run
--follow` is SIGKILLed at random moments and restarted, must end, after the writers stop
and one catch-up `run` (which must return), with each warehouse equal to the sources.

The verdict comes from tests/support/table_oracle.py, which reads both sides through the
drivers and canonicalises values itself: nothing of steadyflow's code judges its own work.
Late commits (a transaction stamps its rows when it begins and commits 1-3 s later) are
covered by the tables' 10 s lookback; CHAR values the source pads must still pass the
`allowed` rules and arrive unpadded; every source row fits its contract, so the quarantine
must stay empty and the warehouse must hold every row at its latest version.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import steadyflow
from tests.support.chaos_tables import (
    CONTRACTS,
    TABLES,
    SourceDb,
    Writers,
    create_tables,
    shape,
    source_rows,
    warehouse_rows,
)
from tests.support.table_oracle import Diff, compare

pytestmark = pytest.mark.faults

PAGE_SIZES = {"customer": 100, "orders": 200, "lineitem": 500}
CUSTOMERS, ORDERS = 300, 1_500
LOOKBACK = "10s"  # late commits stamp up to 3 s before they commit
FINAL_RUN_TIMEOUT = 120.0  # the catch-up run must return: a hang is a failure
PREFIX = {"postgres": "pg", "mysql": "my"}


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "duckdb":
        return {"kind": "duckdb", "path": str(tmp_path / "warehouse.duckdb"), "schema": "main"}
    return {"kind": "postgres", "dsn": request.getfixturevalue("pg_warehouse_dsn"),
            "schema": "wh"}


# --- the pipeline ---------------------------------------------------------------------------
def write_config(directory: Path, dbs: list[SourceDb], warehouse: dict[str, Any]) -> Path:
    """Both sources, three tables each, each into its own target; small pages and a short
    follow interval so many batches flow between kills; a small buffer so extraction runs
    into backpressure (where a kill leaves a landed but unqueued batch behind)."""
    config = {
        "name": "chaos",
        "contracts": CONTRACTS,
        "warehouse": warehouse,
        "buffer": {"capacity": 4},
        "run": {"interval": 0.2},
        "sources": [{
            "name": PREFIX[db.kind], "kind": db.kind, "dsn": db.dsn,
            "resilience": {"retries": 2, "backoff_max": "1s"},
            "tables": [{"name": t, "target": f"{PREFIX[db.kind]}_{t}", "contract": t,
                        "lookback": LOOKBACK, "page_size": PAGE_SIZES[t],
                        "min_page_size": min(50, PAGE_SIZES[t])} for t in TABLES],
        } for db in dbs],
    }
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def startup_seconds() -> float:
    """How long the CLI takes to import and start on this (busy) machine: kill delays are
    counted from there, so the kills land in the pipeline's work, not in Python's imports."""
    started = time.monotonic()
    steadyflow("--help", timeout=60)
    return time.monotonic() - started


def chaos(cfg: Path, kills: int, logs: Path, rng: random.Random) -> list[str]:
    """Run `run --follow` and SIGKILL it `kills` times at random moments, restarting it each
    time. Returns what went wrong besides the kills (a follower that exited by itself)."""
    offset = startup_seconds()
    problems: list[str] = []
    for i in range(kills):
        log = logs / f"follow-{i:02d}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "steadyflow", "run", "--follow", "-c", str(cfg)],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
            try:
                proc.wait(offset + rng.uniform(0.5, 2.0))
                problems.append(f"follower {i} exited by itself ({proc.returncode}): "
                                f"{log.read_text()[-2000:]}")
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    return problems


def catch_up(cfg: Path, logs: Path) -> dict[str, Any]:
    """One-shot `run` after the writers stopped: it must return, succeed and report no
    error. A hang is dumped (faulthandler on SIGABRT: every thread's stack) and fails."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "steadyflow", "run", "--json", "-c", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    try:
        out, err = proc.communicate(timeout=FINAL_RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate()
        (logs / "catch-up-hang.log").write_text(out + err)
        pytest.fail(f"the final catch-up run did not return in {FINAL_RUN_TIMEOUT:.0f} s; "
                    f"its threads:\n{err[-6000:]}")
    assert proc.returncode == 0, f"catch-up run failed ({proc.returncode}):\n{out}\n{err}"
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert summary["errors"] == [], summary["errors"]
    return summary


def diagnose(cfg: Path) -> str:
    """What the pipeline itself says, to put beside a failing diff."""
    parts = []
    for args in (("quarantine", "list"), ("status",)):
        proc = steadyflow(*args, "-c", str(cfg), timeout=60, env={"COLUMNS": "200"})
        parts.append(f"$ steadyflow {' '.join(args)}\n{proc.stdout[-3000:]}{proc.stderr[-1500:]}")
    return "\n".join(parts)


# --- the test -------------------------------------------------------------------------------
def run_chaos(tmp_path: Path, pg_dsn: str, mysql_dsn: str, warehouse: dict[str, Any],
              kills: int, seed: int) -> None:
    rng = random.Random(seed)
    dbs = [SourceDb("postgres", pg_dsn), SourceDb("mysql", mysql_dsn)]
    writers = [Writers(db, CUSTOMERS, create_tables(db, CUSTOMERS, ORDERS, seed + i), seed + i)
               for i, db in enumerate(dbs)]
    cfg = write_config(tmp_path, dbs, warehouse)
    logs = tmp_path / "logs"
    logs.mkdir()

    for w in writers:
        w.start()
    try:
        problems = chaos(cfg, kills, logs, rng)
    finally:
        for w in writers:
            w.stop()
    late = sum(w.commits["late"] for w in writers)
    assert late >= 5, f"too few late commits to prove anything: {[w.commits for w in writers]}"

    summary = catch_up(cfg, logs)
    diffs: list[Diff] = [
        compare(f"{PREFIX[db.kind]}_{t}", shape(t), source_rows(db, t),
                warehouse_rows(warehouse, f"{PREFIX[db.kind]}_{t}", t))
        for db in dbs for t in TABLES]
    dirty = [d for d in diffs if not d.clean]
    assert not dirty and not problems, (
        "warehouse differs from the sources after the chaos run\n"
        + "\n".join(d.report() for d in dirty) + "\n" + "\n".join(problems)
        + f"\nwriters: {[w.commits for w in writers]}\ncatch-up: {summary}\n"
        + diagnose(cfg))
    assert all(d.source_rows > 0 for d in diffs)
    assert_reconcile_clean(cfg)


def assert_reconcile_clean(cfg: Path) -> None:
    """The oracle found the warehouse equal to the sources, so `steadyflow reconcile` (its
    own read path of every source: CHAR and json must come out canonical there too) must
    find every table clean."""
    proc = steadyflow("reconcile", "--json", "-c", str(cfg), timeout=180)
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"reconcile printed no JSON ({proc.returncode}):\n{proc.stdout}\n"
                    f"{proc.stderr[-3000:]}")
    wrong = [{k: t[k] for k in ("source", "table", "missing", "extra", "mismatched",
                               "duplicates", "quarantined", "in_flight", "examples", "error")}
             for t in report["tables"]
             if t["error"] or t["missing"] or t["extra"] or t["mismatched"] or t["duplicates"]]
    assert report["clean"] and not wrong and proc.returncode == 0, (
        f"reconcile disagrees with the oracle (which found every table equal), "
        f"exit {proc.returncode}: {json.dumps(wrong, default=str)[:4000]}")


@pytest.mark.timeout(300)
def test_chaos_tables(tmp_path: Path, pg_dsn: str, mysql_dsn: str,
                      warehouse: dict[str, Any]) -> None:
    run_chaos(tmp_path, pg_dsn, mysql_dsn, warehouse, kills=12, seed=10)


@pytest.mark.exhaustive
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("seed", [101, 102, 103])
def test_chaos_tables_long(tmp_path: Path, pg_dsn: str, mysql_dsn: str,
                           warehouse: dict[str, Any], seed: int) -> None:
    run_chaos(tmp_path, pg_dsn, mysql_dsn, warehouse, kills=40, seed=seed)
