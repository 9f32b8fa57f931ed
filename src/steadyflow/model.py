"""Value types shared by every stage: column types, contracts, batches, watermarks.

Everything here is immutable and free of IO, so stages can pass these values across
threads, processes and (later) hosts without surprises.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


CursorValue = datetime | int | str
KeyValue = tuple[Any, ...]

# A landed batch may carry this extra string column: per row, null when every value was
# read faithfully, else why a value could not be (invalid UTF-8, an infinite or
# out-of-range time, an epoch number in a timestamp column...). The reader sets such a
# value to null and says why here; validation quarantines the row with that reason. It is
# how one unreadable value costs exactly one row, whatever the source kind.
INVALID = "_steadyflow_invalid"
# The time range every path can hold (Python, both drivers, both warehouses, Parquet).
# Dates and timestamps outside it are quarantined, never clamped or wrapped.
MIN_TIME = datetime(1, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TextEncoding:
    """The characters a warehouse's text can hold, when not every one (a PostgreSQL
    database in LATIN1): `name` as the warehouse spells it, `codec` Python's name for it.
    Validation quarantines a value holding a character outside it (it would fail its
    whole batch at load)."""

    name: str
    codec: str

_DECIMAL = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")
TYPE_NAMES = ("int64", "int32", "float64", "string", "bool", "date", "timestamp")


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A contract type parsed, without Arrow: what DDL, width checks, dialects and
    reconcile need to know of it. Its Arrow type is arrow_types.py's, imported only by
    the stages that move rows as Arrow, so a command that moves none (a reconcile of an
    unchanged table into PostgreSQL) never loads pyarrow (~80 MiB of RSS, #15)."""

    name: str  # one of TYPE_NAMES, or "decimal"
    precision: int = 0  # decimal only
    scale: int = 0

    @property
    def bits(self) -> int:
        """An integer type's width, 0 for any other."""
        return {"int64": 64, "int32": 32}.get(self.name, 0)


