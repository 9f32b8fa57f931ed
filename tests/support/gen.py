"""Generated source tables for the correctness suite: shapes, values and the DDL/DML that puts
them into a real PostgreSQL, MariaDB or SQLite database.

Nothing here imports steadyflow: the shapes are described in this module's own terms
(`Col.kind`), and the pipeline config is written from them as a user would write it. The
oracle (tests/support/oracle.py) decides what each row should look like in the warehouse
from the same description, so a bug in steadyflow's type handling cannot hide itself.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from hypothesis import strategies as st

# --- shapes ------------------------------------------------------------------------------
# kinds: int32 int64 dec text char uuid ts date float bool json enum bin
KEY_KINDS = ("int32", "int64", "dec", "text", "char", "uuid", "enum")
VALUE_KINDS = ("int32", "int64", "dec", "text", "char", "uuid", "ts", "date", "float", "bool",
               "json", "enum", "bin")
# keys that are times or days (an event's time in a composite key, a day's partition)
TIME_KEY_KINDS = ("ts", "date")
CURSOR_KINDS = ("ts", "date", "int64", "dec", "enum")
# kinds a source has no type for: SQLite has no ENUM; PostgreSQL's bytea is not read as
# UTF-8 text under a string contract (MariaDB VARBINARY/BLOB and SQLite BLOB are)
UNSUPPORTED = {"sqlite": ("enum",), "postgres": ("bin",), "mysql": ()}
# ENUM members as stores declare them: in the order of their meaning, never in text order
# (MariaDB compares members case- and accent-insensitively: none equal under that)
ENUM_MEMBERS = (("zeta", "alpha", "mid"),
                ("pending", "paid", "shipped", "cancelled", "refunded"),
                ("z", "m", "a", "b", "Y", "c"),
                ("small", "MEDIUM", "large", "x-large", "Épicerie", "on hold"))
# an ENUM cursor (a status that only moves forward, one member per cursor step): 256
# members whose text order is unrelated to their declared order
ENUM_CURSOR = tuple(f"{('zeta', 'alpha', 'mid')[i % 3]}{(i * 167) % 256:03d}"
                    for i in range(256))
# where a cursor's steps start: far from zero (the default), just below zero/the epoch so
# its values run from negative through zero, or deep in the negatives
ORIGINS = (0, 1, 2)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# how a SQLite table spells its text timestamps (one per table; "mixed" is refused at probe)
SQLITE_SPELLINGS = ("space_s", "space_ms", "space_us", "iso", "iso_z", "iso_offset", "mixed")


@dataclass(frozen=True)
class Col:
    name: str
    kind: str
    p: int = 0  # dec precision, char width
    s: int = 0  # dec scale
    nullable: bool = True
    tz: bool = True  # ts on PostgreSQL: timestamptz (True) or timestamp
    whole_seconds: bool = False  # ts: datetime(0) on MariaDB, timestamp[tz](0) on PostgreSQL
    collate: str | None = None  # text on PostgreSQL: an ICU collation (key order != bytes)
    contract_scale: int | None = None  # dec: a narrower contract scale (values may not fit)
    contract_nullable: bool | None = None  # contract stricter than the source column
    minimum: float | None = None  # a `min` rule on a numeric column
    members: tuple[str, ...] = ()  # enum: the members in declared order
    origin: int = 0  # the cursor: where its steps start (ORIGINS)
    folded: bool = False  # a text key with case, accents and blanks (see `folded_key`)
    stored_unit: str = "us"  # ts: the finest unit the source keeps (a SQLite spelling's)

    @property
    def contract_type(self) -> str:
        return {
            "int32": "int32", "int64": "int64", "text": "string", "char": "string",
            "uuid": "string", "json": "string", "ts": "timestamp", "date": "date",
            "float": "float64", "bool": "bool", "enum": "string", "bin": "string",
        }.get(self.kind) or f"decimal({self.p},{self.scale})"

    @property
    def scale(self) -> int:
        return self.s if self.contract_scale is None else self.contract_scale


@dataclass
class Table:
    name: str
    cols: list[Col]
    key: list[str]
    cursor: str
    spelling: str = "space_us"  # SQLite text timestamps
    ties: bool = False  # rows mostly share their cursor value (runs longer than a page)
    # the primary key's later columns (MariaDB, SQLite) and the cursor index's key columns
    # sorted DESC: the indexes' order differs from the (cursor, key) order pages ask for
    desc: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)

    def col(self, name: str) -> Col:
        return next(c for c in self.cols if c.name == name)

    def key_of(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[k] for k in self.key)


STEP = "_step"  # the row dict's record of its cursor step (never written to a database)

# --- values --------------------------------------------------------------------------------
BASE = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
BASE_DATE = date(2024, 3, 1)
TS_UNITS = {"us": timedelta(microseconds=1), "ms": timedelta(milliseconds=1),
            "s": timedelta(seconds=1)}


def cursor_value(col: Col, step: int, unit: str) -> Any:
    """The cursor value `step` units after the column's origin: ordered like `step`, ties
    included."""
    if col.kind == "ts":
        # steps finer than the source stores would tie in the source: a row written
        # "later" would sort before the checkpoint (lost without a lookback, rightly)
        u = max(unit, "s" if col.whole_seconds else col.stored_unit, key=list(TS_UNITS).index)
        base = (BASE, EPOCH - 30 * TS_UNITS[u], datetime(1900, 1, 1, tzinfo=UTC))[col.origin]
        return base + step * TS_UNITS[u]
    if col.kind == "date":
        return (BASE_DATE, date(1969, 12, 29), date(1900, 1, 1))[col.origin] \
            + timedelta(days=step)
    if col.kind == "enum":
        return col.members[step]
    if col.kind == "int64":
        return (1_000_000, -30, -(10**12))[col.origin] + step
    number = (1_000, -30, -(10**9))[col.origin] + step
    return Decimal(number).scaleb(-col.s) if col.s else Decimal(number)


# case, accents and blanks in text keys: none of these compare equal to another under the
# source's default collation once `folded_key` keys are kept distinct
FOLDED_ALPHABET = "abcABC xyzXYZ éÉèàÀüÜñçÇ019_-'\\"


def folded_key(value: str) -> str:
    """A text key as the coarsest default collation compares it (MariaDB's
    utf8mb4_general_ci: case and accents ignored, trailing blanks padded away)."""
    bare = "".join(c for c in unicodedata.normalize("NFD", value)
                   if not unicodedata.combining(c))
    return bare.lower().rstrip(" ")


def text_alphabet(source: str, key: bool) -> st.SearchStrategy[str]:
    if key and source == "mysql":
        # MariaDB keys compare case- and accent-insensitively (utf8mb4_general_ci): keep
        # generated keys distinct under that equality
        # (quotes, a backslash and %: literals and escapes under any sql_mode)
        return st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789_-'\"\\%")
    if key:
        return st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
    if source == "postgres":  # PostgreSQL text cannot hold NUL at all
        return st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00")
    return st.characters(codec="utf-8", exclude_categories=("Cs",))


def _scaled(digits: int, scale: int) -> Decimal:
    """digits x 10^-scale exactly (the default 28-digit context would round 30-digit values)."""
    with localcontext() as ctx:
        ctx.prec = 100
        return Decimal(digits).scaleb(-scale)


def value_strategy(col: Col, source: str, key: bool = False) -> st.SearchStrategy[Any]:
    k = col.kind
    if k == "int32":
        return st.integers(-(2**31), 2**31 - 1)
    if k == "int64":
        return st.integers(-(2**63), 2**63 - 1)
    if k == "dec":
        top = 10**col.p - 1
        edge = st.sampled_from([top, -top, 0, 1, -1])
        return st.one_of(edge, st.integers(-top, top)).map(lambda i: _scaled(i, col.s))
    if k == "enum":
        return st.sampled_from(col.members)
    if k == "bin":  # UTF-8 text as bytes (loads as that text) or any bytes (may not decode)
        text = st.text(text_alphabet("postgres", False), max_size=20)
        return st.one_of(text.map(str.encode), st.binary(max_size=20),
                         st.just(("é" * 3000).encode()))
    if k == "text" and key and col.folded:
        if source == "mysql":  # VARCHAR(64): blanks inside and at the end, not only
            return st.text(FOLDED_ALPHABET, min_size=1, max_size=12).filter(
                lambda v: v.strip() != "")
        short = st.text(FOLDED_ALPHABET, min_size=1, max_size=12)
        return st.one_of(short, short, st.text(text_alphabet(source, True), min_size=100,
                                 max_size=150)).filter(lambda v: v.strip() != "")
    if k in ("text", "char"):
        size = col.p if k == "char" else (12 if key else 30)
        text = st.text(text_alphabet(source, key), min_size=1 if key else 0, max_size=size)
        if k == "char":  # trailing blanks are padding in CHAR(n): canonical drops them
            text = text.map(lambda v: v.rstrip(" ")[: col.p])
        if key:
            return text.filter(lambda v: v == v.strip() and v != "")
        if k == "text" and source != "mysql":
            return st.one_of(text, st.just("x" * 5000), st.just("🎉𝄞" * 50),
                             st.just("ü" * 100_000 + "🎉"))
        if k == "text":  # TEXT: up to 65,535 bytes
            return st.one_of(text, st.just("é" * 32_000 + "🎉"))
        return text
    if k == "uuid":
        return st.uuids().map(str)
    if k == "ts":
        edges = [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
                 datetime(1970, 1, 1, tzinfo=UTC)]
        if source == "mysql":  # DATETIME: 1000-01-01 .. 9999-12-31
            edges = [datetime(1000, 1, 1, tzinfo=UTC), *edges[1:]]
        low = datetime(1000 if source == "mysql" else 1, 1, 1)
        dt = st.datetimes(min_value=low, max_value=datetime(9999, 12, 31, 23, 59, 59))
        v = st.one_of(st.sampled_from(edges), dt.map(lambda d: d.replace(tzinfo=UTC)))
        if col.whole_seconds:
            v = v.map(lambda d: d.replace(microsecond=0))
        return v
    if k == "date":
        low = date(1000, 1, 1) if source == "mysql" else date(1, 1, 1)
        return st.dates(min_value=low, max_value=date(9999, 12, 31))
    if k == "float":
        special = source == "postgres"
        return st.floats(allow_nan=special, allow_infinity=special, width=64)
    if k == "bool":
        return st.booleans()
    if k == "json":
        leaf = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000),
                         st.text(text_alphabet("postgres", False), max_size=8))
        # nested two deep by hand: st.recursive's lists, drawn empty, raise Hypothesis's
        # "doesn't use its argument" warning (an error under filterwarnings) now and then
        inner = st.lists(leaf, max_size=3)
        return st.dictionaries(st.text("abcxyz", min_size=1, max_size=3),
                               st.one_of(leaf, inner, st.lists(inner, max_size=2)),
                               max_size=3)
    raise AssertionError(k)


def is_invalid(col: Col, value: Any) -> bool:
    """Whether steadyflow must quarantine this value rather than load it (the documented
    policy, written independently of steadyflow's validation)."""
    if value is None:
        nullable = col.nullable if col.contract_nullable is None else col.contract_nullable
        return not nullable
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return True
    if isinstance(value, str) and "\x00" in value:
        return True
    if col.kind == "dec":
        if not value.is_finite():
            return True
        with localcontext() as ctx:
            ctx.prec = 100
            scale = col.scale
            fits_scale = value == value.quantize(Decimal(1).scaleb(-scale))
            return not fits_scale or abs(value) >= Decimal(10) ** (col.p - scale)
    if col.kind == "float" and col.minimum is not None:  # a bound cannot hold NaN or inf
        return not math.isfinite(value) or value < col.minimum
    if col.kind in ("int32", "int64") and col.minimum is not None:
        return bool(value < col.minimum)
    return False


# --- table shapes --------------------------------------------------------------------------
@st.composite
def columns(draw: st.DrawFn, source: str) -> tuple[list[Col], list[str], str]:
    nkeys = draw(st.integers(1, 3))
    cols: list[Col] = []
    for i in range(nkeys):
        kind = draw(st.sampled_from(_kinds(KEY_KINDS if source == "postgres" else
                                           ("int32", "int64", "dec", "text", "char", "enum"),
                                           source) + TIME_KEY_KINDS))
        collate = (draw(st.sampled_from([None, "en-x-icu"]))
                   if kind == "text" and source == "postgres" else None)
        p = (draw(st.integers(1, 18)) if kind == "dec" else
             draw(st.integers(2, 8)) if kind == "char" else 0)
        # a time key: SQLite keeps it as text in the table's spelling, whole seconds (a
        # coarser spelling would make two drawn keys one)
        tz = kind == "ts" and draw(st.booleans())
        whole = kind == "ts" and (source == "sqlite" or draw(st.booleans()))
        scale = draw(st.sampled_from([0, 2])) if kind == "dec" and p > 2 else 0
        cols.append(Col(f"k{i}", kind, p=p, s=scale, nullable=False, collate=collate, tz=tz,
                        whole_seconds=whole,
                        members=draw(st.sampled_from(ENUM_MEMBERS)) if kind == "enum" else (),
                        folded=kind == "text" and draw(st.booleans())))
    ckind = draw(st.sampled_from(_kinds(CURSOR_KINDS, source)))
    cursor = Col("cur", ckind, p=12 if ckind == "dec" else 0,
                 s=draw(st.sampled_from([0, 2])) if ckind == "dec" else 0, nullable=False,
                 tz=draw(st.booleans()), whole_seconds=source != "sqlite" and draw(st.booleans()),
                 members=ENUM_CURSOR if ckind == "enum" else (),
                 origin=0 if ckind == "enum" else draw(st.sampled_from(ORIGINS)))
    cols.append(cursor)
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(_kinds(VALUE_KINDS, source)))
        p = s = 0
        if kind == "dec":
            p = draw(st.integers(1, 38 if source != "mysql" else 30))
            s = draw(st.integers(0, min(p, 10)))
        elif kind == "char":
            p = draw(st.integers(1, 12))
        narrower = draw(st.booleans()) and kind == "dec" and s > 0 and draw(st.booleans())
        minimum = (0.0 if kind in ("float", "int32", "int64") and draw(st.booleans())
                   and draw(st.booleans()) else None)
        cols.append(Col(f"v{i}", kind, p=p, s=s, tz=draw(st.booleans()),
                        whole_seconds=source != "sqlite" and draw(st.booleans()),
                        contract_scale=s - 1 if narrower else None, minimum=minimum,
                        members=draw(st.sampled_from(ENUM_MEMBERS)) if kind == "enum" else ()))
    return cols, [c.name for c in cols[:nkeys]], "cur"


