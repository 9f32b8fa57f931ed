"""Contract types as Arrow types, and the casts from text Arrow makes exact here.

The Arrow half of model.py: imported by the stages that move rows as Arrow (extraction,
validation, landing, loading, a repair), never by model.py or config.py at import, so a
command that moves no rows (a reconcile of an unchanged table into PostgreSQL) runs
without pyarrow: importing it costs ~80 MiB of peak RSS, numpy included where installed
(bench/RECONCILE.md, #15). model.ColumnType is the parsed type without Arrow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
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
# a decimal numeral as SQL engines read one: ASCII digits, an optional sign, point and
# exponent, ASCII blanks around it. Python's Decimal also reads '1_000' (1000), any
# Unicode digit ('٣' 3, fullwidth '１' 1) and Unicode blanks ('\xa05' 5), which no
# source's cast and no warehouse reads so (MariaDB's CAST('1_000' AS DECIMAL) is 1,
# SQLite's 1, PostgreSQL and DuckDB refuse it)
_NUMERAL = re.compile(r"[ \t\n\r\f\v]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                      r"(?:[eE][+-]?[0-9]+)?[ \t\n\r\f\v]*")


def exact_decimal(text: str, target: pa.DataType) -> Decimal | None:
    """`text` as a decimal of `target`'s precision and scale, or None where it is none
    (nor where it is no ASCII numeral: `_NUMERAL`)."""
    if not pa.types.is_decimal(target) or not _NUMERAL.fullmatch(text):
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


# an integer of a 64-bit type's width with more digits than a float64 holds every one of
# (a longer one is a magnitude, read as its nearest float like any other decimal)
_LONG_INTEGER = r"^[+-]?[0-9]{16,20}$"
_NONZERO = r"^[+-]?[0-9]*\.?[0-9]*[1-9]"  # a mantissa that is not 0
_HEXADECIMAL = r"(?i)^[+-]?0x"  # Arrow reads '0x1A' as 26; no source's cast does
_FLOAT_EXACT = 2**53  # every integer up to this is a float64


def cast_exact(values: Any, target: pa.DataType) -> Any:
    """`pc.cast(values, target)`, but raising ArrowInvalid (as a cast that does not fit
    does) where Arrow's safe cast changes a value without a word:

      * an integer other than 0 and 1 as a bool: 2 and -1 were true (a PostgreSQL int,
        through ADBC), where the same 2 read by psycopg, pymysql or as text is refused;
      * an integer past 2**53 (up to 20 digits: what a 64-bit integer type holds) as a
        float64 the float is not: 9007199254740993 was 9007199254740992 (bigint, BIGINT
        UNSIGNED, numeric or text), an identifier silently another;
      * text of a finite number past float64's range as ±inf ('1e400', a numeric), or
        of a nonzero one below it as 0 ('1e-400');
      * hexadecimal text as an integer: '0x1A' was 26, where PostgreSQL (before 16)
        refuses it and MariaDB's and SQLite's casts read 0.

    A decimal's nearest float (0.1) is what a float64 contract asks for, and is kept."""
    source = values.type
    if pa.types.is_boolean(target) and pa.types.is_integer(source):
        other = pc.invert(pc.is_in(values, value_set=pa.array([0, 1], source)))
        if pc.any(pc.and_(pc.is_valid(values), other)).as_py():
            raise pa.ArrowInvalid("an integer other than 0 and 1 is no bool")
    if pa.types.is_integer(target) and (pa.types.is_string(source)
                                        or pa.types.is_large_string(source)):
        hexadecimal = pc.fill_null(pc.match_substring_regex(values, _HEXADECIMAL), False)
        if pc.any(hexadecimal).as_py():
            raise pa.ArrowInvalid("hexadecimal text is no decimal integer")
    if pa.types.is_floating(target) and pa.types.is_integer(source):
        # Arrow's safe cast refuses every integer past 2**53, 2**62 too, which a float
        # holds exactly: refused, its text was cast instead, and that one rounds
        cast = pc.cast(values, target, safe=False)
    else:
        cast = pc.cast(values, target)
    if not pa.types.is_floating(target):
        return cast
    if pa.types.is_integer(source) and source.bit_width == 64:
        suspect = pc.greater(values, pa.scalar(_FLOAT_EXACT, source))
        if pa.types.is_signed_integer(source):
            suspect = pc.or_(suspect, pc.less(values, pa.scalar(-_FLOAT_EXACT, source)))
        _refuse(values, cast, suspect, lambda v, f: int(f) == v)
    elif pa.types.is_string(source) or pa.types.is_large_string(source):
        # only an infinity, a zero or a float at least 2**53 can be wrong; the text of
        # those few is looked at (a regex over every value cost 6x the cast itself)
        rough = pc.or_(pc.or_(pc.is_inf(cast), pc.equal(cast, pa.scalar(0.0, target))),
                       pc.greater_equal(pc.abs(cast), pa.scalar(float(_FLOAT_EXACT), target)))
        rows = pc.indices_nonzero(pc.fill_null(_flat(rough), False))
        if len(rows):
            text, got = pc.take(_flat(values), rows), pc.take(_flat(cast), rows)
            suspect = pc.or_(
                pc.or_(pc.is_inf(got), pc.match_substring_regex(text, _LONG_INTEGER)),
                pc.and_(pc.equal(got, pa.scalar(0.0, target)),
                        pc.match_substring_regex(text, _NONZERO)))
            _refuse(text, got, suspect, _same_number)
    return cast


def _same_number(text: str, value: float) -> bool:
    """Is `value` the float64 `text` spells: its infinity, its integer exactly, a zero for
    zero only (any other number is its nearest float, as Arrow reads it)?"""
    try:
        spelled = Decimal(text)
    except ArithmeticError:
        return False
    if spelled.is_infinite() or spelled.is_nan():
        return True
    if math.isinf(value):
        return False
    if value == 0 or re.fullmatch(_LONG_INTEGER, text):
        return Decimal(value) == spelled
    return True


def _rows(values: list[Any]) -> list[int]:
    """Row numbers from `pc.indices_nonzero` (never null)."""
    return [int(i) for i in values]


def _flat(values: Any) -> Any:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _refuse(values: Any, cast: Any, suspect: Any, same: Callable[[Any, Any], bool]
            ) -> None:
    """Raise ArrowInvalid if a `suspect` value's cast is not `same` as it."""
    suspect = pc.fill_null(suspect, False)
    if not pc.any(suspect).as_py():
        return
    flat_values, flat_cast, flat = _flat(values), _flat(cast), _flat(suspect)
    for i in _rows(pc.indices_nonzero(flat).to_pylist()):
        value = flat_values[i].as_py()
        if not same(value, flat_cast[i].as_py()):
            raise pa.ArrowInvalid(f"{value!r} is no {cast.type}")
