"""Contract types as Arrow types, and the casts from text Arrow makes exact here.

The Arrow half of model.py: imported by the stages that move rows as Arrow (extraction,
validation, landing, loading, a repair), never by model.py or config.py at import, so a
command that moves no rows (a reconcile of an unchanged table into PostgreSQL) runs
without pyarrow: importing it costs ~80 MiB of peak RSS, numpy included where installed
(bench/RECONCILE.md, #15). model.ColumnType is the parsed type without Arrow.
"""

from __future__ import annotations

from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from steadyflow.model import Contract, column_type

_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


@lru_cache(maxsize=256)
def arrow_type(spec: str) -> pa.DataType:
    """Map a contract type name to its Arrow type; raises ValueError on unknown names."""
    parsed = column_type(spec)
    if parsed.name == "decimal":
        return pa.decimal128(parsed.precision, parsed.scale)
    return _SIMPLE_TYPES[parsed.name]


def schema(contract: Contract) -> pa.Schema:
    """The contract's columns as an Arrow schema (Contract.schema)."""
    return pa.schema(
        [pa.field(c.name, arrow_type(c.type), nullable=c.nullable) for c in contract.columns]
    )


def owned_value(value: int | str, column_type: pa.DataType) -> Any:
    """A warehouse_filter value as its column holds it ("42" and 42 are one int64 value),
    or None when the column cannot hold it. Config and load (validate.rules) both use it,
    so the values config proved distinct are the values load compares rows with."""
    try:
        one: list[Any] = [value]
        return pc.cast(pa.array(one), column_type)[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def re2_error(pattern: str) -> str | None:
    """Why RE2 (the engine validation runs patterns with, through Arrow) refuses
    `pattern`, None if it compiles."""
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), pattern=pattern)
    except pa.ArrowInvalid as exc:
        return str(exc)
    return None


# A naive TEXT_TIME (no zone) gets 'Z': naive source values are UTC.
_NAIVE_TEXT_TIME = r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?)$"


def cast_text_time(text: pa.Array, target: pa.DataType) -> pa.Array:
    """Text times (every TEXT_TIME spelling: ' ' or 'T', any fraction width up to the
    microsecond, 'Z' or any +-HH:MM offset, naive = UTC) as the UTC instants they spell, in one
    vectorised cast. Raises ArrowInvalid if any value is not such a time (or needs more
    precision than `target` holds: never truncated)."""
    zoned = pc.replace_substring_regex(text, _NAIVE_TEXT_TIME, r"\1Z")
    return pc.cast(zoned, pa.timestamp("us", tz="UTC")).cast(target)


def text_time_us(text: str) -> int | None:
    """One text time as `cast_text_time` reads it, in µs since the epoch; None if it is
    none (reconcile's SQLite encoding, for the spellings model.TEXT_TIME does not cover)."""
    try:
        cast = cast_text_time(pa.array([text], pa.string()), pa.timestamp("us", tz="UTC"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    us = cast.cast(pa.int64())[0].as_py()
    return None if us is None else int(us)


def cast_text_decimal(text: Any, target: pa.DataType) -> pa.Array:
    """Text as `target` (a decimal), exactly or not at all: raises ArrowInvalid if any value
    is not a number the decimal holds (more places than its scale, more digits than its
    precision), as a text cast to a decimal does.

    Arrow's cast alone returns garbage for some (pyarrow 26, no error): rescaling a value
    to the scale past 128 bits wraps around ('3.9879967643648127e+30' as decimal(38,10) was
    6693071389832677478517093048.3119259648, a float's shortest text or a digit string
    alike), and a large negative exponent makes a value 0 ('6.5e-29' as decimal(5,5) was
    0.00000). Only a value with an exponent, or with more characters than the 128 bits leave
    for its integer digits (38 - scale), can be rescaled past them: those are checked
    against Python's exact Decimal. Arrow also refuses text of more than 38 digits, trailing
    zeros included (MariaDB spells 1.5 in a DECIMAL(65,30) with 31 of them): such a column
    is read value by value by Python's Decimal instead."""
    if not pa.types.is_decimal(target):
        return pc.cast(text, target)
    try:
        cast = pc.cast(text, target)
    except pa.ArrowInvalid:
        spelled = text.to_pylist()
        exact = [None if t is None else exact_decimal(t, target) for t in spelled]
        for t, value in zip(spelled, exact, strict=True):
            if t is not None and value is None:
                raise
        return pa.array(exact, target)
    room = (38 if pa.types.is_decimal128(target) else 76) - target.scale
    suspect = pc.fill_null(pc.or_(pc.greater(pc.utf8_length(text), room),
                                  pc.match_substring_regex(text, "[eE]")), False)
    if not pc.any(suspect).as_py():
        return cast
    for i in pc.indices_nonzero(suspect).to_pylist():
        value = text[i].as_py()
        if exact_decimal(value, target) != cast[i].as_py():
            raise pa.ArrowInvalid(f"the text {value!r} is not a {target}")
    return cast


_EXACT = Context(prec=200, Emax=MAX_EMAX, Emin=MIN_EMIN)


def exact_decimal(text: str, target: pa.DataType) -> Decimal | None:
    """`text` as a decimal of `target`'s precision and scale, or None where it is none."""
    if not pa.types.is_decimal(target):
        return None
    try:
        value = Decimal(text)
        held = value.quantize(Decimal(1).scaleb(-target.scale), context=_EXACT)
    except (ArithmeticError, ValueError):
        return None
    if not held.is_finite() or held != value or held.adjusted() >= \
            target.precision - target.scale:
        return None
    return held
