"""What /api/status, the page and `status` say when the state itself cannot be read.

- The state file corrupt under a read-only `serve`: /api/status and the page answered 500
  "internal error" (a raw sqlite3 error escaped the snapshot), and `status` printed a
  traceback with exit code 1 (degraded). Now both answer failing (exit code 2) and name
  the file and SQLite's complaint.
- The state file deleted under `serve --run`: the server read (and the loop wrote) the
  unlinked file, so every view went on showing readings nobody could find again
  (healthy, exit 0); `status`, finding no file, made an empty one and said 'waiting',
  healthy, exit 0, while the loop ran. Both now fail and say the file is gone.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.conftest import steadyflow
from tests.support.status_pipeline import (
    api,
    config,
    free_port,
    get,
    running,
    status,
    store,
    wait,
)

pytestmark = pytest.mark.integration


def _answers(url: str, rows: int) -> bool:
    try:
        return api(url)["tables"][0]["rows_changed"] == rows
    except (OSError, AssertionError):
        return False


def test_a_state_that_cannot_be_read_fails_every_view_naming_it(tmp_path: Path) -> None:
    path = store(tmp_path, datetime.now(UTC) - timedelta(minutes=5), n=20)
    conf = config(tmp_path, path)
    steadyflow("run", "-c", str(conf), check=True)
    state_db = tmp_path / "state" / "state.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running(conf, "serve", "--port", str(port)):
        wait("the server", lambda: _answers(url, 20))
        # a table of the state gone (a damaged file, another version's): every read of
        # it raises sqlite3.OperationalError
        with closing(sqlite3.connect(state_db)) as db:
            db.execute("DROP TABLE table_health")
            db.commit()
        code, body = get(url + "api/status")
        assert code == 200, body
        report = json.loads(body)
        assert (report["health"], report["exit_code"]) == ("failing", 2), report
        assert "no such table: table_health" in report["state_error"], report
        assert "state.db" in report["state_error"], report
        assert report["tables"][0]["state"] == "unknown"
        assert report["tables"][0]["rows_changed"] is None  # not known, not 0
        code, page = get(url)
        assert code == 200 and "no such table: table_health" in page.decode()
        code, body = get(url + "metrics")  # its gauges would be the state's: a failed
        assert code == 503 and b"no such table" in body  # scrape (`up` 0) says so
    # the file overwritten (its header too): `status` cannot even open it
    state_db.write_bytes(b"\x5a" * 8192)
    for name in ("state.db-wal", "state.db-shm"):
        (tmp_path / "state" / name).unlink(missing_ok=True)
    human = steadyflow("status", "-c", str(conf))
    assert human.returncode == 2, human.stdout + human.stderr
    assert "the state cannot be read" in human.stderr and "Traceback" not in human.stderr
    assert str(state_db) in human.stderr, human.stderr
    # --json: the failing report, JSON (it printed the plain error line: nothing a script
    # or a check reading it could parse)
    proc = steadyflow("status", "-c", str(conf), "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert (report["health"], report["exit_code"]) == ("failing", 2), report
    assert str(state_db) in report["state_error"], report
    assert "file is not a database" in report["state_error"], report
    assert [(t["table"], t["state"], t["rows_changed"]) for t in report["tables"]] == [
        ("s1.sales", "unknown", None)], report["tables"]


def test_a_state_file_deleted_under_a_running_loop_fails_every_view(tmp_path: Path
                                                                    ) -> None:
    path = store(tmp_path, datetime.now(UTC) - timedelta(minutes=5), n=20)
    conf = config(tmp_path, path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running(conf, "serve", "--run", "--port", str(port)):
        wait("the first load", lambda: _answers(url, 20))
        assert status(conf)[0] == 0
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (tmp_path / "state" / name).unlink(missing_ok=True)
        report = api(url)
        assert (report["health"], report["exit_code"]) == ("failing", 2), report
        assert "deleted" in report["state_error"], report
        code, report = status(conf)  # a process of its own finds no state file
        assert (code, report["health"]) == (2, "failing"), report
        assert "missing" in report["state_error"], report


def test_a_buffer_that_cannot_be_read_fails_the_served_status(tmp_path: Path) -> None:
    """The SQLite buffer's queue table gone under a read-only `serve`: the raw sqlite3
    error escaped the snapshot (the buffer's SteadyflowErrors were caught, its driver's
    were not), and /api/status answered 500. Now it fails naming the buffer."""
    path = store(tmp_path, datetime.now(UTC) - timedelta(minutes=5), n=20)
    conf = config(tmp_path, path)
    steadyflow("run", "-c", str(conf), check=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running(conf, "serve", "--port", str(port)):
        wait("the server", lambda: _answers(url, 20))
        with closing(sqlite3.connect(tmp_path / "state" / "buffer.db")) as db:
            db.execute("DROP TABLE queue")
            db.commit()
        code, body = get(url + "api/status")
        assert code == 200, body
        report = json.loads(body)
        assert (report["health"], report["exit_code"]) == ("failing", 2), report
        assert "no such table: queue" in report["buffer_error"], report
