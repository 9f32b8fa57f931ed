"""What differs between SQL engines: connecting, quoting, keyset predicates, cursor value
encoding, timeouts and the translation of driver errors into steadyflow's error tree.

Driver errors are translated here, once, so the rest of the code only sees
`AuthError`, `SchemaError`, `SourceTimeout`, `SourceUnavailable`.

psycopg is imported by the PostgreSQL dialect when it is first used, not with this module:
it costs ~22 MiB of RSS (its C library, libpq and OpenSSL) that a MariaDB or SQLite source
never needs (bench/NOTES.md). pymysql likewise by the MariaDB dialect: ~8 ms of CPU at every
start-up of a PostgreSQL or SQLite source's command.
"""

from __future__ import annotations

import functools
import re
import socket
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from steadyflow.config import SourceConfig
from steadyflow.errors import (
    AuthError,
    FatalError,
    SchemaError,
    SourceTimeout,
    SourceUnavailable,
    SteadyflowError,
)
from steadyflow.model import MAX_TIME, MIN_TIME, ColumnType
from steadyflow.resilience import watchdog_grace

if TYPE_CHECKING:
    import psycopg
    import pymysql

    from steadyflow.extract.sql import SqlSource
    from steadyflow.model import Contract

# Set on every PostgreSQL source session: a reader cut off mid-transaction (a worker whose
# host died or was partitioned) must not stay "idle in transaction" on the store, where it
# would also hold the adaptive lookback's re-read bound back for as long as it lived; and a
# client that went away mid-query is noticed by the server within seconds, not hours
SESSION_SAFETY = (("idle_in_transaction_session_timeout", "60000"),
                  ("client_connection_check_interval", "10000"),
                  ("tcp_keepalives_idle", "30"), ("tcp_keepalives_interval", "10"),
                  ("tcp_keepalives_count", "3"))


# Set on every PostgreSQL source session: how the server prints values as text, which a
# database or role may set otherwise (ALTER DATABASE ... SET DateStyle = 'SQL, DMY' is
# common in Europe). psycopg reads results as text and parses dates, times and intervals
# in ISO/postgres style only (any other failed every poll of every table); floats print
# rounded to 15 digits under extra_float_digits <= 0 (a float8 value changed in the
# warehouse); and a string-declared column's `::text` must not change with a setting.
SESSION_TEXT = (("DateStyle", "ISO"), ("IntervalStyle", "postgres"),
                ("extra_float_digits", "3"), ("bytea_output", "hex"))


def session_settings(statement_timeout: float) -> tuple[tuple[str, str], ...]:
    """Every PostgreSQL source session's settings, (name, value): the server-side limit
    of one statement, UTC for the text of zoned times, SESSION_TEXT and SESSION_SAFETY.
    One list for both read paths: psycopg sends them as startup options, ADBC in one
    set_config query."""
    return (("statement_timeout", str(int(statement_timeout * 1000))), ("TimeZone", "UTC"),
            *SESSION_TEXT, *SESSION_SAFETY)


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def dsn_password(dsn: str) -> str | None:
    try:
        return unquote(urlsplit(dsn).password or "") or None
    except ValueError:
        return None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _earliest(values: Sequence[Any]) -> datetime | None:
    times = [_utc(v) for v in values if isinstance(v, datetime)]
    return min(times) if times else None


@dataclass(frozen=True, slots=True)
class OpenSince:
    """What one poll saw of the source's open transactions, on the source's own clock.

    `bound` is the earliest cursor a row committed after this observation can carry
    (cursors stamped by the source's clock inside the transaction that writes them):
    the start of the oldest transaction still open, or the source's now when none is.
    `visible` is False when this role cannot see other sessions' transactions: then
    nothing is known and the caller keeps the fixed lookback window.
    """

    at: datetime
    oldest: datetime | None
    visible: bool
    margin: timedelta = timedelta(0)
    # the source's now when the poll got this observation, if later than `at` (an
    # observation shared by polls or kept from before: extract/innodb_trx.py). It dates
    # what earlier polls saw (run/extract.py: _numbered_bound); the bound keeps `at`
    delivered: datetime | None = None

    @property
    def now(self) -> datetime:
        """The source's clock when the poll got this observation."""
        return self.at if self.delivered is None else max(self.at, self.delivered)

    @property
    def bound(self) -> datetime:
        start = self.at if self.oldest is None else min(self.at, self.oldest)
        return start - self.margin


NO_CASTS: Mapping[str, str] = {}


# a declared timestamp type and its fraction digits (PostgreSQL 'timestamp(0) with time
# zone', MariaDB 'datetime', 'timestamp(3)')
_STORED_TIME = re.compile(r"\s*(timestamp|datetime)\b\s*(?:\((\d)\))?", re.IGNORECASE)


def _stored_unit(declared: str, default_digits: int) -> timedelta:
    """The unit a declared date or timestamp type stores a time in (timedelta(0) for a
    type that keeps microseconds or is no time): what a stamp may lose when stored.
    `default_digits`: the engine's precision where the type names none (PostgreSQL 6,
    MariaDB 0)."""
    if re.match(r"\s*date\s*$", declared, re.IGNORECASE):
        return timedelta(days=1)
    found = _STORED_TIME.match(declared)
    if found is None:
        return timedelta(0)
    digits = default_digits if found.group(2) is None else int(found.group(2))
    return timedelta(microseconds=10 ** (6 - digits)) if digits < 6 else timedelta(0)

