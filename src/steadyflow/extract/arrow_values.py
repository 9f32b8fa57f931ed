"""Driver values (Python objects, one column at a time) as Arrow columns in the contract's
types, with model.INVALID saying why a value could not be read faithfully.

Split from sql.py, whose SqlSource a reconcile uses without reading rows as Arrow: this
module (and pyarrow, ~80 MiB of RSS) is imported by the paths that do, extraction's pages
and the HTTP source (#15).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime
from datetime import time as dt_time
from decimal import Decimal
from typing import Any

import pyarrow as pa

from steadyflow.arrow_types import cast_exact, cast_text_decimal, cast_text_time, exact_decimal
from steadyflow.extract.dialects import InvalidText, OutOfRange
from steadyflow.extract.sql import _BYTES, _as_text
from steadyflow.model import INVALID, Contract

# value types Arrow may convert to something else, or that are unreadable
_SUSPECT = frozenset({InvalidText, OutOfRange, *_BYTES})
_SUSPECT_TIME = frozenset({*_SUSPECT, int, float, bool})  # epochs in a time column
_SUSPECT_DATE = frozenset({*_SUSPECT_TIME, datetime})  # Arrow drops a time of day
_SUSPECT_DECIMAL = frozenset({*_SUSPECT, float})  # a float's exact fit is checked first
# Arrow truncates a float or Decimal it is given as an integer (1.5 → 1, -0.99 → 0)
_SUSPECT_INTEGER = frozenset({*_SUSPECT, float, Decimal})


def column_to_arrow(values: Sequence[Any], target: pa.DataType,
                    invalid: list[str | None] | None = None) -> pa.Array:
    """Convert one column, keeping the contract type when every value fits it.

    A value that does not fit (text in an integer column of a SQLite store, say) must not
    stop extraction: the column then lands as text and validation quarantines that row.
    A value that would be converted to something else without an error (a number in a
    timestamp column, read by Arrow as microseconds since 1970) or cannot be read at all
    (text that is not UTF-8) is never converted: with `invalid` (one slot per row) it
    becomes null and its slot says why (model.INVALID); without, the column lands as
    text (validation then refuses it).
    """
    suspect = (_SUSPECT_DATE if pa.types.is_date(target) else
               _SUSPECT_TIME if pa.types.is_timestamp(target) else
               _SUSPECT_DECIMAL if pa.types.is_decimal(target) else
               _SUSPECT_INTEGER if pa.types.is_integer(target) else _SUSPECT)
    if not suspect.isdisjoint(map(type, values)):
        reasons = _unfaithful(values, target)
        if reasons and invalid is None:
            return pa.array([None if v is None else str(v) for v in values], pa.string())
        if reasons and invalid is not None:
            values = list(values)
            for i, why in reasons.items():
                values[i] = None
                invalid[i] = invalid[i] or why
        values = [_as_text(v) if isinstance(v, _BYTES) and pa.types.is_string(target)
                  else exact_decimal(repr(v), target) if isinstance(v, float)
                  and pa.types.is_decimal(target)
                  else int(v) if isinstance(v, float) and pa.types.is_integer(target)
                  else v for v in values]  # a float left for an integer column is whole
    if pa.types.is_timestamp(target):
        values = [_midnight(v) for v in values]
    elif pa.types.is_date(target):
        values = [_day(v) for v in values]
    try:
        return pa.array(values, type=target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        pass
    text = pa.array([None if v is None else _spelled(v) for v in values], type=pa.string())
    try:
        if pa.types.is_timestamp(target):
            return cast_text_time(text, target)
        if pa.types.is_decimal(target):
            return cast_text_decimal(text, target)
        return cast_exact(text, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return text


def _day(value: Any) -> Any:
    """A datetime left for a date column (its midnight: `_unfaithful` refused any other)
    as its date. Arrow takes it as one, but where the column lands as text (a MariaDB
    zero date, which the driver hands over as text, in the same page) its text was
    '2024-01-02 00:00:00', which no date cast reads: every midnight of that page was
    quarantined beside the zero date, one bad value costing other rows."""
    return value.date() if isinstance(value, datetime) else value


def _midnight(value: Any) -> Any:
    """A date (a MariaDB DATE, PostgreSQL's through psycopg) read as a timestamp is the
    instant of its midnight, UTC, as a database casts it and PostgreSQL's fast path reads
    it. Arrow takes no date as a timestamp, and its text ('2024-01-02') no time cast
    reads: every row was quarantined."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


def _unfaithful(values: Sequence[Any], target: pa.DataType) -> dict[int, str]:
    """{row: why} for values that cannot be read faithfully as `target`."""
    time = pa.types.is_timestamp(target) or pa.types.is_date(target)
    kind = "timestamp" if pa.types.is_timestamp(target) else "date"
    out: dict[int, str] = {}
    for i, v in enumerate(values):
        if isinstance(v, InvalidText):
            out[i] = f"invalid UTF-8: '{v}'"
        elif isinstance(v, OutOfRange):
            out[i] = v.reason
        elif isinstance(v, _BYTES) and pa.types.is_string(target) and _as_text(v) is None:
            out[i] = f"invalid UTF-8: '{InvalidText(bytes(v))}'"
        elif time and isinstance(v, int | float):
            out[i] = (f"the number {v!r} is not a {kind} (an epoch? declare the column "
                      "int64 or float64, or store times as text or a time type)")
        elif kind == "date" and isinstance(v, datetime) and (
                v.time() != dt_time(0) or v.utcoffset()):
            out[i] = f"{v.isoformat()} has a time of day: not a date (declare it timestamp)"
        elif isinstance(v, float) and pa.types.is_decimal(target) and exact_decimal(
                repr(v), target) is None:
            out[i] = _unheld(v, target)
        elif pa.types.is_integer(target) and isinstance(v, float | Decimal) and not (
                math.isfinite(v) and v == int(v)):
            out[i] = (f"{v} is no whole number: no {target} holds it (declare the column "
                      "decimal(p,s))")
    return out


def _unheld(value: float, target: pa.DataType) -> str:
    """Why a float (a SQLite REAL, a JSON number) is not a value of a decimal column: it is
    read by its shortest text (what float(text) gives back exactly), never rounded."""
    assert pa.types.is_decimal(target)
    decimal = f"decimal({target.precision},{target.scale})"
    if not math.isfinite(value):
        return f"the float {value!r} is no {decimal}"
    if int(Decimal(repr(value)).as_tuple().exponent) < -target.scale:
        return (f"the float {value!r} has more than {target.scale} decimal places: no "
                f"{decimal} holds it (round it at the source, or widen the scale)")
    return (f"the float {value!r} has more than {target.precision - target.scale} integer "
            f"digits: no {decimal} holds it")


def _spelled(value: Any) -> str:
    """A driver's value as text. A Decimal is spelled in positional notation, as the
    database spelled it: str() gave '0E-30' and '1E-30' for a MariaDB DECIMAL(65,30)
    zero and 0.000...01 read as string, which the warehouse then held."""
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def rows_to_arrow(rows: Sequence[Sequence[Any]], contract: Contract) -> pa.Table:
    """Rows as the contract's columns, plus model.INVALID when some value could not be
    read faithfully (that value is null; validation quarantines its row)."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in contract.columns]
    return page_table(contract, len(rows), columns)


def page_table(contract: Contract, rows: int,
               columns: Sequence[pa.Array | pa.ChunkedArray | Sequence[Any]]) -> pa.Table:
    """A page in the contract's columns from, per column, either Arrow already in its
    contract type (the Arrow read paths' exact casts) or the Python values the driver
    gives, which `column_to_arrow` converts; model.INVALID is added when some value did
    not fit (the same reasons whichever path read the page)."""
    invalid: list[str | None] = [None] * rows
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for col, c in zip(columns, contract.columns, strict=True):
        if isinstance(col, pa.Array | pa.ChunkedArray):
            arrays.append(col)
            continue
        reasons: list[str | None] = [None] * rows
        arrays.append(column_to_arrow(col, c.arrow_type, reasons))
        invalid = [old or (f"{c.name}: {new}" if new else None)
                   for old, new in zip(invalid, reasons, strict=True)]
    names = list(contract.names)
    if any(invalid):
        arrays.append(pa.array(invalid, pa.string()))
        names.append(INVALID)
    return pa.Table.from_arrays(arrays, names=names)
