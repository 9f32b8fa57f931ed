"""A PostgreSQL load group spanning targets, whose second target refuses a row for good
(a constraint the warehouse's owner added), rolls back whole, and the connection's kept
stage tables (merge/postgres.py: ON COMMIT DELETE ROWS, created once per connection,
forgotten on a rollback) leak nothing into the loads after it: the first target's batch
then loads alone with the right change count, and a later group reusing its stage twice
in one transaction keeps the later extraction. Read back with psycopg, not steadyflow.
"""

from __future__ import annotations

from dataclasses import replace

import psycopg
import pytest
from tests.integration.test_group_commit import CONTRACT, REF, _part

from steadyflow.errors import FatalError
from steadyflow.merge.postgres import PostgresWarehouse
from steadyflow.model import TableRef

pytestmark = pytest.mark.integration


def _rows(dsn: str, table: str) -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(f"SELECT k, v FROM wh.{table}").fetchall())


def test_a_group_refused_by_its_second_target_leaks_no_staged_row(pg_dsn: str) -> None:
    wh = PostgresWarehouse(pg_dsn, "wh")
    other = TableRef("s", "u", "u")
    try:
        wh.ensure_table(REF, CONTRACT)
        wh.ensure_table(other, CONTRACT)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE wh.u ADD CONSTRAINT no_bad CHECK (v <> 'bad')")
        assert wh.load_group([_part("a", 1, (1, "a", 1), (2, "a", 1))])[0] is not None
        # keys already there: the staged merge, its stage made and committed (emptied)
        merged = wh.load_group([_part("b", 2, (1, "a", 1), (2, "b", 1))])
        assert [m.changed if m else None for m in merged] == [1]

        with pytest.raises(FatalError) as refused:
            wh.load_group([_part("c", 3, (1, "c", 1), (2, "b", 1)),
                           replace(_part("d", 4, (7, "bad", 1)), ref=other)])
        assert refused.value.batch_id == "d"
        assert _rows(pg_dsn, "t") == {1: "a", 2: "b"} and _rows(pg_dsn, "u") == {}
        assert not wh.is_loaded("c") and not wh.is_loaded("d")

        # alone: c's rows only (none of the rolled-back attempt's), one changed row
        merged = wh.load_group([_part("c", 3, (1, "c", 1), (2, "b", 1))])
        assert [m.changed if m else None for m in merged] == [1]
        # t's stage used twice in one transaction: the later extraction wins each key
        merged = wh.load_group([_part("e", 6, (1, "e", 1)), _part("f", 5, (1, "f", 9)),
                                replace(_part("g", 7, (8, "g", 1)), ref=other)])
        assert [m.changed if m else None for m in merged] == [1, 0, 1]
        assert _rows(pg_dsn, "t") == {1: "e", 2: "b"} and _rows(pg_dsn, "u") == {8: "g"}
        assert all(wh.is_loaded(b) for b in "abcefg") and not wh.is_loaded("d")
    finally:
        wh.close()