class Dialect:
    """Base: ANSI quoting, row-value keyset predicates, `?`-free DB-API `%s` params."""

    name = "sql"
    quote_char = '"'
    placeholder = "%s"

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.secrets = [s for s in [dsn_password(config.dsn or "")] if s]

    def connect(self) -> Any:  # a DB-API connection
        raise NotImplementedError

    def ident(self, name: str) -> str:
        """Quote an identifier; the config already restricts names to plain identifiers."""
        if "\x00" in name:
            raise SchemaError(f"identifier contains NUL: {name!r}")
        q = self.quote_char
        return q + name.replace(q, q + q) + q

    def operand(self, name: str, casts: Mapping[str, str] = NO_CASTS) -> str:
        """Column `name` as a predicate compares it with a parameter: itself, or cast to
        the type `casts` names for it (lowercased column name → SQL type, read from
        `compare_as_sql`), where the column's own type has no operator for an untyped
        parameter. A cast of a domain to its base type changes no value, and PostgreSQL
        still matches the predicate to the column's index."""
        cast = casts.get(name.lower())
        return self.ident(name) if cast is None else f"CAST({self.ident(name)} AS {cast})"

    def null_predicate(self, column: str, declared_not_null: bool) -> str:
        """The predicate a look for NULLs in `column` selects rows with (`nullable_sql`
        says whether the catalog declares it NOT NULL: the look is then there because
        the server does not enforce it)."""
        return f"{self.ident(column)} IS NULL"

    def keyset(self, columns: Sequence[str], casts: Mapping[str, str] = NO_CASTS) -> str:
        """`(c, k) > (?, ?)`: strictly after the last row, so cursor ties are kept."""
        cols = ", ".join(self.operand(c, casts) for c in columns)
        params = ", ".join(self.placeholder for _ in columns)
        return f"({cols}) > ({params})"

    def keyset_upto(self, columns: Sequence[str], casts: Mapping[str, str] = NO_CASTS
                    ) -> str:
        """`(c, k) <= (?, ?)`: at or before a noted position (the end of a cursor pass),
        compared by the database in its own types and collation, as `keyset` is.
        Parameters as for `keyset` (`keyset_params`)."""
        cols = ", ".join(self.operand(c, casts) for c in columns)
        params = ", ".join(self.placeholder for _ in columns)
        return f"({cols}) <= ({params})"

    def keyset_params(self, values: Sequence[Any]) -> list[Any]:
        return list(values)

    def to_param(self, value: Any) -> Any:
        """A watermark value as a query parameter: what `from_db` made of a stored value
        must compare with the column exactly as that stored value does."""
        return value

    def keyset_value(self, value: Any, declared: str) -> Any:
        """A keyset parameter (`to_param` of a watermark value) for a column declared as
        `declared` (catalog text, where `select_reads_declared`): what compares with the
        column in the order ORDER BY sorts it. The value itself unless that order is not
        the value's own (MariaDB ENUM/SET: `MysqlDialect.keyset_value`). ValueError:
        the value has no place in that order."""
        return value

    def from_db(self, value: Any) -> Any:
        """A stored cursor or key value as a watermark value (naive times are UTC)."""
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    # does `select_expr` depend on the column's declared type (then SqlSource reads the
    # catalog once per source object and passes it)?
    select_reads_declared = False

    def select_expr(self, name: str, kind: ColumnType, declared: str = "") -> str:
        """How a page reads column `name` of contract type `kind` (declared in the source
        as `declared`, catalog text, where `select_reads_declared`). Every read path of a
        source (fast and fallback, extraction and reconcile) selects through this, so the
        same row gives the same canonical value whichever path reads it."""
        return self.ident(name)

    def position_value(self, value: Any, kind: ColumnType) -> Any:
        """A value read through `select_expr` as a watermark value: it must compare
        with the column exactly as the stored value does."""
        return self.from_db(value)

    def with_columns(self, cols: str, table: str, rest: str) -> str:
        """`SELECT {cols} {rest}` (the position probe, `rest` from FROM on) with the
        table's every column after `cols`: only their names are read (`poll_end`)."""
        return f"SELECT {cols}, {self.ident(table)}.* {rest}"

    def cursor_profile_sql(self, table: str, column: str, ctype: str, where: str = ""
                           ) -> str | None:
        """One aggregate query over a cursor column whose stored spelling decides whether
        keyset pages compare it in order (see SqliteDialect), over the rows matching
        `where` (`cursor_region`) if given; None where the engine's own type system
        guarantees it. The dialect that has one also has `read_profile`,
        `merge_profiles`, `cursor_ends_sql` and `cursor_region`."""
        return None

    def read_profile(self, row: Sequence[Any], ctype: str) -> tuple[Any, ...]:
        raise NotImplementedError

    @staticmethod
    def merge_profiles(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
        raise NotImplementedError

    def cursor_ends_sql(self, table: str, column: str) -> str:
        raise NotImplementedError

    def cursor_region(self, column: str) -> str:
        raise NotImplementedError

    def cursor_problem(self, profile: Sequence[Any], ctype: str) -> tuple[str, str] | None:
        """(what is wrong, how to fix it) from `cursor_profile_sql`'s row, None if fine."""
        return None

    def not_a_number(self, column: str) -> str:
        """The predicate (after the column) selecting the values a number cursor must not
        hold, NaN and +Infinity (`SqlSource._check_end`), for the operator's hint."""
        return "IN ('NaN', 'Infinity')"

    def key_classes_sql(self, table: str, column: str) -> str | None:
        """A query listing the storage classes a key column holds, where one column can hold
        values the database keeps apart but one contract type makes equal (SQLite); None
        where the column's declared type rules that out."""
        return None

    def key_texts_sql(self, table: str, column: str, among: int = 0) -> str | None:
        """A query reading a key column's values stored as text, where the database keeps
        two spellings of one typed value apart (SQLite: `SqlSource.check_keys`), only those
        equal to one of `among` parameters if given; None where the engine's types rule
        that out."""
        return None

    def check_key_spellings(self, db: SqlSource, table: str, contract: Contract) -> None:
        """At the probe: refuse a key (or time cursor) column holding two spellings of one
        value of the contract's type, where the database keeps them apart (SQLite:
        extract/key_check.py). Nothing to look at elsewhere."""

    def refuse_key_spellings(self, db: SqlSource, table: str, contract: Contract,
                             column: Callable[[int], Any]) -> None:
        """On every page (`column(i)`: the contract's i-th column as read): the same rule
        for the page's keys (`key_check.refuse_key_spellings`). Nothing elsewhere."""

    def undecodable(self, exc: SteadyflowError) -> bool:
        """Did a page fail only because some stored text is not valid UTF-8?"""
        return False

    def read_leniently(self, conn: Any) -> AbstractContextManager[None]:
        """While open, text that is not UTF-8 is read as an InvalidText marker."""
        return nullcontext()

    def error(self, exc: BaseException, table: str | None = None) -> SteadyflowError:
        raise NotImplementedError

    def shutdown(self, conn: Any) -> None:
        """Make a driver call blocked on `conn` fail now (the client-side watchdog)."""
        raise NotImplementedError

    # The catalog query listing (index name, position, column) of a table's indexes; None
    # where steadyflow does not look (the index check is then skipped).
    indexes_sql: str | None = None
    # The catalog query listing (index name, column or NULL for an expression, whether
    # it is the primary key) of a table's unique, non-partial indexes, key columns only
    # (on PostgreSQL valid ones only: a CREATE UNIQUE INDEX CONCURRENTLY that failed on
    # rows sharing the key leaves an INVALID index behind, proving nothing of those rows)
    # (none for a PostgreSQL table with INHERITS children: reading it reads theirs, which
    # its indexes do not cover); None where steadyflow does not look (the contract key's
    # uniqueness is not checked).
    unique_sql: str | None = None
    # The catalog query listing (column name, declared type) of a table, for
    # `schema_drift: add`; a parameter as for indexes_sql.
    columns_sql: str | None = None
    # The catalog query listing (column name, declared NOT NULL) of the columns of a
    # table that may hold NULL, where a NULL key is passed by keyset pages unseen
    # (PostgreSQL sorts NULL last: `(c, k) > (...)` is NULL for it); None where NULL sorts
    # first and pages read it (SqlSource.check_null_keys). A parameter as for indexes_sql.
    nullable_sql: str | None = None
    # The same list where NULL sorts first (MariaDB, SQLite), for the key columns' look
    # alone (SqlSource.check_null_keys): pages read such a row, but a page ending on it
    # cannot continue, and a pass whose end (the greatest (cursor, key)) has a NULL key
    # ends with `k <= NULL` and leaves that row unread, unquarantined, every run ok. The
    # cursor's look stays unconditional there (MariaDB's NOT NULL DATETIME holds zero
    # dates, which IS NULL matches).
    nullable_keys_sql: str | None = None
    # The catalog query listing (column name, SQL type) of a table's columns that must be
    # cast to that type before a predicate compares them with a parameter (`operand`); a
    # parameter as for indexes_sql. None where no column needs one.
    compare_as_sql: str | None = None

    def index_param(self, table: str) -> Any:
        return table

    def index_columns(self, rows: Sequence[Sequence[Any]], names: Sequence[str]
                      ) -> list[tuple[Any, Any]]:
        """(index name, column) of each row `indexes_sql` read (its column names `names`),
        in order, leaving out the indexes a page query cannot be pinned to."""
        return [(r[0], r[2]) for r in rows]

    def index_hint(self, index: str) -> str:
        """Text after the table name that pins a page query to the keyset index."""
        return ""

    # --- open transactions (adaptive lookback, see docs/architecture.md) ---------------
    # One query answering (the source's now, the start of its oldest transaction still
    # open other than ours or None, whether this role can see other sessions'
    # transactions); None where the engine cannot tell (SQLite: a fixed window).
    open_since_sql: str | None = None
    # how much earlier than the reported start a row of an open transaction may be
    # stamped (the engine's own resolution and timing), subtracted before the floor
    open_margin = timedelta(0)
    # the statements around the observation and the position probe that make the
    # second read a snapshot taken after the first (None: each runs as its own
    # autocommit statement, which already is); see SqlSource.poll_end
    poll_script: tuple[str, str] | None = None

    def open_refused(self, exc: SteadyflowError) -> bool:
        """Did the observation fail only for want of a privilege (see MysqlDialect)?"""
        return False

    def naive_time(self, declared: str) -> bool:
        """Does a column of this declared type hold times whose zone `open_since` must
        allow for (MysqlDialect)? False where the bound needs no such allowance."""
        return False

    def stored_margin(self, declared: str) -> timedelta:
        """How much earlier than the clock that stamped it a cursor of this declared type
        may be stored: a column coarser than the clock keeps a stamp rounded (PostgreSQL)
        or cut (MariaDB) to its own unit. The adaptive bound steps back by it, since
        `OpenSince.bound` is the earliest *clock* reading a later commit can carry, and a
        poll starts strictly after its checkpoint once the bound passes it: a timestamp(0)
        row stamped now() = 12:00:05.3 by a transaction begun after the observation at
        12:00:05.2 is stored 12:00:05, ties the checkpoint (12:00:05, key 10) with key 3,
        and sorts behind it, never read. 0 where the declared type keeps the clock's
        microseconds (or is unknown)."""
        return timedelta(0)

    def is_text(self, declared: str) -> bool:
        """Is a column of this declared type (catalog text) text, compared as text? Then it
        cannot be a timestamp or date cursor (`SqlSource.check_cursor`; SQLite profiles
        its cursor's stored values instead), nor a key of another contract type
        (`SqlSource.check_text_keys`). False where the dialect does not tell."""
        return False

    # the seconds west of UTC of the westmost time zone this source's sessions get by
    # default (0 if none is west), for a cursor of naive times (PostgresDialect); None:
    # the engine needs no query for it (MariaDB's observation row carries its own)
    zone_west_sql: str | None = None
    # One query answering how far the wall clock of the zones the source's writers stamp
    # naive times in steps back between two hours ago and two hours ahead (seconds, 0
    # without a fall-back then): a fixed window steps back that much more (SqlSource.
    # zone_repeat); None where the engine cannot tell
    zone_repeat_sql: str | None = None

    def open_since(self, row: Sequence[Any], naive: bool = False) -> OpenSince:
        """The observation from `open_since_sql`'s row; `naive`: the cursor column holds
        times without a zone (see MysqlDialect)."""
        now, oldest, visible = row[0], _earliest(row[1:-1]), bool(row[-1])
        return OpenSince(at=_utc(now), oldest=None if oldest is None else _utc(oldest),
                         visible=visible, margin=self.open_margin)


def shutdown_fd(fd: int) -> None:
    """shutdown(2) a socket we do not own (a driver's): on a dup, which shares the
    connection, so the driver's blocked call fails while its fd stays its own."""
    if fd < 0:
        return
    sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


@dataclass(frozen=True, slots=True)
class OutOfRange:
    """A stored date or time that no path can hold (PostgreSQL 'infinity', '-infinity',
    a year past 9999 or BC): that row's value is null with `reason` (model.INVALID)
    instead of one value failing the whole page, every run."""

    shown: str  # 'infinity', '-infinity', 'year 10000', 'year 44 BC'

    @property
    def reason(self) -> str:
        return f"{self.shown} is outside {MIN_TIME.year:04d}..{MAX_TIME.year:04d}"

    @classmethod
    def from_text(cls, text: str) -> OutOfRange:
        """From PostgreSQL's ISO text: 'infinity', '10000-01-01 ...', '0044-03-15 ... BC'."""
        text = text.strip()
        if text in ("infinity", "-infinity"):
            return cls(f"'{text}'")
        year = text.split("-", 1)[0]
        if not year.isdigit():
            return cls(repr(text))
        return cls(f"year {int(year)}" + (" BC" if text.endswith(" BC") else ""))

    @classmethod
    def from_year(cls, year: int) -> OutOfRange:
        """From an astronomical year (0 = 1 BC), as Arrow holds it."""
        return cls(f"year {year}" if year > 0 else f"year {1 - year} BC")


@functools.cache
def _lenient_loaders() -> dict[str, type[Any]]:
    """psycopg's text loaders of timestamptz, timestamp and date, each returning OutOfRange
    where psycopg would raise DataError (psycopg docs, "Example: handling infinity date");
    made on first use, with psycopg's import."""
    import psycopg
    from psycopg.types import datetime as pgdatetime

    class Lenient:
        def load(self, data: Any) -> Any:
            try:
                return super().load(data)  # type: ignore[misc]  # the psycopg loader mixed in
            except psycopg.DataError:
                return OutOfRange.from_text(bytes(data).decode("ascii", "replace"))

    return {name: type(f"Lenient{base.__name__}", (Lenient, base), {})
            for name, base in (("timestamptz", pgdatetime.TimestamptzLoader),
                               ("timestamp", pgdatetime.TimestampLoader),
                               ("date", pgdatetime.DateLoader))}


class StoredText(bytes):
    """Text of a SQL_ASCII PostgreSQL database as its stored bytes, as a keyset parameter:
    psycopg hands such text over as bytes, and a bytes parameter is bytea, which compares
    with no text column ('operator does not exist: text <= bytea'). Sent untyped, as
    text is: the server, converting nothing for SQL_ASCII, compares the very bytes."""


@functools.cache
def _stored_text_dumper() -> type:
    from psycopg.adapt import Dumper

    class StoredTextDumper(Dumper):
        oid = 0  # unknown: the server gives it the column's type, as it does a str

        def dump(self, obj: Any) -> bytes:
            return bytes(obj)

    return StoredTextDumper


class PostgresDialect(Dialect):
    name = "postgres"

    def connect(self) -> psycopg.Connection[Any]:
        conn = self._connect()
        # per connection: a value Python cannot hold costs its row, not the page
        for name, loader in _lenient_loaders().items():
            conn.adapters.register_loader(name, loader)
        conn.adapters.register_dumper(StoredText, _stored_text_dumper())
        return conn

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        r = self.config.resilience
        try:
            return psycopg.connect(
                self.config.dsn or "",
                connect_timeout=max(2, int(r.connect_timeout)),
                options=" ".join(f"-c {name}={value}"
                                 for name, value in session_settings(r.statement_timeout)),
                autocommit=True,
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                tcp_user_timeout=int(max(r.statement_timeout, r.connect_timeout) * 1000),
            )
        except psycopg.Error as exc:
            raise self.error(exc) from None

    def ident(self, name: str) -> str:
        from psycopg import sql as pgsql

        return pgsql.Identifier(name).as_string(None)

    def shutdown(self, conn: Any) -> None:
        shutdown_fd(conn.pgconn.socket)

    select_reads_declared = True  # money under a decimal contract (below)

    def select_expr(self, name: str, kind: ColumnType, declared: str = "") -> str:
        """Decimal and string columns as PostgreSQL's own text: exact for numeric, CHAR(n)
        without its pad, json/jsonb as the server prints them, uuid lowercase hyphenated.
        Read this way by psycopg and ADBC alike, so both paths give the same values (a
        driver's own conversion would not: psycopg pads CHAR and turns json into a dict).
        A money column read as a decimal is its numeric value (money::numeric is exact),
        not its text, which lc_monetary spells with a currency sign and separators
        ('$1,234.56') that no decimal parses: every row of the table was quarantined.
        Page queries order by the table-qualified column, never by this text."""
        ident = self.ident(name)
        if kind.name == "decimal" and declared.strip().lower() == "money":
            return f"{ident}::numeric::text"
        if kind.name in ("decimal", "string"):
            return f"{ident}::text"
        return ident

    def to_param(self, value: Any) -> Any:
        """A page cannot start after a value no path can hold (PgArrowSource refuses it
        with the table and column before this; this is the last line for SqlSource)."""
        if isinstance(value, OutOfRange):
            raise SchemaError(
                f"a keyset page ended on a date/time that {value.reason}: the next page "
                "cannot start after it", stage="extract", source=self.config.name,
                hint="give the cursor real dates in those rows, or page by another column")
        if isinstance(value, bytes | bytearray | memoryview):  # see position_value
            return StoredText(value)
        return value

    def with_columns(self, cols: str, table: str, rest: str) -> str:
        """The table's columns from a row of none of its values (`LIMIT 0`): psycopg
        parses every value it is handed, and one it cannot hold (an interval past
        999999999 days, in a column the contract does not even name) failed every poll
        of the table."""
        return (f"SELECT p.*, w.* FROM (SELECT {cols} {rest}) AS p LEFT JOIN "
                f"(SELECT * FROM {self.ident(table)} LIMIT 0) AS w ON TRUE")

    def position_value(self, value: Any, kind: ColumnType) -> Any:
        """A decimal read as text is a Decimal again, so a watermark compares numerically
        (and is inlined as a numeric literal on the ADBC path). Text of a SQL_ASCII
        database (bytes: psycopg's, or ADBC's string read as binary) is a str when it is
        UTF-8, else its stored bytes, which `to_param` sends back as text: a key that is
        not UTF-8 costs its row (validation), not the table's every page after it."""
        if isinstance(value, bytes | bytearray | memoryview):  # text: select_expr
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                return bytes(value)
        if isinstance(value, str) and kind.name == "decimal":
            try:
                return Decimal(value)
            except ArithmeticError:
                return value
        return self.from_db(value)

    indexes_sql = (
        "SELECT i.relname, k.ord, a.attname FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid "
        "CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum "
        "WHERE x.indrelid = to_regclass(%s) ORDER BY 1, 2")
    # A key column's index entry is proof only where the index compares it as the
    # column does (the collation pages are ordered and compared in): a unique index
    # (k COLLATE "C") on a nondeterministic (case-insensitive) column admits 'a' and 'A',
    # which pages tie (`k > 'a'` passes 'A'), so one was never read (2 of 5 lost, run
    # ok). Such an entry reads as NULL, as an expression's does; a deterministic column
    # collation tells values apart by their bytes, so any index on it proves the key.
    unique_sql = (
        "SELECT i.relname, CASE WHEN a.attcollation = 0 "
        "OR x.indcollation[k.ord - 1] = a.attcollation OR (SELECT l.collisdeterministic "
        "FROM pg_collation l WHERE l.oid = a.attcollation) THEN a.attname END, "
        "x.indisprimary FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid "
        "CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) "
        "LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum "
        "WHERE x.indrelid = to_regclass(%s) AND x.indisunique AND x.indisvalid "
        "AND x.indpred IS NULL AND k.ord <= x.indnkeyatts AND NOT EXISTS (SELECT 1 "
        "FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhparent WHERE h.inhparent = x.indrelid "
        "AND p.relkind = 'r') ORDER BY 1, k.ord")
    # a domain's NOT NULL is its own (pg_type.typnotnull), not the column's: not seen
    # here, so such a key column is looked at too (a cheap LIMIT 1 query). attnotnull
    # proves no NULL only where the server enforces it on every row the table's name
    # reads: a plain table without inheritance children (a legacy child may DROP NOT
    # NULL, and its rows are the parent's), or a partitioned one (a partition cannot drop
    # it) without a foreign partition at any level. A foreign table's constraints are
    # not enforced, a view has none: every column of those may hold NULL, and so may a
    # partitioned table's or an inheritance parent's with a foreign table beneath it.
    # The second column (attnotnull) says the look must not be `IS NULL`
    # (`null_predicate`): the planner trusts the declared NOT NULL on the parent and
    # refutes it unread, where the foreign rows do hold NULL.
    nullable_sql = (
        "SELECT a.attname, a.attnotnull FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
        "AND (NOT a.attnotnull OR NOT (c.relkind = 'r' AND NOT c.relhassubclass "
        "OR c.relkind = 'p' AND NOT EXISTS (SELECT 1 FROM pg_partition_tree(c.oid) AS p "
        "JOIN pg_class f ON f.oid = p.relid WHERE f.relkind = 'f')))")

    def null_predicate(self, column: str, declared_not_null: bool) -> str:
        """`num_nulls(c) > 0` for a column declared NOT NULL where the server does not
        enforce it (a foreign partition or child): PostgreSQL's constraint exclusion
        refutes `c IS NULL` on each such child from its declared NOT NULL and reads
        nothing (EXPLAIN: One-Time Filter: false), while the foreign rows hold NULL.
        It reasons about no function, so the rows are read; such a column has no
        index the look could use anyway (its NULLs are not where the index says)."""
        if declared_not_null:
            return f"num_nulls({self.ident(column)}) > 0"
        return super().null_predicate(column, declared_not_null)
    # A column whose type is a domain over an ENUM (CREATE DOMAIN d AS mood), at any
    # depth, cast to that ENUM (format_type qualifies and quotes it as search_path needs):
    # PostgreSQL has no `d > unknown` (nor `d = unknown`, `d > mood`), since the ENUM's
    # comparison operators are polymorphic (anyenum) and operator lookup does not see
    # through a domain to them; every keyset page after the first failed. A plain ENUM
    # and a domain over a type with operators of its own (text, int, timestamp) compare
    # with an untyped parameter as they are.
    compare_as_sql = (
        "SELECT a.attname, (WITH RECURSIVE d(oid) AS (SELECT a.atttypid UNION ALL "
        "SELECT t.typbasetype FROM d JOIN pg_type t ON t.oid = d.oid WHERE t.typtype = 'd') "
        "SELECT format_type(d.oid, NULL) FROM d JOIN pg_type t ON t.oid = d.oid "
        "WHERE t.typtype = 'e') FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
        "AND at.typtype = 'd'")
    # A domain's column is declared as the type under its domains (CREATE DOMAIN stamp AS
    # timestamp): every check reading the declared type (a naive cursor's zone, dates
    # no path can hold, numbers in a time cursor, schema_drift's type) sees through it.
    columns_sql = (
        "SELECT a.attname, (WITH RECURSIVE d(oid, mod) AS (SELECT a.atttypid, a.atttypmod "
        "UNION ALL SELECT t.typbasetype, t.typtypmod FROM d JOIN pg_type t ON t.oid = d.oid "
        "WHERE t.typtype = 'd') SELECT format_type(d.oid, d.mod) FROM d JOIN pg_type t "
        "ON t.oid = d.oid WHERE t.typtype <> 'd') FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum")
    # A `timestamp without time zone` filled by now() holds the wall time of the
    # writer's TimeZone: the server's default (reset_val: postgresql.conf, or this
    # database's or role's setting), or one set for this database or a role
    # (pg_db_role_setting). This session runs in UTC and cannot see the writers' own.
    # Each zone's offset now and two hours ahead: at a fall-back (EDT to EST) the wall
    # clock repeats an hour, and a bound taken with the summer offset shortly before it
    # (the next poll resumes from it; SqlSource keeps the answer up to an hour) passed
    # the rows stamped in the repeated hour. Two hours cover the hour it is kept and the
    # hour before a transition; a bound taken earlier lies before the repeated hour.
    zone_west_sql = (
        "SELECT coalesce(max(-extract(epoch FROM (at.t AT TIME ZONE z) - "
        "(at.t AT TIME ZONE 'UTC'))), 0) FROM ("
        "SELECT reset_val AS z FROM pg_settings WHERE name = 'TimeZone' UNION "
        "SELECT substr(c, strpos(c, '=') + 1) FROM pg_db_role_setting s, "
        "unnest(s.setconfig) AS c WHERE c ILIKE 'timezone=%%' AND s.setdatabase IN "
        "(0, (SELECT oid FROM pg_database WHERE datname = current_database()))) AS zones "
        "CROSS JOIN (VALUES (now()), (now() + interval '2 hours')) AS at(t)")

    # The same zones; each one's offset (east of UTC) two hours ago, now and two hours
    # ahead, and the most an earlier offset exceeds a later one: a fall-back's repeated
    # hour. The window ends two hours each side so that an answer kept up to an hour
    # (ZONE_RECHECK_EVERY) still covers every poll within an hour after the transition.
    zone_repeat_sql = (
        "SELECT coalesce(max(extract(epoch FROM ((a.t AT TIME ZONE z) - (a.t AT TIME ZONE "
        "'UTC')) - ((b.t AT TIME ZONE z) - (b.t AT TIME ZONE 'UTC')))), 0) FROM ("
        "SELECT reset_val AS z FROM pg_settings WHERE name = 'TimeZone' UNION "
        "SELECT substr(c, strpos(c, '=') + 1) FROM pg_db_role_setting s, "
        "unnest(s.setconfig) AS c WHERE c ILIKE 'timezone=%%' AND s.setdatabase IN "
        "(0, (SELECT oid FROM pg_database WHERE datname = current_database()))) AS zones "
        "CROSS JOIN (VALUES (now() - interval '2 hours'), (now())) AS a(t) "
        "CROSS JOIN (VALUES (now()), (now() + interval '2 hours')) AS b(t) WHERE a.t < b.t")

    def is_text(self, declared: str) -> bool:
        base = re.sub(r"\s*\(.*\)$", "", declared.strip().lower()).rsplit(".", 1)[-1]
        return base in ("text", "character varying", "character", "bpchar", "citext",
                        "name", '"char"')

    def stored_margin(self, declared: str) -> timedelta:
        """timestamp(p) and timestamptz(p) round now() to p digits (half a unit early at
        most); a date cuts it to its day."""
        unit = _stored_unit(declared, 6)
        return unit if unit >= timedelta(days=1) else unit / 2

    def naive_time(self, declared: str) -> bool:
        """timestamp without time zone (timestamptz is an instant, read in UTC)."""
        return declared.strip().lower().endswith("without time zone") and (
            declared.strip().lower().startswith("timestamp"))

    def index_param(self, table: str) -> Any:
        return self.ident(table)

    # xact_start is set before a transaction can write and cleared only after its commit
    # is visible to new snapshots (xact.c: pgstat_report_xact_timestamp(0) follows
    # ProcArrayEndTransaction); a row written with now() carries exactly it. Other
    # databases' sessions cannot write this one's tables. A prepared (2PC) transaction
    # has no session: its prepare time is the best bound there is (the floor covers
    # the rest). Without pg_read_all_stats other users' xact_start reads as NULL; a
    # standby's pg_stat_activity shows its own sessions, not the primary's writers: both
    # count as "cannot see".
    open_since_sql = (
        "SELECT now(), (SELECT min(xact_start) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()), "
        "(SELECT min(prepared) FROM pg_prepared_xacts WHERE database = current_database()), "
        "pg_has_role('pg_read_all_stats', 'USAGE') AND NOT pg_is_in_recovery()")
    # one round trip, two snapshots in order: READ COMMITTED takes one per statement
    # (under a REPEATABLE READ default, one implicit transaction would read the position
    # in the observation's snapshot, taken before it)
    poll_script = ("BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY", "COMMIT")

    def error(self, exc: BaseException, table: str | None = None) -> SteadyflowError:
        msg = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc),
                     self.secrets)
        state = getattr(getattr(exc, "diag", None), "sqlstate", None) or getattr(
            exc, "sqlstate", None)
        src = self.config.name
        # a failed connection attempt carries no SQLSTATE in psycopg: match libpq's text
        full = str(exc)
        if state in ("28P01", "28000") or any(t in full for t in (
                "password authentication failed", "no pg_hba.conf entry",
                "no password supplied")) or ("role \"" in full and "does not exist" in full):
            return AuthError(f"authentication failed: {msg}", stage="extract", source=src,
                             hint="check the user and the password variable in the DSN")
        if state in ("42P01", "3F000"):
            return SchemaError(f"table not found: {msg}", stage="extract", source=src,
                               table=table)
        if state == "42703":
            return SchemaError(f"column not found: {msg}", stage="extract", source=src,
                               table=table, hint="the contract names a column the table lacks")
        if state == "3D000" or ("database \"" in full and "does not exist" in full):
            return FatalError(f"database not found: {msg}", stage="extract", source=src)
        if state == "57014":
            return SourceTimeout(f"statement timeout: {msg}", stage="extract", source=src,
                                 table=table)
        pg = sys.modules.get("psycopg")  # imported: exc may be one of its errors
        lost = (OSError,) if pg is None else (pg.OperationalError, pg.InterfaceError, OSError)
        if isinstance(exc, lost) or (state or "").startswith(("08", "57P", "53")):
            return SourceUnavailable(f"connection problem: {msg}", stage="extract", source=src,
                                     table=table)
        return FatalError(f"query failed: {msg}", stage="extract", source=src, table=table)


