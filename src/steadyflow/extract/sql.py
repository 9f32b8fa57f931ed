"""Incremental extraction from SQL databases: keyset pages in (cursor, key) order as Arrow.

Never OFFSET: each page starts strictly after the last (cursor, key) pair, so a page costs
one index range scan whatever the table size, and rows sharing a cursor value are neither
skipped nor re-read forever. The lookback re-read starts at `cursor >= since` instead.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from steadyflow.config import SourceConfig
from steadyflow.errors import SchemaError, SourceTimeout, SteadyflowError
from steadyflow.extract import innodb_trx
from steadyflow.extract.dialects import (
    Dialect,
    InvalidText,
    OpenSince,
    OutOfRange,
    dialect_for,
    driver_errors,
    members,
)
from steadyflow.extract.numbering import check_numbering, issued_number
from steadyflow.model import (
    ColumnType,
    Contract,
    Watermark,
    drift_type,
    greatest_of,
    past_every_number,
    past_the_type,
)
from steadyflow.observe import logs
from steadyflow.resilience import Watchdog, watchdog_grace

if TYPE_CHECKING:
    import pyarrow as pa

    from steadyflow.extract import key_spellings as spellings

log = logs.get("extract")

# How long a table's probe (columns, keyset index, cursor and key checks) stands on one
# connection: a poll between probes reads no catalog. A column dropped meanwhile still
# fails the page query itself at once; a column added (schema drift) or a NULL cursor
# is found by the next probe, at most this late, or at once on a new connection.
PROBE_EVERY = 60.0
# ... and while rows flow (a poll that has pages to read): a column added with the rows
# that fill it is found at most this late (run/extract.py asks before reading pages)
BUSY_PROBE_EVERY = 5.0
# A cursor whose stored spelling SQLite compares (SqliteDialect.cursor_profile_sql) is
# checked whole at a source object's first probe of the table and again this often; the
# probes between check only the rows sorting at or outside the range [least, greatest]
# noted before the last check (rows written since: new "now"s sort past it, numbers and
# epoch texts before it), together with the shape the checked rows had. A row re-stamped
# into the middle of that range is found at the next whole check.
CURSOR_RECHECK_EVERY = 3600.0
# seconds between two looks at the zones a source's writers stamp naive times in
ZONE_RECHECK_EVERY = 3600.0
# seconds between two looks for rows sharing the contract's primary key, where no unique
# index of the source proves it (a view, a table without one): a GROUP BY over the table
KEY_RECHECK_EVERY = 3600.0


_BYTES = (bytes, bytearray, memoryview)
# (source, its dsn or path, table, keyset order) whose missing index this process reported:
# a table is probed again every PROBE_EVERY (BUSY_PROBE_EVERY while rows flow) and on each
# new connection, and the warning came with every probe, for as long as a worker ran
_NO_INDEX_REPORTED: set[tuple[str, str, str, tuple[str, ...]]] = set()
# a declared type (catalog text) that is a time of day or a duration: MariaDB TIME(n),
# PostgreSQL time [with time zone], timetz, interval (never timestamp)
_CLOCK = re.compile(r"\s*(time\b(?!stamp)|timetz\b|interval\b)", re.IGNORECASE)
_BIT = re.compile(r"\s*bit\s*\(\s*(\d+)\s*\)", re.IGNORECASE)  # MariaDB BIT(n)
# single-precision floats as the catalogs spell them: MariaDB float, float(m,d), float
# unsigned (FLOAT(p) is declared float up to p = 24, double past it); PostgreSQL real
_SINGLE = re.compile(r"\s*(float|real)\b", re.IGNORECASE)
# MariaDB FLOAT without (M,D): printed to six significant digits
_BARE_FLOAT = re.compile(r"\s*float(\s+(unsigned|zerofill))*\s*$", re.IGNORECASE)
# MariaDB bytes types: read as string, a value is text only when its bytes are UTF-8
_BINARY = re.compile(r"\s*(binary|varbinary|(tiny|medium|long)?blob)\b", re.IGNORECASE)


def bit_fits(width: int, kind: ColumnType) -> bool:
    """Does `kind` hold every number a BIT(width) column holds (0 to 2^width - 1)?"""
    if kind.name == "bool":
        return width == 1
    if kind.bits:
        return width < kind.bits
    if kind.name == "float64":
        return width <= 53
    if kind.name == "decimal":
        return len(str(2 ** width - 1)) <= kind.precision - kind.scale
    return kind.name == "string"


def _as_text(value: Any) -> str | None:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None


def catalog_text(value: Any) -> str:
    """A name or type read from a source's catalog. psycopg hands a SQL_ASCII database's
    text over as bytes, and str() spelled them "b'id'": no index or key matched its column,
    so a table whose primary key is the contract's was refused as not identifying a row."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def unnamed(source: list[str], contract: tuple[str, ...] | list[str]) -> list[str]:
    """The source columns no contract column reads (schema drift).

    A contract column reads the source column spelled as it is, else the one spelled
    alike but for case (MariaDB's and SQLite's names are case-insensitive). Folding every
    name hid a PostgreSQL column "Amount" beside a contract's `amount`: its values were
    never extracted, and `schema_drift: stop` never stopped."""
    exact = set(source)
    read = {n.lower() for n in contract if n not in exact}
    return [n for n in source if n not in contract and n.lower() not in read]


