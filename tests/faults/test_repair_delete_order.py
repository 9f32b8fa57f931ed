"""A repair batch's deletes lose to a later extraction, as its rows do.

A repair that dies after landing its batch (SIGKILL, a warehouse error on its load) leaves
the batch in the manifest, and the sweeper loads it later: after batches an extractor read
since. When the source inserted a deleted key again meanwhile (a key reused after a hard
delete), the later extraction carries the row; the late repair batch's delete of that key
removed it anyway, whatever the extraction order (the merge's rule is that the later
extraction wins), `load` reported ok, and no later run brought the row back (its cursor was
behind the checkpoint): only the next reconciliation saw it missing.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from tests.conftest import steadyflow
from tests.faults.test_repair_crash import DUCKDB, GONE, ROWS, setup

pytestmark = pytest.mark.faults

BACK = 5  # deleted at the source, inserted again after the repair read it as gone


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.integration)])
def warehouse(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "duckdb":
        yield DUCKDB
    else:
        yield {"kind": "postgres", "dsn": request.getfixturevalue("pg_dsn"), "schema": "wh"}


def source_rows(directory: Path) -> dict[int, tuple[int, str]]:
    with closing(sqlite3.connect(directory / "source.db")) as db:
        return {i: (rev, val) for i, rev, val in db.execute("SELECT id, rev, val FROM items")}


def warehouse_rows(warehouse: dict[str, Any], directory: Path) -> dict[int, tuple[int, str]]:
    """Read back through the warehouse's own driver."""
    if warehouse["kind"] == "duckdb":
        con = duckdb.connect(str(directory / "warehouse.duckdb"), read_only=True)
        try:
            rows = con.execute("SELECT id, rev, val FROM main.items").fetchall()
        finally:
            con.close()
    else:
        with psycopg.connect(warehouse["dsn"]) as conn:
            rows = conn.execute("SELECT id, rev, val FROM wh.items").fetchall()
    return {i: (rev, val) for i, rev, val in rows}


def test_a_late_repair_delete_keeps_a_key_extracted_again_after_it(
        tmp_path: Path, warehouse: dict[str, Any]) -> None:
    config = setup(tmp_path, warehouse)

    # the repair lands its batch (deletes of GONE) and dies before its load commits
    crashed = steadyflow("reconcile", "-c", str(config), "--repair",
                         env={"STEADYFLOW_FAILPOINT": "load.after_merge"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    assert set(GONE) <= warehouse_rows(warehouse, tmp_path).keys()

    # the key comes back at the source; an extraction reads it, queued before the sweeper
    # queues the repair batch again
    with closing(sqlite3.connect(tmp_path / "source.db")) as db:
        db.execute("INSERT INTO items VALUES (?, ?, 'back')", (BACK, ROWS + 1))
        db.commit()
    steadyflow("extract", "-c", str(config), check=True)
    steadyflow("load", "-c", str(config), check=True)

    expected = source_rows(tmp_path)
    assert expected[BACK] == (ROWS + 1, "back")
    found = warehouse_rows(warehouse, tmp_path)
    assert found.get(BACK) == expected[BACK], "the repair's late delete removed a newer row"
    assert found == expected
    clean = steadyflow("reconcile", "-c", str(config), "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