def bit_number(declared: str, kind: ColumnType) -> bool:
    """Is this a MariaDB/MySQL BIT column (catalog text 'bit(1)')? Whatever the contract
    type, it is read as its number (a string as the number's decimal text)."""
    return re.match(r"\s*bit\b", declared.lower()) is not None


def single_float_number(declared: str, kind: ColumnType) -> bool:
    """Is this a MariaDB/MySQL FLOAT column (catalog text 'float', 'float(10,4) unsigned';
    FLOAT(p) past 24 is declared double) read as a number (float64, an integer, bool)?
    Then a page selects it as a DOUBLE: the float it holds, exactly. The text protocol
    prints a FLOAT to six significant digits (or its D decimals), which is not that value:
    1234.567, stored 1234.5670166015625, loaded as 1234.57, 16777217 (stored 16777216) as
    16777200. A decimal or string contract keeps MariaDB's text (what reconcile reads)."""
    return (re.match(r"\s*float\b", declared.lower()) is not None
            and kind.name in ("float64", "int64", "int32", "bool"))


_MEMBER_LIST = re.compile(r"\s*(enum|set)\s*\((.*)\)\s*$", re.IGNORECASE | re.DOTALL)
_MEMBER = re.compile(r"'((?:[^'\\]|''|\\.)*)'", re.DOTALL)


