"""The CLI as an operator meets it: one loop per pipeline, `serve` read-only by default,
`status` exit codes and whole text, `reset`, `--version`, `--log-level` mistakes, piped
output, and a follow run's summary covering the whole run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import ROOT, steadyflow, write_pipeline
from tests.integration.test_observability import add_store_rows, start_serve, stop_serve

from steadyflow.demo.scenario import cli_command
from steadyflow.demo.stores import create_stores
from steadyflow.state import SqliteStateStore

pytestmark = pytest.mark.integration

LONG_SOURCE = "a_very_long_source_name_for_the_store_in_the_northern_region_01"


def pipeline(root: Path, rows: int = 300, broken: bool = False, **extra: Any) -> Path:
    [store] = create_stores(root / "stores", 1, rows)
    sources = [{"name": "store_001", "kind": "sqlite", "path": str(store),
                "tables": [{"name": "sales", "contract": "sales", "page_size": 100}]}]
    if broken:
        sources.append({"name": LONG_SOURCE, "kind": "sqlite",
                        "path": str(root / "stores" / "missing" / "gone.db"),
                        "tables": [{"name": "sales_by_day_and_region", "contract": "sales"}]})
    return write_pipeline(root, sources, **extra)


def runs(root: Path) -> int:
    """Runs recorded in state (0 while the state file is still being created)."""
    with closing(sqlite3.connect(root / "state" / "state.db")) as db:
        try:
            return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])
        except sqlite3.OperationalError:  # no such table yet
            return 0


def follow(config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "steadyflow", "run", "--follow", "-c",
                             str(config), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_one_loop_per_state_directory_and_serve_is_read_only(tmp_path: Path) -> None:
    config = pipeline(tmp_path, run={"interval": "1h"})  # the follower runs one cycle
    holder = follow(config)
    try:
        wait_for(lambda: (tmp_path / "state" / "state.db").exists() and runs(tmp_path) >= 1,
                 "the follower's first cycle")
        for args in (["run"], ["run", "--follow"], ["serve", "--run", "--port", "0"],
                     ["reset", "--table", "store_001.sales"]):
            refused = steadyflow(*args, "-c", str(config), timeout=60)
            assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
            message = " ".join(refused.stderr.split())
            assert f"pid {holder.pid} on host {socket.gethostname()}" in message, message
            assert "already runs this pipeline" in message
        assert "would reset store_001.sales" in steadyflow(
            "reset", "--dry-run", "--table", "store_001.sales", "-c", str(config),
            check=True).stdout
        before = runs(tmp_path)
        viewer, url = start_serve(config)  # read-only: no second loop, no failed runs
        try:
            time.sleep(2.5)
            assert runs(tmp_path) == before
        finally:
            code, err = stop_serve(viewer)
        assert code == 0 and "error" not in err.lower() and "did not stop" not in err, err
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel drops its lock with it
        holder.communicate(timeout=30)
    assert steadyflow("run", "-c", str(config), timeout=60).returncode == 0


def test_status_exit_codes_whole_names_and_errors(tmp_path: Path) -> None:
    config = pipeline(tmp_path, broken=True)
    run = steadyflow("run", "-c", str(config))
    assert run.returncode == 2
    # each error is printed once (logged as it happened), every log line whole when piped
    assert run.stderr.count("cannot open SQLite database") == 1, run.stderr
    for line in run.stderr.splitlines():
        if line.startswith("{"):
            json.loads(line)

    report = steadyflow("status", "--json", "-c", str(config))
    assert report.returncode == 2  # a table in error: failing
    data = json.loads(report.stdout)
    assert (data["health"], data["exit_code"]) == ("failing", 2)
    [broken] = [t for t in data["tables"] if t["source"] == LONG_SOURCE]
    assert "gone.db" in broken["last_error"] and len(broken["last_error"]) > 60

    text = steadyflow("status", "-c", str(config))
    assert text.returncode == 2
    assert f"{LONG_SOURCE}.sales_by_day_and_region" in text.stdout  # never cut
    assert "…" not in text.stdout
    flat = re.sub(r"[\s│]+", " ", text.stdout)
    assert " ".join(broken["last_error"].split()) in flat  # the whole error, wrapped or not

    # without the broken source: healthy; a breaker half-open: degraded; open: failing
    healthy = pipeline(tmp_path / "ok")
    assert steadyflow("run", "-c", str(healthy)).returncode == 0
    assert steadyflow("status", "-c", str(healthy)).returncode == 0
    state = SqliteStateStore(tmp_path / "ok" / "state" / "state.db")
    try:
        for breaker, code in (("half-open", 1), ("open", 2), ("closed", 0)):
            state.record_source_state("store_001", "sales", breaker=breaker)
            got = steadyflow("status", "--json", "-c", str(healthy))
            assert got.returncode == code, (breaker, got.stdout, got.stderr)
    finally:
        state.close()


def test_version_and_log_level_mistakes() -> None:
    version = steadyflow("--version", check=True)
    assert re.fullmatch(r"steadyflow \S+\n", version.stdout)
    bad = steadyflow("--log-level", "verbose", "status", "-c", "nope.yml")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "verbose" in bad.stderr and "debug" in bad.stderr


def test_follow_summary_covers_the_whole_run(tmp_path: Path) -> None:
    config = pipeline(tmp_path, run={"interval": "0.3s"})
    proc = follow(config, "--json")
    try:
        wait_for(lambda: (tmp_path / "state" / "state.db").exists() and runs(tmp_path) >= 2,
                 "two cycles")
        add_store_rows(tmp_path / "stores" / "store_001.db", 40)
        before = runs(tmp_path)
        wait_for(lambda: runs(tmp_path) >= before + 3, "cycles after the new rows")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    summary = json.loads(out)
    assert summary["cycles"] > 3, summary
    assert summary["changed_rows"] == 300 - 6 + 40, summary  # all of it, not the last cycle
    assert proc.returncode == 0, err


def test_the_demo_hint_is_a_command_that_works() -> None:
    """The demo's closing hint: a command the user's shell can run as printed."""
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # the venv is not activated
    code = ("import sys; from steadyflow.demo.scenario import cli_command; "
            "print(cli_command())")
    hint = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                          capture_output=True, check=True).stdout.strip()
    assert hint != "steadyflow"
    done = subprocess.run(f"{hint} --version", shell=True, cwd=ROOT, env=env, text=True,
                          capture_output=True)
    assert done.returncode == 0 and done.stdout.startswith("steadyflow "), done
    assert cli_command()  # importable in this process too
