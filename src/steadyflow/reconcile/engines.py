"""The canonical encoding (encoding.py) and the pieces of a bucket query, in each engine's SQL.

Every engine computes, per row, the same text and the same md5, so a bucket's (count, sum of
terms) is equal across SQLite, PostgreSQL, MariaDB and DuckDB for equal data. Values are cast
to the contract type first, which is what extraction does with them.

One exception, for speed: when both sides are PostgreSQL servers that compute the same
`hashtextextended` (table.py probes both; see PostgresEngine.shared_hash), a row's term and
hash are that 64-bit hash of the same canonical text instead of its md5 (2.1 of the 3.4 CPU-s
a 2M-row side costs are the md5 and its hex-to-bigint conversion); on 14+, the
`hash_record_extended` of a record of the columns both sides declare alike (as their own
values: no text built) and the others' canonical texts (0.8 CPU-s). The bucket dimension of
a key hash (`key_term`) stays the md5 term, in [0, 2**60) on every pair.

Also here: a conservative "certainly invalid" predicate per source column. It only flags a
row that the pipeline's validation (validate/rules.py) would quarantine for sure, so a valid
row is never left out of a source bucket. Rows it misses are still classified exactly later,
by running the real validation on the few rows that differ.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from steadyflow.model import Column
from steadyflow.reconcile.encoding import (
    FLOAT_MAX,
    FLOAT_SCALED_MAX,
    FLOAT_TIERS,
    HASH_HEX,
    SPEC_SEP,
    TERM_HEX,
    decimal_scale,
    float_tier,
)

Fragment = tuple[str, list[Any]]  # SQL text and its parameters, in order
# where a timestamp's float8 epoch holds its µs exactly (PostgreSQL's fast path, ts_us)
FAST_TIME = ("1900-01-01 00:00:00+00", "2040-01-01 00:00:00+00")
PG_MAX_ARGS = 100  # PostgreSQL's FUNC_MAX_ARGS: the most arguments a function call takes
NUMERIC = ("int64", "int32", "float64")
# declared types (format_type) whose own hash is equal exactly for the values the contract
# calls equal, when both sides declare the column alike: integers hash by value, numeric
# ignores display scale (12.5 = 12.50, as a decimal(p,s) contract does), timestamps and dates
# by their µs or days, text by its bytes (under COLLATE "C"), booleans by value. Not floats
# (the contract rounds to micro-units) nor anything else (json, arrays, enums, ...).
# the first start of a 2^32 µs block from 2000-01-01 (a timestamp's hash folds its µs since
# 2000 at 2^32) at or after PostgreSQL's least timestamp, 4714-11-24 00:00:00 BC
FIRST_BLOCK = "4714-11-24 00:53:22.37568"
RECORD_TEXT = re.compile(r"text|character varying(\(\d+\))?")
RECORD_SAFE = re.compile(r"smallint|integer|bigint|numeric\(\d+,\d+\)|boolean|date|"
                         r"timestamp(\(\d\))? with(out)? time zone|" + RECORD_TEXT.pattern)


def record_fields(src: dict[str, str], wh: dict[str, str]) -> frozenset[str]:
    """The quoted columns both sides declare with one RECORD_SAFE type (Engine.native of
    each side's engine)."""
    return frozenset(q for q, t in src.items() if wh.get(q) == t and RECORD_SAFE.fullmatch(t))


# one row of every RECORD_SAFE kind, NULL too: both servers must hash it alike
RECORD_PROBE = ("hash_record_extended(ROW(CAST(%s AS bigint), CAST(%s AS integer), "
                "CAST(%s AS smallint), CAST(%s AS numeric(12,2)), CAST(%s AS text) COLLATE \"C\", "
                "CAST(%s AS timestamptz), CAST(%s AS date), CAST(%s AS boolean), "
                "CAST(NULL AS text)), 0)",
                ["-9000000000", "-7", "3", "12.50", "é日本 ~|", "2024-02-29 12:00:00.000001+00",
                 "1969-07-20", "true"])

# texts both PostgreSQL servers hash before sharing hashtextextended (PostgresEngine): every
# length class of hashfn.c's tail (0-11 bytes past the 12-byte words), bytes past ASCII
_PROBE = "é日本|-7|a~|b|~N|12.50|1704164645123456|it's\t"
HASH_PROBE = tuple(_PROBE[:n] for n in range(len(_PROBE) + 1))


def _is_numeric(ctype: str) -> bool:
    return ctype in NUMERIC or decimal_scale(ctype) is not None


class Engine:
    """ANSI-ish defaults; subclasses override what their engine spells differently."""

    kind = "sql"
    placeholder = "%s"
    quote_char = '"'
    native_time = True  # timestamps compare natively (index-friendly) against parameters
    text_type = "TEXT"
    fence = ""  # appended to a subquery that must not be merged into its outer query
    # row terms and hashes in a native hash both sides compute alike, not md5: only
    # PostgreSQL has one (PostgresEngine), set by table.py after probing both servers
    shared_hash = False
    record_columns: frozenset[str] = frozenset()  # of a shared hash (PostgresEngine)

    def __init__(self) -> None:
        # quoted column -> its declared type, lowercased (see `declare`): lets an engine
        # skip casts and guards a column's own type makes pointless, for the same text
        self.native: dict[str, str] = {}
        # lowercased column -> the type it is cast to where compared with a parameter
        # (SqlSource.compare_casts: a PostgreSQL domain over an ENUM); a source's only
        self.casts: dict[str, str] = {}

    def compared(self, name: str) -> str:
        """Column `name` as `col = ?` compares it (`casts`; see Dialect.operand)."""
        cast = self.casts.get(name.lower())
        return self.q(name) if cast is None else f"CAST({self.q(name)} AS {cast})"

    def declare(self, declared: dict[str, str]) -> Engine:
        """Tell the engine the table's declared column types (catalog text, e.g. PostgreSQL
        `numeric(12,2)`, `timestamp with time zone`); returns itself."""
        self.native = {self.q(name): str(t).strip().lower() for name, t in declared.items()}
        return self

    def q(self, name: str) -> str:
        c = self.quote_char
        return c + name.replace(c, c + c) + c

    # --- the canonical encoding -------------------------------------------------------
    def canon(self, x: str, ctype: str) -> str:
        """SQL for the encoding of column expression `x` (NULL when the value is NULL)."""
        raise NotImplementedError

    def ts_us(self, x: str) -> str:
        """Integer microseconds since the epoch (UTC) of a timestamp expression."""
        raise NotImplementedError

    def concat(self, parts: Sequence[str]) -> str:
        return " || ".join(parts)

    def is_nan(self, v: str) -> str:
        return f"({v} <> {v})"

    def float_canon(self, x: str) -> str:
        """encoding.float_text in SQL: the same IEEE multiply or divide and floor."""
        v = self.double(x)

        def whole(expr: str) -> str:
            return f"CAST({self.as_int(f'floor({expr})')} AS {self.text_type})"

        big = self.double(FLOAT_MAX)
        branches = [f"WHEN {x} IS NULL THEN NULL", f"WHEN {self.is_nan(v)} THEN 'NaN'",
                    f"WHEN {v} > {big} THEN 'Inf'", f"WHEN {v} < -{big} THEN '-Inf'",
                    f"WHEN abs({v}) < {self.double(repr(FLOAT_SCALED_MAX))} "
                    f"THEN {whole(f'{v} * 1000000')}"]
        for k in range(1, FLOAT_TIERS + 1):
            bound, divisor = float_tier(k)
            text = self.concat([f"'E{k}:'", whole(f"{v} / {self.double(divisor)}")])
            branches.append(f"ELSE {text}" if k == FLOAT_TIERS
                            else f"WHEN abs({v}) < {self.double(bound)} THEN {text}")
        return f"(CASE {' '.join(branches)} END)"

    def row_text(self, columns: Sequence[tuple[str, str]]) -> str:
        parts: list[str] = []
        for i, (x, ctype) in enumerate(columns):
            if i:
                parts.append("'|'")
            parts.append(f"coalesce({self.canon(x, ctype)}, '~N')")
        return self.concat(parts)

    def row_term(self, columns: Sequence[tuple[str, str]]) -> str:
        raise NotImplementedError

    def key_term(self, columns: Sequence[tuple[str, str]]) -> str:
        """The md5 term of a key, a bucket dimension in [0, 2**60) (sides.Dim `hash`): the
        same on every engine pair, whatever hash the row terms use."""
        return self.row_term(columns)

    def row_hash(self, columns: Sequence[tuple[str, str]]) -> str:
        return f"substr({self.md5(self.row_text(columns))}, 1, {HASH_HEX})"

    def md5(self, text: str) -> str:
        """The hex md5 of a text expression's UTF-8 bytes, as encoding.row_md5 hashes it:
        every engine must hash the same bytes for the same text."""
        return f"md5({text})"

    # --- session settings of a bucket query (sides.SqlSide._aggregate_run) ---------------
    bucket_settings: tuple[tuple[str, str], ...] = ()  # (name, value) while one runs

    def setting(self, name: str) -> Fragment:
        """SQL returning the session's current value of a setting (one row, one column)."""
        raise NotImplementedError

    def assign(self, name: str, value: str) -> Fragment:
        """SQL setting it for the session (a query returning a row: it runs through the
        same call as every other statement of a side)."""
        raise NotImplementedError

    def term_parts(self, h: str) -> list[str]:
        """The term as one or more summable parts (SQLite splits it: sum() is 64-bit there)."""
        return [h]

    def combine(self, parts: Sequence[Any]) -> int:
        return int(parts[0] or 0)

    def idiv(self, a: str, b: int) -> str:
        return f"(({a}) / {int(b)})"

    def as_int(self, x: str) -> str:
        return f"CAST({x} AS BIGINT)"

    # --- bucket dimensions (sides.py) ----------------------------------------------------
    def days(self, x: str) -> str:
        """Integer days since 1970-01-01 of a date expression (NULL where it has none)."""
        return f"(CAST({x} AS DATE) - DATE '1970-01-01')"

    def scaled(self, x: str, scale: int) -> str:
        """floor(x * 10**scale) of a decimal expression, exact (a wide integer type)."""
        return f"floor({x} * {10 ** scale})"

    def int_literal(self, value: int) -> str:
        """An int64 literal of the engine's 64-bit integer type. -2**63 is written as an
        expression, as every engine reads it as a 64-bit integer (a literal
        9223372036854775808 is numeric to some: a numeric bound disables a bigint index)."""
        value = int(value)
        return f"({value + 1} - 1)" if value == -(2 ** 63) else str(value)

    def bucket(self, x: str, lo: int, width: int, wide: bool) -> str:
        """(x - lo) // width, with x >= lo. `wide` when x - lo may not fit 64 bits (the
        caller knows the range): computed in a wider exact type, never overflowing to an
        error (PostgreSQL, MariaDB) or to a float (SQLite)."""
        if not wide:
            return self.idiv(f"{self.as_int(x)} - {self.int_literal(lo)}", width)
        return self.wide_bucket(x, lo, width)

    def wide_bucket(self, x: str, lo: int, width: int) -> str:
        raise NotImplementedError

    # --- certainly-invalid rows (sources only) -------------------------------------------
    def double(self, x: str) -> str:
        return f"CAST({x} AS DOUBLE PRECISION)"

    def text(self, x: str) -> str:
        return f"CAST({x} AS TEXT)"

    def type_misfit(self, x: str, ctype: str) -> str | None:
        return None

    def unfit(self, x: str, ctype: str) -> str | None:
        """SQL true for a value of a column of the engine's own type that extraction reads
        but cannot load (validation quarantines it): its canon is then `?` + its text, never
        a value the warehouse holds (no error, no rounding)."""
        return None

    def _guarded(self, x: str, ctype: str, canon: str) -> str:
        unfit = self.unfit(x, ctype)
        if unfit is None:
            return canon
        bad = self.concat(["'?'", self.text(x)])
        return f"(CASE WHEN {unfit} THEN {bad} ELSE {canon} END)"

    def invalid(self, x: str, column: Column) -> Fragment:
        """SQL that is 1 only for a value the pipeline's validation certainly rejects."""
        preds: list[str] = []
        params: list[Any] = []
        ctype = column.type.strip().lower()
        for odd in (self.type_misfit(x, ctype), self.unfit(x, ctype)):
            if odd:
                preds.append(odd)
        if not column.nullable:
            preds.append(f"{x} IS NULL")
        if _is_numeric(ctype):
            for op, bound in (("<", column.min), (">", column.max)):
                if bound is not None:
                    preds.append(self._beyond(x, ctype, op, float(bound)))
        if column.allowed is not None and ctype == "string":
            marks = ", ".join(self.placeholder for _ in column.allowed)
            preds.append(f"{self.exact_text(x)} NOT IN ({marks})")
            params.extend(column.allowed)
        return " OR ".join(f"({p})" for p in preds), params

    def exact_text(self, x: str) -> str:
        return self.text(x)

    def _beyond(self, x: str, ctype: str, op: str, bound: float) -> str:
        """x `op` bound, as validation compares (in double precision); on an integer or a
        decimal column of the contract's type, a whole bound is compared natively: the
        same answer for every value the column can hold, without a cast per row."""
        native = self.native.get(x, "")
        whole = bound.is_integer() and abs(bound) < 2 ** 53
        if whole and (re.match(r"(tiny|small|medium|big)?int(eger)?\b", native)
                      or _same_decimal(native, ctype)):
            return f"{x} {op} {int(bound)}"
        return f"{self.double(x)} {op} {bound!r}"


class PostgresEngine(Engine):
    kind = "postgres"
    # shared_hash: set by table.py when the other side is PostgreSQL too and both servers
    # returned the same HASH_PROBE hashes: row terms and hashes are then hashtextextended()
    # of the canonical text (a bigint: no md5, no hex). Its result is meant to stay the same
    # across server versions since 11 (hash partitions depend on it), but differs across
    # byte orders (hashfn.c reads the text a 32-bit word at a time in native order) and
    # server encodings (it hashes the bytes): the probe settles both, else md5 is kept.
    # record_columns (PostgreSQL 14+ on both, RECORD_PROBE alike): the quoted columns both
    # sides declare with the same type of RECORD_SAFE, hashed as their own values in a
    # record (hash_record_extended) instead of as canonical text (record_fields).
    # A bucket query groups by an expression of the key, whose number of distinct values the
    # planner cannot know: it takes one group per row, plans a sort of every row by bucket
    # and spills it to disk (160 MB of temp files for 2M rows at the default work_mem, half
    # the wall time of the query) where a hash table of 1024 groups does. Without sorts it
    # picks HashAggregate (parallel: partial in each worker). Only around bucket queries:
    # a keyset page read by key without a sort would scan a whole index instead.
    bucket_settings = (("enable_sort", "off"),)
    # the server's encoding (current_setting('server_encoding'), set by table.py): md5(text)
    # hashes a text's bytes in it, and LATIN1 holds 'é' in one byte where UTF-8 has two, so
    # every non-ASCII row would differ from the same row elsewhere. Outside UTF8 the text is
    # converted first (see md5). Not SQL_ASCII: it holds the bytes a client sent, converts
    # nothing, and the UTF-8 ones are those extraction loads.
    server_encoding = "UTF8"

    def setting(self, name: str) -> Fragment:
        return "SELECT current_setting(%s)", [name]

    def assign(self, name: str, value: str) -> Fragment:
        return "SELECT set_config(%s, %s, false)", [name, value]

    def is_nan(self, v: str) -> str:
        return f"({v} = CAST('NaN' AS double precision))"  # NaN equals NaN here

    def ts_us(self, x: str) -> str:
        """Exact on every version, in float8 (date_part; extract is numeric since 14, twice
        as slow). Inside FAST_TIME the epoch's float8 itself is exact enough: |µs| < 2**51,
        so fl(fl(µs / 1e6) * 1e6) is within 0.375 of µs and the cast rounds it back. Outside
        it, whole minutes are exact in float8 epoch and the µs of the minute are exact."""
        t = f"CAST({x} AS timestamptz)"
        exact = (f"CAST(date_part('epoch', date_trunc('minute', {t})) AS bigint) * 1000000"
                 f" + CAST(date_part('microseconds', {t}) AS bigint)")
        return (f"(CASE WHEN {t} >= '{FAST_TIME[0]}' AND {t} < '{FAST_TIME[1]}' "
                f"THEN CAST(date_part('epoch', {t}) * 1000000 AS bigint) ELSE {exact} END)")

    def unfit(self, x: str, ctype: str) -> str | None:
        """'infinity' and years outside 1..9999 (extraction reads them as null with a
        reason); a decimal with more scale or integer digits than the contract (NaN and
        infinities too: they sort above every number)."""
        t = ctype.strip().lower()
        if t in ("timestamp", "date"):
            return (f"(NOT isfinite({x}) OR {x} < '0001-01-01' OR {x} >= '10000-01-01')")
        scale = decimal_scale(t)
        if scale is not None and _same_decimal(self.native.get(x, ""), t):
            return f"({x} = 'NaN')"  # the column's own type rules out the rest
        if scale is not None:
            n = f"CAST({x} AS numeric)"
            return (f"({n} <> round({n}, {scale}) OR "
                    f"abs({n}) >= {10 ** (_precision(t) - scale)})")
        return None

    def canon(self, x: str, ctype: str) -> str:
        t = ctype.strip().lower()
        native = self.native.get(x, "")
        if t in ("int64", "int32") and native in ("bigint", "integer", "smallint"):
            return f"CAST({x} AS text)"  # an integer column prints as its bigint would
        scale = decimal_scale(t)
        if scale is not None and _same_decimal(native, t):
            # a numeric(p,s) column of the contract's scale prints exactly s digits and
            # cannot exceed its precision; only NaN is unfit (as '?NaN', like the guard)
            return f"(CASE WHEN {x} = 'NaN' THEN '?NaN' ELSE CAST({x} AS text) END)"
        if t == "timestamp" and native == "timestamp with time zone":
            return self._time_text(x)
        return self._guarded(x, ctype, self._canon(x, ctype))

    def row_text(self, columns: Sequence[tuple[str, str]]) -> str:
        """The same text, built faster for the common row: when no column of a declared
        type that prints as its canon (`_typed`) is NULL and each meets its condition
        (a numeric not NaN, a timestamptz inside FAST_TIME), one concat_ws() of the values
        themselves (each printed by its type's output function, as CAST(... AS text) does)
        instead of a cast, a coalesce and two `||` per column: 3.86-3.92 -> 3.47-3.60 CPU-s for the
        bench's 2M-row source bucket query (bench/RECONCILE.md, session 14). Any other row
        takes the generic text (ELSE), so the text is the same for every row. Not past
        PG_MAX_ARGS columns: concat_ws and num_nulls are functions, with PostgreSQL's
        limit on a call's arguments (the generic text, `||`, has none)."""
        generic = super().row_text(columns)
        typed = [self._typed(x, ctype) for x, ctype in columns]
        checked = [x for (x, _), t in zip(columns, typed, strict=True) if t is not None]
        if not checked or len(columns) + 1 > PG_MAX_ARGS:
            return generic
        parts: list[str] = []
        conditions = [f"num_nulls({', '.join(checked)}) = 0"]
        for (x, ctype), t in zip(columns, typed, strict=True):
            if t is None:
                parts.append(f"coalesce({self.canon(x, ctype)}, '~N')")
                continue
            value, condition = t
            parts.append(value)
            if condition:
                conditions.append(condition)
        return (f"(CASE WHEN {' AND '.join(conditions)} THEN concat_ws('|', {', '.join(parts)})"
                f" ELSE {generic} END)")

    def _typed(self, x: str, ctype: str) -> tuple[str, str | None] | None:
        """A non-NULL value of column `x` whose own output (concat_ws prints it so) is its
        canon while the condition holds, or None: an integer column of an integer contract
        type, a numeric(p,s) of the contract's scale (not NaN, which is '?NaN'), a
        timestamptz inside FAST_TIME (its µs as a bigint), a string (its escaped text)."""
        t = ctype.strip().lower()
        native = self.native.get(x, "")
        if t in ("int64", "int32") and native in ("bigint", "integer", "smallint"):
            return x, None
        scale = decimal_scale(t)
        if scale is not None and _same_decimal(native, t):
            return x, f"{x} <> 'NaN'"
        if t == "timestamp" and native == "timestamp with time zone":
            return (f"CAST(date_part('epoch', {x}) * 1000000 AS bigint)",
                    f"{x} >= '{FAST_TIME[0]}' AND {x} < '{FAST_TIME[1]}'")
        if t == "string":
            return self.canon(x, ctype), None
        return None

    def _time_text(self, x: str) -> str:
        """A timestamptz column's canon: the common case (FAST_TIME) tested first, so most
        rows skip the unfit test; the same text as the guarded ts_us."""
        fast = f"CAST(CAST(date_part('epoch', {x}) * 1000000 AS bigint) AS text)"
        exact = (f"CAST(CAST(date_part('epoch', date_trunc('minute', {x})) AS bigint) * 1000000"
                 f" + CAST(date_part('microseconds', {x}) AS bigint) AS text)")
        return (f"(CASE WHEN {x} >= '{FAST_TIME[0]}' AND {x} < '{FAST_TIME[1]}' THEN {fast} "
                f"WHEN {self.unfit(x, 'timestamp')} THEN '?' || CAST({x} AS TEXT) "
                f"ELSE {exact} END)")

    def _canon(self, x: str, ctype: str) -> str:
        t = ctype.strip().lower()
        if t in ("int64", "int32"):
            return f"CAST(CAST({x} AS bigint) AS text)"
        if t == "string":
            # COLLATE "C": replace() refuses a nondeterministic collation's text
            return f"replace(replace(CAST({x} AS text) COLLATE \"C\", '~', '~~'), '|', '~|')"
        if t == "timestamp":
            return f"CAST({self.ts_us(x)} AS text)"
        if t == "date":
            return f"CAST(CAST({x} AS date) - DATE '1970-01-01' AS text)"
        if t == "bool":
            return (f"CASE WHEN {x} IS NULL THEN NULL WHEN CAST({x} AS boolean) THEN '1' "
                    "ELSE '0' END")
        if t == "float64":
            return self.float_canon(x)
        scale = decimal_scale(t)
        if scale is not None:
            return f"CAST(CAST({x} AS numeric({_precision(t)},{scale})) AS text)"
        raise ValueError(f"no canonical encoding for type {ctype!r}")

    def row_term(self, columns: Sequence[tuple[str, str]]) -> str:
        if self.shared_hash:
            return self._native_hash(columns)
        return self.key_term(columns)

    def key_term(self, columns: Sequence[tuple[str, str]]) -> str:
        return (f"CAST(CAST('x' || substr({self.md5(self.row_text(columns))}, 1, {TERM_HEX}) "
                f"AS bit({TERM_HEX * 4})) AS bigint)")

    def md5(self, text: str) -> str:
        """In a UTF8 database md5(text) as it was (no conversion on the common path); in
        any other, md5 of the text converted to UTF-8 (every character of a server encoding
        has one)."""
        if self.server_encoding in ("UTF8", "SQL_ASCII"):
            return f"md5({text})"
        return f"md5(convert_to({text}, 'UTF8'))"

    def row_hash(self, columns: Sequence[tuple[str, str]]) -> str:
        if self.shared_hash:
            return f"CAST({self._native_hash(columns)} AS text)"
        return super().row_hash(columns)

    def _record_part(self, x: str, ctype: str) -> str:
        """A column as a field of the hashed record: itself where record_columns says both
        sides declare it alike (text under COLLATE "C": a column's own collation reaches
        the record's hash, and a nondeterministic one hashes 'A' and 'a' alike), else its
        canonical text."""
        if x not in self.record_columns:
            return f"coalesce({self.canon(x, ctype)}, '~N') COLLATE \"C\""
        native = self.native.get(x, "")
        if RECORD_TEXT.fullmatch(native):
            return f'{x} COLLATE "C"'
        if native.startswith("numeric"):
            # numeric's hash ignores the sign (hash_numeric_extended hashes the digits and
            # the weight: 5.00 and -5.00 hash alike), so the sign enters as a field of its own
            return f"{x}, {x} < 0"
        if native == "bigint":
            # hashint8 folds the high 32 bits into the low ones first (1 and 2^32 hash
            # alike): the high half enters as a field of its own, and the pair is the value
            return f"{x}, {x} >> 32"
        if native.startswith("timestamp"):
            # a timestamp hashes its µs since 2000 as hashint8 does (folded): the 2^32 µs
            # block it falls in (date_bin, PostgreSQL 14+ as hash_record_extended) is the
            # high half, a field of its own. PostgreSQL's least timestamp lies inside a
            # block whose start it cannot hold: date_bin raises 'timestamp out of range'
            # for the values before FIRST_BLOCK (and reconcile of the table failed), all
            # of that one block, NULL here
            tz = "with time zone" in native
            kind, zone = ("TIMESTAMPTZ", "+00") if tz else ("TIMESTAMP", "")
            return (f"{x}, CASE WHEN {x} >= {kind} '{FIRST_BLOCK}{zone} BC' THEN date_bin("
                    f"INTERVAL '4294967296 microseconds', {x}, {kind} '2000-01-01 00:00:00"
                    f"{zone}') END")
        return x

    @staticmethod
    def server_sql() -> Fragment:
        """The server's version number and encoding, before HASH_PROBE (PostgreSQL 11 added
        hashtextextended; both sides must hash the same bytes for the same text)."""
        return ("SELECT current_setting('server_version_num') AS c0, "
                "current_setting('server_encoding') AS c1"), []

    @staticmethod
    def probe_sql() -> Fragment:
        """hashtextextended of each HASH_PROBE text, as a row hash computes it."""
        hashes = ", ".join(f'hashtextextended(CAST(%s AS text) COLLATE "C", 0) AS h{i}'
                           for i in range(len(HASH_PROBE)))
        return f"SELECT {hashes}", list(HASH_PROBE)

    def _native_hash(self, columns: Sequence[tuple[str, str]]) -> str:
        """COLLATE "C": a deterministic collation hashes the text's bytes (a
        nondeterministic one would hash its sort key). With record_columns, the row as a
        record of those columns' own values (each hashed by its type's hash, no text built)
        and the other columns' canonical texts."""
        if self.record_columns:
            fields = ", ".join(self._record_part(x, t) for x, t in columns)
            return f"hash_record_extended(ROW({fields}), 0)"
        return f'hashtextextended(({self.row_text(columns)}) COLLATE "C", 0)'

    def days(self, x: str) -> str:
        return f"(CASE WHEN isfinite({x}) THEN CAST({x} AS date) - DATE '1970-01-01' END)"

    def scaled(self, x: str, scale: int) -> str:
        n = f"CAST({x} AS numeric)"
        # n - n = 0 is false for NaN and the infinities, which have no integer
        return f"(CASE WHEN {n} - {n} = 0 THEN floor({n} * {10 ** scale}) END)"

    def wide_bucket(self, x: str, lo: int, width: int) -> str:
        return f"CAST(div(CAST({x} AS numeric) - {int(lo)}, {int(width)}) AS bigint)"


class MysqlEngine(Engine):
    """MySQL / MariaDB. Session time zone is UTC (set by the source dialect)."""

    kind = "mysql"
    quote_char = "`"
    text_type = "CHAR"

    def ts_us(self, x: str) -> str:
        return f"TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {x})"

    def concat(self, parts: Sequence[str]) -> str:
        return f"CONCAT({', '.join(parts)})"

    def unfit(self, x: str, ctype: str) -> str | None:
        """A decimal with more scale or integer digits than the contract (a CAST would
        round or clip it)."""
        scale = decimal_scale(ctype.strip().lower())
        if scale is None:
            return None
        return (f"({x} <> ROUND({x}, {scale}) OR "
                f"ABS({x}) >= {10 ** (_precision(ctype.strip().lower()) - scale)})")

    def canon(self, x: str, ctype: str) -> str:
        t = ctype.strip().lower()
        native = self.native.get(x, "")
        if t in ("int64", "int32") and re.match(r"(tiny|small|medium|big)?int\b", native):
            return f"CAST({x} AS CHAR)"
        if t == "string" and re.match(r"bit\b", native):
            return f"CAST(CAST({x} AS UNSIGNED) AS CHAR)"  # as extraction reads it: digits
        if decimal_scale(t) is not None and _same_decimal(native, t):
            return f"CAST({x} AS CHAR)"  # a DECIMAL(p,s) holds no NaN: nothing is unfit
        return self._guarded(x, ctype, self._canon(x, ctype))

    def _canon(self, x: str, ctype: str) -> str:
        t = ctype.strip().lower()
        if t in ("int64", "int32"):
            return f"CAST(CAST({x} AS SIGNED) AS CHAR)"
        if t == "string":
            return f"REPLACE(REPLACE(CONVERT({x} USING utf8mb4), '~', '~~'), '|', '~|')"
        if t == "timestamp":
            return f"CAST({self.ts_us(x)} AS CHAR)"
        if t == "date":
            return f"CAST(DATEDIFF({x}, '1970-01-01') AS CHAR)"
        if t == "bool":
            return f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} <> 0 THEN '1' ELSE '0' END"
        if t == "float64":
            return self.float_canon(x)
        scale = decimal_scale(t)
        if scale is not None:
            return f"CAST(CAST({x} AS DECIMAL({_precision(t)},{scale})) AS CHAR)"
        raise ValueError(f"no canonical encoding for type {ctype!r}")

    def row_term(self, columns: Sequence[tuple[str, str]]) -> str:
        return (f"CAST(CONV(SUBSTRING({self.md5(self.row_text(columns))}, 1, {TERM_HEX}), 16,"
                " 10) AS UNSIGNED)")

    def row_hash(self, columns: Sequence[tuple[str, str]]) -> str:
        return f"SUBSTRING({self.md5(self.row_text(columns))}, 1, {HASH_HEX})"

    def md5(self, text: str) -> str:
        """MD5() hashes a string's bytes in its character set: a string column's canon is
        CONVERTed to utf8mb4 whatever the column's (_canon: a latin1 'é' is one byte), and
        every other part is ASCII, so the row text's bytes are UTF-8."""
        return f"MD5({text})"

    def idiv(self, a: str, b: int) -> str:
        return f"(({a}) DIV {int(b)})"

    def days(self, x: str) -> str:
        return f"DATEDIFF({x}, '1970-01-01')"

    def scaled(self, x: str, scale: int) -> str:
        return f"FLOOR({x} * {10 ** scale})"

    def wide_bucket(self, x: str, lo: int, width: int) -> str:
        # DIV of DECIMALs is exact; the quotient (a bucket number) fits a BIGINT
        return f"((CAST({x} AS DECIMAL(65,0)) - {int(lo)}) DIV {int(width)})"

    def as_int(self, x: str) -> str:
        return f"CAST({x} AS SIGNED)"

    def double(self, x: str) -> str:
        return f"CAST({x} AS DOUBLE)"

    def text(self, x: str) -> str:
        return f"CAST({x} AS CHAR)"

    def exact_text(self, x: str) -> str:
        return f"CAST({x} AS BINARY)"  # the default collations ignore case and trailing space