def members(declared: str) -> tuple[str, tuple[str, ...]] | None:
    """('enum' or 'set', its members in declared order) of a catalog column_type such as
    "enum('z','a''b')" (quotes doubled, backslashes escaped), None for any other type."""
    match = _MEMBER_LIST.match(declared)
    if match is None:
        return None
    values = tuple(re.sub(r"''|\\(.)", lambda m: m.group(1) or "'", v)
                   for v in _MEMBER.findall(match.group(2)))
    return match.group(1).lower(), values


def member_number(kind: str, values: Sequence[str], text: str) -> int | None:
    """The number MariaDB sorts an ENUM/SET value by (ENUM: its 1-based place in the
    declaration, '' the invalid value 0; SET: the bits of its members), None if `text`
    is no value of the column."""
    if kind == "enum":
        if text in values:
            return values.index(text) + 1
        return 0 if text == "" else None
    number = 0
    for part in text.split(",") if text else []:
        if part not in values:
            return None
        number |= 1 << values.index(part)
    return number


def text_of_time(declared: str, kind: ColumnType) -> bool:
    """Is this a MariaDB/MySQL TIME, DATE, DATETIME, TIMESTAMP or YEAR column (catalog text
    'time(6)', 'datetime', 'year(4)', ...) read as string? Then a page selects MariaDB's
    own text of it (`MysqlDialect.select_expr`)."""
    return (re.match(r"\s*(time|date|datetime|timestamp|year)\s*(\(|$)", declared.lower())
            is not None and kind.name == "string")


