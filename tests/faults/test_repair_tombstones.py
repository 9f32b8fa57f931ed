"""A row the source deleted, removed by `reconcile --repair`, is not brought back by a
batch of an earlier extraction that loads after the repair.

An extraction lands a batch holding the last version of a row (here: its update), and its
load waits (a retryable warehouse error sends a group back to the buffer; here `extract`
without `load`). The source then deletes the row; `reconcile --repair` (mirror_deletes)
finds it extra and deletes it from the warehouse. The waiting batch loads after that: its
extraction is older than the repair's, but with no row left to carry the delete's
sequence the merge inserted the row again. Every later run was ok; only the next
reconcile saw it extra. A key inserted again at the source afterwards loads as ever.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import steadyflow
from tests.faults import test_repair_delete_order as delete_order
from tests.faults.test_repair_crash import ROWS, setup
from tests.faults.test_repair_delete_order import source_rows, warehouse_rows

pytestmark = pytest.mark.faults

KEY = 10  # updated, extracted (not loaded), then deleted at the source
warehouse = delete_order.warehouse  # the same fixture: DuckDB, and PostgreSQL (integration)


def _source(directory: Path, statement: str, *args: object) -> None:
    with closing(sqlite3.connect(directory / "source.db")) as db:
        db.execute(statement, args)
        db.commit()


def test_a_batch_extracted_before_a_repair_delete_does_not_bring_the_row_back(
        tmp_path: Path, warehouse: dict[str, Any]) -> None:
    config = setup(tmp_path, warehouse)  # loaded; keys 5, 6, 7 deleted at the source since
    _source(tmp_path, "UPDATE items SET rev = ?, val = 'new' WHERE id = ?", ROWS + 1, KEY)
    steadyflow("extract", "-c", str(config), check=True)  # landed and queued, not loaded
    _source(tmp_path, "DELETE FROM items WHERE id = ?", KEY)  # ... then deleted for good

    repaired = steadyflow("reconcile", "-c", str(config), "--repair", "--json")
    assert KEY not in warehouse_rows(warehouse, tmp_path), repaired.stdout + repaired.stderr

    steadyflow("load", "-c", str(config), check=True)  # the older batch, after the repair
    found = warehouse_rows(warehouse, tmp_path)
    assert KEY not in found, "a batch extracted before the repair brought the row back"
    assert found == source_rows(tmp_path)

    # the source inserts the key again: a newer extraction loads it
    _source(tmp_path, "INSERT INTO items VALUES (?, ?, 'back')", KEY, ROWS + 2)
    steadyflow("run", "-c", str(config), check=True)
    found = warehouse_rows(warehouse, tmp_path)
    assert found.get(KEY) == (ROWS + 2, "back")
    assert found == source_rows(tmp_path)
