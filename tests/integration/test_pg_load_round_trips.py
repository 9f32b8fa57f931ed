"""A PostgreSQL load group's round trips, counted on the wire (the server's ReadyForQuery
messages, tests/support/wirecount.py), and what the load must still guarantee with fewer
of them (merge/postgres.py):

- the direct COPY's savepoint travels with the batch's ledger row (one pipeline) and is
  never released: a part whose COPY the primary key refuses rolls back to ITS savepoint,
  after its ledger row, so an earlier part's rows and every ledger row stay;
- the transaction's `SET LOCAL TimeZone` is sent only when the server reports the session
  is not in UTC: the CSV's naive UTC timestamps are still read as UTC then.

Rows and ledger are read back with psycopg on a connection of the test's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeVar

import psycopg
import pyarrow as pa
import pytest
from tests.integration.test_group_commit import CONTRACT, REF, _part
from tests.support.wirecount import WireCounter

from steadyflow.merge.plan import LEDGER
from steadyflow.merge.postgres import PostgresWarehouse
from steadyflow.model import BatchRef, Column, Contract, TableRef
from steadyflow.ports import LoadPart

pytestmark = pytest.mark.integration

T = TypeVar("T")
U = TableRef("s", "u", "u")


@pytest.fixture
def counted(pg_dsn: str) -> Iterator[tuple[PostgresWarehouse, WireCounter]]:
    """A warehouse whose connection goes through a round-trip counter."""
    counter = WireCounter(5432, "postgres")
    via = pg_dsn.replace(":5432/", f":{counter.port}/") + "?sslmode=disable&gssencmode=disable"
    wh = PostgresWarehouse(via, "wh")
    try:
        yield wh, counter
    finally:
        wh.close()
        counter.close()


def _trips(counter: WireCounter, run: Callable[[], T]) -> tuple[T, int]:
    before = counter.round_trips
    result = run()
    return result, counter.round_trips - before


def _rows(dsn: str, table: str) -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(f"SELECT k, v FROM wh.{table}").fetchall())


def _ledger(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(f'SELECT batch_id, changed FROM wh."{LEDGER}"').fetchall())


def test_new_batches_cost_two_round_trips_each(
        counted: tuple[PostgresWarehouse, WireCounter], pg_dsn: str) -> None:
    """BEGIN; per batch its ledger row with the savepoint, then its COPY; COMMIT. Main's
    code paid a SET LOCAL per group and a SAVEPOINT and a RELEASE per batch: 15, not 8."""
    wh, counter = counted
    wh.ensure_table(REF, CONTRACT)
    wh.ensure_table(U, CONTRACT)
    merged, trips = _trips(counter, lambda: wh.load_group([
        _part("a", 1, (1, "a", 1), (2, "a", 1)), _part("b", 2, (3, "b", 1)),
        replace(_part("c", 3, (5, "c", 1)), ref=U)]))
    assert [m.changed if m else None for m in merged] == [2, 1, 1]
    assert trips == 2 + 2 * 3, counter.statements[-20:]
    assert _rows(pg_dsn, "t") == {1: "a", 2: "a", 3: "b"} and _rows(pg_dsn, "u") == {5: "c"}
    assert _ledger(pg_dsn) == {"a": 2, "b": 1, "c": 1}
    # a redelivered batch: its ledger row is there, nothing else is sent for it
    merged, trips = _trips(counter, lambda: wh.load_group([_part("b", 2, (3, "b", 1))]))
    assert merged == [None] and trips == 3


def test_a_refused_direct_copy_undoes_its_own_rows_only(
        counted: tuple[PostgresWarehouse, WireCounter], pg_dsn: str) -> None:
    """c's keys collide with a's, loaded earlier in the same transaction: c's COPY is
    refused and rolled back to the savepoint taken after c's ledger row (the most recent
    of that name; a's is never released), so a's rows, a's and c's ledger rows stay, c
    takes the staged merge, and the target after it (u) still gets its direct COPY."""
    wh, counter = counted
    wh.ensure_table(REF, CONTRACT)
    wh.ensure_table(U, CONTRACT)
    merged, trips = _trips(counter, lambda: wh.load_group([
        _part("a", 1, (1, "a", 1), (2, "a", 1)), _part("c", 2, (2, "c", 2), (3, "c", 2)),
        replace(_part("b", 3, (5, "b", 1)), ref=U)]))
    assert [m.changed if m else None for m in merged] == [2, 2, 1]
    assert _rows(pg_dsn, "t") == {1: "a", 2: "c", 3: "c"} and _rows(pg_dsn, "u") == {5: "b"}
    assert _ledger(pg_dsn) == {"a": 2, "c": 2, "b": 1}
    # BEGIN; a: 2; c: ledger+savepoint, refused COPY, ROLLBACK TO, stage made, COPY to
    # it, merge; b: 2; COMMIT (main's code: 19)
    assert trips == 1 + 2 + 6 + 2 + 1, counter.statements[-30:]


def test_a_session_not_in_utc_still_loads_instants_as_utc(
        counted: tuple[PostgresWarehouse, WireCounter], pg_dsn: str) -> None:
    """The timestamps go to the COPY as naive UTC text. A session in UTC (the connection
    asks for it) needs no SET LOCAL; one the server reports in another zone (a pooler
    that dropped the startup options, a SET on the connection) gets it, one round trip
    more, and the instants are right either way."""
    wh, counter = counted
    contract = Contract(columns=(Column("k", "int64", nullable=False),
                                 Column("at", "timestamp")), primary_key=("k",), cursor="at")
    ref = TableRef("s", "z", "z")
    noon = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def part(name: str, k: int) -> LoadPart:
        rows = pa.table({"k": pa.array([k], pa.int64()),
                         "at": pa.array([noon], pa.timestamp("us", tz="UTC"))})
        return LoadPart(ref, contract, BatchRef(name, "s", "z", "x", 1, 0, "", None, None,
                                                0.0, seq=k), rows)

    wh.ensure_table(ref, contract)
    _, in_utc = _trips(counter, lambda: wh.load_group([part("a", 1)]))
    wh.conn.execute("SET TimeZone TO 'America/New_York'")
    wh.conn.commit()
    assert wh.conn.info.parameter_status("TimeZone") == "America/New_York"
    _, elsewhere = _trips(counter, lambda: wh.load_group([part("b", 2)]))
    assert (in_utc, elsewhere) == (4, 5)
    with psycopg.connect(pg_dsn) as conn:
        assert dict(conn.execute("SELECT k, at FROM wh.z").fetchall()) == {1: noon, 2: noon}
