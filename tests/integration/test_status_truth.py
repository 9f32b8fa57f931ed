"""What `status` and the page say, checked against the truth read with the drivers.

- An idle table (caught up, its newest row two hours old) is not stale: its lag is 0 and
  the page does not mark it; a table whose source holds rows a poll saw and nothing loaded
  is stale, and `status --json` gives the lag the source and warehouse show.
- A `run --follow` loop killed with SIGKILL makes `status` fail (exit 2) at once, names the
  dead process, and its unfinished run is not shown as running; a loop that runs again
  (or a plain run that finishes) clears it.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from tests.conftest import steadyflow, write_pipeline
from tests.support.faultproxy import FaultProxy
from tests.support.status_pipeline import config as _config
from tests.support.status_pipeline import status as _status
from tests.support.status_pipeline import store as _store

from steadyflow.observe.page import render_page
from steadyflow.observe.status import collect
from steadyflow.run.pipeline import Pipeline

pytestmark = pytest.mark.integration


def _page(config: Path) -> str:
    with Pipeline.from_yaml(config) as pipeline:
        return render_page(collect(pipeline), {})


def _true_lag(root: Path, store: Path) -> float:
    """Newest cursor at the source minus newest in the warehouse, read with the drivers."""
    with closing(sqlite3.connect(store)) as db:
        [(high,)] = db.execute("SELECT max(updated_at) FROM sales").fetchall()
    with closing(duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)) as wh:
        [(loaded,)] = wh.execute("SELECT epoch(max(updated_at)) FROM sales").fetchall()
    return datetime.fromisoformat(high).replace(tzinfo=UTC).timestamp() - float(loaded)


def test_an_idle_table_is_not_stale_and_a_lagging_one_is(tmp_path: Path) -> None:
    store = _store(tmp_path, datetime.now(UTC) - timedelta(hours=2))
    config = _config(tmp_path, store)
    steadyflow("run", "-c", str(config), check=True)

    code, report = _status(config)
    [table] = report["tables"]
    assert code == 0 and table["state"] == "ok"
    assert table["freshness_seconds"] > 7000  # old data, and freshness says so
    # epochs as doubles: equal instants may differ in the last bits (2.4e-07 seen)
    assert _true_lag(tmp_path, store) == pytest.approx(0, abs=1e-3)
    assert table["lag_seconds"] == pytest.approx(0, abs=1e-3)  # idle: nothing is missing
    assert 'class="stale"' not in _page(config)

    # rows 20 min old arrive; a poll sees them (extract), nothing loads them
    _store(tmp_path, datetime.now(UTC) - timedelta(minutes=20), n=10, first=51)
    steadyflow("extract", "-c", str(config), check=True)
    truth = _true_lag(tmp_path, store)
    assert truth > 5000
    _, report = _status(config)
    [table] = report["tables"]
    assert table["lag_seconds"] == pytest.approx(truth, abs=1.0)
    assert 'class="stale"' in _page(config)


def test_a_killed_follow_loop_fails_status_at_once(tmp_path: Path) -> None:
    store = _store(tmp_path, datetime.now(UTC) - timedelta(minutes=1))
    config = _config(tmp_path, store)
    proc = subprocess.Popen([sys.executable, "-m", "steadyflow", "run", "-c", str(config),
                             "--follow"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            code, report = _status(config)
            if report["tables"][0]["rows_changed"] == 50:
                break
            assert time.monotonic() < deadline, report
            time.sleep(0.3)
        assert code == 0 and report["health"] == "healthy", report
        assert report["loop"]["status"] == "running" and report["loop"]["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    code, report = _status(config)
    assert code == 2 and report["health"] == "failing", report
    assert report["loop"]["status"] == "killed" and report["loop"]["pid"] == proc.pid
    assert report["loop"]["command"] == "run --follow"
    assert all(r["outcome"] is not None for r in report["runs"]), report["runs"]
    page = _page(config)
    assert "was killed" in page and ">running<" not in page
    human = steadyflow("status", "-c", str(config))
    assert human.returncode == 2 and "killed" in human.stdout, human.stdout

    steadyflow("run", "-c", str(config), check=True)  # a run that finishes clears it
    code, report = _status(config)
    assert code == 0 and report["loop"] is None, report
    # and closed the runs the killed loop left open: none reads "running" any more
    runs = report["runs"]
    assert all(r["ended_at"] is not None for r in runs), runs
    assert runs[0]["outcome"] == "ok" and any(r["outcome"] == "killed" for r in runs), runs
    assert ">running<" not in _page(config)


def test_a_source_back_after_an_outage_clears_on_an_idle_table(tmp_path: Path) -> None:
    """The source unreachable for a run, then back with nothing new: the table's error is
    over once a poll read the source to its end again. It stayed 'failing' (status exit 1,
    the page too) until a new row loaded, on an idle table for ever."""
    store = _store(tmp_path, datetime.now(UTC) - timedelta(hours=2))
    config = _config(tmp_path, store)
    steadyflow("run", "-c", str(config), check=True)

    gone = store.with_name("store.gone")
    store.rename(gone)  # the source is down
    assert steadyflow("run", "-c", str(config)).returncode == 2
    code, report = _status(config)
    [table] = report["tables"]
    assert code != 0 and table["state"] != "ok" and "store.db" in table["last_error"]

    gone.rename(store)  # back, and idle: no new row, nothing to load
    assert steadyflow("run", "-c", str(config)).returncode == 0
    code, report = _status(config)
    [table] = report["tables"]
    assert (code, report["health"], table["state"]) == (0, "healthy", "ok"), table
    assert table["lag_seconds"] == pytest.approx(0, abs=1e-3)
    human = steadyflow("status", "-c", str(config))
    assert human.returncode == 0 and "failing" not in human.stdout, human.stdout


def test_rows_the_last_reconcile_found_missing_keep_status_from_healthy(tmp_path: Path
                                                                        ) -> None:
    """A reconcile found rows missing from the warehouse: `status` said healthy (exit 0)
    and its table did not mention the reconcile at all, until a repair."""
    store = _store(tmp_path, datetime.now(UTC) - timedelta(minutes=5))
    config = _config(tmp_path, store)
    steadyflow("run", "-c", str(config), check=True)
    with closing(duckdb.connect(str(tmp_path / "warehouse.duckdb"))) as wh:
        wh.execute("DELETE FROM sales WHERE sale_id IN (3, 4)")  # two rows lost
    assert steadyflow("reconcile", "-c", str(config)).returncode == 1

    code, report = _status(config)
    assert (code, report["health"]) == (1, "degraded"), report["reconcile"]
    human = steadyflow("status", "-c", str(config))
    assert human.returncode == 1 and "2 missing" in human.stdout, human.stdout
    assert "2 missing" in _page(config)  # the page says it too

    steadyflow("reconcile", "-c", str(config), "--repair", check=True)
    code, report = _status(config)
    assert (code, report["health"]) == (0, "healthy"), report["reconcile"]


@pytest.mark.parametrize(("command", "code", "told"), [
    ("run", 1, "the last run"), ("load", 2, "the last `load`")])
def test_a_run_the_warehouse_failed_keeps_status_from_healthy(
        pg_warehouse_dsn: str, tmp_path: Path, command: str, code: int, told: str) -> None:
    """`run` (from cron) with batches to load and the warehouse unreachable: it exits 1 and
    records its run failed, but no table carries the error (the warehouse fails to open
    before any batch is tried), so `status` said healthy, exit 0, the table 'waiting'.
    The same for `load` run alone (cron running the stages apart): it recorded nothing."""
    store = _store(tmp_path, datetime.now(UTC) - timedelta(minutes=5))
    with FaultProxy("127.0.0.1", 5432) as proxy:
        via_proxy = pg_warehouse_dsn.replace(":5432/", f":{proxy.port}/")
        config = write_pipeline(tmp_path, [{
            "name": "s1", "kind": "sqlite", "path": str(store),
            "tables": [{"name": "sales", "contract": "sales", "page_size": 100}]}],
            warehouse={"kind": "postgres", "dsn": via_proxy, "schema": "public"})
        steadyflow("extract", "-c", str(config), check=True)  # a batch waits for its load
        proxy.cut()
        failed = steadyflow(command, "-c", str(config))
        assert failed.returncode == code, failed.stdout + failed.stderr
        status, report = _status(config)
        assert (status, report["health"]) == (1, "degraded"), report
        human = steadyflow("status", "-c", str(config))
        assert human.returncode == 1 and told in human.stdout, human.stdout
        assert "cannot connect to the PostgreSQL warehouse" in human.stdout, human.stdout
        with Pipeline.from_yaml(config, view=True) as pipeline:
            assert told in render_page(collect(pipeline), {})

        proxy.restore()
        steadyflow(command, "-c", str(config), check=True)
        status, report = _status(config)
        assert (status, report["health"]) == (0, "healthy"), report


def test_times_recorded_ahead_of_the_clock_are_flagged(tmp_path: Path) -> None:
    """The wall clock stepped back an hour after a run (NTP, a restored VM): every time
    the state recorded lies an hour ahead, and every age read from them (last poll,
    last success, unloaded) was clamped to 0, shown as just now, healthy (exit 0), for
    the hour: a table whose polls then stopped could not be called stalled meanwhile.
    Status now says the readings cannot be trusted (degraded, exit 1) and by how much."""
    store = _store(tmp_path, datetime.now(UTC) - timedelta(minutes=5))
    config = _config(tmp_path, store)
    steadyflow("run", "-c", str(config), check=True)
    with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as db:
        [(polled,)] = db.execute("SELECT polled_at FROM source_polls").fetchall()
        # as if this host's clock now read an hour earlier than when they were recorded
        db.execute("UPDATE source_polls SET polled_at = polled_at + 3600")
        db.execute("UPDATE table_health SET last_success = last_success + 3600")
        db.commit()
        [(newest,)] = db.execute("SELECT max(t) FROM (SELECT polled_at AS t FROM "
                                 "source_polls UNION ALL SELECT last_success FROM "
                                 "table_health)").fetchall()
    assert float(polled) + 3600 > time.time() + 3000  # the truth: an hour ahead
    before = time.time()
    code, report = _status(config)
    after = time.time()
    assert (code, report["health"]) == (1, "degraded"), report
    assert "ahead of this host's clock" in report["clock_error"], report
    # by how much: the newest recorded time less the clock while status ran. It read
    # "60.0m" only when status came within 3 s of the run (not under load: 59.9m)
    said = re.search(r"up to ([0-9.]+)m ahead", report["clock_error"])
    assert said is not None, report["clock_error"]
    assert (float(newest) - after) / 60 - 0.05 <= float(said[1]) <= (
        float(newest) - before) / 60 + 0.05, (report["clock_error"], newest, before, after)
    human = steadyflow("status", "-c", str(config))
    assert human.returncode == 1 and "stepped back" in human.stdout, human.stdout
    assert "stepped back" in _page(config)
