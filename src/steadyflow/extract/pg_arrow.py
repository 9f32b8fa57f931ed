"""PostgreSQL → Arrow without Python rows: keyset pages through ADBC (libpq, binary COPY).

`SqlSource` turns every value into a Python object (psycopg) and back into Arrow, which
costs more than the database takes to produce the rows. `PgArrowSource` reads the same
keyset pages with `adbc_driver_postgresql`, which decodes PostgreSQL's binary COPY stream
straight into Arrow buffers in C++, and then conforms each column to the contract type
with Arrow compute. Nothing about the page changes: same query shape (one index range scan
on (cursor, key...)), same order, same watermark, same contract types, same fallbacks.

What is kept from the psycopg path, and how:
  * statement_timeout and TimeZone=UTC: `SET` on the ADBC connection right after connect;
    connect_timeout, keepalives and tcp_user_timeout: libpq parameters in the conninfo.
  * the client-side watchdog (a black-holed link): the libpq socket is identified when
    the connection is opened — the fd whose local address is the server's
    inet_client_addr/inet_client_port, so other threads opening sockets meanwhile do not
    matter — and shut down if a page outlives statement_timeout + grace. Where the server
    cannot name it (a unix socket, a proxy) the fds new since connect are the fallback;
    if that is ambiguous too, this source uses the psycopg path.
  * error translation: ADBC errors carry the SQLSTATE; they go through the same
    `PostgresDialect.error`, so callers see only AuthError, SchemaError, SourceTimeout,
    SourceUnavailable or FatalError.
  * the probe (missing table/column, schema drift, keyset index check) and each poll's
    position probe stay on psycopg, on a connection kept between polls.

Values: the query is `SqlSource.page_query` itself, so both paths read one select list
(`PostgresDialect.select_expr`: decimal and string columns as PostgreSQL's own text) and
give the same canonical values; Arrow's exact casts then conform them: a value that does
not fit the contract (a widened scale, NaN, an overflow) leaves the column as text,
exactly as `column_to_arrow` does, and validation quarantines the row. A date/time no
path can hold ('infinity', a year past 9999 or BC; ADBC hands them over as wrapped
integers) is null with its reason in model.INVALID, as the psycopg loaders make it; in
the cursor or a key column it is refused (SchemaError), since no page could start after
it (`_refuse_unorderable` at the probe; `_check_position` where a page ends on one).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg.conninfo import conninfo_to_dict

from steadyflow.arrow_types import cast_exact, cast_text_decimal
from steadyflow.config import SourceConfig
from steadyflow.errors import SourceTimeout, SteadyflowError
from steadyflow.extract.dialects import OpenSince, OutOfRange, session_settings, shutdown_fd
from steadyflow.extract.sql import KEY_RECHECK_EVERY, SqlSource
from steadyflow.model import (
    INVALID,
    MAX_TIME,
    MIN_TIME,
    Contract,
    Watermark,
)
from steadyflow.observe import logs
from steadyflow.resilience import Watchdog, watchdog_grace

log = logs.get("extract")

_CONNECT_LOCK = threading.Lock()
# ADBC takes the text it reads for UTF-8 without asking, and a session's client_encoding
# is the database's: from a LATIN1 database 'café' arrived as 'caf\xe9', which no warehouse
# holds. Any encoding but SQL_ASCII is converted to UTF-8 when asked; SQL_ASCII stays as
# it is (asked for UTF-8, the server refuses the whole page for one byte that is not; as
# stored, such a value costs its row at validation).
UTF8_TEXT = ("set_config('client_encoding', CASE current_setting('server_encoding') "
             "WHEN 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END, false)")
# how long a table's ADBC connection stays open without a page (see PgArrowSource.poll_end)
ADBC_IDLE = 60.0
# How ADBC learns what each result column's type OID is (PgArrowSource._adbc_connect):
# "builtin", PostgreSQL's own types from a table inside the driver; "server", the whole
# type catalog read at every connect
TYPES_BUILTIN, TYPES_SERVER = "builtin", "server"
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
# Declared types (format_type, seen through domains, typmod dropped) that ADBC decodes as
# psycopg does wherever a column is read as itself (a number, bool, date or time contract;
# string and decimal columns are read as PostgreSQL's text by both). Any other type there
# (money: its cents; bytea, bit, inet, xid, arrays, timetz, an enum, an extension's type
# without a binary output function...) gave other values through ADBC, or no page at all:
# such a table is read through psycopg (PgArrowSource._adbc_reads)
ADBC_SAME_TYPES = frozenset({
    "smallint", "integer", "bigint", "oid", "numeric", "real", "double precision",
    "boolean", "date", "timestamp without time zone", "timestamp with time zone",
    "text", "character varying", "character", '"char"', "json", "jsonb", "citext",
})
_TYPMOD = re.compile(r"\([^)]*\)")
# The same, as the type names ADBC puts on each column of a page (a domain's is its base
# type's): a page is checked too, since a column's type may change after the probe read
# the declared types (ALTER TABLE ... TYPE money between two polls of `run --follow`)
ADBC_SAME_NAMES = frozenset({
    "int2", "int4", "int8", "oid", "numeric", "float4", "float8", "bool", "date",
    "timestamp", "timestamptz", "text", "varchar", "bpchar", "char", "json", "jsonb",
    "citext",
})
_PG_TYPE = b"POSTGRESQL:type"


def conninfo(dsn: str, params: dict[str, str]) -> str:
    """Add libpq parameters to a DSN (URI or key=value form) unless it sets them itself."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        for key, value in params.items():
            query.setdefault(key, value)
        return urlunsplit(parts._replace(query=urlencode(query)))
    present = {item.split("=", 1)[0].strip() for item in dsn.split() if "=" in item}
    extra = " ".join(f"{k}='{v}'" for k, v in params.items() if k not in present)
    return f"{dsn} {extra}".strip()


