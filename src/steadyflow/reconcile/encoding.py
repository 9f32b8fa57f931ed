"""The canonical row encoding: what "equal data" means for a checksum, on every engine.

A row is turned into one text, column by column in contract order, joined by `|`:

    type            encoding                                     example
    NULL            ~N
    int64, int32    decimal integer                              -12
    decimal(p,s)    fixed point, exactly s fraction digits       12.50   0.00   -5.00
    float64         floor(value * 1e6), an integer               (micro-unit resolution)
                    |value| >= 9e12: `E<k>:` floor(value / 1e(12k-6)) (k = 1..25, the
                    first tier whose |value| < 9e(12+12k)): 12+ significant digits
                    NaN, +inf, -inf as NaN, Inf, -Inf; -0.0 as 0
    timestamp       microseconds since 1970-01-01 00:00 UTC      1704164645123456
    date            days since 1970-01-01                        19724
    bool            1 or 0
    string          the text with `~` doubled and `|` as `~|`    a~|b → a~~~|b

The encoding is injective (after escaping, `~` is always followed by `~`, `|` or `N`), so two
rows encode alike only if they are equal under the contract's types. The row's md5 (of the
UTF-8 bytes) gives:
  - its *term*: the first 15 hex digits as an integer (60 bits); a bucket's checksum is the
    exact sum of its rows' terms, so it ignores row order and counts duplicates;
  - its *hash*: the first 16 hex digits, compared per key once a range is small.

Floats: every engine does the same IEEE arithmetic (a multiply or a division by a decimal
power, then floor), so the integer is the same everywhere while a float's printed text is
not; the tiers keep it inside a bigint for any finite value. MariaDB/MySQL cannot store NaN
or an infinity, and SQLite stores NaN as NULL: their rows then encode (and load) as what
those engines hold.

`engines.py` writes this encoding in each engine's SQL (PostgreSQL, MariaDB, DuckDB). SQLite
has no md5, so the functions below are registered on its connection (deterministic) and do it
in Python inside the engine, which is acceptable only because SQLite is an embedded file: no
row crosses a network. This module is also the reference the engines are tested against.
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from functools import lru_cache
from typing import Any

from steadyflow.model import TEXT_DATE, TEXT_TIME, parse_text_time

NULL = "~N"
SEP = "|"
TERM_HEX = 15  # 60-bit terms: a sum over 2^31 rows still fits SQLite's split sums
HASH_HEX = 16
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_DAY = date(1970, 1, 1)
_DECIMAL = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")


def decimal_scale(ctype: str) -> int | None:
    match = _DECIMAL.match(ctype.strip().lower())
    return int(match.group(2)) if match else None


def escape_text(text: str) -> str:
    return text.replace("~", "~~").replace("|", "~|")


_US = timedelta(microseconds=1)


def us_of(value: datetime) -> int:
    """Microseconds since the epoch, UTC; a naive value is taken as UTC (as extraction does)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // _US