class DuckdbEngine(Engine):
    kind = "duckdb"
    placeholder = "?"
    text_type = "VARCHAR"

    def is_nan(self, v: str) -> str:
        return f"isnan({v})"  # NaN equals NaN here

    def ts_us(self, x: str) -> str:
        return f"epoch_us(CAST({x} AS TIMESTAMPTZ))"

    def concat(self, parts: Sequence[str]) -> str:
        """One flat call: a chain of `||` nests one level per part, and past DuckDB's
        max_expression_depth (1000: about 500 columns of row text) the query fails.
        concat() skips NULLs, which `||` would propagate: every part is coalesced or a
        literal, so the text is the same."""
        return f"concat({', '.join(parts)})"

    def canon(self, x: str, ctype: str) -> str:
        t = ctype.strip().lower()
        if t in ("int64", "int32"):
            return f"CAST(CAST({x} AS BIGINT) AS VARCHAR)"
        if t == "string":
            return f"replace(replace(CAST({x} AS VARCHAR), '~', '~~'), '|', '~|')"
        if t == "timestamp":
            return f"CAST({self.ts_us(x)} AS VARCHAR)"
        if t == "date":
            return f"CAST(CAST({x} AS DATE) - DATE '1970-01-01' AS VARCHAR)"
        if t == "bool":
            return (f"CASE WHEN {x} IS NULL THEN NULL WHEN CAST({x} AS BOOLEAN) THEN '1' "
                    "ELSE '0' END")
        if t == "float64":
            return self.float_canon(x)
        scale = decimal_scale(t)
        if scale is not None:
            return self._decimal_text(x, _precision(t), scale)
        raise ValueError(f"no canonical encoding for type {ctype!r}")

    @staticmethod
    def _decimal_text(x: str, precision: int, scale: int) -> str:
        """DuckDB prints a DECIMAL(p,p) without its leading zero ('.241', '-.5'): one more
        digit of precision gives it back ('0.241'), as every other engine prints it."""
        value = f"CAST({x} AS DECIMAL({precision},{scale}))"
        if precision == scale and precision < 38:
            value = f"CAST({value} AS DECIMAL({precision + 1},{scale}))"
        text = f"CAST({value} AS VARCHAR)"
        if precision == scale == 38:
            return (f"(CASE WHEN {text} LIKE '-.%' THEN '-0' || substr({text}, 2) "
                    f"WHEN {text} LIKE '.%' THEN '0' || {text} ELSE {text} END)")
        return text

    def row_term(self, columns: Sequence[tuple[str, str]]) -> str:
        """The row text's digest as a number (md5_number: a UHUGEINT, the digest's bytes
        read little-endian), turned into the term where it is summed (term_parts): the
        same 60 bits as the hex form (key_term) without printing 32 hex digits and parsing
        15 back, 6.5% of DuckDB's bucket query (bench/NOTES.md, session 15)."""
        return f"md5_number({self.row_text(columns)})"

    def term_parts(self, h: str) -> list[str]:
        """The term of a row_term `h` (a column of the subquery, so its md5 is computed
        once): the digest's first 8 bytes are md5_number's low 64 bits, byte-reversed
        into the big-endian number whose top 60 bits are the first TERM_HEX hex digits.
        Every byte is masked before its shift (DuckDB refuses a shift that drops bits)."""
        low = f"CAST({h} & CAST(18446744073709551615 AS UHUGEINT) AS UBIGINT)"
        swapped = " | ".join(f"((({low} >> {8 * i}) & 255) << {8 * (7 - i)})"
                             for i in range(8))
        return [f"CAST(({swapped}) >> {64 - 4 * TERM_HEX} AS BIGINT)"]

    def key_term(self, columns: Sequence[tuple[str, str]]) -> str:
        """One expression (a bucket dimension, compared in WHERE): the hex form."""
        return (f"CAST('0x' || substr({self.md5(self.row_text(columns))}, 1, {TERM_HEX}) "
                "AS BIGINT)")

    def idiv(self, a: str, b: int) -> str:
        return f"(({a}) // {int(b)})"

    def wide_bucket(self, x: str, lo: int, width: int) -> str:
        return f"CAST((CAST({x} AS HUGEINT) - {int(lo)}) // {int(width)} AS BIGINT)"


