"""The set-up of the operator-view tests (tests/integration/test_status_*.py): a SQLite
store of the demo's sales, a one-table pipeline over it, its processes (`run --follow`,
`serve --run`, stopped in the end whatever happened), and the readings an operator sees
(`status --json`, /api/status, /metrics) next to the truth read through the drivers (the
state file, the store).

One place for it: each test file (and each test of test_status_stuck.py) carried its own
copy of the store, the config, the wait loop and the process teardown.
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
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from steadyflow.demo.stores import SCHEMA, format_ts
from tests.conftest import steadyflow, write_pipeline


def store(root: Path, newest: datetime, n: int = 50, first: int = 1) -> Path:
    """`root`/store.db with sales `first`..`first + n - 1`, the last one's cursor `newest`
    (one second apart); the first call (first=1) creates the tables."""
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


def config(root: Path, store_path: Path, warehouse: dict[str, Any] | None = None,
           table: dict[str, Any] | None = None, **extra: Any) -> Path:
    """The pipeline reading `store_path`'s sales (page size 100), polling every 0.3 s
    unless `run` says otherwise; `table`: more settings of the table."""
    extra.setdefault("run", {"interval": "0.3s"})
    return write_pipeline(root, [{
        "name": "s1", "kind": "sqlite", "path": str(store_path),
        "tables": [{"name": "sales", "contract": "sales", "page_size": 100,
                    **(table or {})}]}], warehouse=warehouse, **extra)


def status(config_path: Path) -> tuple[int, dict[str, Any]]:
    """`steadyflow status --json`: its exit code and its report."""
    proc = steadyflow("status", "-c", str(config_path), "--json")
    return proc.returncode, json.loads(proc.stdout)


def wait(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(config_path: Path, *argv: str,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`steadyflow <argv> -c config` in a child process (its stderr in <command>.log
    beside the config), continued and stopped with SIGTERM (SIGKILL after 60 s) when the
    block ends, whatever the test did to it meanwhile."""
    log_path = config_path.with_name(f"{argv[0]}.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "steadyflow", *argv, "-c",
                                 str(config_path)], stdout=subprocess.DEVNULL, stderr=log,
                                env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def follow(config_path: Path, *extra: str,
           env: dict[str, str] | None = None) -> Any:
    """`run --follow` (with `extra` arguments) as `running` starts it."""
    return running(config_path, "run", "--follow", *extra, env=env)


def state(root: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The state file, read (or written: "twenty minutes pass") through the driver."""
    with closing(sqlite3.connect(root / "state" / "state.db", timeout=30)) as db:
        rows = db.execute(sql, params).fetchall()
        db.commit()
    return rows


def metric(url: str, name: str) -> float:
    """One sample of /metrics (the first series of `name`)."""
    body = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{body}")


def get(url: str) -> tuple[int, bytes]:
    """The status code and body of a GET, an HTTP error's included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def api(url: str) -> dict[str, Any]:
    """/api/status of the server at `url`."""
    code, body = get(url + "api/status")
    assert code == 200, (code, body)
    return dict(json.loads(body))
