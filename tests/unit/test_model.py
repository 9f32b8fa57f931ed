from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pytest

from steadyflow.arrow_types import arrow_type
from steadyflow.model import (
    BatchRef,
    Watermark,
    column_type,
    greatest_of,
    parse_duration,
    past_the_type,
    step_back,
)


def test_watermark_round_trip_keeps_microseconds_and_zone() -> None:
    ts = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    mark = Watermark(ts, (7, "k", Decimal("1.10")))
    back = Watermark.from_json(mark.to_json())
    assert back.cursor == ts and back.cursor.microsecond == 678901
    assert back.cursor.utcoffset() == timedelta(0)  # normalised to UTC, same instant
    assert back.key == (7, "k", Decimal("1.10"))


def test_watermark_pairs_order_ties_by_key() -> None:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    assert Watermark(ts, (1,)).as_tuple() < Watermark(ts, (2,)).as_tuple()
    assert Watermark(ts, (9,)).as_tuple() < Watermark(ts + timedelta(microseconds=1),
                                                      (1,)).as_tuple()


def test_batch_ref_json_round_trip() -> None:
    ref = BatchRef("id", "s", "t", "p", 3, 10, "c", None,
                   Watermark(5, (1,)), 1.5, kind="repair", meta={"a": 1})
    assert BatchRef.from_json(ref.to_json()) == ref


@pytest.mark.parametrize(("text", "seconds"), [("250ms", 0.25), ("30s", 30), ("5m", 300),
                                               ("2h", 7200), (15, 15.0), ("1.5", 1.5)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_and_type_are_rejected() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="unknown type"):
        arrow_type("varchar(10)")
    assert arrow_type("decimal(12, 2)") == pa.decimal128(12, 2)


def test_step_back() -> None:
    ts = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert step_back(ts, 10) == datetime(2026, 1, 1, tzinfo=UTC)
    assert step_back(100, 7) == 93


@pytest.mark.parametrize(("spec", "greatest", "above"), [
    ("decimal(38,0)", "9" * 38, "9" * 38 + ".5"),
    ("decimal(38,2)", "9" * 36 + ".99", "9" * 36 + ".991"),
    ("decimal(38,38)", "0." + "9" * 38, "0." + "9" * 38 + "1"),
    ("decimal(12,2)", "9999999999.99", "9999999999.991"),
    ("int64", str(2 ** 63 - 1), str(2 ** 63)), ("int32", str(2 ** 31 - 1), str(2 ** 31))])
def test_a_cursor_past_its_type_is_told_exactly(spec: str, greatest: str, above: str) -> None:
    """The greatest value of a contract type, digit for digit: Decimal arithmetic rounds
    to 28 digits, and 10^38 - 1 computed so was 1E+38, which a decimal(38,0) cursor
    holding 10^38 - 0.5 (a wider source column) was not past."""
    kind = column_type(spec)
    top = greatest_of(kind)
    assert (format(top, "f") if isinstance(top, Decimal) else str(top)) == greatest
    assert not past_the_type(Decimal(greatest), kind) and not past_the_type(True, kind)
    assert past_the_type(Decimal(above), kind)
    assert past_the_type(int(above), kind) if kind.bits else True
    assert not past_the_type(Decimal("NaN"), kind)  # NaN has its own refusal
