from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa

from steadyflow.model import Column, Contract
from steadyflow.validate.rules import REASON, validate

CONTRACT = Contract(
    columns=(
        Column("id", "int64", nullable=False),
        Column("qty", "int64", min=1),
        Column("price", "decimal(12,2)", min=0),
        Column("currency", "string", allowed=("USD", "EUR")),
        Column("at", "timestamp", nullable=False),
    ),
    primary_key=("id",), cursor="at")


def test_bad_rows_are_split_off_with_their_first_broken_rule() -> None:
    raw = pa.table({
        "id": ["1", "2", "3", "4", "5", None],
        "qty": ["2", "abc", "0", "3", "4", "1"],
        "price": ["1.50", "2.00", "3.00", "-1.00", "5.00", "1.00"],
        "currency": ["USD", "USD", "EUR", "EUR", "XXX", "USD"],
        "at": ["2026-01-01 00:00:00.000001"] * 6,
    })
    verdict = validate(raw, CONTRACT)
    assert verdict.good.num_rows == 1
    assert verdict.good.schema.field("price").type == pa.decimal128(12, 2)
    assert verdict.good.to_pylist()[0] == {
        "id": 1, "qty": 2, "price": Decimal("1.50"), "currency": "USD",
        "at": datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)}
    reasons = dict(zip(verdict.bad["id"].to_pylist(), verdict.bad[REASON].to_pylist(),
                       strict=True))
    assert reasons == {
        "2": "qty: not a valid int64",
        "3": "qty: below minimum 1",
        "4": "price: below minimum 0",
        "5": "currency: not one of USD,EUR",
        None: "id: must not be null",
    }
    assert sum(verdict.reasons.values()) == 5
    assert verdict.bad_mask.to_pylist() == [False, True, True, True, True, True]


def test_clean_typed_batch_passes_untouched() -> None:
    typed = pa.table({
        "id": pa.array([1, 2], pa.int64()), "qty": pa.array([1, 5], pa.int64()),
        "price": pa.array([Decimal("0.00"), Decimal("9.99")], pa.decimal128(12, 2)),
        "currency": ["EUR", None],
        "at": pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * 2, pa.timestamp("us", tz="UTC")),
    })
    verdict = validate(typed, CONTRACT)
    assert verdict.good.num_rows == 2 and verdict.bad.num_rows == 0 and not verdict.reasons
