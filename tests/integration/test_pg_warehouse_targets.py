"""Several target tables through one warehouse connection.

PostgreSQL stages a batch in a session temp table before merging it. Each target must
get a stage of its own shape: two targets with the same column names but another numeric
scale or type, loaded alternately, must each read back exactly what was loaded, and so
must deletes by keys of different types. DuckDB (which stages the batch's own Arrow table)
is held to the same test.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa
from tests.support.warehouses import open_warehouse, query

from steadyflow.model import BatchRef, Column, Contract, TableRef


def _contract(key: str, amount: str, code: str) -> Contract:
    return Contract(columns=(Column("id", key, nullable=False), Column("amount", amount),
                             Column("code", code), Column("v", "int64")),
                    primary_key=("id",), cursor="v")


NARROW = _contract("int64", "decimal(12,2)", "int64")
WIDE = _contract("string", "decimal(12,4)", "string")
A = TableRef("src", "a", "target_a")
B = TableRef("src", "b", "target_b")


def _rows(contract: Contract, data: list[tuple[Any, ...]]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(contract.names, r, strict=True)) for r in data],
                                schema=pa.schema([pa.field(c.name, c.arrow_type)
                                                  for c in contract.columns]))


def _batch(n: int, seq: int) -> BatchRef:
    return BatchRef(f"batch-{n}", "src", "t", "p", 0, 0, "c", None, None, 0.0, seq=seq)


def _read(where: str, target: str) -> list[tuple[Any, ...]]:
    return query(where, f"SELECT id, amount, code, v FROM {target} ORDER BY id")


def test_targets_of_one_process_each_keep_their_own_types(where: str) -> None:
    wh = open_warehouse(where)
    try:
        wh.ensure_table(A, NARROW)
        wh.ensure_table(B, WIDE)
        steps: list[tuple[TableRef, Contract, list[tuple[Any, ...]]]] = [
            (A, NARROW, [(1, Decimal("1.23"), 7, 1), (2, Decimal("2.00"), 8, 1)]),
            (B, WIDE, [("k1", Decimal("1.2345"), "x1", 1), ("k2", Decimal("0.0001"), "x", 1)]),
            # updates: keys the targets hold, so each batch takes the staged merge
            (A, NARROW, [(1, Decimal("9.87"), 70, 2)]),
            (B, WIDE, [("k1", Decimal("5.6789"), "y1", 2), ("k3", Decimal("-0.0009"), "", 2)]),
            (A, NARROW, [(2, Decimal("-3.45"), -8, 3), (3, Decimal("0.01"), None, 3)]),
            (B, WIDE, [("k2", Decimal("12345678.9999"), "z2", 3)]),
        ]
        for n, (ref, contract, data) in enumerate(steps):
            assert wh.load(ref, contract, _batch(n, seq=n), _rows(contract, data))
        # deletes by key: int keys for one target, text keys for the other
        wh.load(A, NARROW, _batch(10, 10), _rows(NARROW, []),
                deletes=pa.table({"id": pa.array([3], pa.int64())}))
        wh.load(B, WIDE, _batch(11, 11), _rows(WIDE, []),
                deletes=pa.table({"id": pa.array(["k3"], pa.string())}))
    finally:
        wh.close()
    assert _read(where, A.target) == [(1, Decimal("9.87"), 70, 2), (2, Decimal("-3.45"), -8, 3)]
    assert _read(where, B.target) == [
        ("k1", Decimal("5.6789"), "y1", 2), ("k2", Decimal("12345678.9999"), "z2", 3)]


def test_a_target_of_another_shape_merges_after_the_first(where: str) -> None:
    other = Contract(columns=(Column("sku", "string", nullable=False),
                              Column("label", "string"), Column("v", "int64")),
                     primary_key=("sku",), cursor="v")
    ref = TableRef("src", "c", "target_c")
    wh = open_warehouse(where)
    try:
        wh.ensure_table(A, NARROW)
        wh.ensure_table(ref, other)
        wh.load(A, NARROW, _batch(1, 1), _rows(NARROW, [(1, Decimal("1.00"), 1, 1)]))
        wh.load(A, NARROW, _batch(2, 2), _rows(NARROW, [(1, Decimal("2.00"), 2, 2)]))
        wh.load(ref, other, _batch(3, 3), _rows(other, [("s1", "first", 3)]))
        wh.load(ref, other, _batch(4, 4), _rows(other, [("s1", "second", 4)]))
    finally:
        wh.close()
    assert query(where, "SELECT sku, label, v FROM target_c") == [("s1", "second", 4)]
    assert _read(where, A.target) == [(1, Decimal("2.00"), 2, 2)]
