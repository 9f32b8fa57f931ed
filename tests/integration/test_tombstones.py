"""A key a repair deleted stays deleted when an older batch loads after the delete.

`reconcile --repair` (mirror_deletes) deletes a key in its batch's transaction. A batch of
an EARLIER extraction that loads after it (its group hit a retryable error and went back
to the buffer; the sweeper republished it late) carries the old version of that row: the
merge found no row of the key to compare sequences with and inserted it again, every
later run ok, only the next reconcile saw the extra row. A delete now leaves a tombstone
(key, the repair batch's seq) in the warehouse, in the same transaction; a row of an
extraction up to that seq is held back, a newer one (the source inserted the key again)
loads and clears it. Both warehouses, each merge path, read back through the drivers.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from tests.support.warehouses import Warehouse, open_warehouse, query

from steadyflow.model import BatchRef, Column, Contract, TableRef
from steadyflow.ports import LoadPart

CONTRACT = Contract(columns=(Column("id", "int64", nullable=False), Column("val", "string"),
                             Column("v", "int64")), primary_key=("id",), cursor="v")
REF = TableRef("src", "items", "items")


def _open(where: str) -> Warehouse:
    wh = open_warehouse(where)
    wh.ensure_table(REF, CONTRACT)
    return wh


def _items(where: str) -> dict[int, tuple[str, int]]:
    return {i: (val, v) for i, val, v in query(
        where, "SELECT id, val, v FROM {schema}.items")}


def _tombs(where: str) -> dict[int, int]:
    return dict(query(where, "SELECT id, _steadyflow_seq FROM {schema}._steadyflow_tomb_items"))


def _part(seq: int, ids: list[int], deletes: list[int] | None = None,
          name: str | None = None) -> LoadPart:
    rows = pa.table({"id": pa.array(ids, pa.int64()),
                     "val": pa.array([f"v{i}@{seq}" for i in ids], pa.string()),
                     "v": pa.array([seq] * len(ids), pa.int64())})
    batch = BatchRef(name or f"batch-{seq}", "src", "items", "p", len(ids), 0, "c", None,
                     None, 0.0, kind="repair" if deletes else "extract", seq=seq)
    dels = None if deletes is None else pa.table({"id": pa.array(deletes, pa.int64())})
    return LoadPart(REF, CONTRACT, batch, rows, dels)


def _load(where: str, *parts: LoadPart) -> list[Any]:
    """One group load by a warehouse opened for it (as a process would): DuckDB allows
    the test's own reads of the file only while no warehouse holds it."""
    wh = _open(where)
    try:
        return [m.changed if m is not None else None for m in wh.load_group(list(parts))]
    finally:
        wh.close()


# the late batch: only deleted keys (PostgreSQL: its direct COPY meets no conflict; DuckDB:
# no key in the target, a plain INSERT), or beside a key still there (the staged merge)
LATE = {"new-keys-only": [2, 3], "with-a-kept-key": [1, 2, 3]}


@pytest.mark.parametrize("late", sorted(LATE))
def test_an_older_batch_loaded_after_a_repair_delete_does_not_bring_its_keys_back(
        where: str, late: str) -> None:
    assert _load(where, _part(1, [1, 2, 3, 4])) == [4]
    assert _load(where, _part(3, [], deletes=[2, 3])) == [2]  # the repair, seq 3
    assert _items(where).keys() == {1, 4}

    # extraction 2 read before the repair and loads after it
    changed = _load(where, _part(2, LATE[late]))
    found = _items(where)
    assert 2 not in found and 3 not in found, "an older batch brought deleted keys back"
    assert found == ({1: ("v1@2", 2), 4: ("v4@1", 1)} if 1 in LATE[late]
                     else {1: ("v1@1", 1), 4: ("v4@1", 1)})
    assert changed == [1 if 1 in LATE[late] else 0]
    assert _tombs(where) == {2: 3, 3: 3}  # kept: they hold back any older batch


def test_a_key_inserted_again_at_the_source_loads_and_clears_its_tombstone(
        where: str) -> None:
    _load(where, _part(1, [1, 2, 3]))
    _load(where, _part(3, [], deletes=[2, 3]))
    assert _load(where, _part(4, [2])) == [1]  # a newer extraction: the key is back
    assert _items(where) == {1: ("v1@1", 1), 2: ("v2@4", 4)}
    _load(where, _part(2, [2, 3], name="late"))  # an older batch after all of it
    assert _items(where) == {1: ("v1@1", 1), 2: ("v2@4", 4)}
    assert _tombs(where) == {3: 3}  # key 2's cleared by the newer extraction


def test_the_repair_and_the_older_batch_in_one_group(where: str) -> None:
    """Group commit: the older batch after the repair in one transaction sees its
    tombstones; a batch of another extraction after them is merged as ever."""
    _load(where, _part(1, [1, 2, 3]))
    assert _load(where, _part(3, [], deletes=[2]), _part(2, [2, 5], name="late"),
                 _part(4, [6])) == [1, 1, 1]
    assert _items(where) == {1: ("v1@1", 1), 3: ("v3@1", 1), 5: ("v5@2", 2),
                             6: ("v6@4", 4)}
    assert _tombs(where) == {2: 3}


def test_a_later_repair_keeps_the_newer_tombstone(where: str) -> None:
    """Two repairs deleting one key, the later loaded first (the sweeper): the key's
    tombstone keeps the higher seq, so a batch between the two stays held back."""
    _load(where, _part(1, [1, 2]))
    _load(where, _part(5, [], deletes=[2], name="repair-5"))
    _load(where, _part(3, [], deletes=[2], name="repair-3"))
    _load(where, _part(4, [2]))
    assert _items(where) == {1: ("v1@1", 1)}
    assert _tombs(where) == {2: 5}


def test_a_warehouse_kept_open_sees_the_tombstones_it_writes(where: str) -> None:
    """One process loading every batch (DuckDB remembers per target whether tombstones
    exist, asked once while it holds the file): the repair's tombstones count from the
    next batch on."""
    wh = _open(where)
    try:
        for part in (_part(1, [1, 2, 3]), _part(2, [4])):  # asked: no tombstone yet
            wh.load_group([part])
        wh.load_group([_part(5, [], deletes=[2])])
        wh.load_group([_part(3, [2, 5], name="late")])
    finally:
        wh.close()
    assert _items(where) == {1: ("v1@1", 1), 3: ("v3@1", 1), 4: ("v4@2", 2),
                             5: ("v5@3", 3)}