@lru_cache(maxsize=256)
def column_type(spec: str) -> ColumnType:
    """Parse a contract type name; raises ValueError on unknown names."""
    spec = spec.strip().lower()
    if spec in TYPE_NAMES:
        return ColumnType(spec)
    match = _DECIMAL.match(spec)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        if not 0 < precision <= 38 or scale > precision:
            raise ValueError(f"decimal({precision},{scale}) is out of range")
        return ColumnType("decimal", precision, scale)
    raise ValueError(
        f"unknown type {spec!r}; use one of {', '.join(TYPE_NAMES)} or decimal(p,s)"
    )


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table contract, with the rules its values must satisfy."""

    name: str
    type: str
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    pattern: str | None = None
    added: bool = False  # by `schema_drift: add`: not in the configured contract

    @property
    def parsed_type(self) -> ColumnType:
        return column_type(self.type)

    @property
    def arrow_type(self) -> pa.DataType:
        from steadyflow.arrow_types import arrow_type  # only where rows move as Arrow

        return arrow_type(self.type)


@dataclass(frozen=True, slots=True)
class Contract:
    """What a table must look like: its columns, primary key and cursor column."""

    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    cursor: str

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def schema(self) -> pa.Schema:
        from steadyflow.arrow_types import schema  # only where rows move as Arrow

        return schema(self)

    @property
    def cursor_is_time(self) -> bool:
        return self.column(self.cursor).parsed_type.name == "timestamp"

    @property
    def order_by(self) -> tuple[str, ...]:
        """The keyset order: cursor first, then the key, so cursor ties are never lost."""
        return (self.cursor, *[k for k in self.primary_key if k != self.cursor])

    def by_key(self) -> Contract:
        """The same columns, paged in primary-key order: the initial load's view (see
        run/extract.py). Its `cursor` is the key's first column, so keyset pages and their
        watermarks are in key space."""
        return Contract(columns=self.columns, primary_key=self.primary_key,
                        cursor=self.primary_key[0])

    def with_added(self, added: Any) -> Contract:
        """This contract plus source columns added by `schema_drift: add`: each nullable,
        without rules. `added` is [(name, contract type), ...]; names already here are
        skipped (case-insensitively)."""
        known = {n.lower() for n in self.names}
        extra = tuple(Column(name=str(n), type=str(t), added=True) for n, t in added or ()
                      if str(n).lower() not in known)
        if not extra:
            return self
        return Contract(columns=(*self.columns, *extra), primary_key=self.primary_key,
                        cursor=self.cursor)


_INTEGERS = {"smallint", "integer", "int", "bigint", "int2", "int4", "int8", "tinyint",
             "mediumint", "serial", "bigserial", "smallserial", "serial2", "serial4",
             "serial8"}
_TIMESTAMPS = {"timestamp", "timestamptz", "timestamp with time zone",
               "timestamp without time zone", "datetime"}
_FLOATS = {"double precision", "double", "float", "float8", "float4", "real"}
_SIZED_DECIMAL = re.compile(r"^(?:numeric|decimal)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)$")


def drift_type(declared: str | None) -> str:
    """The contract type of a source column added by `schema_drift: add`, from the type the
    source declares. Only unambiguous, lossless mappings; anything else is "string"
    (e.g. unbounded numeric, bigint unsigned, uuid, json, date, arrays)."""
    t = re.sub(r"\s+", " ", (declared or "").strip().lower())
    match = _SIZED_DECIMAL.match(t)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2) or 0)
        return f"decimal({precision},{scale})" if 0 < precision <= 38 and scale <= precision \
            else "string"
    base = re.sub(r"\s*\([\d\s,]*\)", "", t).strip()  # int(11), timestamp(3), float(53)
    if base.endswith(" unsigned"):
        base = base.removesuffix(" unsigned")
        if base in ("bigint", "int8", "serial", "bigserial"):
            return "string"  # up to 2^64-1: does not fit int64
    if base in _INTEGERS:
        return "int64"
    if base in _TIMESTAMPS:
        return "timestamp"
    if base in _FLOATS:
        return "float64"
    if base in ("boolean", "bool"):
        return "bool"
    return "string"


@dataclass(frozen=True, slots=True)
class TableRef:
    """A source table and the warehouse table it feeds."""

    source: str
    table: str
    target: str

    @property
    def label(self) -> str:
        return f"{self.source}.{self.table}"


@dataclass(frozen=True, slots=True)
class Watermark:
    """The highest (cursor, key) pair whose batch is landed and published.

    Comparisons are on the pair so rows sharing a cursor value are neither skipped
    nor read again forever.
    """

    cursor: CursorValue
    key: KeyValue
    # the (cursor, key...) column names a checkpoint was taken on; a position in one order
    # means nothing in another (TableExtractor.start_point refuses it). Empty on a page's
    # marks and on checkpoints written before it was recorded; no part of equality.
    on: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> str:
        data: dict[str, Any] = {"cursor": encode_value(self.cursor),
                                "key": [encode_value(k) for k in self.key]}
        if self.on:
            data["on"] = list(self.on)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Watermark:
        data = json.loads(text)
        return cls(decode_value(data["cursor"]), tuple(decode_value(k) for k in data["key"]),
                   tuple(data.get("on", ())))

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.cursor, *self.key)


@dataclass(frozen=True, slots=True)
class BatchRef:
    """A landed, immutable batch. Its id is the dedupe key in buffer, ledger and manifest."""

    batch_id: str
    source: str
    table: str
    path: str
    rows: int
    nbytes: int
    checksum: str
    low: Watermark | None
    high: Watermark | None
    landed_at: float
    kind: str = "extract"  # extract | repair | replay
    meta: dict[str, Any] = field(default_factory=dict)
    # Extraction order: a later read of a row is never older than an earlier one, so the
    # warehouse keeps the row from the highest seq (see merge/plan.py). Not part of the id.
    seq: int = 0
    # Row groups [first, end) of the compacted file at `path` that hold this batch (set by
    # `steadyflow compact`, run/compact.py); None: the file at `path` is the batch's own.
    part: tuple[int, int] | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "batch_id": self.batch_id,
                "source": self.source,
                "table": self.table,
                "path": self.path,
                "rows": self.rows,
                "nbytes": self.nbytes,
                "checksum": self.checksum,
                "low": self.low.to_json() if self.low else None,
                "high": self.high.to_json() if self.high else None,
                "landed_at": self.landed_at,
                "kind": self.kind,
                "meta": self.meta,
                "seq": self.seq,
                **({"part": list(self.part)} if self.part is not None else {}),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> BatchRef:
        d = json.loads(text)
        return cls(
            batch_id=d["batch_id"],
            source=d["source"],
            table=d["table"],
            path=d["path"],
            rows=d["rows"],
            nbytes=d["nbytes"],
            checksum=d["checksum"],
            low=Watermark.from_json(d["low"]) if d["low"] else None,
            high=Watermark.from_json(d["high"]) if d["high"] else None,
            landed_at=d["landed_at"],
            kind=d.get("kind", "extract"),
            meta=d.get("meta", {}),
            seq=d.get("seq", 0),
            part=(int(d["part"][0]), int(d["part"][1])) if d.get("part") else None,
        )


def encode_value(value: Any) -> Any:
    """JSON-encode a cursor or key value without losing precision or time zone."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return {"ts": value.astimezone(UTC).isoformat(timespec="microseconds")}
    if isinstance(value, date):
        return {"date": value.isoformat()}
    if isinstance(value, Decimal):
        return {"dec": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        # a BINARY/VARBINARY (MariaDB) or BLOB (SQLite) key or cursor: the exact bytes, so
        # the next page compares with them as the column does (before, the checkpoint
        # could not be written and such a table failed on its first page)
        return {"bytes": bytes(value).hex()}
    return value


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "ts" in value:
            return datetime.fromisoformat(value["ts"])
        if "date" in value:
            return date.fromisoformat(value["date"])
        if "dec" in value:
            return Decimal(value["dec"])
        if "bytes" in value:
            return bytes.fromhex(value["bytes"])
    return value


def parse_duration(text: str | int | float) -> float:
    """Seconds from '250ms', '30s', '5m', '2h', '1d' or a bare number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 30s, 5m, 2h)")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


# A time stored as text (SQLite): date, ' ' or 'T', seconds, an optional fraction of any
# width and an optional zone ('Z' or +-HH:MM). Naive text is UTC.
TEXT_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})([ T])(\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?$")
TEXT_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_text_time(text: str) -> datetime | None:
    """The UTC instant a text time spells (any TEXT_TIME spelling), None if it is not one,
    or needs more than microsecond precision (never truncated)."""
    match = TEXT_TIME.match(text)
    if match is None:
        return None
    day, _, clock, fraction, zone = match.groups()
    if fraction is not None and fraction[6:].strip("0"):
        return None
    micros = (fraction or "")[:6].ljust(6, "0")
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}.{micros}{_zone(zone)}")
    except ValueError:
        return None
    return parsed.astimezone(UTC)




def _zone(zone: str | None) -> str:
    return "+00:00" if zone in (None, "Z") else str(zone)


def floor_day(text: str) -> date:
    """The latest real date at or before a 'YYYY-MM-DD' text in a SQL database's date
    order. MariaDB keeps dates that are none (sql_mode permitting) and sorts them among the
    real ones: '2024-05-00' → 2024-04-30, '2024-00-10' → 2023-12-31, '2024-02-30' →
    2024-02-29; a real date is itself. ValueError when there is none (year 0, month 13)."""
    year, month, day = (int(part) for part in text.split("-"))
    if month == 0:
        return date(year - 1, 12, 31)
    first = date(year, month, 1)
    if day == 0:
        return first - timedelta(days=1)
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _step_back_text(text: str, seconds: float) -> str:
    """`text` (a TEXT_TIME) minus `seconds`, spelled exactly as `text` is (separator,
    fraction width, zone): a value stored that way compares as TEXT in time order with it.
    The fraction is truncated to its width, so the result is never later than exact."""
    match = TEXT_TIME.match(text)
    local = None
    if match is not None:
        day, sep, clock, fraction, zone = match.groups()
        try:
            local = datetime.fromisoformat(
                f"{day}T{clock}.{(fraction or '')[:6].ljust(6, '0')}")
        except ValueError:  # a date that is none (MariaDB's '2024-05-00 10:00:00'): from
            try:  # the latest real time before it, so the window is never shorter
                local = datetime.combine(floor_day(day), datetime.max.time())
            except ValueError:
                local = None
    if match is None or local is None:
        raise ValueError(
            f"lookback cannot step back the text cursor value {text!r}: it is not a time "
            "(YYYY-MM-DD HH:MM:SS[.f][Z|+HH:MM]); set lookback: 0 for this table")
    earlier = local - timedelta(seconds=seconds)
    if earlier.year < 1:
        raise ValueError(f"lookback steps {text!r} before year 1")
    out = earlier.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if fraction is not None:
        out += "." + f"{earlier.microsecond:06d}".ljust(len(fraction), "0")[:len(fraction)]
    return out + (zone or "")


def past_every_number(value: object) -> bool:
    """NaN or +Infinity: a cursor value that sorts after every number (PostgreSQL numeric
    sorts NaN last), so a checkpoint there would never let a later row be read."""
    return isinstance(value, Decimal | float) and (
        math.isnan(value) or (math.isinf(value) and value > 0))


def greatest_of(kind: ColumnType) -> int | Decimal | None:
    """The greatest number a contract type holds (int64, int32, decimal(p,s)); None for
    any other type."""
    if kind.bits:
        return 2 ** (kind.bits - 1) - 1
    if kind.name == "decimal":
        # from text: exact (Decimal arithmetic rounds to 28 digits: 10^38 - 1 was 1E+38)
        return Decimal(f"{10 ** kind.precision - 1}e-{kind.scale}")
    return None


def past_the_type(value: object, kind: ColumnType) -> bool:
    """A number greater than every value of `kind` (a BIGINT UNSIGNED 2^64-1 read as
    int64, a SQLite REAL 9.3e18 in an int64 column, a DECIMAL(30,0) past a decimal(12,2)):
    as a cursor it sorts after every value a loadable row can hold, as NaN does."""
    top = greatest_of(kind)
    return (top is not None and isinstance(value, int | float | Decimal)
            and not isinstance(value, bool) and not past_every_number(value)
            and value > top)


def step_back(cursor: CursorValue | date | Decimal | float, lookback: float) -> Any:
    """The cursor value `lookback` before `cursor`: seconds for timestamps (and for times
    stored as text, spelled like the stored value), whole days rounded up for dates, units
    for numbers. Raises ValueError for text that is not a time: it cannot step back, and
    ignoring the lookback would silently skip the late rows it exists for. No lookback
    is the value itself, whatever it is (an ENUM or version text cursor has no time)."""
    if lookback == 0:
        return cursor
    if isinstance(cursor, datetime):
        return cursor - timedelta(seconds=lookback)
    if isinstance(cursor, date):
        return cursor - timedelta(days=math.ceil(lookback / 86_400))
    if isinstance(cursor, bool):
        raise ValueError(f"lookback cannot step back a boolean cursor ({cursor!r})")
    if isinstance(cursor, int):
        return cursor - int(lookback)
    if isinstance(cursor, Decimal):
        return cursor - Decimal(repr(float(lookback)))
    if isinstance(cursor, float):
        return cursor - float(lookback)
    if isinstance(cursor, str) and TEXT_DATE.match(cursor):
        try:  # a date that is none (MariaDB's '2024-05-00'): from the latest real one before
            real = floor_day(cursor)
        except ValueError:
            raise ValueError(f"lookback cannot step back the date cursor value {cursor!r}: "
                             "it is no date; set lookback: 0 for this table") from None
        return (real - timedelta(days=math.ceil(lookback / 86_400))).isoformat()
    if isinstance(cursor, str):
        return _step_back_text(cursor, lookback)
    raise ValueError(f"lookback cannot step back a cursor of type {type(cursor).__name__}")
