"""MariaDB → Arrow without Python rows: keyset pages read by connectorx (Rust, binary protocol).

pymysql decodes every value in Python (the DATETIME(6) columns alone were 40% of a full
load's CPU) and `rows_to_arrow` then builds Arrow from Python objects again. `MysqlArrowSource`
reads the same keyset pages with connectorx, which decodes MariaDB's binary result rows
straight into Arrow buffers, and conforms them to the contract with Arrow compute.

Same query, same values. The page is `SqlSource.page_query` itself (same order, same index
hint, same upper bound); only:
  * the parameters are inlined as exact literals, spelled as pymysql spells them (pymysql
    interpolates on the client too, so the server sees the same comparison); a value with
    no literal that means the same under every sql_mode (text with a backslash or NUL,
    bytes) sends that page through pymysql;
  * DECIMAL columns are selected as MariaDB's own text (`CAST(... AS CHAR)`): connectorx
    turns DECIMAL into a 96-bit decimal and fails (or panics) past 28 digits;
  * BIT columns are selected as their number (`CAST(... AS UNSIGNED)`; read as string,
    its decimal text), as on the pymysql path (`MysqlDialect.select_expr`);
  * the query runs as `SET STATEMENT max_statement_time=..., time_zone='+00:00' FOR ...`:
    the server-side statement limit and the UTC session of `MysqlDialect.connect`, per
    statement, since connectorx opens its own connection and runs no session setup.
Each column is then cast with Arrow where that cast is exact and is what pymysql's path
gives for the same stored value (int → int, double → float64, DATETIME → timestamp, DATE,
text, DECIMAL text → decimal, UTF-8 bytes → text); anything else (a value that does not
fit, bool from TINYINT, bytes that are not UTF-8...) goes through `column_to_arrow` on the
very Python values pymysql would have produced, so a row that does not fit costs that row
with the same reason on both paths. `tests/integration/test_mysql_read_paths.py` compares
both paths value for value.

Which pages: connectorx opens a connection per page (its own pool, per call), so the first
page of a cursor-order pass and any after a short one (a follow-mode poll that found a few
changed rows, the normal case) are read on the pymysql connection the source keeps between
cycles; every page in key order (a first load and each of its key ranges) and a
cursor-order page after a full one, or after one of at least BULK_ROWS rows, are read by
connectorx: a backfill is read fast throughout, a burst of changes from its second page
on, and a table whose polls keep finding hundreds of rows (a spike in follow mode) from its
next poll on. Measured on the spike bench's six-column table (CPU per call, MariaDB on
loopback): connectorx ~2 ms whatever the size (a connection and a query) against
pymysql's ~10 us per row: 600 rows 2.1 vs 6.2 ms, 2,500 rows 3.4 vs 30 ms.

Where the fast path is not used (pymysql instead, same values):
  * a table whose contract reads a column of a type not checked here (TIME, FLOAT,
    spatial, ...; see `_FAST_TYPES`), and MySQL (not MariaDB): the statement prefix above
    is MariaDB's;
  * a page holding a value connectorx cannot decode (a zero date '0000-00-00', which
    pymysql returns as text): connectorx panics, and that page is read again by pymysql;
  * reconciliation's `where` pages.

Hangs: the server ends a slow page (max_statement_time). The client side cannot reach
connectorx's socket during the call, nor its connection pool, which retries a failed
connect for 30 s whatever the timeouts; so the read runs on a worker thread that the page
waits for at most statement_timeout + grace. Past that the page fails as a SourceTimeout
(retried, smaller, like any other), the sockets this call opened to the server are shut
down so the worker ends, and TCP keepalives and tcp_user_timeout (URL parameters) bound a
dead link in any case.

Secrets: connectorx takes the password inside its URL. The URL is built here, passed to
connectorx only, and never logged; connectorx's messages are translated by
`MysqlDialect.error` (redacted) after `secrets.scrub`.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import threading
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pymysql

from steadyflow import secrets
from steadyflow.arrow_types import cast_text_decimal
from steadyflow.config import SourceConfig
from steadyflow.errors import SourceTimeout
from steadyflow.extract.arrow_values import page_table, rows_to_arrow
from steadyflow.extract.dialects import bit_number, text_of_time
from steadyflow.extract.sql import SqlSource
from steadyflow.model import Contract, Watermark
from steadyflow.observe import logs
from steadyflow.resilience import watchdog_grace

log = logs.get("extract")
# a cursor-order page at least this long sends the table's next page to connectorx (its
# fixed cost per call is below pymysql's decoding of that many rows: see the docstring)
BULK_ROWS = 300

# Declared MariaDB types (information_schema column_type, before any '(' or attribute)
# whose values connectorx reads exactly as pymysql does (checked value for value by the
# read-path test). TIME is not here: connectorx refuses negative and > 24 h times; FLOAT
# neither: the binary protocol gives the float32 itself, pymysql the server's shortest text.
_FAST_TYPES = frozenset({
    "tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year", "double",
    "decimal", "numeric", "char", "varchar", "tinytext", "text", "mediumtext", "longtext",
    "json", "enum", "set", "binary", "varbinary", "tinyblob", "blob", "mediumblob",
    "longblob", "bit", "date", "datetime", "timestamp",
})
_DECIMAL_TYPES = frozenset({"decimal", "numeric"})
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
_CODE = re.compile(r"ERROR (\d+) \(")


def base_type(declared: str) -> str:
    """'decimal(12,2) unsigned' → 'decimal'; 'bigint(20) unsigned' → 'bigint'."""
    return declared.strip().lower().split("(", 1)[0].split(" ", 1)[0]


def literal(value: Any) -> str | None:
    """`value` as the literal pymysql would interpolate for it, or None where no literal
    means the same under every sql_mode (then the page is read through pymysql).

    Text is quoted by doubling quotes, which means the same with and without
    NO_BACKSLASH_ESCAPES; it takes the column's collation like pymysql's literal does
    (a literal is coercible). Text with a backslash or NUL is left to pymysql."""
    if isinstance(value, str):
        if "\\" in value or "\x00" in value:
            return None
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool | int | float | Decimal | datetime | date):
        return str(pymysql.converters.escape_item(value, "utf8mb4"))
    return None


def url_for(dsn: str, connect_timeout: float, user_timeout: float, tls: bool = False) -> str:
    """connectorx's URL for a `mysql://` DSN: the same host, port, user, password and
    database `MysqlDialect.connect` uses (the DSN's own query is ignored there too), over
    TCP (prefer_socket would switch 127.0.0.1 to the unix socket, around any proxy), with
    keepalives and a connect timeout. Holds the password: never log it.

    `tls`: the source's pymysql session is encrypted (its PREFERRED mode found TLS
    offered), so connectorx's must be too: `ssl-mode=REQUIRED`, the certificate
    unchecked as PREFERRED leaves it. Without it connectorx connects in plain text
    whatever the server offers: the pages crossed the network unencrypted beside an
    encrypted pymysql session, and an account that must use TLS (REQUIRE SSL) was
    refused every page ('Access denied', reported as a wrong password)."""
    parts = urlsplit(dsn)
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    user = quote(unquote(parts.username or "root"), safe="")
    password = secrets.dsn_password(dsn)
    auth = user + (":" + quote(password, safe="") if password else "")
    database = quote(unquote((parts.path or "/").lstrip("/")), safe="")
    params = (f"prefer_socket=false&tcp_connect_timeout_ms={int(connect_timeout * 1000)}"
              "&tcp_keepalive_time_ms=5000&tcp_keepalive_probe_interval_secs=2"
              f"&tcp_keepalive_probe_count=3&tcp_user_timeout_ms={int(user_timeout * 1000)}")
    if tls:
        params += "&ssl-mode=REQUIRED"
    return f"mysql://{auth}@{host}:{parts.port or 3306}/{database}?{params}"


class _Unreadable(Exception):
    """connectorx could not decode a value of the page (it panicked): read it by pymysql."""


def _is_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


class _Coded(Exception):
    """A connectorx error reduced to what `MysqlDialect.error` reads: (code, message)."""


_CONNECTION_TROUBLE = ("waiting for connection", "IO error", "DriverError", "CodecError",
                       "os error", "Connection")


def _coded(exc: BaseException) -> BaseException:
    """A server error keeps its code; a failed connection is an OSError; anything else
    (a type or value connectorx does not handle) → _Unreadable: read by pymysql."""
    text = secrets.scrub(str(exc))
    match = _CODE.search(text)
    if match:
        return _Coded(int(match.group(1)), text)
    if any(t in text for t in _CONNECTION_TROUBLE):
        return OSError(text)
    return _Unreadable(text)


# --- the watchdog's reach: sockets this process opened to the server ------------------------
def _server_sockets(addresses: set[tuple[str, int]]) -> dict[int, str]:
    """{fd: 'socket:[inode]'} of this process's TCP sockets connected to `addresses`."""
    out: dict[int, str] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        fd = int(name)
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
            if not link.startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:  # closes the dup only
                if sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                peer = sock.getpeername()
        except OSError:
            continue
        if (peer[0], peer[1]) in addresses:
            out[fd] = link
    return out


