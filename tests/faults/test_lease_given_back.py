"""A table `run --follow` polls without finding new rows does not keep its extraction lease
(run/lease.py KeptLease: "given back when a poll finds nothing new"), so another extractor
of the table (`reconcile --repair`, `steadyflow extract`) waiting WAIT_SECONDS gets it.

`_idle` (run/extract.py) only calls a poll idle when it would read nothing at all; a table
with a lookback window (or a SQLite or HTTP source) re-reads that window on every poll, so
each of its quiet polls takes the lease. Such a poll must still give it back: held until
the end of the first poll KEEP_SECONDS after it was taken, the lease of a table polled
every `poll_max` seconds is held for a whole pause, longer than a repair waits.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from tests.faults.test_follow_schedule import wait_for
from tests.faults.test_network import (
    assert_warehouse_equals_sources,
    open_pipeline,
    seed_pg,
    sql_source,
    warehouse_rows,
)

from steadyflow.errors import TableBusy
from steadyflow.run.lease import WAIT_SECONDS, hold
from steadyflow.state import SqliteStateStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PAUSE = 8.0  # the follower's pause between two polls of the quiet table (> WAIT_SECONDS)


def _generation(state: SqliteStateStore) -> int:
    rows = state._query("SELECT generation FROM extract_leases WHERE source = 'store' AND "
                        "tbl = 'sales'")
    return int(rows[0][0]) if rows else 0


def _loaded(pipeline: object) -> int:
    try:
        return int(warehouse_rows(pipeline).num_rows)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - the target is not created yet
        return 0


def test_a_quiet_table_with_a_lookback_lets_a_waiting_repair_in(tmp_path: Path,
                                                                pg_dsn: str) -> None:
    seed_pg(pg_dsn, 100)
    source = sql_source("store", "postgres", pg_dsn)
    source["tables"][0]["lookback"] = "1s"
    pipeline = open_pipeline(tmp_path, [source],
                             run={"interval": f"{PAUSE:g}s", "poll_min": f"{PAUSE:g}s"})
    other = SqliteStateStore(tmp_path / "state" / "state.db")
    runner = threading.Thread(target=pipeline.run, kwargs={"follow": True})
    runner.start()
    try:
        wait_for("the first load", lambda: _loaded(pipeline) == 100, 60)
        # a quiet poll takes the lease (its lookback re-read); a repair asks right then
        taken = _generation(other)
        wait_for("a quiet poll", lambda: _generation(other) > taken, 3 * PAUSE)
        try:
            with hold(other, "store", "sales", "a repair", wait=WAIT_SECONDS):
                pass
        except TableBusy as exc:
            pytest.fail(f"a follower that found nothing new kept the table: {exc}")
        assert_warehouse_equals_sources(pipeline, min_rows=100)
    finally:
        pipeline.stop()
        runner.join(30)
        other.close()
        pipeline.close()
    assert not runner.is_alive()