def _kinds(kinds: tuple[str, ...], source: str) -> tuple[str, ...]:
    return tuple(k for k in kinds if k not in UNSUPPORTED[source])


@st.composite
def tables(draw: st.DrawFn, source: str, name: str) -> Table:
    cols, key, cursor = draw(columns(source))
    spelling = draw(st.sampled_from(SQLITE_SPELLINGS)) if source == "sqlite" else "space_us"
    stored = {"space_s": "s", "space_ms": "ms"}.get(spelling, "us")
    cols = [replace(c, stored_unit=stored) if c.name == cursor else c for c in cols]
    ties = draw(st.integers(0, 5)) == 0
    desc = draw(st.integers(0, 3)) == 0
    return Table(name, cols, key, cursor, spelling, ties=ties, desc=desc)


@st.composite
def rows(draw: st.DrawFn, table: Table, source: str, n: int, first_step: int, unit: str,
         taken: set[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """n new rows with unique keys and cursors at or after `first_step` (ties drawn)."""
    out = []
    step = first_step
    for _ in range(n):
        row: dict[str, Any] = {}
        for _attempt in range(50):
            for k in table.key:
                row[k] = draw(value_strategy(table.col(k), source, key=True))
            ident = normal_key(table, row, source)
            if ident not in taken:
                taken.add(ident)
                break
        else:
            continue
        step += draw(st.sampled_from([0] * 15 + [1] if table.ties else [0, 0, 1, 1, 2, 7]))
        row[table.cursor] = cursor_value(table.col(table.cursor), step, unit)
        row[STEP] = step  # not a column: where the row's cursor stands, in steps
        empty = draw(st.integers(0, 7)) == 0  # every column that may be NULL is
        for c in table.cols:
            if c.name in row:
                continue
            nullable = empty or (draw(st.booleans()) and draw(st.booleans()))
            row[c.name] = None if nullable else draw(value_strategy(c, source))
        out.append(row)
    return out


def normal_key(table: Table, row: dict[str, Any], source: str) -> tuple[Any, ...]:
    """The key as the source's uniqueness sees it."""
    out = []
    for k in table.key:
        v = row[k]
        if isinstance(v, str) and source == "mysql":
            v = folded_key(v)
        if isinstance(v, Decimal):
            v = v.normalize()
        out.append(v)
    return tuple(out)


def fresh_values(draw: st.DrawFn, table: Table, source: str) -> dict[str, Any]:
    """New values for an update: every non-key, non-cursor column, always loadable."""
    out: dict[str, Any] = {}
    for c in table.cols:
        if c.name in table.key or c.name == table.cursor:
            continue
        for _ in range(20):
            v = draw(value_strategy(c, source))
            if not is_invalid(c, v):
                out[c.name] = v
                break
        else:
            out[c.name] = None if c.nullable and c.contract_nullable is not False else 0
    return out


# --- DDL and DML per source kind -------------------------------------------------------------
def ddl(table: Table, source: str) -> list[str]:
    q = '`' if source == "mysql" else '"'
    defs = []
    for c in table.cols:
        t = (f'"{table.name}_{c.name}"' if c.kind == "enum" and source == "postgres"
             else sql_type(c, source, c.name in table.key))
        defs.append(f"{q}{c.name}{q} {t}" + ("" if c.nullable else " NOT NULL"))
    way = " DESC" if table.desc else ""
    keys = ", ".join(f"{q}{k}{q}" + (way if i and source != "postgres" else "")
                     for i, k in enumerate(table.key))  # PostgreSQL: no DESC key
    order = ", ".join([f"{q}{table.cursor}{q}", *(f"{q}{k}{q}{way}" for k in table.key)])
    stmts = [enum_type(table, c) for c in table.cols if c.kind == "enum" and source == "postgres"]
    stmts += [f"CREATE TABLE {q}{table.name}{q} ({', '.join(defs)}, PRIMARY KEY ({keys}))",
             f"CREATE INDEX {q}{table.name}_cur{q} ON {q}{table.name}{q} ({order})"]
    return stmts


def enum_type(table: Table, c: Col) -> str:
    """PostgreSQL: the column's ENUM type, created unless it exists (as migrations do)."""
    members = ", ".join("'" + m.replace("'", "''") + "'" for m in c.members)
    name = f"{table.name}_{c.name}"
    return (f"DO $$ BEGIN IF to_regtype('\"{name}\"') IS NULL THEN "
            f"CREATE TYPE \"{name}\" AS ENUM ({members}); END IF; END $$")


def drop_ddl(table: Table, source: str) -> list[str]:
    q = '`' if source == "mysql" else '"'
    stmts = [f"DROP TABLE IF EXISTS {q}{table.name}{q}"]
    if source == "postgres":
        stmts += [f'DROP TYPE IF EXISTS "{table.name}_{c.name}"'
                  for c in table.cols if c.kind == "enum"]
    return stmts


def sql_type(c: Col, source: str, key: bool) -> str:
    k = c.kind
    if k == "enum" and source == "mysql":
        return "enum(" + ", ".join("'" + m.replace("'", "''") + "'" for m in c.members) + ")"
    if source == "postgres":
        return {
            "int32": "integer", "int64": "bigint", "dec": f"numeric({c.p},{c.s})",
            "text": "text" + (f' COLLATE "{c.collate}"' if c.collate else ""),
            "char": f"char({c.p})", "uuid": "uuid",
            "ts": ("timestamptz" if c.tz else "timestamp") + ("(0)" if c.whole_seconds else ""),
            "date": "date",
            "float": "double precision", "bool": "boolean", "json": "jsonb",
        }[k]
    if source == "mysql":
        return {
            "int32": "int", "int64": "bigint", "dec": f"decimal({c.p},{c.s})",
            "text": "varchar(64)" if key else "text", "char": f"char({c.p})",
            "uuid": "char(36)", "ts": "datetime" if c.whole_seconds else "datetime(6)",
            "date": "date", "float": "double", "bool": "boolean", "json": "json",
            "bin": "blob",
        }[k]
    if k == "dec" and c.name == "cur":  # a number cursor stored as TEXT is refused (text
        return "NUMERIC"  # order): tests/integration/test_sqlite_cursors.py covers that
    return {"int32": "INTEGER", "int64": "INTEGER", "dec": "TEXT", "text": "TEXT",
            "char": "TEXT", "uuid": "TEXT", "ts": "TEXT", "date": "TEXT", "float": "REAL",
            "bool": "INTEGER", "json": "TEXT", "bin": "BLOB"}[k]


def _spell(v: datetime, sep: str, frac: int | None, suffix: str) -> str:
    """v (naive) as text: `frac` fraction digits (None: isoformat's, i.e. none at .000000)."""
    text = (f"{v.year:04d}-{v.month:02d}-{v.day:02d}{sep}"
            f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}")
    if frac is None:
        text += f".{v.microsecond:06d}" if v.microsecond else ""
    elif frac:
        text += f".{v.microsecond:06d}"[: frac + 1]
    return text + suffix


def sqlite_time(value: datetime, spelling: str, index: int) -> str:
    """How a SQLite table stores a time, in one of the spellings applications use."""
    if spelling == "mixed":
        spelling = ("space_us", "iso")[index % 2]
    v = value.astimezone(UTC).replace(tzinfo=None)
    if spelling == "iso_offset":
        try:
            local = (value.astimezone(UTC) + timedelta(hours=2)).replace(tzinfo=None)
            return _spell(local, "T", 6, "+02:00")
        except OverflowError:
            spelling = "iso_z"
    return {
        "space_s": lambda: _spell(v, " ", 0, ""),
        "space_ms": lambda: _spell(v, " ", 3, ""),
        "space_us": lambda: _spell(v, " ", 6, ""),
        "iso": lambda: _spell(v, "T", None, ""),
        "iso_z": lambda: _spell(v, "T", 6, "Z"),
    }[spelling]()


def db_value(c: Col, value: Any, source: str, spelling: str, index: int) -> Any:
    """A Python value as this source kind's driver takes it for the column."""
    if value is None:
        return None
    if source == "postgres":
        if c.kind == "ts" and not c.tz:
            return value.astimezone(UTC).replace(tzinfo=None)
        if c.kind == "json":
            return json.dumps(value)
        return value
    if source == "mysql":
        if c.kind == "ts":
            return value.astimezone(UTC).replace(tzinfo=None)
        if c.kind == "json":
            return json.dumps(value)
        return value
    if c.kind == "ts":
        return sqlite_time(value, spelling, index)
    if c.kind in ("dec", "date", "uuid"):
        return str(value) if c.kind != "date" else value.isoformat()
    if c.kind == "json":
        return json.dumps(value)
    if c.kind == "bool":
        return int(value)
    return value