class MysqlDialect(Dialect):
    name = "mysql"
    quote_char = "`"

    def connect(self) -> pymysql.connections.Connection[Any]:
        import pymysql

        from steadyflow.extract import mysql_tls

        parts = urlsplit(self.config.dsn or "")
        r = self.config.resilience
        try:
            conn = mysql_tls.Connection(
                host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                user=unquote(parts.username or "root"), password=dsn_password(
                    self.config.dsn or "") or "",
                database=(parts.path or "/").lstrip("/") or None,
                connect_timeout=max(1, int(r.connect_timeout)),
                # client-side bound on a silent connection: server limit + the same grace
                # as the watchdog (max_statement_time below is the server-side limit)
                read_timeout=max(1, int(r.statement_timeout + watchdog_grace(r) + 0.5)),
                write_timeout=max(1, int(r.statement_timeout + watchdog_grace(r) + 0.5)),
                autocommit=True, charset="utf8mb4",
            )
            with conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
                try:  # MariaDB's name for the server-side statement limit
                    cur.execute(f"SET SESSION max_statement_time = {float(r.statement_timeout)}")
                except pymysql.err.MySQLError:  # MySQL's name, in milliseconds
                    cur.execute(f"SET SESSION max_execution_time = "
                                f"{int(r.statement_timeout * 1000)}")
            return conn
        except pymysql.err.MySQLError as exc:
            raise self.error(exc) from None

    def shutdown(self, conn: Any) -> None:
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)

    select_reads_declared = True

    def select_expr(self, name: str, kind: ColumnType, declared: str = "") -> str:
        """A BIT column read as a number (bool, an integer, ...) as its unsigned value:
        both drivers hand BIT over as bytes (b'\\x01'), which no number or bool is, so
        the classic MySQL boolean BIT(1) quarantined every row. Only a column declared
        BIT: text such as 'true' is never read as a number. Read as string, BIT is the
        decimal text of that number ('5'): its bytes (b'\\x05', a NUL for every 0) were
        no text a reader could use, and most values cost their row.

        A TIME, DATE, DATETIME or TIMESTAMP column read as string is MariaDB's own text
        of it ('-00:00:01', '838:59:59.000000', '2024-01-01 00:00:00.000000'): both
        drivers hand them over as Python values whose str() is another spelling (TIME's
        timedelta '-1 day, 23:59:59'; a DATETIME(6) without its zero fraction), which the
        warehouse then held and reconcile, reading MariaDB's text, found mismatched. As
        a key or cursor the text compares with the column as a time, exactly. YEAR read as
        string likewise: the drivers' number spelled the zero year '0000' as '0'.

        A FLOAT read as a number is its DOUBLE (`single_float_number`)."""
        ident = self.ident(name)
        if bit_number(declared, kind):
            return f"CAST({ident} AS UNSIGNED)"
        if single_float_number(declared, kind):
            return f"CAST({ident} AS DOUBLE)"
        if text_of_time(declared, kind):
            return f"CAST({ident} AS CHAR)"
        return ident

    # every column, so `index_columns` can tell an IGNORED index (MariaDB 10.6+) or an
    # invisible one (MySQL 8) where the server has the column, and run where it has not
    indexes_sql = (
        "SELECT * FROM information_schema.statistics WHERE table_schema = DATABASE() "
        "AND table_name = %s ORDER BY index_name, seq_in_index")

    def index_columns(self, rows: Sequence[Sequence[Any]], names: Sequence[str]
                      ) -> list[tuple[Any, Any]]:
        """Not an IGNORED (MariaDB) or invisible (MySQL) index: FORCE INDEX naming one
        fails every page ("Key 'c' doesn't exist in table 't'", error 1176), and an
        operator marks an index so to see what dropping it would do. Such a table, whose
        pages a full scan reads as well, failed every poll, reported as a connection
        problem (a table that loaded before, from its second run on: its first load's
        pages in key order carry no hint)."""
        at = {str(n).lower(): i for i, n in enumerate(names)}
        hidden = [(at[c], v) for c, v in (("ignored", "YES"), ("is_visible", "NO"))
                  if c in at]
        return [(r[at["index_name"]], r[at["column_name"]]) for r in rows
                if not any(str(r[i]).upper() == v for i, v in hidden)]
    # MariaDB has no partial index; an expression is indexed through a generated column
    # (named here); a unique prefix index (k(10)) is stricter than k unique
    unique_sql = (
        "SELECT index_name, column_name, index_name = 'PRIMARY' "
        "FROM information_schema.statistics WHERE table_schema = DATABASE() "
        "AND table_name = %s AND non_unique = 0 ORDER BY index_name, seq_in_index")
    columns_sql = (
        "SELECT column_name, column_type FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = %s ORDER BY ordinal_position")
    nullable_keys_sql = (  # a UNIQUE index's columns may be NULL (a PRIMARY KEY's never)
        "SELECT column_name, 0 FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = %s AND is_nullable = 'YES'")

    def is_text(self, declared: str) -> bool:
        """CHAR, VARCHAR and the TEXT types (JSON is LONGTEXT); not ENUM or SET, which
        compare as text but sort by number (`keyset_value`)."""
        return re.match(r"\s*(var)?char\b|\s*(tiny|medium|long)?text\b|\s*json\b",
                        declared.lower()) is not None

    def keyset_value(self, value: Any, declared: str) -> Any:
        """ENUM and SET sort by number (an ENUM by its place in the declaration, a SET by
        its members' bits), but compare with text as text: `k > 'z'` after a page ending
        on 'z' of ENUM('z','a') selected nothing, and every row sorting after 'z' by
        number but before it by text was never read (lost, every run ok). The keyset
        sends the number instead, which compares as ORDER BY sorts."""
        found = members(declared) if isinstance(value, str) else None
        if found is None:
            return value
        number = member_number(found[0], found[1], value)
        if number is None:
            raise ValueError(f"{value!r} is no longer a value of its {declared}")
        return number

    # InnoDB's transactions (innodb_trx, a cache at most 0.1 s old, trx_started in
    # whole seconds of the server's system zone) and the statements running now
    # (processlist: a statement's NOW() is its start, and it may wait on a metadata lock
    # before its InnoDB transaction begins; TIME in whole seconds, as MySQL has no
    # TIME_MS). Both need the PROCESS privilege: without it innodb_trx refuses (error
    # 1227) and processlist shows only this session. A replica shows its own applier,
    # not the primary's open transactions: read a primary, or use lookback_mode: fixed.
    # One reference to innodb_trx, so the oldest other transaction and the proof that the
    # list is fresh (this statement's own row, found by the nonce extract/innodb_trx.py
    # puts in {nonce}) come from one fill of the cache: as two subqueries each filled it,
    # and a statement stalled 0.1 s between them (a busy machine) took a stale list's
    # "nothing open" for fresh, and missed a transaction holding rows.
    open_since_sql = (
        "SELECT /* {nonce} */ UTC_TIMESTAMP(6), trx.oldest, "
        "(SELECT MIN(UTC_TIMESTAMP(6) - INTERVAL time SECOND) "
        "FROM information_schema.processlist WHERE command IN ('Query', 'Execute') "
        "AND id <> CONNECTION_ID()), "
        "LEAST(TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), "
        "CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', @@global.time_zone)), "
        "TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP() + INTERVAL 2 HOUR, CONVERT_TZ("
        "UTC_TIMESTAMP() + INTERVAL 2 HOUR, '+00:00', @@global.time_zone))), 1, trx.own "
        "FROM (SELECT MIN(IF(trx_mysql_thread_id <> CONNECTION_ID(), "
        "CONVERT_TZ(trx_started, 'SYSTEM', '+00:00'), NULL)) AS oldest, "
        "COUNT(IF(trx_mysql_thread_id = CONNECTION_ID() "
        "AND LOCATE('{nonce}', trx_query) > 0, 1, NULL)) AS own "
        "FROM information_schema.innodb_trx) AS trx")
    # whole seconds (trx_started, TIME), the cache's age, and a statement's NOW() taken
    # before its InnoDB transaction starts
    open_margin = timedelta(seconds=1)
    # the server's default zone (@@global.time_zone; SYSTEM: the host's) two hours ago,
    # now and two hours ahead (see Dialect.zone_repeat_sql); NULL (no step) when a named
    # zone has no time zone tables, as in open_since_sql
    zone_repeat_sql = (
        "SELECT GREATEST(0, b - n, b - a, n - a) FROM (SELECT "
        "TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP() - INTERVAL 2 HOUR, CONVERT_TZ("
        "UTC_TIMESTAMP() - INTERVAL 2 HOUR, '+00:00', @@global.time_zone)) AS b, "
        "TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', "
        "@@global.time_zone)) AS n, "
        "TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP() + INTERVAL 2 HOUR, CONVERT_TZ("
        "UTC_TIMESTAMP() + INTERVAL 2 HOUR, '+00:00', @@global.time_zone)) AS a) AS offsets")

    def open_since(self, row: Sequence[Any], naive: bool = False) -> OpenSince:
        """The bound is a UTC instant. A DATETIME cursor (`naive`) filled by NOW() holds
        the wall time of the writer's session zone, by default the server's (the 4th
        column: its offset from UTC, seconds, the westmost of now and two hours ahead;
        NULL when a named zone has no time zone tables). West of UTC those stamps sort
        hours before the bound, so a transaction open at the poll and committed later had
        rows behind the checkpoint that the next poll did not re-read: lost, every run ok.
        The bound then also steps back by the offset (a cursor written in UTC just
        re-reads that much more, harmlessly). Two hours ahead, as PostgreSQL's
        `zone_west_sql`: at a fall-back the wall clock repeats an hour, and a bound taken
        shortly before it with the summer offset (the next poll resumes from it) passed
        the rows NOW() stamped in the repeated hour (a server in America/New_York, or
        SYSTEM on a host there: once a year, every run ok)."""
        now, trx, stmt, offset, visible = row
        seen = super().open_since((now, trx, stmt, visible))
        if naive and offset is not None and int(offset) < 0:
            return replace(seen, margin=seen.margin + timedelta(seconds=-int(offset)))
        return seen

    def stored_margin(self, declared: str) -> timedelta:
        """DATETIME(p) and TIMESTAMP(p) (p = 0 by default) cut NOW(6) to p digits (or,
        under TIME_ROUND_FRACTIONAL, round it: less early), a DATE to its day: a whole
        unit early at most, on top of `open_margin`'s second (which allows for when
        InnoDB and a statement date a transaction, not for how the row stores it)."""
        return _stored_unit(declared, 0)

    def naive_time(self, declared: str) -> bool:
        """DATETIME has no zone (TIMESTAMP is stored in UTC and read in this session's)."""
        return declared.strip().lower().startswith("datetime")

    def open_refused(self, exc: SteadyflowError) -> bool:
        """innodb_trx needs the PROCESS privilege (error 1227 without it)."""
        return "PROCESS" in exc.message or "1227" in exc.message

    def index_hint(self, index: str) -> str:
        """MariaDB's optimizer picks a full scan + filesort for a large LIMIT over a wide
        range (the first pages of a full load) although the index delivers the order."""
        return f" FORCE INDEX ({self.ident(index)})"

    def keyset(self, columns: Sequence[str], casts: Mapping[str, str] = NO_CASTS) -> str:
        """Expanded OR form: MariaDB turns it into an index range scan; row values it won't."""
        return self._expanded(columns, ">", ">")

    def keyset_upto(self, columns: Sequence[str], casts: Mapping[str, str] = NO_CASTS
                    ) -> str:
        """`(c, k) <= (...)` in the expanded OR form, for the same reason as `keyset`."""
        return self._expanded(columns, "<", "<=")

    def _expanded(self, columns: Sequence[str], inner: str, last: str) -> str:
        """`(c = ? AND k op ?) OR ...`: each term fixes a prefix and compares the next
        column (`inner`), the last column with `last`. Parameters: `keyset_params`."""
        terms = []
        for i, col in enumerate(columns):
            eqs = [f"{self.ident(c)} = %s" for c in columns[:i]]
            op = last if i == len(columns) - 1 else inner
            terms.append("(" + " AND ".join([*eqs, f"{self.ident(col)} {op} %s"]) + ")")
        return "(" + " OR ".join(terms) + ")"

    def keyset_params(self, values: Sequence[Any]) -> list[Any]:
        out: list[Any] = []
        for i in range(len(values)):
            out.extend(values[: i + 1])
        return out

    def to_param(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def error(self, exc: BaseException, table: str | None = None) -> SteadyflowError:
        import pymysql

        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        msg = redact(str(exc.args[1]) if len(exc.args) > 1 else str(exc), self.secrets)
        src = self.config.name
        if code in (1045, 1044, 1698):
            return AuthError(f"authentication failed: {msg}", stage="extract", source=src,
                             hint="check the user and the password variable in the DSN")
        if code == 1146:
            return SchemaError(f"table not found: {msg}", stage="extract", source=src,
                               table=table)
        if code == 1054:
            return SchemaError(f"column not found: {msg}", stage="extract", source=src,
                               table=table, hint="the contract names a column the table lacks")
        if code == 1176:  # the keyset index a page is pinned to (FORCE INDEX) is gone
            return SchemaError(f"keyset index not found: {msg}", stage="extract",
                               source=src, table=table, hint="the index was dropped, renamed "
                               "or marked IGNORED since the table was probed; the next run "
                               "probes it again (pages without it are full scans)")
        if code == 1049:
            return FatalError(f"database not found: {msg}", stage="extract", source=src)
        if code in (1969, 3024, 1317, 1028):
            return SourceTimeout(f"statement timeout: {msg}", stage="extract", source=src,
                                 table=table)
        # a value out of range (1264, 1690), incorrect (1292, 1366, 1367), division by zero
        # (1365), too long (1406): pymysql raises these as OperationalError too
        if code in (1264, 1292, 1365, 1366, 1367, 1406, 1690):
            return FatalError(f"query failed on a value: {msg}", stage="extract", source=src,
                              table=table, hint="a value is out of range for the query's "
                              "arithmetic or type: not a connection problem, retrying "
                              "cannot help")
        if code in (2003, 2006, 2013, 2055, 1040, 1205, 1213) or isinstance(
            exc, pymysql.err.OperationalError | OSError):
            return SourceUnavailable(f"connection problem: {msg}", stage="extract", source=src,
                                     table=table)
        return FatalError(f"query failed: {msg}", stage="extract", source=src, table=table)


_SQLITE_DATE = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
UNDECODABLE = "Could not decode to UTF-8"  # sqlite3's message for text that is not UTF-8


@dataclass(frozen=True, slots=True)
class InvalidText:
    """Stored text that is not valid UTF-8: that row's value is null with a reason
    (model.INVALID) instead of one byte stopping the table."""

    raw: bytes

    def __str__(self) -> str:
        return self.raw.decode("utf-8", "backslashreplace")


def _least(a: Any, b: Any) -> Any:
    """The lesser of two stored values in SQLite's order (numbers, text, blobs), None
    being none."""
    if a is None or b is None:
        return b if a is None else a

    def rank(v: Any) -> tuple[int, Any]:
        return (0 if isinstance(v, int | float) else 1 if isinstance(v, str) else 2, v)

    return a if rank(a) <= rank(b) else b


def ends_of(values: frozenset[Any]) -> frozenset[Any]:
    """The least and greatest of a set of one kind of value (the profile keeps only these:
    more than one of them means more than one value)."""
    return frozenset((min(values), max(values))) if values else values


def lenient_text(raw: bytes) -> str | InvalidText:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return InvalidText(raw)


class SqliteDialect(Dialect):
    name = "sqlite"
    placeholder = "?"
    # backticks, not double quotes: SQLite reads a double-quoted name that is no column as
    # a string literal, so a renamed or dropped column selected its own name as text
    # (rows loaded with it, every run ok); a backticked one is always an identifier
    quote_char = "`"
    columns_sql = "SELECT name, type FROM pragma_table_info(?)"
    # a PRIMARY KEY other than INTEGER's admits NULL in a rowid table (SQLite's quirk)
    nullable_keys_sql = 'SELECT name, 0 FROM pragma_table_info(?) WHERE "notnull" = 0'
    # unique, non-partial indexes (an expression's column is NULL), and the INTEGER
    # PRIMARY KEY of a rowid table, which is the rowid itself and in no index list
    unique_sql = (
        "SELECT l.name, i.name, l.origin = 'pk' FROM pragma_index_list(?1) AS l, "
        "pragma_index_info(l.name) AS i WHERE l.\"unique\" AND NOT l.partial UNION ALL "
        "SELECT '', name, 1 FROM pragma_table_info(?1) WHERE pk = 1 AND upper(type) = "
        "'INTEGER' AND (SELECT count(*) FROM pragma_table_info(?1) WHERE pk > 0) = 1 "
        "ORDER BY 1")

    def connect(self) -> sqlite3.Connection:
        path = self.config.path or ""
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                   timeout=self.config.resilience.statement_timeout,
                                   check_same_thread=False)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            return conn
        except sqlite3.Error as exc:
            raise self.error(exc) from None

    def to_param(self, value: Any) -> Any:
        """Watermarks hold the stored text itself (see from_db); a datetime (a checkpoint
        written before that, or reconcile's bounds) is spelled in the configured format."""
        if isinstance(value, datetime):
            return value.astimezone(UTC).strftime(self.config.sqlite_timestamp_format)
        return value

    def shutdown(self, conn: Any) -> None:
        conn.interrupt()

    def from_db(self, value: Any) -> Any:
        """The value exactly as stored. SQLite has no time type: times are text compared
        as text, so only the stored spelling itself continues a keyset page exactly (a
        value re-spelled in one fixed format sorts before or after its own row when the
        table spells it otherwise: rows skipped, or the same page read forever)."""
        return value

    def cursor_profile_sql(self, table: str, column: str, ctype: str, where: str = ""
                           ) -> str | None:
        """Text order is time order only when every value has one shape: same separator,
        same zone, and (with a 'Z' suffix, which sorts after digits) one fraction width.
        One pass over the column (the rows matching `where`, if given: SqlSource checks
        only the rows outside the range it checked before) tells what breaks that; its
        row is read by `read_profile`."""
        col = self.ident(column)
        region = f" WHERE {where}" if where else ""
        if ctype in ("int32", "int64") or ctype.startswith("decimal"):
            return (f"SELECT count(*), min({col}) FROM {self.ident(table)} "
                    f"WHERE typeof({col}) NOT IN ('integer', 'real', 'null')"
                    + (f" AND ({where})" if where else ""))
        if ctype not in ("timestamp", "date"):
            # any other cursor (string, bool): one class of value, as SQLite sorts every
            # number before every text and every text before every blob
            return (f"SELECT sum(typeof({col}) IN ('integer', 'real')), "
                    f"sum(typeof({col}) = 'text'), sum(typeof({col}) = 'blob'), "
                    f"min(CASE WHEN typeof({col}) IN ('integer', 'real') THEN {col} END) "
                    f"FROM {self.ident(table)}{region}")
        shape = f"v GLOB '{_SQLITE_DATE}'" if ctype == "date" else (
            f"v GLOB '{_SQLITE_DATE}[ T][0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' "
            "AND (substr(v, 20, 1) != '.' OR length(substr(v, 21)) > length(zone)) "
            "AND (zone IN ('', 'Z') OR zone GLOB '[+-][0-9][0-9]:[0-9][0-9]')")
        # Each row's facts are computed once, in subqueries kept apart by LIMIT -1 (no
        # limit: it only stops SQLite flattening them into the aggregate, which then
        # evaluated the zone expression once per mention). A set of separators, zones or
        # widths differs from one value exactly when its least and greatest differ, so
        # min() and max() stand for it: json_group_array(DISTINCT ...) kept a b-tree per
        # set. 1M rows: 9-11 CPU-s before, ~4 after.
        return (
            "SELECT sum(ty IN ('integer', 'real')), "
            "min(CASE WHEN ty IN ('integer', 'real') THEN v END), "
            "sum(ty = 'blob'), sum(bad), min(CASE WHEN bad THEN v END), "
            "min(sep), max(sep), min(tz), max(tz), min(width), max(width) "
            f"FROM (SELECT v, ty, ty = 'text' AND NOT ({shape}) AS bad, "
            "CASE WHEN ty = 'text' THEN substr(v, 11, 1) END AS sep, "
            "CASE WHEN ty = 'text' THEN zone END AS tz, "
            "CASE WHEN ty = 'text' AND zone = 'Z' THEN length(v) END AS width "
            f"FROM (SELECT {col} AS v, typeof({col}) AS ty, "
            f"CASE WHEN substr({col}, 20, 1) = '.' "
            f"THEN ltrim(substr({col}, 21), '0123456789') "
            f"ELSE substr({col}, 20) END AS zone FROM {self.ident(table)}{region} "
            "LIMIT -1) LIMIT -1)")

    def read_profile(self, row: Sequence[Any], ctype: str) -> tuple[Any, ...]:
        """`cursor_profile_sql`'s row as a profile: a number cursor's (values stored as
        text or blob, the least of them); a time cursor's (numbers, the least, blobs, text
        of a wrong shape, the least of it, and the least and greatest of its separators,
        zones and lengths of 'Z' values, each pair as a set: more than one member means
        more than one value), counts 0 when none."""
        if len(row) == 2:
            return (int(row[0] or 0), row[1])
        if len(row) == 4:
            return (int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), row[3])
        numbers, number, blobs, bad, example, *ends = row
        return (int(numbers or 0), number, int(blobs or 0), int(bad or 0), example,
                *(frozenset(v for v in ends[i:i + 2] if v is not None) for i in (0, 2, 4)))

    @staticmethod
    def merge_profiles(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
        """The profile of two sets of rows from the profiles of each."""
        if len(a) == 2:
            return (a[0] + b[0], _least(a[1], b[1]))
        if len(a) == 4:
            return (a[0] + b[0], a[1] + b[1], a[2] + b[2], _least(a[3], b[3]))
        return (a[0] + b[0], _least(a[1], b[1]), a[2] + b[2], a[3] + b[3],
                _least(a[4], b[4]), *(ends_of(a[i] | b[i]) for i in (5, 6, 7)))

    def cursor_ends_sql(self, table: str, column: str) -> str:
        """The column's least and greatest value in SQLite's order (two index probes)."""
        col, tbl = self.ident(column), self.ident(table)
        return f"SELECT (SELECT min({col}) FROM {tbl}), (SELECT max({col}) FROM {tbl})"

    def cursor_region(self, column: str) -> str:
        """The rows at or outside a checked range [low, high] (two parameters): those
        written since, and the range's ends, whose shape the new rows must share."""
        col = self.ident(column)
        return f"{col} <= ? OR {col} >= ?"

    def cursor_problem(self, profile: Sequence[Any], ctype: str) -> tuple[str, str] | None:
        if len(profile) == 2:  # a number cursor (cursor_profile_sql): numbers only
            texts, example = profile
            if not texts:
                return None
            return (f"holds {texts} value(s) stored as text or blob (e.g. {example!r}): "
                    "SQLite compares text as text, so '999' sorts after '1000' and newer "
                    "rows would sort behind the checkpoint",
                    "store the numbers as numbers (declare the column INTEGER or NUMERIC and "
                    "UPDATE t SET col = CAST(col AS NUMERIC)), or declare the cursor string "
                    "with lookback 0")
        if len(profile) == 4:  # any other cursor: numbers, text and blobs, never mixed
            numbers, texts, blobs, number = profile
            if sum(1 for n in (numbers, texts, blobs) if n) < 2:
                return None
            kinds = ", ".join(f"{n} {what}" for n, what in ((numbers, "number(s)"),
                              (texts, "text(s)"), (blobs, "blob(s)")) if n)
            example = f"; e.g. the number {number!r}" if numbers else ""
            return (f"mixes stored types ({kinds}{example}): SQLite sorts every number "
                    "before every text and every text before every blob, so a row written "
                    "with a type that sorts before the checkpoint's (a number once the "
                    "checkpoint is text) would sort behind it and never be read",
                    "store every value as one type (e.g. UPDATE t SET col = CAST(col AS "
                    "TEXT) WHERE typeof(col) != 'text') and declare the column TEXT")
        numbers, number, blobs, bad, example, seps, zones, z_widths = profile
        if numbers and not (bad or blobs or seps):
            return (f"holds numbers (e.g. {number!r}), not {ctype} text: Unix times would "
                    "be read as something else",
                    "declare the cursor as int64 (or float64) in the contract, or store "
                    "times as text 'YYYY-MM-DD HH:MM:SS'")
        if numbers or blobs:
            return ("mixes numbers or blobs with text: SQLite sorts every number before "
                    "every text, so pages would not follow time order",
                    "store every value as text in one spelling (UPDATE ... SET col = "
                    "strftime(...)), or declare the cursor's real type")
        if bad:
            spell = "YYYY-MM-DD" if ctype == "date" else "YYYY-MM-DD HH:MM:SS[.f][Z|+HH:MM]"
            epoch = str(example).replace(".", "", 1).isdigit()
            return (f"holds {bad} value(s) that are not a {ctype} ({spell}), e.g. "
                    f"{example!r}: such a cursor cannot be compared in time order",
                    "declare the cursor as int64 if it holds Unix times" if epoch else
                    "fix or remove those values, or declare the cursor as string")
        if len(seps) > 1:
            return ("mixes ' ' and 'T' between date and time: text order is not time order "
                    "across the two spellings",
                    "store one spelling (e.g. UPDATE t SET col = replace(col, 'T', ' '))")
        if len(zones) > 1:
            zone_list = ",".join(sorted("'" + z.replace("'", "''") + "'" for z in zones))
            return (f"mixes zone suffixes ({zone_list}; '' = none): text order is not "
                    "time order across them",
                    "store every value in UTC with one suffix (or none)")
        if len(z_widths) > 1:
            return ("ends in 'Z' with fractions of different widths ('Z' sorts after "
                    "digits, so '...:00Z' sorts after '...:00.5Z')",
                    "store one fraction width (e.g. strftime('%Y-%m-%dT%H:%M:%fZ'))")
        return None

    def not_a_number(self, column: str) -> str:
        """SQLite keeps NaN as NULL; +Infinity is the REAL 9e999."""
        return "= 9e999"

    def is_text(self, declared: str) -> bool:
        """TEXT affinity: a declared type naming CHAR, CLOB or TEXT, and not INT (which
        takes precedence), keeps every value given as text ('01' stays '01')."""
        upper = declared.upper()
        return "INT" not in upper and any(t in upper for t in ("CHAR", "CLOB", "TEXT"))

    def key_classes_sql(self, table: str, column: str) -> str | None:
        """A column without integer or text affinity keeps 1 and '1' (and X'31') as two
        keys; as one contract type they are one warehouse key, and one row would silently
        replace the other. Integer and real compare equal here, so they are one class."""
        col = self.ident(column)
        return (f"SELECT DISTINCT CASE typeof({col}) WHEN 'real' THEN 'integer' "
                f"ELSE typeof({col}) END FROM {self.ident(table)} WHERE {col} IS NOT NULL")

    def key_texts_sql(self, table: str, column: str, among: int = 0) -> str | None:
        col = self.ident(column)
        some = f" AND {col} IN ({', '.join('?' * among)})" if among else ""
        return f"SELECT {col} FROM {self.ident(table)} WHERE typeof({col}) = 'text'{some}"

    def check_key_spellings(self, db: SqlSource, table: str, contract: Contract) -> None:
        from steadyflow.extract import key_check  # loads pyarrow: SQLite's sources only

        key_check.check_keys(db, table, contract)

    def refuse_key_spellings(self, db: SqlSource, table: str, contract: Contract,
                             column: Callable[[int], Any]) -> None:
        from steadyflow.extract import key_check

        key_check.refuse_key_spellings(db, table, contract, column)

    def undecodable(self, exc: SteadyflowError) -> bool:
        return UNDECODABLE in exc.message

    @contextmanager
    def read_leniently(self, conn: Any) -> Iterator[None]:
        conn.text_factory = lenient_text
        try:
            yield
        finally:
            conn.text_factory = str

    def error(self, exc: BaseException, table: str | None = None) -> SteadyflowError:
        msg = str(exc)
        src = self.config.name
        if "no such table" in msg:
            return SchemaError(f"table not found: {msg}", stage="extract", source=src,
                               table=table)
        if "no such column" in msg:
            return SchemaError(f"column not found: {msg}", stage="extract", source=src,
                               table=table, hint="the contract names a column the table lacks")
        if "unable to open" in msg:
            return FatalError(f"cannot open SQLite database {self.config.path}: {msg}",
                              stage="extract", source=src)
        if "locked" in msg or "busy" in msg:
            return SourceUnavailable(f"database busy: {msg}", stage="extract", source=src,
                                     table=table)
        return FatalError(f"query failed: {msg}", stage="extract", source=src, table=table)


def dialect_for(config: SourceConfig) -> Dialect:
    kinds: dict[str, type[Dialect]] = {
        "postgres": PostgresDialect, "mysql": MysqlDialect, "sqlite": SqliteDialect}
    return kinds[config.kind](config)


def driver_errors() -> tuple[type[BaseException], ...]:
    """The drivers' error roots; psycopg's once it is imported (none of its errors can be
    raised before, and importing it here would cost every source its RSS)."""
    pg = sys.modules.get("psycopg")
    my = sys.modules.get("pymysql")
    known: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
    if my is not None:
        known = (my.err.MySQLError, *known)
    return known if pg is None else (pg.Error, *known)