def _sockets() -> dict[int, str]:
    """This process's open socket descriptors (fd → 'socket:[inode]'), Linux only."""
    out: dict[int, str] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:"):
            out[int(name)] = link
    return out


def _server_ports(dsn: str) -> set[int]:
    """The ports the DSN connects to (libpq's default when it names none)."""
    try:
        ports = conninfo_to_dict(dsn).get("port") or os.environ.get("PGPORT") or "5432"
        return {int(p) for p in str(ports).split(",") if p.strip()}
    except (psycopg.Error, ValueError):
        return set()


def _unix_host(dsn: str) -> bool:
    """Does the DSN connect through a unix-domain socket (its host a directory)?"""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return False
    if params.get("hostaddr"):
        return False
    host = str(params.get("host") or os.environ.get("PGHOST") or "").split(",")[0]
    return not host or host.startswith("/")  # no host: libpq's default socket directory


def _socket_of(client: Sequence[Any] | None, ports: set[int]) -> tuple[int, str] | None:
    """The fd (and 'socket:[inode]') of the connection the server sees from `client`
    (its inet_client_addr and inet_client_port), if it is in this process and leads to
    one of the DSN's `ports`.

    Deterministic, unlike diffing /proc/self/fd around connect: another thread opening
    sockets meanwhile (psycopg, HTTP) cannot make it ambiguous, since a TCP connection's
    two ends are unique on a host. The port check rules out a proxy in this process, whose
    upstream socket the server would name instead. None for a unix socket (no client
    port) or a proxy/NAT in between: the caller falls back to the diff.
    """
    if not client or client[0] is None or client[1] is None:
        return None
    try:
        addr, port = ipaddress.ip_address(str(client[0])), int(client[1])
    except ValueError:
        return None

    def seen_by_the_server(sock: socket.socket) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        here, there = sock.getsockname(), sock.getpeername()
        return ipaddress.ip_address(here[0]) == addr and here[1] == port and there[1] in ports

    return _only_one(_sockets(), seen_by_the_server)


def _only_to(new: list[tuple[int, str]], ports: set[int], unix: bool) -> tuple[int, str] | None:
    """The one socket of `new` (opened while ADBC connected) of the DSN's kind that leads to
    one of its `ports` (`unix`: a unix-domain socket, the DSN's host is a directory), or
    None if that is not exactly one.

    Behind a proxy the server names the proxy's socket, so `_socket_of` cannot tell, and
    this diff is what is left: another thread's connections to other ports (other stores'
    proxies, the state store, NATS), an in-process proxy's own two sockets, and unconnected
    sockets are not libpq's. A lone new socket is ADBC's whatever it is.
    """
    if len(new) <= 1:
        return new[0] if new else None
    links = dict(new)

    def of_the_dsn(sock: socket.socket) -> bool:
        if unix:
            return sock.family == socket.AF_UNIX
        return (sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.getpeername()[1] in ports)

    found = _only_one(links, of_the_dsn)
    return found if found is not None and links[found[0]] == found[1] else None