def datetime_of(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


FLOAT_SCALED_MAX = 9e12  # below it, micro-units fit a bigint (9e18 < 2^63)
FLOAT_TIERS = 25  # tier k divides by 1e(12k-6); the last one holds up to the largest double
FLOAT_MAX = "1.7976931348623157e308"


def float_tier(k: int) -> tuple[str, str]:
    """(upper bound of |value|, divisor) of float tier k >= 1, as decimal literals."""
    return f"9e{12 + 12 * k}", f"1e{12 * k - 6}"


def float_text(value: float) -> str:
    """The canonical text of a float64 (see the module docstring), exact for any double."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if abs(value) < FLOAT_SCALED_MAX:
        return str(math.floor(value * 1_000_000))
    for k in range(1, FLOAT_TIERS + 1):
        bound, divisor = float_tier(k)
        if k == FLOAT_TIERS or abs(value) < float(bound):
            return f"E{k}:{math.floor(value / float(divisor))}"
    raise AssertionError("unreachable: the last tier holds every finite double")


def _decimal_text(value: Decimal, scale: int) -> str:
    quantum = Decimal(1).scaleb(-scale)
    with localcontext() as ctx:
        ctx.prec = 200  # the default 28 digits cannot hold a decimal(38,s)
        q = value.quantize(quantum, rounding=ROUND_HALF_UP)
    if q == 0:
        q = q.copy_abs()  # no negative zero: PostgreSQL and MariaDB print 0.00
    return format(q, "f")


def canonical(value: Any, ctype: str) -> str | None:
    """The encoding of one value that already has its contract type (what the pipeline
    loads: int, Decimal, datetime, date, bool, float, str). None stays None."""
    if value is None:
        return None
    t = ctype.strip().lower()
    if t in ("int64", "int32"):
        return str(int(value))
    if t == "string":
        return escape_text(str(value))
    if t == "timestamp":
        return str(us_of(value))
    if t == "date":
        return str((value - EPOCH_DAY).days)
    if t == "bool":
        return "1" if value else "0"
    if t == "float64":
        return float_text(float(value))
    scale = decimal_scale(t)
    if scale is not None:
        return _decimal_text(value if isinstance(value, Decimal) else Decimal(str(value)), scale)
    raise ValueError(f"no canonical encoding for type {ctype!r}")


def row_text(encoded: Sequence[str | None]) -> str:
    return SEP.join(NULL if v is None else v for v in encoded)


def row_md5(encoded: Sequence[str | None]) -> str:
    return hashlib.md5(row_text(encoded).encode("utf-8"), usedforsecurity=False).hexdigest()


def row_hash(encoded: Sequence[str | None]) -> str:
    return row_md5(encoded)[:HASH_HEX]


def row_term(encoded: Sequence[str | None]) -> int:
    return int(row_md5(encoded)[:TERM_HEX], 16)


# --- raw SQLite values -------------------------------------------------------------------
# SQLite stores whatever it was given (text prices, text timestamps, ints in text columns).
# These converters give a raw value the encoding of what extraction would load from it
# (extract/arrow_values.py: column_to_arrow), and never raise: a value extraction could not convert
# encodes as `?` + its text, which equals nothing the warehouse can hold (such rows are
# invalid and expected in quarantine, see table.py).

def _bad(value: Any) -> str:
    return "?" + str(value)


def _raw_int(value: Any) -> str:
    if isinstance(value, bool | int):
        return str(int(value))
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) else _bad(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return str(int(value))
    return _bad(value)


def _raw_decimal(scale: int) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if isinstance(value, str):  # fast path: already canonical ("12.50" for scale 2)
            whole, dot, frac = value.partition(".")
            digits = whole[1:] if whole[:1] == "-" else whole
            if (len(frac) == scale and (dot or not scale) and frac.isdigit() | (not scale)
                    and digits.isdigit() and digits.isascii() and frac.isascii()
                    and (digits == "0" or digits[0] != "0")
                    and (whole[:1] != "-" or digits.strip("0") or frac.strip("0"))):
                return value
        try:
            return _decimal_text(Decimal(value if isinstance(value, int | str) else str(value)),
                                 scale)
        except (InvalidOperation, ValueError, TypeError):
            return _bad(value)
    return convert


def timestamp_us(value: Any) -> int | None:
    """A SQLite timestamp as extraction loads it (arrow_types.cast_text_time), in µs since the
    epoch: text in any spelling Arrow reads (' ' or 'T', a fraction up to the microsecond,
    'Z' or an offset; naive text is UTC) as its UTC instant. None if extraction could not
    load it: not such a time, or a number (an epoch is not read as a time: quarantined)."""
    if isinstance(value, bytes):
        value = _decoded(value)
    if not isinstance(value, str):
        return None
    match = TEXT_TIME.match(value)
    if match is not None and len(match.group(4) or "") <= 6:  # the common spellings
        try:
            parsed = parse_text_time(value)
        except OverflowError:  # an offset past year 9999
            return None
        return None if parsed is None else us_of(parsed)
    # the rare spellings, by the very cast extraction uses ('12:00Z', '+0200', ...); Arrow
    # imported only then (arrow_types.py: a reconcile moving no rows loads no pyarrow)
    from steadyflow.arrow_types import text_time_us

    return text_time_us(value)


def parse_timestamp(value: Any) -> datetime | None:
    us = timestamp_us(value)
    return None if us is None else datetime_of(us)


def _raw_timestamp(value: Any) -> str:
    us = timestamp_us(value)
    return _bad(value) if us is None else str(us)


def _raw_date(value: Any) -> str:
    """Only 'YYYY-MM-DD' text is a date to extraction (Arrow's cast); numbers are not."""
    text = _decoded(value) if isinstance(value, bytes) else value
    if not isinstance(text, str) or not TEXT_DATE.match(text):
        return _bad(value)
    try:
        return str((date.fromisoformat(text) - EPOCH_DAY).days)
    except ValueError:
        return _bad(value)


def _raw_bool(value: Any) -> str:
    if isinstance(value, int | float):
        return "1" if value else "0"
    text = str(value).strip().lower()
    if text in ("1", "true"):
        return "1"
    if text in ("0", "false"):
        return "0"
    return _bad(value)


def _raw_float(value: Any) -> str:
    try:
        return float_text(float(value))
    except (ValueError, OverflowError, TypeError):
        return _bad(value)


def _raw_string(value: Any) -> str:
    """Text as it is; bytes (a blob, or text the query passed as one, see SqliteEngine) as
    their UTF-8 text, as extraction decodes them; bytes that are not UTF-8 cannot load."""
    if isinstance(value, bytes):
        text = _decoded(value)
        return _bad(value) if text is None else escape_text(text)
    return escape_text(value if isinstance(value, str) else str(value))


def _decoded(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _text_first(convert: Callable[[Any], str]) -> Callable[[Any], str]:
    """A converter for a type other than string that also takes text passed as bytes."""
    def from_bytes(value: Any) -> str:
        if isinstance(value, bytes):
            text = _decoded(value)
            return _bad(value) if text is None else convert(text)
        return convert(value)
    return from_bytes


@lru_cache(maxsize=256)
def raw_converter(ctype: str) -> Callable[[Any], str]:
    t = ctype.strip().lower()
    simple: dict[str, Callable[[Any], str]] = {
        "int64": _raw_int, "int32": _raw_int, "string": _raw_string,
        "timestamp": _raw_timestamp, "date": _raw_date, "bool": _raw_bool,
        "float64": _raw_float}
    if t in simple:
        return simple[t] if t == "string" else _text_first(simple[t])
    scale = decimal_scale(t)
    if scale is not None:
        return _text_first(_raw_decimal(scale))
    raise ValueError(f"no canonical encoding for type {ctype!r}")


SPEC_SEP = ";"


@lru_cache(maxsize=256)
def _spec(spec: str) -> tuple[Callable[[Any], str], ...]:
    return tuple(raw_converter(t) for t in spec.split(SPEC_SEP))


def raw_encoded(spec: str, values: Sequence[Any]) -> list[str | None]:
    return [None if v is None else f(v) for f, v in zip(_spec(spec), values, strict=True)]


def _raw_md5(spec: str, values: Sequence[Any]) -> str:
    text = SEP.join([NULL if v is None else f(v) for f, v in zip(_spec(spec), values,
                                                                    strict=True)])
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _sf_row_hash(spec: str, *values: Any) -> str:
    return _raw_md5(spec, values)[:HASH_HEX]


def _sf_row_term(spec: str, *values: Any) -> int:
    return int(_raw_md5(spec, values)[:TERM_HEX], 16)


def _sf_row_part(spec: str, *values: Any) -> bytes:
    """One run of a wide row's columns, encoded and joined as `_raw_md5` joins them, as
    UTF-8 bytes (a blob: SQLite passes it on untouched, in any database encoding). SQLite
    allows a function 127 arguments, so a row of more columns is hashed from parts."""
    return SEP.join([NULL if v is None else f(v) for f, v in zip(_spec(spec), values,
                                                                   strict=True)]
                    ).encode("utf-8")


def _parts_md5(parts: Sequence[bytes]) -> str:
    return hashlib.md5(SEP.encode().join(parts), usedforsecurity=False).hexdigest()


def _sf_parts_hash(*parts: bytes) -> str:
    """`_sf_row_hash` of the row whose runs of columns are `parts` (`_sf_row_part`)."""
    return _parts_md5(parts)[:HASH_HEX]


def _sf_parts_term(*parts: bytes) -> int:
    """`_sf_row_term` of the row whose runs of columns are `parts` (`_sf_row_part`)."""
    return int(_parts_md5(parts)[:TERM_HEX], 16)


def _sf_canon(ctype: str, value: Any) -> str | None:
    return None if value is None else raw_converter(ctype)(value)


def _sf_ts_us(value: Any) -> int | None:
    return None if value is None else timestamp_us(value)


INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _sf_days(value: Any) -> int | None:
    """A date as extraction loads it, in days since 1970-01-01; None if it cannot load."""
    text = None if value is None else _text_first(_raw_date)(value)
    return None if text is None or text.startswith("?") else int(text)


def _sf_scaled(value: Any, scale: int) -> int | None:
    """floor(value * 10**scale) of a SQLite number or numeric text, as the other engines
    compute it on a decimal column; clipped to 64 bits (a value past them is far outside
    any contract that buckets by it: invalid), None where it is no number."""
    if isinstance(value, bytes):
        value = _decoded(value)
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(value if isinstance(value, int | str) else str(value))
    except (InvalidOperation, ValueError, TypeError):
        return None
    if not number.is_finite():
        return None
    if number.adjusted() + scale > 19:  # past 64 bits (and no huge int from '1e999999')
        return INT64_MAX if number > 0 else INT64_MIN
    with localcontext() as ctx:
        ctx.prec = 200  # exact for any decimal(38,s) and any 64-bit integer
        scaled = math.floor(number.scaleb(scale))
    return max(INT64_MIN, min(INT64_MAX, scaled))


def _sf_bucket(value: Any, lo: str, width: str) -> int | None:
    return None if value is None else (int(value) - int(lo)) // int(width)


# PRAGMA encoding of a SQLite database that stores text as UTF-16 -> its Python codec
UTF16_CODECS = {"UTF-16le": "utf-16-le", "UTF-16be": "utf-16-be"}


def sqlite_codec(conn: sqlite3.Connection) -> str | None:
    """The codec of a UTF-16 SQLite database's text; None for UTF-8."""
    row = conn.execute("PRAGMA encoding").fetchone()
    return UTF16_CODECS.get(str(row[0])) if row else None


def _from_utf16(value: Any, codec: str) -> Any:
    """A value as SqliteEngine passes it from a UTF-16 database (engines.SqliteEngine.utf16)
    as the functions take it from a UTF-8 one: text (its UTF-16 bytes) decoded, or bytes no
    UTF-8 decoder accepts when they are no UTF-16 (extraction cannot load such text either);
    a blob (passed as its hex, to tell it from text) as its bytes."""
    if isinstance(value, bytes):
        try:
            return value.decode(codec)
        except UnicodeDecodeError:
            return b"\xff" + value
    if isinstance(value, str):
        return bytes.fromhex(value)
    return value


def _utf16_args(function: Callable[..., Any], codec: str, values: slice
                ) -> Callable[..., Any]:
    """`function` taking the arguments at `values` from a UTF-16 database (_from_utf16)."""
    def call(*args: Any) -> Any:
        given = list(args)
        given[values] = [_from_utf16(v, codec) for v in given[values]]
        return function(*given)
    return call


def register_sqlite(conn: sqlite3.Connection) -> None:
    """Give a SQLite connection the encoding as deterministic SQL functions. In a UTF-16
    database, the ones taking a value as SqliteEngine._arg passes it decode its text as
    UTF-16 first (a text's bytes are in the database's encoding), so a row hashes the same
    UTF-8 bytes as everywhere else; sf_ts_us and sf_bucket take SQLite's own conversion
    (text as str) or an integer, in either."""
    codec = sqlite_codec(conn)
    functions: list[tuple[str, int, Callable[..., Any], slice]] = [
        ("sf_row_hash", -1, _sf_row_hash, slice(1, None)),
        ("sf_row_term", -1, _sf_row_term, slice(1, None)),
        ("sf_row_part", -1, _sf_row_part, slice(1, None)),
        ("sf_canon", 2, _sf_canon, slice(1, None)),
        ("sf_days", 1, _sf_days, slice(0, 1)),
        ("sf_scaled", 2, _sf_scaled, slice(0, 1))]
    for name, arity, function, values in functions:
        if codec is not None:
            function = _utf16_args(function, codec, values)
        conn.create_function(name, arity, function, deterministic=True)
    conn.create_function("sf_parts_hash", -1, _sf_parts_hash, deterministic=True)
    conn.create_function("sf_parts_term", -1, _sf_parts_term, deterministic=True)
    conn.create_function("sf_ts_us", 1, _sf_ts_us, deterministic=True)
    conn.create_function("sf_bucket", 3, _sf_bucket, deterministic=True)
