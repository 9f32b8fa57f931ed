"""Validation's casts on drawn values: a value is its exact self in the contract type, or its
row is quarantined. The oracle is Python's exact arithmetic (Decimal, int), not Arrow's.

Integers (an int64 column, or their text) cast to float64 or bool, and number texts
(integers of up to 20 digits, floats' shortest text, values outside float64's range,
hexadecimal) cast to float64 or int64: Arrow's safe casts rounded 9007199254740993 to
9007199254740992, read 2 as true, '1e400' as inf, '1e-400' as 0 and '0x1A' as 26.
"""

from __future__ import annotations

import math
from decimal import Decimal

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from steadyflow.model import Column, Contract
from steadyflow.validate.rules import validate

INT64 = st.integers(-(2**63), 2**63 - 1)
EDGES = st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**62, 2**63 - 1, -(2**63), 0, 1,
                         2, -1])
NUMBER_TEXT = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1e400", "-1e309", "1e-400", "-2.5e-330", "0e0", "-0", "0.000",
                     "0x1A", "-0X10", "inf", "-Infinity", "007", "9007199254740993"]))


def _one(kind: str, values: pa.Array) -> tuple[list[object], list[bool]]:
    """The good rows' values of column v, and which rows were quarantined."""
    contract = Contract(columns=(Column("id", "int64", nullable=False), Column("v", kind)),
                        primary_key=("id",), cursor="id")
    ids = pa.array(range(len(values)), pa.int64())
    verdict = validate(pa.table({"id": ids, "v": values}), contract)
    return verdict.good["v"].to_pylist(), verdict.bad_mask.to_pylist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(INT64, EDGES), min_size=1, max_size=8), st.booleans())
def test_an_integer_as_float64_or_bool_is_itself_or_quarantined(values: list[int],
                                                                as_text: bool) -> None:
    column = pa.array([str(v) for v in values]) if as_text else pa.array(values, pa.int64())
    for kind in ("float64", "bool"):
        good, bad = _one(kind, column)
        kept = iter(good)
        for value, refused in zip(values, bad, strict=True):
            exact = (Decimal(float(value)) == value if kind == "float64"
                     else value in (0, 1))
            assert refused is (not exact), (kind, value)
            if not refused:
                got = next(kept)
                assert int(got) == value  # type: ignore[call-overload]  # float or bool


@settings(max_examples=60, deadline=None)
@given(st.lists(NUMBER_TEXT, min_size=1, max_size=8))
def test_number_text_as_float64_or_int64_is_itself_or_quarantined(texts: list[str]) -> None:
    good, bad = _one("float64", pa.array(texts))
    kept = iter(good)
    for text, refused in zip(texts, bad, strict=True):
        if refused:
            continue
        got = next(kept)
        assert isinstance(got, float)
        number = Decimal(text.replace("0X", "0x")) if "x" not in text.lower() else None
        assert number is not None, (text, got)  # hexadecimal is no float64's text
        if number.is_infinite():
            assert got == float(text)
            continue
        assert math.isfinite(got), (text, got)  # a finite number is never inf
        assert got != 0 or number == 0, (text, got)  # nor a nonzero one 0
        if text.lstrip("+-").isdigit() and len(text.lstrip("+-")) <= 20:
            assert Decimal(got) == number, (text, got)  # an integer exactly
        else:
            assert got == float(text), (text, got)  # else its nearest float
    good, bad = _one("int64", pa.array(texts))
    kept = iter(good)
    for text, refused in zip(texts, bad, strict=True):
        if not refused:
            got = next(kept)
            assert text.lstrip("+-").isdigit() and got == int(text), (text, got)