# SQLite's bound on a function's arguments (SQLITE_MAX_FUNCTION_ARG), and the columns a
# row's hash takes per call below it (the spec is one more argument)
SQLITE_MAX_ARGS = 127
PART_COLUMNS = 100


class SqliteEngine(Engine):
    """The encoding runs in Python functions registered on the connection (encoding.py)."""

    kind = "sqlite"
    placeholder = "?"
    quote_char = "`"  # never a string literal: see extract.dialects.SqliteDialect
    native_time = False  # text timestamps: compare their parsed value, never their spelling
    fence = " LIMIT -1"  # SQLite does not flatten a LIMIT subquery into an aggregate
    # the database stores text as UTF-16 (PRAGMA encoding; set by table.py): a text's bytes
    # are then UTF-16, which the functions decode (encoding.register_sqlite), and a blob is
    # passed as its hex text, which they tell from a text (always bytes here) by its type
    utf16 = False

    def ts_us(self, x: str) -> str:
        return f"sf_ts_us({x})"

    def canon(self, x: str, ctype: str) -> str:
        return f"sf_canon('{_literal(ctype)}', {self._arg(x)})"

    def _arg(self, x: str) -> str:
        """Text passed as its bytes: sqlite3 decodes a text argument of a Python function
        as UTF-8 and fails the whole query on one invalid byte; the converters decode it
        as extraction does (invalid UTF-8 cannot load: that row is quarantined). In a
        UTF-16 database those bytes are UTF-16 (see utf16)."""
        if self.utf16:
            return (f"(CASE typeof({x}) WHEN 'text' THEN CAST({x} AS BLOB) "
                    f"WHEN 'blob' THEN hex({x}) ELSE {x} END)")
        return f"(CASE typeof({x}) WHEN 'text' THEN CAST({x} AS BLOB) ELSE {x} END)"

    def _spec(self, columns: Sequence[tuple[str, str]]) -> str:
        spec = SPEC_SEP.join(ctype.strip().lower() for _, ctype in columns)
        return f"'{_literal(spec)}', " + ", ".join(self._arg(x) for x, _ in columns)

    def _whole_row(self, function: str, columns: Sequence[tuple[str, str]]) -> str:
        """`function` (sf_row_term, sf_row_hash) over every column: in one call while
        SQLite's 127 arguments hold them, else the same value from runs of PART_COLUMNS
        encoded apart (sf_row_part) and hashed together (sf_parts_term, sf_parts_hash)."""
        if len(columns) < SQLITE_MAX_ARGS:
            return f"{function}({self._spec(columns)})"
        parts = [f"sf_row_part({self._spec(columns[i:i + PART_COLUMNS])})"
                 for i in range(0, len(columns), PART_COLUMNS)]
        if len(parts) > SQLITE_MAX_ARGS:
            raise ValueError(f"a row of {len(columns)} columns: SQLite's reconcile hashes "
                             f"at most {SQLITE_MAX_ARGS * PART_COLUMNS}")
        whole = function.replace("sf_row_", "sf_parts_")
        return f"{whole}({', '.join(parts)})"

    def row_term(self, columns: Sequence[tuple[str, str]]) -> str:
        return self._whole_row("sf_row_term", columns)

    def row_hash(self, columns: Sequence[tuple[str, str]]) -> str:
        return self._whole_row("sf_row_hash", columns)

    def term_parts(self, h: str) -> list[str]:
        return [f"({h} >> 30)", f"({h} & 1073741823)"]

    def combine(self, parts: Sequence[Any]) -> int:
        return (int(parts[0] or 0) << 30) + int(parts[1] or 0)

    def as_int(self, x: str) -> str:
        return f"CAST({x} AS INTEGER)"

    def days(self, x: str) -> str:
        return f"sf_days({self._arg(x)})"

    def scaled(self, x: str, scale: int) -> str:
        return f"sf_scaled({self._arg(x)}, {int(scale)})"

    def wide_bucket(self, x: str, lo: int, width: int) -> str:
        # SQLite's integer arithmetic overflows into a float (inexact): Python's is exact
        # lo and width as text: a literal past 64 bits would be a float to SQLite
        return f"sf_bucket({self.as_int(x)}, '{int(lo)}', '{int(width)}')"

    def double(self, x: str) -> str:
        return f"CAST({x} AS REAL)"

    def type_misfit(self, x: str, ctype: str) -> str | None:
        # only spellings extraction certainly cannot convert (see column_to_arrow)
        if ctype in ("int64", "int32"):
            return (f"typeof({x}) = 'blob' OR (typeof({x}) = 'text' AND "
                    f"({x} = '' OR {x} GLOB '*[^-0-9]*'))")
        if decimal_scale(ctype) is not None:
            return (f"typeof({x}) = 'blob' OR (typeof({x}) = 'text' AND "
                    f"({x} = '' OR {x} GLOB '*[^-+.0-9eE]*'))")
        if ctype in ("timestamp", "date"):  # a number is an epoch: not read as a time
            return (f"typeof({x}) IN ('blob', 'integer', 'real') OR "
                    f"(typeof({x}) = 'text' AND {x} NOT GLOB '*[0-9]*')")
        return None


def _precision(ctype: str) -> int:
    return int(ctype[ctype.index("(") + 1: ctype.index(",")])


def _same_decimal(native: str, ctype: str) -> bool:
    """A declared numeric(p,s)/decimal(p,s) with the contract's scale and no more
    precision: every value it holds is valid and prints with exactly s digits."""
    match = re.fullmatch(r"(?:numeric|decimal)\((\d+),\s*(\d+)\)", native)
    return (match is not None and int(match.group(2)) == decimal_scale(ctype)
            and int(match.group(1)) <= _precision(ctype))


def _literal(text: str) -> str:
    if "'" in text:
        raise ValueError(f"quote in a type name: {text!r}")
    return text


def engine_for(kind: str) -> Engine:
    engines: dict[str, type[Engine]] = {
        "postgres": PostgresEngine, "mysql": MysqlEngine, "duckdb": DuckdbEngine,
        "sqlite": SqliteEngine}
    if kind not in engines:
        raise ValueError(f"reconcile does not support {kind!r} databases")
    return engines[kind]()
