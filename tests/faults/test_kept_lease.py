"""`run --follow` keeps a busy table's extraction lease between polls (run/lease.py
KeptLease), and that costs nobody else the table.

Taking and giving back the lease is two state commits per poll; a table polled several
times a second while rows flow paid them every time. Rows are written to a PostgreSQL
store while one process follows it:
- the lease generation (every acquisition takes the next one) grows about once per
  KEEP_SECONDS, not once per poll;
- another extractor (here a repair-style `hold` from a second state handle) waiting for the
  table gets it within its wait while the rows keep flowing, and the follower carries on
  after it;
- once the writes stop the table's polls go idle and the lease is given back;
- the warehouse ends equal to the store (independent comparison).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.faults.test_follow_schedule import wait_for
from tests.faults.test_network import (
    assert_warehouse_equals_sources,
    open_pipeline,
    seed_pg,
    sql_source,
)

from steadyflow.run.lease import KEEP_SECONDS, WAIT_SECONDS, hold
from steadyflow.state import SqliteStateStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BUSY = 6.0  # seconds of writes


def generation(state: SqliteStateStore) -> int:
    rows = state._query("SELECT generation FROM extract_leases WHERE source = 'store' AND "
                        "tbl = 'sales'")
    return int(rows[0][0]) if rows else 0


def holder(state: SqliteStateStore) -> str | None:
    rows = state._query("SELECT holder FROM extract_leases WHERE source = 'store' AND "
                        "tbl = 'sales'")
    return rows[0][0] if rows else None


def test_a_busy_table_keeps_its_lease_and_still_lets_others_in(tmp_path: Path,
                                                                pg_dsn: str) -> None:
    seed_pg(pg_dsn, 100)
    pipeline = open_pipeline(tmp_path, [sql_source("store", "postgres", pg_dsn)],
                             run={"interval": "1s", "poll_min": "0.05s"})
    other = SqliteStateStore(tmp_path / "state" / "state.db")
    stop = threading.Event()
    written = [100]

    def writer() -> None:
        while not stop.is_set():
            seed_pg(pg_dsn, 20, start=written[0] + 1)
            written[0] += 20
            time.sleep(0.02)

    polls = [0]
    extract_table = pipeline.extract_table

    def counted(*args: Any, **kwargs: Any) -> Any:
        polls[0] += 1
        return extract_table(*args, **kwargs)

    pipeline.extract_table = counted  # type: ignore[method-assign]
    runner = threading.Thread(target=pipeline.run, kwargs={"follow": True})
    runner.start()
    writes = threading.Thread(target=writer)
    try:
        _busy_then_idle(pipeline, other, writes, stop, written, polls)
    finally:
        stop.set()
        if writes.is_alive():
            writes.join()
        pipeline.stop()
        runner.join(30)
    assert not runner.is_alive()
    assert_warehouse_equals_sources(pipeline, min_rows=written[0])
    pipeline.close()
    other.close()


def _busy_then_idle(pipeline: Any, other: SqliteStateStore, writes: threading.Thread,
                    stop: threading.Event, written: list[int], polls: list[int]) -> None:
    try:
        wait_for("the first load", lambda: generation(other) > 0, 60)
        writes.start()
        time.sleep(1.0)  # polls find rows from here on
        before, polls_before = generation(other), polls[0]
        time.sleep(BUSY)
        taken, busy = generation(other) - before, polls[0] - polls_before
        assert busy >= 2 * BUSY / KEEP_SECONDS, f"only {busy} polls: not a busy table"
        # once per KEEP_SECONDS, and again after a poll that found nothing (a writer
        # stalled on a loaded machine): far fewer than the polls, which took it each time
        assert taken <= max(BUSY / KEEP_SECONDS + 2, busy / 3), (
            f"the lease was taken {taken} times in {busy} busy polls over {BUSY:g}s")

        # another extractor waiting for the table gets it, rows still flowing
        started = time.monotonic()
        with hold(other, "store", "sales", "a repair", wait=WAIT_SECONDS) as lease:
            assert holder(other) == lease.holder
            waited = time.monotonic() - started
            time.sleep(0.5)
        assert waited < WAIT_SECONDS
        moved = written[0]
        wait_for("the follower carries on", lambda: _loaded(pipeline) >= moved, 30)
    finally:
        stop.set()
        if writes.is_alive():
            writes.join()
    wait_for("every row loaded", lambda: _loaded(pipeline) == written[0], 30)
    # idle polls give the lease back
    wait_for("the lease given back", lambda: holder(other) is None, 10)


def _loaded(pipeline: object) -> int:
    from tests.faults.test_network import warehouse_rows

    try:
        return warehouse_rows(pipeline).num_rows  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - not created yet
        return 0