class SqlSource:
    """One connection to one store database; pages through its tables."""

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.dialect: Dialect = dialect_for(config)
        self._conn: Any = None
        # (table, keyset order) → the index that delivers that order, once looked up
        self._index: dict[tuple[str, tuple[str, ...]], str] = {}
        # table → declared column types, read once per source object: `run --follow` keeps
        # it between cycles (dropped after any error), so a poll does not re-read the
        # catalog; a dropped or renamed column still fails the probe's own SELECT
        self._declared: dict[str, dict[str, str]] = {}
        # table → its columns' casts for predicates (`compare_casts`), kept as _declared is
        self._casts: dict[str, dict[str, str]] = {}
        # table → (monotonic time, contract columns, drifted columns, the source's columns
        # lowercased) of its last probe on this connection (see PROBE_EVERY)
        self._probed: dict[str, tuple[float, tuple[str, ...], list[str], frozenset[str]]] = {}
        self._hidden_reported = False
        self._west: tuple[float, float] | None = None  # (when asked, seconds west)
        # (when asked, seconds a fall-back repeats near now: zone_repeat)
        self._repeat: tuple[float, float] | None = None
        # (table, primary key) → monotonic time of its last look for shared keys; inf when
        # a unique index proves the key (`check_unique_key`)
        self._unique: dict[tuple[str, tuple[str, ...]], float] = {}
        # table -> the highest number its cursor's numbering had handed out at the last
        # probe (numbering.issued_number), None where the source does not number it
        self._issued: dict[str, int | None] = {}
        # (table, key column) -> when a look found no NULL in it (check_null_keys)
        self._no_nulls: dict[tuple[str, str], float] = {}
        # during a probe: table -> the columns the catalog lets hold NULL (`_nullable`)
        self._nullable_memo: dict[str, dict[str, bool]] | None = None
        # (table, key or cursor column) → monotonic time of the last look for a value of
        # a MariaDB bytes column that is no text (`check_binary_keys`)
        self._binary_checked: dict[tuple[str, str], float] = {}
        # (table, cursor column, type) → (monotonic time of the last whole check, the
        # column's least and greatest value noted before the last check, the profile of
        # every row checked) while the checks found nothing wrong (`_cursor_profile`)
        self._cursor_checked: dict[tuple[str, str, str], tuple[float, Any, Any,
                                                               tuple[Any, ...]]] = {}
        # (table, key column, contract type) → (monotonic time of the last whole read,
        # the spellings of its values then and of every page read since), while they let
        # no value be spelled twice (extract/key_check.py)
        self._key_spelled: dict[tuple[str, str, str],
                                tuple[float, spellings.Spellings]] = {}

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self.dialect.connect()
        return self._conn

    def close(self) -> None:
        self._probed.clear()  # a new session is probed again
        if self._conn is not None:
            try:
                self._conn.close()
            except driver_errors():
                pass
            self._conn = None

    def _execute(self, table: str, query: str, params: Sequence[Any],
                 columns: list[str] | None = None) -> list[Any]:
        """Run one query, bounded by the client-side watchdog (`_watched`)."""
        with self._watched(table) as cur:
            cur.execute(query, list(params))
            if columns is not None:
                columns.extend(str(d[0]) for d in cur.description or [])
            return list(cur.fetchall())

    @contextmanager
    def _watched(self, table: str, drop: bool = False) -> Iterator[Any]:
        """A cursor for one query (or one script) that a client-side watchdog bounds at
        statement_timeout + grace; a driver error inside leaves as steadyflow's own
        (`_query_failed`), and with `drop` the connection is dropped whatever the error.

        The server's statement timeout normally ends a slow query first. The watchdog is for
        when its answer never arrives (a black-holed link: TCP keepalives and
        tcp_user_timeout never fire while a middlebox still ACKs): it shuts the socket down,
        the blocked driver call fails, and the page is retried (smaller) on a new connection.
        """
        policy = self.config.resilience
        limit = policy.statement_timeout + watchdog_grace(policy)
        conn = self.conn
        dog = Watchdog(limit, lambda: self.dialect.shutdown(conn))
        try:
            with dog:
                cur = conn.cursor()
                try:
                    yield cur
                finally:
                    cur.close()
        except driver_errors() as exc:
            failed = self._query_failed(exc, table, dog.fired, limit, self.dialect.error)
            if drop:
                self.close()
            raise failed from None

    def _query_failed(self, exc: BaseException, table: str, fired: bool, limit: float,
                      translate: Callable[[BaseException, str], SteadyflowError]
                      ) -> SteadyflowError:
        """The error a failed query raises; drops the connection when it may be dead.
        `translate` is the driver's own error mapping (psycopg/pymysql/sqlite, or ADBC)."""
        if fired:
            self.close()
            return SourceTimeout(
                f"no answer within statement_timeout + grace ({limit:.0f}s); "
                "connection shut down by the client watchdog", stage="extract",
                source=self.config.name, table=table)
        translated = translate(exc, table)
        if translated.retryable:
            self.close()  # the connection may be dead; reconnect on the next try
        return translated

    def _select(self, table: str, contract: Contract) -> str:
        """The one select list of every page (see Dialect.select_expr); each column keeps
        its name, so ORDER BY must name the table's own columns (`_order_by`)."""
        d = self.dialect
        declared = self.select_types(table)
        cols = []
        for c in contract.columns:
            expr = d.select_expr(c.name, c.parsed_type, declared.get(c.name.lower(), ""))
            ident = d.ident(c.name)
            cols.append(expr if expr == ident else f"{expr} AS {ident}")
        return f"SELECT {', '.join(cols)} FROM {d.ident(table)}"

    def select_types(self, table: str) -> dict[str, str]:
        """The declared types `Dialect.select_expr` reads, by lowercased column name ({}
        for a dialect whose select list does not depend on them: no catalog query)."""
        if not self.dialect.select_reads_declared:
            return {}
        return self.declared_lower(table)

    def _order_by(self, table: str, columns: Sequence[str], desc: bool = False) -> str:
        """ORDER BY the table's columns, qualified: an unqualified name means the output
        column of that name first (PostgreSQL), which may be its text (`select_expr`),
        and text order is not the order the keyset predicate compares in."""
        d = self.dialect
        way = " DESC" if desc else ""
        return " ORDER BY " + ", ".join(f"{d.ident(table)}.{d.ident(c)}{way}" for c in columns)

    def probe(self, table: str, contract: Contract, max_age: float = PROBE_EVERY
              ) -> list[str]:
        """Fail fast, naming the table or column, before any page is read.

        Returns the source's columns that the contract does not name (schema drift).
        Once per connection and `max_age`: a poll that finds nothing then costs its
        position probe alone (`poll_end`).
        """
        hit = self._probed.get(table)
        if (hit is not None and hit[1] == contract.names
                and time.monotonic() - hit[0] < max_age):
            return list(hit[2])
        names: list[str] = []
        extra = self._probe(table, contract, names)
        self._probed[table] = (time.monotonic(), contract.names, list(extra),
                               frozenset(n.lower() for n in names))
        return extra

    def _probe(self, table: str, contract: Contract, names: list[str]) -> list[str]:
        """The probe's queries; `names` receives the source's columns."""
        self._execute(table, f"{self._select(table, contract)} WHERE 1 = 0", [])
        self._execute(table, f"SELECT * FROM {self.dialect.ident(table)} WHERE 1 = 0", [],
                      columns=names)
        cached = self._declared.get(table)
        if cached is not None and {n.lower() for n in names} != {n.lower() for n in cached}:
            del self._declared[table]  # columns came or went: read their types again
            self._casts.pop(table, None)
        self.find_keyset_index(table, contract)
        self.check_times(table, contract)
        self.check_members(table, contract)
        self.check_bits(table, contract)
        self.check_single_floats(table, contract)
        self.check_float_decimals(table, contract)
        self.check_binary_keys(table, contract)
        self._nullable_memo = {}
        try:
            self.check_cursor(table, contract)
            self.check_text_keys(table, contract)  # the catalog's answer first: no scan
            self.dialect.check_key_spellings(self, table, contract)  # SQLite's alone
            self.check_null_keys(table, contract)
        finally:
            self._nullable_memo = None
        self.check_unique_key(table, contract)
        check_numbering(self, table, contract)
        self._issued[table] = issued_number(self, table, contract)
        return unnamed(names, contract.names)

    def issued(self, table: str, contract: Contract, below: int) -> int | None:
        """The highest number the table's cursor numbering has handed out (None: not
        numbered by the source): the last probe's, read again when that is below `below`
        (numbers taken since the probe may have passed it)."""
        issued = self._issued.get(table)
        if issued is not None and issued < below:
            issued = self._issued[table] = issued_number(self, table, contract)
        return issued

    def check_times(self, table: str, contract: Contract) -> None:
        """Refuse, naming table and column, a cursor or key the contract reads as anything
        but string (a timestamp, a date, a number) that the source declares as a time of
        day or a duration (TIME, INTERVAL): no row could be loaded (each is no instant and
        no number), and the first page failed with 'Object of type timedelta is not JSON
        serializable', naming nothing. Read as string, it is the database's own text,
        which pages in its order. Not SQLite, whose declared type names only an affinity
        (its cursor check reads the stored text instead)."""
        if self.dialect.name == "sqlite":
            return
        declared = self.declared_lower(table)
        for name in dict.fromkeys((contract.cursor, *contract.primary_key)):
            ctype = contract.column(name).type
            stored = declared.get(name.lower(), "")
            if ctype != "string" and _CLOCK.match(stored):
                what = "not a point in time" if ctype in ("timestamp", "date") else \
                    f"which no {ctype} holds"
                raise SchemaError(
                    f"column {name} ({ctype}) is declared {stored} in the source: a time of "
                    f"day or a duration, {what}, so no row of it could load and keyset "
                    "pages could not continue after one", stage="extract",
                    source=self.config.name, table=table,
                    hint=f"declare {name} as string in the contract (the database's own "
                         "text of it, which pages in its order)")

    def check_members(self, table: str, contract: Contract) -> None:
        """Refuse, naming table and column, a cursor or key declared as a MariaDB ENUM or
        SET with '' among its members. Outside strict mode MariaDB stores invalid input
        in an ENUM as the error value (number 0), also spelled ''; a SET's '' member is
        spelled by nothing, so the empty set (0) and {''} (1) both read '', {a} and
        {'',a} both 'a'. One text then names values that sort apart: pages compare a
        value by its number (`MysqlDialect.keyset_value`), and a page ending on one
        continued from the other's number: the rows between were never read (lost,
        every run ok) or the same row was read for ever, and two keys differing only
        there would be one warehouse key."""
        declared = self.declared_lower(table)
        for name in dict.fromkeys((contract.cursor, *contract.primary_key)):
            stored = declared.get(name.lower(), "")
            found = members(stored)
            if found is None or "" not in found[1]:
                continue
            place = found[1].index("")
            if found[0] == "enum":
                why = ("it spells '' both as a member and as the error value MariaDB stores "
                       "for invalid input (outside strict mode)")
                fix = (f"add a member (e.g. 'none') to the ENUM, UPDATE {table} SET {name} = "
                       f"'none' WHERE {name} + 0 = {place + 1}, then drop '' from it")
            else:
                why = ("its '' member is read as nothing: a value with it and the same "
                       "value without it ('' and the empty set) read alike")
                fix = (f"add a member (e.g. 'none') to the SET, UPDATE {table} SET {name} = "
                       f"({name} & ~{1 << place}) | <the new member's bit> WHERE {name} & "
                       f"{1 << place}, then drop '' from it")
            raise SchemaError(
                f"column {name} is declared {stored} in the source: {why}, two values "
                "that sort apart, so keyset pages cannot tell where a page ending on one "
                "stopped", stage="extract", source=self.config.name, table=table,
                hint=f"give the '' member of {name} a spelling of its own: {fix}; or page "
                     "this table by other columns")

    def check_bits(self, table: str, contract: Contract) -> None:
        """Refuse, naming table and column, a MariaDB BIT(n) column whose contract type
        cannot hold every value of it (up to 2^n - 1): BIT(64) as int64, BIT(2) as bool,
        BIT(54) as float64 (not exact), any BIT as a date or timestamp. Each row holding
        a value past the type was quarantined, every run ok, though the source held a
        plain number (BIT is read as its number, `MysqlDialect.select_expr`)."""
        if self.dialect.name != "mysql":
            return
        declared = self.declared_lower(table)
        for c in contract.columns:
            stored = declared.get(c.name.lower(), "")
            match = _BIT.match(stored)
            if match is None:
                continue
            width = int(match.group(1))
            if bit_fits(width, c.parsed_type):
                continue
            fix = "int64" if width <= 63 else "decimal(20,0)"
            raise SchemaError(
                f"column {c.name} ({c.type}) is declared {stored} in the source: its values "
                f"reach {2 ** width - 1}, which {c.type} cannot hold, so each row holding "
                "such a value would be quarantined", stage="extract",
                source=self.config.name, table=table,
                hint=f"declare {c.name} as {fix} in the contract (or string: the number's "
                     "decimal text)")

    def check_single_floats(self, table: str, contract: Contract) -> None:
        """Refuse, naming table and column, a cursor or key that MariaDB (FLOAT) or
        PostgreSQL (real) stores as a single-precision float, whatever the contract reads
        it as (decimal, as the float64 refusal suggests, or string). Both print such a
        value as its shortest text ('0.7'), which is not the float stored
        (0.699999988...): a page ending on it continued with `c > 0.7`, compared in
        double precision, so the rows after it sharing that value were never read (4 of
        7 lost, run ok), or, for a value stored above its text (0.3), the same row was
        read for ever. SQLite's REAL is double precision, which prints exactly."""
        if self.dialect.name == "sqlite":
            return
        declared = self.declared_lower(table)
        for name in dict.fromkeys((contract.cursor, *contract.primary_key)):
            stored = declared.get(name.lower(), "")
            if not _SINGLE.match(stored):
                continue
            what = "cursor" if name == contract.cursor else "key"
            alter = (f"ALTER TABLE {table} MODIFY {name} DOUBLE" if self.dialect.name ==
                     "mysql" else f"ALTER TABLE {table} ALTER COLUMN {name} TYPE "
                     "double precision")
            raise SchemaError(
                f"{what} column {name} ({contract.column(name).type}) is declared {stored} "
                "in the source, a single-precision float: it is read as its shortest text "
                "(0.7), not the float it holds (0.699999988...), so a page ending on one "
                "cannot be continued exactly (rows sharing the value are skipped, or one "
                "is read for ever)", stage="extract", source=self.config.name, table=table,
                hint=f"store it in double precision ({alter}; each value keeps its "
                     "float), or order the table by another column")

    def check_float_decimals(self, table: str, contract: Contract) -> None:
        """Refuse, naming table and column, a MariaDB FLOAT without (M,D) that the
        contract reads as a decimal. The server prints such a value to six significant
        digits, which is neither the float it holds nor the number written into it:
        1234.567 loaded as 1234.57 and 123456.78 as 123457, every run ok, where a decimal
        contract promises a value is loaded exactly or quarantined. Read as float64 the
        column is its exact float (`dialects.single_float_number`). FLOAT(M,D) is printed
        to its D decimals, the number MariaDB rounds every write to: left alone."""
        if self.dialect.name != "mysql":
            return
        declared = {k.lower(): v for k, v in self.declared_types(table).items()}
        for column in contract.columns:
            stored = declared.get(column.name.lower(), "")
            if column.parsed_type.name != "decimal" or not _BARE_FLOAT.match(stored):
                continue
            raise SchemaError(
                f"column {column.name} ({column.type}) is declared {stored} in the source: "
                "MariaDB prints a FLOAT to six significant digits (1234.567 as 1234.57), "
                "so no decimal read of it is exact", stage="extract",
                source=self.config.name, table=table,
                hint=f"declare {column.name} float64 in the contract (the float it holds, "
                     f"exactly), or store it exactly (ALTER TABLE {table} MODIFY "
                     f"{column.name} DECIMAL(p,s), or DOUBLE)")

    def binary_keys(self, table: str, contract: Contract) -> list[tuple[int, str, str]]:
        """(place in the contract, name, declared type) of each cursor or key column the
        contract reads as string that MariaDB declares BINARY, VARBINARY or *BLOB."""
        if self.dialect.name != "mysql":
            return []
        declared = self.declared_lower(table)
        order = dict.fromkeys((contract.cursor, *contract.primary_key))
        return [(i, c.name, declared.get(c.name.lower(), ""))
                for i, c in enumerate(contract.columns) if c.name in order
                and c.type == "string" and _BINARY.match(declared.get(c.name.lower(), ""))]

    def check_binary_keys(self, table: str, contract: Contract) -> None:
        """Refuse, naming table and column, a cursor or key of MariaDB bytes (BINARY(16)
        holding a UUID, BINARY(n) text padded with NUL bytes) that holds a value no
        warehouse string can: each such row was quarantined as invalid UTF-8, one by one,
        every run ok, and never loaded. Bytes that are UTF-8 text load as that text. The
        look reads the whole column, at most every KEY_RECHECK_EVERY; a value written
        since fails the page that reads it (`refuse_binary_keys`)."""
        d = self.dialect
        for _, name, stored in self.binary_keys(table, contract):
            checked = self._binary_checked.get((table, name))
            if checked is not None and time.monotonic() - checked < KEY_RECHECK_EVERY:
                continue
            col = d.ident(name)
            found = self._execute(
                table, f"SELECT {col} FROM {d.ident(table)} WHERE {col} <> "
                f"CAST(CONVERT({col} USING utf8mb4) AS BINARY) OR LOCATE(X'00', {col}) > 0 "
                "LIMIT 1", [])
            if found:
                self._refuse_binary_key(table, contract, name, stored, found[0][0])
            self._binary_checked[(table, name)] = time.monotonic()

    def refuse_binary_keys(self, table: str, contract: Contract,
                           column: Callable[[int], Sequence[Any]]) -> None:
        """A page's cursor and key values of MariaDB bytes (`column(i)`: the driver's values
        of the contract's i-th column) must each be text (`check_binary_keys`)."""
        for i, name, stored in self.binary_keys(table, contract):
            for value in column(i):
                if isinstance(value, _BYTES) and (b"\0" in bytes(value)
                                                  or _as_text(value) is None):
                    self._refuse_binary_key(table, contract, name, stored, value)

    def _refuse_binary_key(self, table: str, contract: Contract, name: str, stored: str,
                           value: Any) -> None:
        raw = bytes(value)
        what = "key" if name in contract.primary_key else "cursor"
        why = ("holds a NUL byte (BINARY(n) pads a shorter value with them)"
               if b"\0" in raw else "is no UTF-8 text")
        shown = raw[:32].hex().upper() + ("..." if len(raw) > 32 else "")
        raise SchemaError(
            f"{what} column {name} (string) is declared {stored} in the source and holds "
            f"X'{shown}', which {why}: no warehouse string holds it, so its row could never "
            "load (the contract has no bytes type)", stage="extract",
            source=self.config.name, table=table,
            hint=f"store such keys as text (ALTER TABLE {table} MODIFY {name} VARCHAR(...) "
                 "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin, where they are text), or key "
                 f"the table by their hex: a column {name}_hex VARCHAR(...) AS (HEX({name})) "
                 f"STORED with a UNIQUE index as the contract's {what} in place of {name}, "
                 f"and {name} left out of the contract")

    def check_cursor(self, table: str, contract: Contract) -> None:
        """Refuse, naming table and column, a cursor that keyset pages cannot follow: one
        stored in spellings whose order is not time order, numbers in a time cursor, or
        NULLs (`(c, k) > (...)` never selects a NULL cursor: those rows would be lost)."""
        d, cursor = self.dialect, contract.cursor
        ctype = contract.column(cursor).type
        problem: tuple[str, str] | None = None
        if d.cursor_profile_sql(table, cursor, ctype) is not None:
            problem = d.cursor_problem(self._cursor_profile(table, cursor, ctype), ctype)
        elif ctype in ("timestamp", "date"):
            declared = self.declared_lower(table)
            stored = declared.get(cursor.lower())
            if drift_type(stored) in ("int64", "float64"):
                problem = (f"is declared {stored} in the source, not a {ctype}: numbers "
                           "would be read as something else",
                           "declare the cursor as int64 (or float64) in the contract")
            elif stored is not None and d.is_text(stored):
                problem = (f"is declared {stored} in the source: pages compare its text, "
                           "and text order is time order only while every value is "
                           "spelled alike (a row stamped '09:30:00+00:00' after one "
                           "stamped '10:00:00+01:00' sorts before it and is never read)",
                           f"store it as a time (ALTER TABLE {table} ALTER COLUMN {cursor} "
                           f"TYPE timestamptz USING {cursor}::timestamptz), or declare the "
                           "cursor string in the contract if one spelling is guaranteed")
        if problem is None and self._may_hold_null(table, cursor) and self._execute(
                table, self.null_look(table, cursor), []):
            problem = ("holds NULLs (or, on MariaDB, zero dates, which it treats as NULL): "
                       "keyset pages (cursor, key) > (...) never select a row whose cursor "
                       "is NULL, so those rows would never be extracted",
                       f"give those rows a cursor value (UPDATE {table} SET {cursor} = ... "
                       f"WHERE {cursor} IS NULL) and make the column NOT NULL")
        if problem is not None:
            raise SchemaError(f"cursor column {cursor} ({ctype}) {problem[0]}",
                              stage="extract", source=self.config.name, table=table,
                              hint=problem[1])

    def _may_hold_null(self, table: str, column: str) -> bool:
        """False where the catalog proves the column holds no NULL (PostgreSQL's NOT NULL,
        which no row can break), so the probe does not look for one: on a table without
        statistics (never analyzed) `WHERE c IS NULL LIMIT 1` can be planned as a scan
        of every row, in every probe. MariaDB's NOT NULL DATETIME still holds zero dates,
        which IS NULL matches (no `nullable_sql` there: always looked for)."""
        return self.dialect.nullable_sql is None or column.lower() in self._nullable(table)

    def _nullable(self, table: str) -> dict[str, bool]:
        """The table's columns the catalog lets hold NULL (lower case, `nullable_sql`), each
        with whether it is declared NOT NULL nevertheless (not enforced: `null_look`),
        read once per probe: its cursor check and its key check both ask."""
        memo = self._nullable_memo
        if memo is not None and table in memo:
            return memo[table]
        d = self.dialect
        sql = d.nullable_sql or d.nullable_keys_sql
        assert sql is not None
        found = {catalog_text(r[0]).lower(): bool(r[1])
                 for r in self._execute(table, sql, [d.index_param(table)])}
        if memo is not None:
            memo[table] = found
        return found

    def null_look(self, table: str, column: str) -> str:
        """`SELECT 1 ... LIMIT 1` finding a row whose `column` is NULL, if any
        (`Dialect.null_predicate`: a NOT NULL the server does not enforce is not asked
        with `IS NULL`, which the planner would refute unread)."""
        d = self.dialect
        declared = d.nullable_sql is not None and self._nullable(table).get(column.lower(),
                                                                           False)
        return (f"SELECT 1 FROM {d.ident(table)} WHERE "
                f"{d.null_predicate(column, declared)} LIMIT 1")

    def _cursor_profile(self, table: str, column: str, ctype: str) -> tuple[Any, ...]:
        """The profile of every row of the cursor column (see CURSOR_RECHECK_EVERY): read
        whole, or only for the rows outside the range checked last, merged with what that
        check saw. The range's ends are noted before the rows are read, so a row written
        during the read is outside them next time."""
        d, key = self.dialect, (table, column, ctype)
        low, high = self._execute(table, d.cursor_ends_sql(table, column), [])[0]
        known, now = self._cursor_checked.get(key), time.monotonic()
        if known is None or known[1] is None or now - known[0] >= CURSOR_RECHECK_EVERY:
            profile, checked = self._read_cursor_profile(table, column, ctype, "", []), now
        else:
            region = self._read_cursor_profile(table, column, ctype,
                                               d.cursor_region(column), known[1:3])
            profile, checked = d.merge_profiles(known[3], region), known[0]
        if d.cursor_problem(profile, ctype) is None:
            self._cursor_checked[key] = (checked, low, high, profile)
        else:
            self._cursor_checked.pop(key, None)
        return profile

    def _read_cursor_profile(self, table: str, column: str, ctype: str, where: str,
                             params: Sequence[Any]) -> tuple[Any, ...]:
        """`cursor_profile_sql`'s profile of the rows matching `where` (all if empty)."""
        d = self.dialect
        sql = d.cursor_profile_sql(table, column, ctype, where)
        assert sql is not None
        return d.read_profile(self._execute(table, sql, params)[0], ctype)

    def _text_spellings(self, table: str, key: str, ctype: str) -> spellings.Spellings:
        """The spellings of the key column's text values, read in batches by sqlite3."""
        sql = self.dialect.key_texts_sql(table, key)
        assert sql is not None
        from steadyflow.extract import key_spellings as spellings

        out = spellings.Spellings(frozenset({"text"}))
        for batch in self._batches(table, sql):
            out = out.merge(spellings.of_values([r[0] for r in batch], ctype))
        return out

    def _batches(self, table: str, sql: str, size: int = 65_536) -> Iterator[list[Any]]:
        """The rows of a parameterless query, `size` at a time (a whole column need not
        be held at once); read leniently (see `_execute_leniently`) when some text is not
        UTF-8. Bounded by the watchdog as one query."""
        try:
            yield from self._batches_once(table, sql, size)
        except SteadyflowError as exc:
            if not self.dialect.undecodable(exc):
                raise
            with self.dialect.read_leniently(self.conn):
                yield from self._batches_once(table, sql, size)

    def _batches_once(self, table: str, sql: str, size: int) -> Iterator[list[Any]]:
        with self._watched(table) as cur:
            cur.execute(sql)
            while batch := cur.fetchmany(size):
                yield batch

    def check_text_keys(self, table: str, contract: Contract) -> None:
        """Refuse, naming table and column, a key column the source declares as text that
        the contract reads as another type (int64, decimal, timestamp, ...): the source
        keeps '1' and '01' ('1.0' and '1.00', '2024-01-01T00:00' and '2024-01-01 00:00')
        apart as two keys, the contract's type makes them one warehouse key, so one row
        replaced the other (3 of 5 rows lost, every run ok). SQLite's time and decimal
        keys are not refused: SQLite has no time type nor an exact decimal one, text is
        how it stores them; two spellings of one such value are looked for instead
        (extract/key_check.py)."""
        d = self.dialect
        declared = self.declared_lower(table)
        for key in contract.primary_key:
            ctype, stored = contract.column(key).type, declared.get(key.lower(), "")
            if ctype == "string" or not d.is_text(stored) or (d.name == "sqlite" and (
                    ctype in ("timestamp", "date") or ctype.startswith("decimal"))):
                continue
            raise SchemaError(
                f"key column {key} ({ctype}) is declared {stored} in the source: the "
                f"source tells keys apart by their text, the contract's {ctype} by value, "
                "so two spellings of one value ('1' and '01', '1.0' and '1.00') would be "
                "one warehouse key and one row would replace the other", stage="extract",
                source=self.config.name, table=table,
                hint=f"declare {key} as string in the contract (the warehouse keys it by "
                     f"its text, as the source does), or store it as a {ctype} in the "
                     "source (ALTER its type, after resolving the spellings that become "
                     "equal)")

    def check_null_keys(self, table: str, contract: Contract) -> None:
        """Refuse, naming table and column, a key column holding NULLs. Where the database
        sorts NULL last (PostgreSQL): after a page ending on (c, 1, 2) the next compares
        (c, k, n) > (c, 1, 2), which is NULL for the row (c, 1, NULL), so it was never
        read, nor quarantined, every run ok. Where it sorts NULL first (MariaDB, SQLite;
        `nullable_keys_sql`): a pass ends at the greatest (cursor, key), and one ending on
        (c, 'b', NULL) compares `k <= NULL`, so that row was never read, nor quarantined,
        every run ok; a page ending on one failed the table mid-load, depending on the
        page size. A UNIQUE index over a nullable column admits such rows. Only columns
        the catalog lets hold NULL are looked at (a primary key costs one catalog query),
        at most every KEY_RECHECK_EVERY once a look found none:
        a view's columns all may, and a look over a big view scans it (one that times
        out warns, as check_unique_key's does)."""
        d = self.dialect
        if d.nullable_sql is None and d.nullable_keys_sql is None:
            return
        nullable = self._nullable(table)
        for key in contract.primary_key:
            looked = self._no_nulls.get((table, key))
            if key.lower() not in nullable or (
                    looked is not None and time.monotonic() - looked < KEY_RECHECK_EVERY):
                continue
            try:
                found = self._execute(table, self.null_look(table, key), [])
            except SourceTimeout:
                log.warning("%s: looking for NULLs in key column %s took longer than "
                            "statement_timeout; a row whose key is NULL is never read "
                            "(looked for again within the hour); make %s NOT NULL",
                            table, key, key, extra={"source": self.config.name,
                                                    "table": table, "stage": "extract"})
                found = []
            if found:
                raise SchemaError(
                    f"key column {key} holds NULLs: keyset pages (cursor, key) > (...) "
                    "cannot continue after a row whose key is NULL, nor a pass end on one, "
                    "so such rows would never be extracted (and a unique index admits NULL "
                    "twice)",
                    stage="extract", source=self.config.name, table=table,
                    hint=f"give those rows a value (UPDATE {table} SET {key} = ... WHERE "
                         f"{key} IS NULL) and make the column NOT NULL, or declare a "
                         "primary_key whose columns hold no NULL")
            self._no_nulls[(table, key)] = time.monotonic()

    def check_unique_key(self, table: str, contract: Contract) -> None:
        """Refuse, naming table and key, a contract primary_key that does not identify a
        source row: rows sharing it are merged into one warehouse row (newer cursor
        wins), every other lost while every run says ok. A unique index on some of the
        key's columns proves it (once per source object); without one, the rows are
        looked at (at most every KEY_RECHECK_EVERY) and it is refused once rows share it,
        with a warning until then (a partitioned table's primary key must hold the
        partition key, so a key narrower than it may well be unique)."""
        d, key = self.dialect, contract.primary_key
        if d.unique_sql is None:
            return
        checked = self._unique.get((table, key))
        if checked is not None and time.monotonic() - checked < KEY_RECHECK_EVERY:
            return
        unique: dict[str, tuple[list[str | None], bool]] = {}
        for name, column, primary in self._execute(table, d.unique_sql,
                                                   [d.index_param(table)]):
            columns, _ = unique.setdefault(catalog_text(name), ([], bool(primary)))
            columns.append(None if column is None else catalog_text(column).lower())
        want = {k.lower() for k in key}
        if any(None not in cols and set(cols) <= want for cols, _ in unique.values()):
            self._unique[(table, key)] = math.inf
            return
        names = ", ".join(d.ident(k) for k in key)
        present = " AND ".join(f"{d.ident(k)} IS NOT NULL" for k in key)
        primary = next((cols for cols, is_pk in unique.values() if is_pk), None)
        shown = ", ".join(key)
        pk = f" (narrower than its primary key ({', '.join(map(str, primary))}))" \
            if primary else ""
        try:
            shared = self._execute(table, f"SELECT {names}, count(*) FROM {d.ident(table)} "
                                          f"WHERE {present} GROUP BY {names} "
                                          "HAVING count(*) > 1 LIMIT 1", [])
        except SourceTimeout:  # a big view: the look must not stop the table
            shared = None
        if shared:
            why = f"{shared[0][-1]} rows have " + ", ".join(
                f"{k} = {v!r}" for k, v in zip(key, shared[0], strict=False))
            own = (f"the table's own primary key ({', '.join(map(str, primary))})" if primary
                   else "columns that identify each row")
            raise SchemaError(
                f"primary_key ({shown}) does not identify a row: {why}; rows sharing a key "
                "are merged into one warehouse row and the others lost", stage="extract",
                source=self.config.name, table=table,
                hint=f"declare {own} as the contract's primary_key, or add a UNIQUE index "
                     f"on ({shown}) to {table}")
        self._unique[(table, key)] = time.monotonic()
        now = ("looking for rows that share it took longer than statement_timeout"
               if shared is None else "no two rows share it now")
        log.warning("%s has no unique index on (%s)%s: %s, but rows that share it are "
                    "merged into one warehouse row until a look finds them (at most "
                    "hourly); add a UNIQUE index, or declare the key that identifies a row",
                    table, shown, pk, now,
                    extra={"source": self.config.name, "table": table, "stage": "extract"})

    def declared_types(self, table: str) -> dict[str, str]:
        """Each column's type as the source declares it ({} where the catalog is not read)."""
        d = self.dialect
        if d.columns_sql is None:
            return {}
        if table not in self._declared:
            self._declared[table] = {catalog_text(name): catalog_text(declared or "")
                                     for name, declared in
                                     self._execute(table, d.columns_sql,
                                                   [d.index_param(table)])}
        return dict(self._declared[table])

    def declared_lower(self, table: str) -> dict[str, str]:
        """`declared_types` by lowercased column name, as the checks look a contract's
        column up (the catalog keeps the source's own case)."""
        return {k.lower(): v for k, v in self.declared_types(table).items()}

    def compare_casts(self, table: str) -> dict[str, str]:
        """The casts a predicate comparing a column with a parameter needs (lowercased
        column name → SQL type, `Dialect.compare_as_sql`; {} where none), read once per
        source object as `declared_types` is."""
        d = self.dialect
        if d.compare_as_sql is None:
            return {}
        if table not in self._casts:
            self._casts[table] = {catalog_text(name).lower(): catalog_text(cast)
                                  for name, cast in self._execute(
                                      table, d.compare_as_sql, [d.index_param(table)])
                                  if cast is not None}
        return self._casts[table]

    def keyset_index(self, table: str, contract: Contract) -> str | None:
        """The name of an index whose leading columns are (cursor, key...), '' if the table
        has none, None if this engine's catalog is not consulted."""
        d = self.dialect
        if d.indexes_sql is None:
            return None
        want = [c.lower() for c in contract.order_by]
        columns: dict[str, list[str]] = {}
        names: list[str] = []
        rows = self._execute(table, d.indexes_sql, [d.index_param(table)], columns=names)
        for name, column in d.index_columns(rows, names):
            columns.setdefault(catalog_text(name), []).append(catalog_text(column).lower())
        return next((n for n, cols in columns.items() if cols[:len(want)] == want), "")

    def find_keyset_index(self, table: str, contract: Contract) -> bool:
        """Look up (once) the index for the contract's keyset order, so page queries can
        be pinned to it; returns False if the table has none, and warns of it once per
        table in this process."""
        if (table, contract.order_by) in self._index:  # found before: no catalog query
            return True
        index = self.keyset_index(table, contract)
        reported = (self.config.name, self.config.dsn or self.config.path or "", table,
                    contract.order_by)
        if index:
            self._index[(table, contract.order_by)] = index
            _NO_INDEX_REPORTED.discard(reported)  # dropped again later: said again
        elif index == "":
            if reported in _NO_INDEX_REPORTED:  # said once in this process
                return False
            _NO_INDEX_REPORTED.add(reported)
            log.warning(
                "%s has no index on (%s): every page is a full scan and sort; see README "
                "'Index each source table needs'", table, ", ".join(contract.order_by),
                extra={"source": self.config.name, "table": table, "stage": "extract"})
            return False
        return True

    def last_position(self, table: str, contract: Contract) -> Watermark | None:
        """The (cursor, key) of the table's last row in keyset order, None if it has none:
        where an initial load in key order hands over to incremental pages."""
        return self._position_of(table, contract, self._execute(
            table, self._last_position_sql(table, contract), []))

    def _last_position_sql(self, table: str, contract: Contract, whole_row: bool = False
                           ) -> str:
        """One index probe (the keyset index read backwards), no parameters. With
        `whole_row` the row's every column follows the position (`poll_end`: the result's
        columns tell a poll that the table's columns changed, at no extra query)."""
        d = self.dialect
        declared = self.select_types(table)
        cols = ", ".join(d.select_expr(c, contract.column(c).parsed_type,
                                       declared.get(c.lower(), ""))
                         for c in contract.order_by)
        rest = (f"FROM {d.ident(table)} WHERE {d.ident(contract.cursor)} IS NOT NULL"
                f"{self._order_by(table, contract.order_by, desc=True)} LIMIT 1")
        if whole_row:
            return d.with_columns(cols, table, rest)
        return f"SELECT {cols} {rest}"

    def _position_of(self, table: str, contract: Contract, rows: Sequence[Any]
                     ) -> Watermark | None:
        if not rows:
            return None
        d = self.dialect
        order = [contract.column(c) for c in contract.order_by]
        values = [d.position_value(v, c.parsed_type)
                  for v, c in zip(rows[0][:len(order)], order, strict=True)]
        self._check_end(table, contract, values[0])
        # a pass ends there (`page_query` upto): sent back as a page's start is
        high = Watermark(cursor=values[0], key=tuple(values[1:]))
        self._check_position(table, contract, high, "the table's last row in keyset order")
        return high

    def _check_end(self, table: str, contract: Contract, cursor: Any) -> None:
        """Refuse a number cursor whose greatest value sorts after every number: NaN
        (PostgreSQL numeric sorts it last) or +Infinity (PostgreSQL numeric, a SQLite
        REAL). Its row cannot be loaded (validation quarantines it), yet a page ending on
        it would move the checkpoint there, and no row written afterwards, whatever its
        cursor, could ever sort after it: every later row lost, every run "ok". The
        position probe of each poll reads the table's greatest (cursor, key) anyway, so
        this costs no query.

        Likewise a number greater than every value of the cursor's contract type
        (`past_the_type`: a BIGINT UNSIGNED 18446744073709551615 read as int64, a SQLite
        REAL 9.3e18): its row is quarantined (the type cannot hold it), and a page ending
        on it moved the checkpoint past every row written afterwards with an ordinary
        cursor (lost, every run ok)."""
        kind = contract.column(contract.cursor).parsed_type
        if past_the_type(cursor, kind):
            name = contract.cursor
            raise SchemaError(
                f"cursor column {name} ({contract.column(name).type}) holds {cursor}, more "
                f"than the type holds ({greatest_of(kind)} at most): its row cannot be "
                "loaded, yet a page ending on it would move the "
                "checkpoint past every row written afterwards, which would then never be "
                "read", stage="extract", source=self.config.name, table=table,
                hint=f"declare {name} a type that holds it in the contract (decimal(38,0) "
                     f"for a BIGINT UNSIGNED, a wider decimal(p,s)), or give those rows an "
                     f"ordinary {name} (UPDATE {table} SET {name} = ... WHERE {name} > "
                     f"{greatest_of(kind)})")
        if past_every_number(cursor):
            name = contract.cursor
            shown = "NaN" if math.isnan(cursor) else "Infinity"
            raise SchemaError(
                f"cursor column {name} holds {shown}, which sorts after every number: a "
                "page ending on it would move the checkpoint past every row written "
                "afterwards, which would then never be read", stage="extract",
                source=self.config.name, table=table,
                hint=f"give those rows a real {name} (e.g. UPDATE {table} SET {name} = ... "
                     f"WHERE {name} {self.dialect.not_a_number(name)}) and keep such values "
                     "out of the column (a CHECK constraint), or page this table by "
                     "another cursor")

    def _columns_seen(self, table: str, contract: Contract, columns: list[str]) -> None:
        """The columns of `poll_end`'s whole row: when they are not the ones the last probe
        saw, the probe runs again at the next call (a column added or dropped is then
        reported by its schema_drift policy within a poll, idle or not)."""
        hit = self._probed.get(table)
        seen = frozenset(c.lower() for c in columns[len(contract.order_by):])
        if hit is not None and seen != hit[3]:
            del self._probed[table]

    def poll_end(self, table: str, contract: Contract, observe: bool
                 ) -> tuple[Watermark | None, OpenSince | None]:
        """Where a poll's pass ends (`last_position`) and, with `observe`, the source's
        open transactions as seen BEFORE that position's snapshot was taken: the order the
        adaptive lookback's argument needs (docs/architecture.md). None for the second
        when the engine cannot tell; `OpenSince.visible` is False when this role cannot
        see other sessions' transactions (reported loudly once per connection).

        PostgreSQL sends both in one round trip (`Dialect.poll_script`); MariaDB runs
        them one after the other, each its own autocommit statement."""
        d = self.dialect
        position = self._last_position_sql(table, contract, whole_row=True)
        columns: list[str] = []
        age = 0.0  # seconds since the observation was read (shared or kept: innodb_trx)
        if not observe or d.open_since_sql is None:
            rows = self._execute_leniently(table, position, [], columns=columns)
            self._columns_seen(table, contract, columns)
            return self._position_of(table, contract, rows), None
        try:
            if d.poll_script is not None:
                begin, commit = d.poll_script
                (seen, _), (rows, columns) = self._script(
                    table, [begin, d.open_since_sql, position, commit])
            else:
                seen, age = innodb_trx.observe(self, table)
                rows = self._execute_leniently(table, position, [], columns=columns)
        except SteadyflowError as exc:
            if not d.open_refused(exc):
                raise
            self._report_hidden(table, exc.message)
            return self.last_position(table, contract), OpenSince(
                at=datetime.min, oldest=None, visible=False)
        self._columns_seen(table, contract, columns)
        declared = self.declared_lower(table)
        cursor_type = declared.get(contract.cursor.lower(), "")
        naive = d.naive_time(cursor_type)
        observed = d.open_since(seen[0], naive)
        stored = d.stored_margin(cursor_type)  # a column coarser than the clock
        if stored:
            observed = replace(observed, margin=observed.margin + stored)
        if age > 0:
            observed = replace(observed, delivered=observed.at + timedelta(seconds=age))
        west = self._zone_west(table) if naive else 0.0
        if west > 0:  # naive stamps sort `west` seconds before the instant they were made
            observed = replace(observed, margin=observed.margin + timedelta(seconds=west))
        if not observed.visible:
            self._report_hidden(table, "PostgreSQL shows no other users' transactions "
                                       "without pg_read_all_stats, nor the primary's on a "
                                       "standby" if d.poll_script is not None else
                                "MariaDB's information_schema.innodb_trx was never seen "
                                "refreshed: another session reads it more often than "
                                "every 0.1 s")
        return self._position_of(table, contract, rows), observed

    def _zone_west(self, table: str) -> float:
        """Seconds west of UTC of the zone the source's writers may stamp naive times in
        (Dialect.zone_west_sql), asked at most every ZONE_RECHECK_EVERY: an offset moves
        with daylight saving, and an operator may change a database's zone."""
        sql = self.dialect.zone_west_sql
        if sql is None:
            return 0.0
        if self._west is None or time.monotonic() - self._west[0] >= ZONE_RECHECK_EVERY:
            [(value,)] = self._execute(table, sql, [])
            self._west = (time.monotonic(), max(0.0, float(value or 0)))
        return self._west[1]

    def zone_repeat(self, table: str, contract: Contract) -> float:
        """Seconds a fixed window over this table's cursor steps back beyond its lookback:
        a cursor of naive times filled by now() holds the wall time of the writers' zone,
        which at a fall-back repeats an hour. The rows stamped in it sort up to an hour
        before the checkpoint the last summer poll left, a 2-minute window never reached
        them: every row of that hour was lost, every run ok (a PostgreSQL database in a
        zone with daylight saving, `lookback_mode: fixed`; the adaptive bound allowed for
        it already). Nonzero only within two hours of a fall-back (Dialect.zone_repeat_sql,
        asked at most every ZONE_RECHECK_EVERY): those polls re-read the hour."""
        sql = self.dialect.zone_repeat_sql
        if sql is None or not self.dialect.naive_time(
                self.declared_lower(table).get(contract.cursor.lower(), "")):
            return 0.0
        if self._repeat is None or time.monotonic() - self._repeat[0] >= ZONE_RECHECK_EVERY:
            [(value,)] = self._execute(table, sql, [])
            self._repeat = (time.monotonic(), max(0.0, float(value or 0)))
        return self._repeat[1]

    def _report_hidden(self, table: str, why: str) -> None:
        """Loud, once per connection: the adaptive lookback fell back to the window."""
        if self._hidden_reported:
            return
        self._hidden_reported = True
        log.warning("adaptive lookback unavailable (%s); this source's tables use the "
                    "fixed lookback window instead, which misses a transaction that "
                    "commits later than the window: grant the role pg_read_all_stats "
                    "(PostgreSQL) or PROCESS (MariaDB), read the primary, or set "
                    "lookback_mode: fixed with a lookback longer than any transaction", why,
                    extra={
                        "source": self.config.name, "table": table, "stage": "extract"})

    def _script(self, table: str, statements: Sequence[str]
                ) -> list[tuple[list[Any], list[str]]]:
        """Several parameterless statements in one round trip (PostgreSQL's simple query
        protocol); (rows, column names) of each statement that returns rows, in order.
        Bounded by the watchdog like `_execute`; any error drops the connection (a failed
        script may leave its transaction block open)."""
        results: list[tuple[list[Any], list[str]]] = []
        with self._watched(table, drop=True) as cur:
            cur.execute("; ".join(statements))
            while True:
                if cur.description is not None:
                    results.append((list(cur.fetchall()),
                                    [str(c[0]) for c in cur.description]))
                if not cur.nextset():
                    break
        return results

    def has_more(self, rows: pa.Table, limit: int) -> bool:
        """A full page means there may be more rows after it."""
        return rows.num_rows >= limit

    def page_query(
        self,
        table: str,
        contract: Contract,
        after: Watermark | None,
        since: Any | None,
        limit: int,
        where: tuple[str, Sequence[Any]] | None = None,
        upto: Watermark | None = None,
    ) -> tuple[str, list[Any]]:
        """The SQL and parameters of one keyset page (one index range scan on
        (cursor, key...), see README "Index each source table needs").

        `upto` ends the range at a noted (cursor, key) position, that row included: the
        end of a cursor pass (`last_position` when the pass began), so a pass ends even
        while rows are written faster than pages are read. The database compares it, in
        the column's own type and collation, as it compares the lower bound."""
        d = self.dialect
        order = contract.order_by
        preds: list[str] = []
        params: list[Any] = []
        bounded = after is not None or since is not None or upto is not None
        casts = self.compare_casts(table) if bounded else {}
        if after is not None:
            preds.append(d.keyset(order, casts))
            params.extend(d.keyset_params(self.keyset_values(table, order, after.as_tuple())))
        elif since is not None:
            preds.append(f"{d.operand(contract.cursor, casts)} >= {d.placeholder}")
            params.extend(self.keyset_values(table, order[:1], [since]))
        if upto is not None:
            preds.append(d.keyset_upto(order, casts))
            params.extend(d.keyset_params(self.keyset_values(table, order, upto.as_tuple())))
        if where is not None:
            preds.append(where[0])
            params.extend(where[1])
        query = self._select(table, contract)
        index = self._index.get((table, order))
        if where is None and index:
            query += self.dialect.index_hint(index)
        if preds:
            query += " WHERE " + " AND ".join(preds)
        query += self._order_by(table, order) + f" LIMIT {int(limit)}"
        return query, params

    def keyset_values(self, table: str, columns: Sequence[str], values: Sequence[Any]
                      ) -> list[Any]:
        """Watermark values as the parameters compared with `columns` in keyset order:
        each compares with its column as ORDER BY sorts the column
        (`Dialect.keyset_value`)."""
        d = self.dialect
        declared = self.select_types(table)
        out = []
        for c, v in zip(columns, values, strict=True):
            try:
                out.append(d.keyset_value(d.to_param(v), declared.get(c.lower(), "")))
            except ValueError as exc:
                raise SchemaError(
                    f"the checkpoint's {c} {exc}: keyset pages cannot continue after it",
                    stage="extract", source=self.config.name, table=table,
                    hint=f"the members of {c} changed since the checkpoint was taken: "
                         f"`steadyflow reset --table {self.config.name}.{table}` reads the "
                         "table again") from None
        return out

    def page(
        self,
        table: str,
        contract: Contract,
        after: Watermark | None,
        since: Any | None,
        limit: int,
        where: tuple[str, Sequence[Any]] | None = None,
        upto: Watermark | None = None,
    ) -> tuple[pa.Table, Watermark | None]:
        """Read one keyset page (ending at `upto` if given, see `page_query`); returns the
        rows and the (cursor, key) of the last row. (arrow_values, and with it pyarrow, is
        imported by the first page read: a reconcile of an unchanged table reads none.)"""
        from steadyflow.extract.arrow_values import rows_to_arrow

        query, params = self.page_query(table, contract, after, since, limit, where,
                                        upto=upto)
        rows = self._execute_leniently(table, query, params)
        if not rows:
            return rows_to_arrow([], contract), None
        self.refuse_binary_keys(table, contract, lambda i: [row[i] for row in rows])
        self.dialect.refuse_key_spellings(self, table, contract,
                                          lambda i: [row[i] for row in rows])
        return rows_to_arrow(rows, contract), self._high(table, contract, rows[-1])

    def _execute_leniently(self, table: str, query: str, params: Sequence[Any],
                           columns: list[str] | None = None) -> list[Any]:
        """`_execute`, read again value by value when the driver cannot decode a text
        value (SQLite text that is not UTF-8): such a value is then model.INVALID's
        business, costing its row only. Every query reading a whole row needs this: the
        poll's end position reads the table's last row, and one undecodable value there
        failed the table on every run."""
        try:
            return self._execute(table, query, params, columns=columns)
        except SteadyflowError as exc:
            if not self.dialect.undecodable(exc):
                raise
            with self.dialect.read_leniently(self.conn):  # rare: slower than the driver's
                return self._execute(table, query, params, columns=columns)

    def _high(self, table: str, contract: Contract, last: Sequence[Any]) -> Watermark:
        """The (cursor, key) of a page's last row (its values in contract column order,
        as this driver gives them): the position the next page continues after."""
        d = self.dialect
        values = [d.position_value(last[contract.names.index(k)],
                                   contract.column(k).parsed_type)
                  for k in contract.order_by]
        high = Watermark(cursor=values[0], key=tuple(values[1:]))
        self._check_position(table, contract, high)
        return high

    def _check_position(self, table: str, contract: Contract, high: Watermark,
                        row: str = "the last row of a page") -> None:
        """A watermark must be a value the next page can be compared with: never None (the
        next page would select nothing), unreadable text (it cannot be sent back) nor a
        date no path can hold (neither: PostgreSQL 'infinity' in any key column). So must
        a pass's end (`_position_of`, `row` says which): a SQLite key of text that is not
        UTF-8 as the table's greatest failed every run with a TypeError ('InvalidText is
        not JSON serializable', or not a parameter sqlite3 binds), naming no column."""
        for name, value in zip(contract.order_by, high.as_tuple(), strict=True):
            if isinstance(value, OutOfRange):
                raise self._unorderable(table, name, value)
            if value is None or isinstance(value, InvalidText):
                what = "is NULL" if value is None else f"is not UTF-8 text ('{value}')"
                raise SchemaError(
                    f"{row} has {name} that {what}: keyset pages cannot "
                    "continue after it", stage="extract", source=self.config.name,
                    table=table, hint=f"give {name} a value in every row (NOT NULL, UTF-8)")

    def _unorderable(self, table: str, column: str, value: OutOfRange) -> SchemaError:
        return SchemaError(
            f"{column} holds {value.reason}: keyset pages cannot continue after such a "
            "value (no path can hold it, so it cannot be the next page's start)",
            stage="extract", source=self.config.name, table=table,
            hint=f"give {column} real dates in those rows (e.g. UPDATE {table} SET "
                 f"{column} = ... WHERE {column} < '0001-01-01' OR {column} > "
                 "'9999-12-31'), or page this table by a column without such values")

    def pages(
        self, table: str, contract: Contract, after: Watermark | None, since: Any | None,
        page_size: int = 50_000,
    ) -> Iterator[tuple[pa.Table, Watermark]]:
        """All pages from the start point to the current end of the table."""
        while True:
            rows, high = self.page(table, contract, after, since, page_size)
            if high is None:
                return
            yield rows, high
            if rows.num_rows < page_size:
                return
            after, since = high, None


def is_driver_error(exc: BaseException) -> bool:
    return isinstance(exc, driver_errors()) and not isinstance(exc, SteadyflowError)