def _only_one(fds: Iterable[int], matches: Callable[[socket.socket], bool]
              ) -> tuple[int, str] | None:
    """The one fd of `fds` whose socket `matches`, with its 'socket:[inode]', or None if
    that is not exactly one. Each socket is inspected through a dup, so no fd of the
    process is ever closed here, and the inode is the dup's (the socket inspected)."""
    found = []
    for fd in fds:
        try:
            dup = os.dup(fd)
        except OSError:
            continue
        try:
            with socket.socket(fileno=dup) as sock:  # closes the dup, never `fd`
                if matches(sock):
                    found.append((fd, os.readlink(f"/proc/self/fd/{dup}")))
        except OSError:
            continue
    return found[0] if len(found) == 1 else None


def _shutdown(fd: int, link: str) -> None:
    """shutdown(2) libpq's socket through a dup, if the fd still is that socket."""
    try:
        if os.readlink(f"/proc/self/fd/{fd}") != link:
            return
    except OSError:
        return
    shutdown_fd(fd)


def _literal(value: Any) -> str | None:
    """An exact SQL literal for a keyset value; None → bind it.

    Numbers and times are typed (an int column compares with '1.5'::numeric exactly).
    Text, uuid included, is an untyped E'' literal: PostgreSQL gives it the column's own
    type (uuid, numeric, CHAR(n), text...), as psycopg's untyped parameters do; a text-typed
    bind parameter would not compare with a uuid column at all. E'' escapes mean the same
    whatever standard_conforming_strings is; PostgreSQL text never holds NUL.
    """
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return f"'{_float_text(value)}'::float8"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return f"'{value.astimezone(UTC).isoformat(timespec='microseconds')}'::timestamptz"
    if isinstance(value, date):
        return f"'{value.isoformat()}'::date"
    if isinstance(value, Decimal):
        return f"'{_decimal_text(value)}'::numeric"
    if isinstance(value, UUID):
        value = str(value)
    if isinstance(value, str) and "\x00" not in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    if isinstance(value, bytes) and b"\x00" not in value:
        # a SQL_ASCII database's text that is not UTF-8 (PostgresDialect.position_value):
        # its bytes as E'' escapes, which that database takes as they are
        return "E'" + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b"\\'"
                              else f"\\x{b:02x}" for b in value) + "'"
    return None