def _shutdown_new(before: dict[int, str], addresses: set[tuple[str, int]]) -> None:
    """shutdown(2) the sockets to the server opened since `before` (the stuck read's; a
    connection another thread opened meanwhile would only see one retried failure)."""
    for fd, link in _server_sockets(addresses).items():
        if before.get(fd) == link:
            continue
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                if os.readlink(f"/proc/self/fd/{fd}") == link:
                    sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class MysqlArrowSource(SqlSource):
    """A MariaDB source whose keyset pages are read as Arrow by connectorx; the probe,
    the catalog and every page the fast path cannot express use pymysql (`SqlSource`)."""

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self._mariadb: bool | None = None
        # (table, contract) → each contract column's declared base type; None: pymysql
        self._plans: dict[tuple[str, Contract], tuple[str, ...] | None] = {}
        # (table, keyset order) → was its last page full? (see `_bulk`)
        self._full: dict[tuple[str, tuple[str, ...]], bool] = {}

    # --- when the fast path applies --------------------------------------------------------
    def _is_mariadb(self) -> bool:
        if self._mariadb is None:
            self._mariadb = "mariadb" in str(self.conn.get_server_info()).lower()
        return self._mariadb

    def _plan(self, table: str, contract: Contract) -> tuple[str, ...] | None:
        """Each contract column's declared base type, or None: read this table by pymysql."""
        if (table, contract) in self._plans:
            return self._plans[(table, contract)]
        declared = {k.lower(): base_type(v) for k, v in self.declared_types(table).items()}
        kinds = tuple(declared.get(c.name.lower(), "") for c in contract.columns)
        usable = self._is_mariadb() and all(k in _FAST_TYPES for k in kinds)
        if not usable:
            log.info("%s: pages read by pymysql (a column type or the server is not one "
                     "the Arrow path reads)", table,
                     extra={"source": self.config.name, "table": table, "stage": "extract"})
        self._plans[(table, contract)] = kinds if usable else None
        return kinds if usable else None

    # --- pages -----------------------------------------------------------------------------
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
        """One keyset page as Arrow, with the (cursor, key) of its last row: the same
        rows, values and watermark as `SqlSource.page`, which reads what this cannot."""
        kinds = self._plan(table, contract) if where is None else None
        if kinds is None or not self._bulk(table, contract):
            return self._pymysql_page(table, contract, after, since, limit, where, upto)
        query, params = self.page_query(table, contract, after, since, limit, upto=upto)
        sql = self._inline(self._fast_select(table, contract, kinds, query), params)
        if sql is None:
            return self._pymysql_page(table, contract, after, since, limit, where, upto)
        # the link first, on the connection already open: a server that is down or cut off
        # fails here at once (retried, the breaker counts it), not after connectorx's
        # pool has retried connecting for 30 s
        self._execute(table, "SELECT 1", [])
        try:
            raw = self._fetch(table, sql)
        except _Unreadable:
            log.info("%s: a page holds a value the Arrow path cannot decode (a zero "
                     "date?); read by pymysql", table,
                     extra={"source": self.config.name, "table": table, "stage": "extract"})
            return self._pymysql_page(table, contract, after, since, limit, where, upto)
        self._full[(table, contract.order_by)] = raw.num_rows >= min(limit, BULK_ROWS)
        if raw.num_rows == 0:
            return rows_to_arrow([], contract), None
        self.refuse_binary_keys(table, contract, lambda i: raw.column(i).to_pylist())
        last = raw.slice(raw.num_rows - 1, 1).to_pylist()[0].values()
        high = self._high(table, contract, [_as_pymysql(v, kind)
                                            for v, kind in zip(last, kinds, strict=True)])
        return conform(raw, contract, kinds), high

    def _pymysql_page(
        self, table: str, contract: Contract, after: Watermark | None, since: Any | None,
        limit: int, where: tuple[str, Sequence[Any]] | None, upto: Watermark | None,
    ) -> tuple[pa.Table, Watermark | None]:
        """`SqlSource.page`; notes whether a keyset page came back full."""
        rows, high = super().page(table, contract, after, since, limit, where, upto)
        if where is None:
            self._full[(table, contract.order_by)] = rows.num_rows >= min(limit, BULK_ROWS)
        return rows, high

    def _bulk(self, table: str, contract: Contract) -> bool:
        """Read this page by connectorx? Always in key order (a first load, or one of its
        key ranges); in cursor order only after a full page, or one of BULK_ROWS rows (the
        first page of a poll is usually short: connecting, and importing connectorx in a
        new process, would cost more than pymysql decoding it)."""
        if contract.order_by == tuple(contract.primary_key):
            return True
        return self._full.get((table, contract.order_by), False)

    def _fast_select(self, table: str, contract: Contract, kinds: tuple[str, ...],
                     query: str) -> str:
        """The page query with DECIMAL columns selected as MariaDB's text of them, BIT
        columns as their number, and DATE/DATETIME/TIMESTAMP columns read
        as string as their text (as `MysqlDialect.select_expr`)."""
        plain = self._select(table, contract)
        if not query.startswith(plain):
            raise AssertionError("page_query no longer starts with the select list")
        d = self.dialect
        cols = []
        for c, kind in zip(contract.columns, kinds, strict=True):
            ident = d.ident(c.name)
            column = f"{d.ident(table)}.{ident}"
            if kind in _DECIMAL_TYPES:
                cols.append(f"CAST({column} AS CHAR) AS {ident}")
            elif bit_number(kind, c.parsed_type):
                cols.append(f"CAST({column} AS UNSIGNED) AS {ident}")
            elif text_of_time(kind, c.parsed_type):
                cols.append(f"CAST({column} AS CHAR) AS {ident}")
            else:
                cols.append(column)
        return f"SELECT {', '.join(cols)} FROM {d.ident(table)}" + query[len(plain):]

    def _inline(self, query: str, params: Sequence[Any]) -> str | None:
        """pymysql's `%s` placeholders → literals, under the statement's own limits."""
        parts = query.split("%s")
        if len(parts) - 1 != len(params):
            raise ValueError("placeholder count does not match the parameters")
        out = [parts[0]]
        for value, rest in zip(params, parts[1:], strict=True):
            lit = literal(value)
            if lit is None:
                return None
            out += [lit, rest]
        seconds = float(self.config.resilience.statement_timeout)
        return (f"SET STATEMENT max_statement_time={seconds:g}, time_zone='+00:00' FOR "
                + "".join(out))

    def encrypted(self) -> bool:
        """Is this source's pymysql session to the server TLS (`url_for`)? Asked of the
        open connection (`page` has just run `SELECT 1` on it)."""
        return isinstance(getattr(self.conn, "_sock", None), ssl.SSLSocket)

    def _fetch(self, table: str, sql: str) -> pa.Table:
        """Run one page in connectorx on a worker thread; wait at most statement_timeout
        + grace for it (see the module docstring: Hangs)."""
        import connectorx

        policy = self.config.resilience
        limit = policy.statement_timeout + watchdog_grace(policy)
        url = url_for(self.config.dsn or "", max(1.0, policy.connect_timeout),
                      max(policy.statement_timeout, policy.connect_timeout), self.encrypted())
        addresses = self._addresses()
        before = _server_sockets(addresses)
        box: dict[str, Any] = {}

        def read() -> None:
            try:
                box["table"] = connectorx.read_sql(url, sql, return_type="arrow")
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = exc

        worker = threading.Thread(target=read, name="mysql-arrow-page", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            _shutdown_new(before, addresses)
            self.close()
            raise SourceTimeout(
                f"no answer within statement_timeout + grace ({limit:.0f}s); the page's "
                "connection was shut down", stage="extract", source=self.config.name,
                table=table)
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise exc
            coded = _Unreadable() if _is_panic(exc) else _coded(exc)
            if isinstance(coded, _Unreadable):
                raise coded from None
            raise self._query_failed(coded, table, False, limit,
                                     self.dialect.error) from None
        result: pa.Table = box["table"]
        return result

    def _addresses(self) -> set[tuple[str, int]]:
        parts = urlsplit(self.config.dsn or "")
        host, port = parts.hostname or "127.0.0.1", parts.port or 3306
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return set()
        return {(str(info[4][0]), int(info[4][1])) for info in infos}


# --- values -------------------------------------------------------------------------------
def _as_pymysql(value: Any, kind: str) -> Any:
    """A value as connectorx's Arrow gives it → the Python value pymysql gives for it."""
    if value is not None and kind in _DECIMAL_TYPES:
        try:
            return Decimal(value)
        except InvalidOperation:
            return value
    return value


def _fast_cast(col: pa.ChunkedArray, target: pa.DataType, kind: str
               ) -> pa.ChunkedArray | None:
    """`col` in the contract type by an Arrow cast that gives exactly what `column_to_arrow`
    gives for pymysql's values of it; None where there is no such cast (or it fails)."""
    t = col.type
    exact = (
        (pa.types.is_integer(t) and pa.types.is_integer(target))
        or (pa.types.is_float64(t) and pa.types.is_float64(target))
        or (pa.types.is_timestamp(t) and t.tz is None and pa.types.is_timestamp(target))
        or (pa.types.is_date32(t) and (pa.types.is_date32(target)
                                       or pa.types.is_timestamp(target)))  # its midnight
        or ((pa.types.is_string(t) or pa.types.is_large_string(t))
            and pa.types.is_string(target) and kind not in _DECIMAL_TYPES)
        or ((pa.types.is_binary(t) or pa.types.is_large_binary(t))
            and pa.types.is_string(target))
        or (kind in _DECIMAL_TYPES and pa.types.is_decimal(target)
            and (pa.types.is_string(t) or pa.types.is_large_string(t)))
    )
    if not exact:
        return None
    if t == target:
        return col
    try:
        if pa.types.is_decimal(target) and not pa.types.is_decimal(t):
            # DECIMAL as MariaDB's text: Arrow's cast alone can return garbage
            return pa.chunked_array([cast_text_decimal(col.combine_chunks(), target)])
        return pc.cast(col, target)
    except _CAST_ERRORS:
        return None


def conform(raw: pa.Table, contract: Contract, kinds: tuple[str, ...]) -> pa.Table:
    """The page in contract types, with model.INVALID as `rows_to_arrow` makes it."""
    columns: list[pa.ChunkedArray | list[Any]] = []
    for i, (c, kind) in enumerate(zip(contract.columns, kinds, strict=True)):
        col = raw.column(i)  # chunked as connectorx made it: combining would copy the page
        fast = _fast_cast(col, c.arrow_type, kind)
        columns.append([_as_pymysql(v, kind) for v in col.to_pylist()] if fast is None
                       else fast)
    return page_table(contract, raw.num_rows, columns)


__all__ = ["MysqlArrowSource", "base_type", "conform", "literal", "url_for"]
