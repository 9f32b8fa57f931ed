"""`run --follow`: a store that stops answering holds up only its own table.

Two PostgreSQL stores feed one target; the second is reached through a proxy that then
black-holes its link, so that store's poll hangs until its statement timeout (15 s). Rows
written to the first store meanwhile must reach the warehouse long before: each table polls
on its own cadence (run/scheduler.py). A serial all-table cycle waited for the hung poll.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from tests.faults.test_network import (
    open_pipeline,
    pg_proxy,  # noqa: F401 - the fixture
    seed_pg,
    sql_source,
    via,
    warehouse_rows,
)
from tests.support.faultproxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HUNG = 15  # the hung store's statement timeout: its poll returns only after this
WITHIN = 8  # the other store's new rows must be loaded well within it


def wait_for(what: str, predicate: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds:g}s: {what}"
        time.sleep(0.1)


def test_a_hung_store_never_holds_up_another_table(tmp_path: Path, pg_dsn: str,
                                                   pg_proxy: FaultProxy) -> None:  # noqa: F811
    seed_pg(pg_dsn, 100, store_id=1, table="quick")
    seed_pg(pg_dsn, 100, store_id=2, table="stuck")
    pipeline = open_pipeline(tmp_path, [
        sql_source("quick", "postgres", pg_dsn, table="quick", store_id=1),
        sql_source("stuck", "postgres", via(pg_dsn, pg_proxy), table="stuck", store_id=2,
                   statement_timeout=HUNG, retries=1)],
        run={"interval": "0.5s"})

    def rows(store: int) -> int:
        try:
            table = warehouse_rows(pipeline)
        except duckdb.CatalogException:  # the first batch has not created it yet
            return 0
        return sum(1 for s in table.column("store_id").to_pylist() if s == store)

    _ = pipeline.warehouse  # opened here: the reads below share it with the run
    runner = threading.Thread(target=pipeline.run, kwargs={"follow": True})
    runner.start()
    try:
        wait_for("the first round", lambda: rows(1) == 100 and rows(2) == 100, 60)
        pg_proxy.blackhole(True)
        time.sleep(2)  # the stuck store's next poll starts and hangs (0.5 s cadence)
        seed_pg(pg_dsn, 50, store_id=1, table="quick", start=101)
        wait_for("the quick store's new rows", lambda: rows(1) == 150, WITHIN)
        assert runner.is_alive()
    finally:
        pg_proxy.blackhole(False)
        # the hung poll's query was swallowed: reset its link so it fails now rather than
        # at its statement timeout, and the stop below does not wait out HUNG (~13 s)
        pg_proxy.reset_all()
        pipeline.stop()
        runner.join(HUNG + 30)
        pipeline.close()
    assert not runner.is_alive()