def _as_bytes(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text values as their bytes (Arrow reads a string that is not UTF-8 to no str)."""
    if pa.types.is_string(values.type):
        return values.cast(pa.binary())
    if pa.types.is_large_string(values.type):
        return values.cast(pa.large_binary())
    return values


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)  # the shortest text that reads back as exactly this double


def _decimal_text(value: Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "-Infinity" if value.is_signed() else "Infinity"
    return str(value)


# --- values no path can hold (see dialects.OutOfRange) -------------------------------------
# ADBC reads PostgreSQL's binary times (µs or days since 2000-01-01; infinity is the
# type's max, -infinity its min) and shifts them to 1970 with wrapping arithmetic.
_PG_EPOCH_US = 946_684_800_000_000
_PG_EPOCH_DAYS = 10_957
_US_PER_DAY = 86_400_000_000
_LOW_US = (MIN_TIME - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
_HIGH_US = (MAX_TIME - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
_LOW_DAYS = (MIN_TIME.date() - date(1970, 1, 1)).days
_HIGH_DAYS = (MAX_TIME.date() - date(1970, 1, 1)).days


def _wrap(value: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return (value + half) % (1 << bits) - half


def _year_of(days: int) -> int:
    """The proleptic Gregorian (astronomical) year of a day number since 1970-01-01."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    march_based_month = (5 * doy + 2) // 153  # 0 = March ... 10, 11 = January, February
    return yoe + era * 400 + (1 if march_based_month >= 10 else 0)


def _out_of_range(raw: int, is_date: bool) -> OutOfRange:
    """What PostgreSQL stored, from the value ADBC handed over for it."""
    bits, shift = (32, _PG_EPOCH_DAYS) if is_date else (64, _PG_EPOCH_US)
    stored = _wrap(raw - shift, bits)
    if stored == (1 << (bits - 1)) - 1:
        return OutOfRange("'infinity'")
    if stored == -(1 << (bits - 1)):
        return OutOfRange("'-infinity'")
    # the year of what is stored, not of `raw`: near the type's ends (PostgreSQL's greatest
    # timestamp is in year 294276) the shift wrapped, and 'year 290279 BC' was named
    since_1970 = stored + shift
    return OutOfRange.from_year(_year_of(since_1970 if is_date
                                         else since_1970 // _US_PER_DAY))


def _as_ints(col: pa.ChunkedArray) -> tuple[pa.Array, int, int] | None:
    """A date/time column's raw numbers and the 0001..9999 bounds in the same unit."""
    if pa.types.is_timestamp(col.type) and col.type.unit == "us":
        return col.combine_chunks().view(pa.int64()), _LOW_US, _HIGH_US
    if pa.types.is_date32(col.type):
        return col.combine_chunks().view(pa.int32()), _LOW_DAYS, _HIGH_DAYS
    return None


def unreadable(raw: pa.Table) -> dict[str, dict[int, OutOfRange]]:
    """{column: {row: what}} for the dates/times of an ADBC page no path can hold."""
    found: dict[str, dict[int, OutOfRange]] = {}
    for name, col in zip(raw.column_names, raw.columns, strict=True):
        ints = _as_ints(col)
        if ints is None:
            continue
        values, low, high = ints
        mask = pc.or_kleene(pc.less(values, pa.scalar(low, values.type)),
                            pc.greater(values, pa.scalar(high, values.type)))
        if not pc.any(mask).as_py():
            continue
        is_date = pa.types.is_date32(col.type)
        numbers = cast(list[int], values.to_pylist())
        found[name] = {i: _out_of_range(numbers[i], is_date)
                       for i in cast(list[int], pc.indices_nonzero(mask).to_pylist())}
    return found


def _opaque(schema: pa.Schema) -> bool:
    """Does any column (or a list's or struct's member) have an extension type, as ADBC
    gives a PostgreSQL type it cannot resolve?"""
    def walk(kind: pa.DataType) -> bool:
        if isinstance(kind, pa.BaseExtensionType):
            return True
        return any(walk(kind.field(i).type) for i in range(kind.num_fields))
    return any(walk(f.type) for f in schema)


@functools.lru_cache(maxsize=1024)
def _read_as_themselves(contract: Contract) -> tuple[tuple[int, str], ...]:
    """(position, name) of the contract's columns a page reads as themselves: not string
    or decimal, which both paths read as PostgreSQL's text (`select_expr`)."""
    return tuple((i, c.name) for i, c in enumerate(contract.columns)
                 if not (pa.types.is_string(c.arrow_type) or pa.types.is_decimal(c.arrow_type)))


def _decoded_unlike_psycopg(schema: pa.Schema, contract: Contract) -> list[str]:
    """The contract's columns read as themselves whose page column ADBC typed as a type
    outside ADBC_SAME_NAMES (a column without the driver's type name is not judged)."""
    odd = []
    for i, name in _read_as_themselves(contract):
        typ = (schema.field(i).metadata or {}).get(_PG_TYPE)
        if typ is not None and typ.decode("utf-8", "replace") not in ADBC_SAME_NAMES:
            odd.append(name)
    return odd


def _storage(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if isinstance(col.type, pa.BaseExtensionType):  # e.g. an opaque PostgreSQL type
        storage: pa.DataType = col.type.storage_type
        chunks = [cast(pa.ExtensionArray, c).storage for c in col.chunks]
        return pa.chunked_array(chunks, type=storage)  # type: ignore[call-overload]  # stubs: no DataType overload
    return col


def conform_column(col: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """Cast one column to the contract type with Arrow's exact (safe) casts.

    Mirrors `column_to_arrow`: if any value does not fit, the column is kept as text (its
    values as PostgreSQL printed them) so validation quarantines exactly those rows.
    """
    col = _storage(col)
    if col.type == target:
        return col
    try:
        if pa.types.is_decimal(target) and (pa.types.is_string(col.type)
                                            or pa.types.is_large_string(col.type)):
            # numeric as PostgreSQL's text: Arrow's cast alone can return garbage
            return pa.chunked_array([cast_text_decimal(col.combine_chunks(), target)])
        return cast_exact(col, target)  # an int 2 is no bool, nor 2**53 + 1 a float
    except _CAST_ERRORS:
        pass
    try:
        text = col if pa.types.is_string(col.type) else pc.cast(col, pa.string())
    except _CAST_ERRORS:
        return col
    try:
        if pa.types.is_timestamp(target):
            naive = pc.cast(pc.replace_substring_regex(text, r"(Z|[+-]00:?00)$", ""),
                            pa.timestamp(target.unit))
            return naive.cast(target)
        if pa.types.is_decimal(target):
            return pa.chunked_array([cast_text_decimal(text.combine_chunks(), target)])
        return cast_exact(text, target)
    except _CAST_ERRORS:
        return text


def _not_dates(col: pa.ChunkedArray, skip: dict[int, str]) -> dict[int, str]:
    """{row: why} for the timestamps of a date column that are not a midnight (UTC),
    but for the rows in `skip` (already unreadable: 'infinity' is no instant).

    Arrow's cast to date32 drops the time of day without a word: '2020-01-01 03:00' was
    loaded as 2020-01-01, where the psycopg path quarantines the row with this reason
    (`arrow_values._unfaithful`); the same rows now cost the same, whichever path read them."""
    if not pa.types.is_timestamp(col.type):
        return {}
    values = col.combine_chunks()
    if skip:
        keep = pa.array([r not in skip for r in range(len(values))], pa.bool_())
        values = pc.if_else(keep, values, pa.scalar(None, values.type))
    midnight = pc.cast(pc.cast(values, pa.date32()), values.type)
    off = pc.not_equal(values, midnight).to_pylist()
    return {r: f"{values[r].as_py().isoformat()} has a time of day: not a date (declare "
               "it timestamp)" for r, o in enumerate(off) if o}


def conform(raw: pa.Table, contract: Contract,
            bad: dict[str, dict[int, OutOfRange]] | None = None) -> pa.Table:
    """The page in contract types. A date/time no path can hold is null, and its row
    says why in model.INVALID, exactly as the psycopg path's loaders make it (first
    unreadable column of a row wins, as in `rows_to_arrow`)."""
    bad = unreadable(raw) if bad is None else bad
    invalid: list[str | None] = [None] * raw.num_rows
    arrays = []
    for i, c in enumerate(contract.columns):
        col = raw.column(i)
        rows: dict[int, str] = {r: what.reason
                                for r, what in bad.get(raw.column_names[i], {}).items()}
        if pa.types.is_date(c.arrow_type):
            rows = {**_not_dates(_storage(col), rows), **rows}
        if rows:
            keep = pa.array([r not in rows for r in range(raw.num_rows)], pa.bool_())
            col = pa.chunked_array([pc.if_else(keep, col.combine_chunks(),
                                               pa.scalar(None, col.type))])
            for r, why in rows.items():
                invalid[r] = invalid[r] or f"{c.name}: {why}"
        arrays.append(conform_column(col, c.arrow_type))
    names = list(contract.names)
    if any(invalid):
        arrays.append(pa.chunked_array([pa.array(invalid, pa.string())]))
        names.append(INVALID)
    return pa.Table.from_arrays(arrays, names=names)


class PgArrowSource(SqlSource):
    """A PostgreSQL source whose pages are read as Arrow through ADBC.

    The probe and any page with an extra `where` (reconciliation) use the psycopg path of
    `SqlSource`; every keyset page of extraction uses ADBC.
    """

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self._adbc: Any = None
        self._socket: tuple[int, str] | None = None
        self._adbc_usable = True
        self._paged_at = 0.0  # monotonic time of the last ADBC page
        self._types = TYPES_BUILTIN  # TYPES_SERVER once a page had a type not built in
        self._psycopg_tables: set[str] = set()  # read through psycopg for good (_adbc_reads)
        # table → (its declared types' dict, contract) found all ADBC_SAME_TYPES; the
        # dict is SqlSource's own, replaced when the types are read again
        self._same_types: dict[str, tuple[dict[str, str] | None, Contract]] = {}
        # (table, key column) → monotonic time a look found no date outside 0001..9999
        self._years_checked: dict[tuple[str, str], float] = {}

    # --- connection -------------------------------------------------------------------
    def _adbc_connect(self) -> Any:
        """An ADBC connection with the session settings, its socket identified.

        Its types are the driver's built-in table of PostgreSQL's own (`TYPES_BUILTIN`)
        until a page shows a column of another type (`page`). Asked to read the server's
        type catalog instead, the driver downloads every type and every relation's
        attributes at every connect (174 KB from a fresh database) and builds its table
        from them: 38 ms of client CPU per connect against 6-12, 12% of a worker's CPU
        over bench/scale.py's full load, and behind a 20 ms round trip a connect took
        0.24 s instead of 0.12."""
        from adbc_driver_postgresql import dbapi

        r = self.config.resilience
        info = conninfo(self.config.dsn or "", {
            "connect_timeout": str(max(2, int(r.connect_timeout))),
            "keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
            "keepalives_count": "3",
            "tcp_user_timeout": str(int(max(r.statement_timeout, r.connect_timeout) * 1000)),
        })
        with _CONNECT_LOCK:  # fewer other new sockets for the fallback below
            before = _sockets()
            try:
                conn = dbapi.connect(info, autocommit=True, db_kwargs={
                    "adbc.postgresql.type_resolver_mode": self._types})
            except Exception as exc:  # noqa: BLE001 - translated below, never swallowed
                raise self._translate(exc, None) from None
            new = [(fd, link) for fd, link in _sockets().items() if before.get(fd) != link]
        ports = _server_ports(self.config.dsn or "")
        guess = _only_to(new, ports, _unix_host(self.config.dsn or ""))
        dog = Watchdog(r.statement_timeout + watchdog_grace(r),
                       lambda: _shutdown(*guess) if guess is not None else None)
        # one statement, one round trip: eight SETs behind a slow link took eight, and the
        # watchdog bounds one statement's time (a store 0.2 s away took 1.6 s here)
        session = ("SELECT " + ", ".join(f"set_config('{name}', '{value}', false)"
                                         for name, value in session_settings(r.statement_timeout))
                   + f", {UTF8_TEXT}, host(inet_client_addr()), inet_client_port()")
        try:
            with dog, conn.cursor() as cur:
                cur.execute(session)
                row = cur.fetchone()
                client = row[-2:] if row is not None else None
        except Exception as exc:  # noqa: BLE001
            conn.close()
            if dog.fired:
                raise SourceTimeout("no answer to the session settings within "
                                    "statement_timeout + grace", stage="extract",
                                    source=self.config.name) from None
            raise self._translate(exc, None) from None
        self._socket = _socket_of(client, ports) or guess
        return conn

    @property
    def adbc(self) -> Any:
        if self._adbc is None:
            self._adbc = self._adbc_connect()
            if self._socket is None:
                # without the socket the watchdog could not unblock a black-holed read
                log.info("ADBC socket not identified; using the psycopg path",
                         extra={"source": self.config.name, "stage": "extract"})
                self._adbc_usable = False
        return self._adbc

    def close(self) -> None:
        self._close_adbc()
        super().close()

    def _close_adbc(self) -> None:
        if self._adbc is not None:
            try:
                self._adbc.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._adbc = None
            self._socket = None

    def poll_end(self, table: str, contract: Contract, observe: bool
                 ) -> tuple[Watermark | None, OpenSince | None]:
        """`SqlSource.poll_end` on the kept psycopg connection; a table whose pages have
        not been read for ADBC_IDLE also gives its ADBC connection back, so an idle table
        holds one connection at the store, a busy one two (ADBC reconnects, with its type
        catalog, when rows come again)."""
        if self._adbc is not None and time.monotonic() - self._paged_at > ADBC_IDLE:
            self._close_adbc()
        return super().poll_end(table, contract, observe)

    def _probe(self, table: str, contract: Contract, names: list[str]) -> list[str]:
        """The probe, and every catalog query and position probe (`poll_end`), run on
        psycopg, whose connection is kept between polls beside the ADBC one: a poll that
        finds nothing is then one round trip on an open connection (through ADBC it would
        be prepare, describe and COPY, and the adaptive lookback's observation and probe
        could not share one message)."""
        self._refuse_unorderable(table, contract)
        return super()._probe(table, contract, names)

    def _refuse_unorderable(self, table: str, contract: Contract) -> None:
        """Refuse, before any page, a cursor (or leading key) holding a date/time no path
        can hold ('infinity', year 10000...): a page ending on it could not continue, and
        skipping it would lose every later row silently.

        Asked of the column's least and greatest values: both columns lead an index, so
        PostgreSQL reads each from one end of it, whatever it knows of the table. The
        plain `WHERE c < '0001-01-01' OR c > '9999-12-31...' LIMIT 1` was planned as a
        sequential scan on a table without statistics (never analyzed: the default
        selectivity of the OR is a third of the table, so LIMIT 1 looked cheap), which
        read every row to find none: 128 ms at 400k rows, every BUSY_PROBE_EVERY on each
        table while rows flow, in the poll before its pages, growing with the table
        (bench/spike.py's stores; autovacuum off)."""
        d = self.dialect
        declared = {k.lower(): v.lower() for k, v in self.declared_types(table).items()}
        leading = (contract.cursor, *contract.primary_key[:1])
        for name in dict.fromkeys((*leading, *contract.order_by)):
            if not declared.get(name.lower(), "").startswith(("timestamp", "date")):
                continue
            col = d.ident(name)
            if name in leading:
                rows = self._execute(
                    table, "SELECT CASE WHEN lo < '0001-01-01' THEN lo::text ELSE hi::text "
                    f"END FROM (SELECT min({col}) AS lo, max({col}) AS hi FROM "
                    f"{d.ident(table)}) AS ends WHERE lo < '0001-01-01' OR "
                    "hi > '9999-12-31 23:59:59.999999'", [])
            else:
                rows = self._outside_years(table, name)
            if rows:
                raise self._unorderable(table, name, OutOfRange.from_text(str(rows[0][0])))

    def _outside_years(self, table: str, name: str) -> list[Any]:
        """A value of key column `name` (not the first: no index reads it from its ends)
        outside 0001..9999, looked for at most every KEY_RECHECK_EVERY once a look found
        none, as `check_null_keys` looks for NULLs: a search that may read every row. A
        page ending on one written since is refused all the same (`_check_position`),
        after the pages before it."""
        looked = self._years_checked.get((table, name))
        if looked is not None and time.monotonic() - looked < KEY_RECHECK_EVERY:
            return []
        d = self.dialect
        col = d.ident(name)
        try:
            rows = self._execute(
                table, f"SELECT {col}::text FROM {d.ident(table)} WHERE {col} < "
                f"'0001-01-01' OR {col} > '9999-12-31 23:59:59.999999' LIMIT 1", [])
        except SourceTimeout:
            log.warning("%s: looking for dates outside 0001..9999 in key column %s took "
                        "longer than statement_timeout (looked for again within the hour)",
                        table, name, extra={"source": self.config.name, "table": table,
                                            "stage": "extract"})
            rows = []
        if not rows:
            self._years_checked[(table, name)] = time.monotonic()
        return list(rows)

    # --- queries ----------------------------------------------------------------------
    def _adbc_query(self, query: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
        """psycopg's `%s` placeholders → exact literals (ADBC then streams binary COPY) or,
        for values we do not format ourselves (text), `$n` bind parameters."""
        parts = query.split("%s")
        if len(parts) - 1 != len(params):
            raise ValueError("placeholder count does not match the parameters")
        out, binds = [parts[0]], []
        for value, rest in zip(params, parts[1:], strict=True):
            lit = _literal(value)
            if lit is None:
                binds.append(value)
                lit = f"${len(binds)}"
            out.append(lit)
            out.append(rest)
        return "".join(out), binds

    def _translate(self, exc: BaseException, table: str | None) -> SteadyflowError:
        import adbc_driver_manager

        if isinstance(exc, SteadyflowError):
            return exc
        state = getattr(exc, "sqlstate", None)
        text = str(exc)
        low = text.lower()
        if not state:
            if "password authentication failed" in low or "no pg_hba.conf entry" in low or (
                    "role" in low and "does not exist" in low):
                state = "28P01"
            elif "database" in low and "does not exist" in low:
                state = "3D000"
            elif "statement timeout" in low:
                state = "57014"
            elif isinstance(exc, adbc_driver_manager.OperationalError | OSError):
                state = "08006"  # connection failure: refused, reset, closed, timed out
        return self.dialect.error(_Coded(text, state), table)

    def _fetch(self, table: str, query: str, binds: list[Any]) -> pa.Table:
        policy = self.config.resilience
        limit = policy.statement_timeout + watchdog_grace(policy)
        conn = self.adbc
        sock = self._socket

        def fire() -> None:
            if sock is not None:
                _shutdown(*sock)

        dog = Watchdog(limit, fire)
        try:
            with dog, conn.cursor() as cur:
                if binds:
                    cur.execute(query, parameters=tuple(binds))
                else:
                    cur.execute(query)
                return cur.fetch_arrow_table()
        except Exception as exc:  # noqa: BLE001 - every driver error is translated
            if isinstance(exc, SteadyflowError):
                raise
            raise self._query_failed(exc, table, dog.fired, limit, self._translate) from None

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
        """One keyset page as Arrow, with the (cursor, key) of its last row.

        The same query as the psycopg path (`SqlSource.page_query`, one select list), so
        either path gives the same values and the same watermark for the same rows."""
        if where is not None or not self._adbc_usable or not self._adbc_reads(table, contract):
            return self._psycopg_page(table, contract, after, since, limit, where, upto)
        self.adbc  # noqa: B018 - connect now: it decides whether ADBC is usable
        if not self._adbc_usable:
            return self._psycopg_page(table, contract, after, since, limit, where, upto)
        self._paged_at = time.monotonic()
        query, params = self.page_query(table, contract, after, since, limit, upto=upto)
        query, binds = self._adbc_query(query, params)
        raw = self._fetch(table, query, binds)
        if self._types == TYPES_BUILTIN and _opaque(raw.schema):
            # a type the driver's table does not hold (an enum, a composite, an extension's
            # type read as itself) arrives as opaque bytes, where the server's catalog may
            # type it: this source reads with the catalog from now on, this page again
            log.info("a page has a column of a type outside PostgreSQL's own; reading "
                     "the server's type catalog at connect", extra={
                         "source": self.config.name, "table": table, "stage": "extract"})
            self._types = TYPES_SERVER
            self._close_adbc()
            return self.page(table, contract, after, since, limit, where, upto)
        odd = _decoded_unlike_psycopg(raw.schema, contract)
        if odd:  # the column's type changed since the probe: this page, and every later one
            self._read_by_psycopg(table, odd)
            return self._psycopg_page(table, contract, after, since, limit, where, upto)
        bad = unreadable(raw)
        if raw.num_rows == 0:
            return conform(raw, contract, bad), None
        last = raw.num_rows - 1
        for name in contract.order_by:
            if last in bad.get(name, {}):
                raise self._unorderable(table, name, bad[name][last])
        # text as its bytes: a SQL_ASCII database's may not be UTF-8 (position_value)
        row = {c: _as_bytes(raw[c].slice(last, 1))[0].as_py() for c in contract.order_by}
        high = self._position(contract, [row[c] for c in contract.order_by])
        return conform(raw, contract, bad), high

    def _adbc_reads(self, table: str, contract: Contract) -> bool:
        """Does ADBC read every column of `table` the contract reads as itself (not as
        text) to the values psycopg gives (`ADBC_SAME_TYPES`)? Asked of the declared types
        (the probe's, read once per table) before a page, and of each page's own column
        types after it (`page`); once not, the table is read through psycopg."""
        if table in self._psycopg_tables:
            return False
        self.declared_types(table)  # read once, kept in self._declared
        known = self._declared.get(table)
        hit = self._same_types.get(table)
        if hit is not None and hit[0] is known and hit[1] == contract:
            return True  # asked of these declared types before
        declared = {k.lower(): _TYPMOD.sub("", v).strip().lower()
                    for k, v in (known or {}).items()}
        odd = sorted(name for _, name in _read_as_themselves(contract)
                     if declared.get(name.lower()) not in ADBC_SAME_TYPES)
        if odd:
            self._read_by_psycopg(table, odd)
        else:
            self._same_types[table] = (known, contract)
        return not odd

    def _read_by_psycopg(self, table: str, columns: list[str]) -> None:
        self._psycopg_tables.add(table)
        log.info("columns of a type ADBC decodes unlike psycopg; reading the table "
                 "through psycopg", extra={"source": self.config.name, "table": table,
                                            "stage": "extract", "columns": columns})

    def _psycopg_page(
        self, table: str, contract: Contract, after: Watermark | None, since: Any | None,
        limit: int, where: tuple[str, Sequence[Any]] | None, upto: Watermark | None = None,
    ) -> tuple[pa.Table, Watermark | None]:
        """`SqlSource.page`, with its watermark typed as the ADBC path types it."""
        rows, high = super().page(table, contract, after, since, limit, where, upto)
        if high is None or where is not None:
            return rows, high
        for name, value in zip(contract.order_by, high.as_tuple(), strict=True):
            if isinstance(value, OutOfRange):
                raise self._unorderable(table, name, value)
        return rows, self._position(contract, list(high.as_tuple()))

    def _position(self, contract: Contract, values: list[Any]) -> Watermark:
        """A watermark from the last row's order values, as either path read them."""
        typed = [self.dialect.position_value(
            v.astimezone(UTC) if isinstance(v, datetime) and v.tzinfo else v,
            contract.column(c).parsed_type) for v, c in zip(values, contract.order_by,
                                                           strict=True)]
        return Watermark(cursor=typed[0], key=tuple(typed[1:]))

class _Coded(Exception):
    """An ADBC error reduced to what `PostgresDialect.error` reads: message and SQLSTATE."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
