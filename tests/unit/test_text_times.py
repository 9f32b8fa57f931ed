"""Times read from text, numbers where a time belongs, and lookback on every cursor type."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from steadyflow.extract.arrow_values import column_to_arrow, rows_to_arrow
from steadyflow.extract.dialects import InvalidText
from steadyflow.model import INVALID, Column, Contract, parse_text_time, step_back

TS = pa.timestamp("us", tz="UTC")
AT = datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "micros"), [
    ("2024-01-01 10:00:00", 0),
    ("2024-01-01T10:00:00", 0),
    ("2024-01-01 10:00:00.5", 500_000),
    ("2024-01-01 10:00:00.123", 123_000),
    ("2024-01-01T10:00:00.123456", 123_456),
    ("2024-01-01T10:00:00Z", 0),
    ("2024-01-01 10:00:00.25Z", 250_000),
    ("2024-01-01T10:00:00+00:00", 0),
    ("2024-01-01T10:00:00.000001+00:00", 1),
    ("2024-01-01T12:00:00+02:00", 0),
    ("2024-01-01T12:00:00.75+02:00", 750_000),
    ("2024-01-01T05:30:00-04:30", 0),
])
def test_text_times_are_their_utc_instant(text: str, micros: int) -> None:
    want = AT.replace(microsecond=micros)
    assert column_to_arrow([text], TS).to_pylist() == [want]
    assert parse_text_time(text) == want


@pytest.mark.parametrize("text", ["pending", "2024-01-01 10:00:00.1234567", "2024-01-01"])
def test_other_text_is_not_a_time(text: str) -> None:
    """More precision than microseconds is never truncated; garbage stays text (validation
    quarantines it)."""
    assert column_to_arrow([text], TS).type == pa.string()


@pytest.mark.parametrize("target", [TS, pa.date32()])
@pytest.mark.parametrize("number", [1_704_103_200, 1_704_103_200.5, 0, True])
def test_a_number_is_never_a_time(target: pa.DataType, number: object) -> None:
    """pa.array reads an int as microseconds (1970-01-01 00:28:24): never silently."""
    reasons: list[str | None] = [None, None]
    out = column_to_arrow([number, None], target, reasons)
    assert out.type == target and out.to_pylist() == [None, None]
    assert reasons[0] is not None and "is not a" in reasons[0] and reasons[1] is None
    # without a reason list the column lands as text (validation refuses it)
    assert column_to_arrow([number], target).type == pa.string()


def test_a_time_of_day_is_never_dropped_from_a_date() -> None:
    reasons: list[str | None] = [None, None]
    out = column_to_arrow([datetime(2024, 1, 1), datetime(2024, 1, 1, 10, 30)], pa.date32(),
                          reasons)
    assert out.to_pylist() == [date(2024, 1, 1), None]
    assert reasons == [None, "2024-01-01T10:30:00 has a time of day: not a date (declare it "
                             "timestamp)"]


def test_rows_to_arrow_says_why_a_value_is_null() -> None:
    contract = Contract(columns=(Column("id", "int64"), Column("v", "string"),
                                 Column("at", "timestamp")), primary_key=("id",), cursor="id")
    rows = [(1, "ok", "2024-01-01 10:00:00"), (2, InvalidText(b"a\xffb"), 1_704_103_200),
            (3, b"bytes", None), (4, b"\xfe", None)]
    table = rows_to_arrow(rows, contract)
    assert table.column_names == ["id", "v", "at", INVALID]
    assert table["v"].to_pylist() == ["ok", None, "bytes", None]
    assert table["at"].to_pylist() == [AT, None, None, None]
    assert table[INVALID].to_pylist() == [
        None, "v: invalid UTF-8: 'a\\xffb'", None, "v: invalid UTF-8: '\\xfe'"]
    assert INVALID not in rows_to_arrow(rows[:1], contract).column_names


@pytest.mark.parametrize(("cursor", "lookback", "want"), [
    (AT, 90, datetime(2024, 1, 1, 9, 58, 30, tzinfo=UTC)),
    (100, 7, 93),
    (date(2024, 3, 1), 3600, date(2024, 2, 29)),  # whole days, rounded up
    (date(2024, 3, 1), 86_400 * 2, date(2024, 2, 28)),
    (Decimal("10.50"), 2, Decimal("8.50")),
    (2.5, 1, 1.5),
    ("2024-01-01 10:00:00", 0.25, "2024-01-01 09:59:59"),  # floor in the stored spelling
    ("2024-01-01T10:00:00.500Z", 0.25, "2024-01-01T10:00:00.250Z"),
    ("2024-01-01T10:00:00.5+02:00", 1, "2024-01-01T09:59:59.5+02:00"),
    ("2024-01-01T10:00:00", 3600, "2024-01-01T09:00:00"),
    ("2024-03-01", 60, "2024-02-29"),
])
def test_step_back(cursor: object, lookback: float, want: object) -> None:
    assert step_back(cursor, lookback) == want  # type: ignore[arg-type]


@pytest.mark.parametrize("cursor", ["pending", "abc", True])
def test_step_back_refuses_what_cannot_step(cursor: object) -> None:
    """Ignoring the lookback would silently skip the late rows it exists for."""
    with pytest.raises(ValueError, match="lookback"):
        step_back(cursor, 10)  # type: ignore[arg-type]
