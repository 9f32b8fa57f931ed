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
    the connection is opened and shut down if a page outlives statement_timeout + grace.
    If that socket cannot be identified unambiguously, this source uses the psycopg path.
  * error translation: ADBC errors carry the SQLSTATE; they go through the same
    `PostgresDialect.error`, so callers see only AuthError, SchemaError, SourceTimeout,
    SourceUnavailable or FatalError.
  * the probe (missing table/column, schema drift, keyset index check) stays on psycopg.

Types: `numeric` and text-like columns are selected as `::text` when the contract says
decimal or string (ADBC would hand numeric over as an opaque string after a slower
conversion, and uuid/json/varchar all become plain text), then cast with Arrow's exact
casts: a value that does not fit the contract (a widened scale, NaN, an overflow) leaves
the column as text, exactly as `column_to_arrow` does, and validation quarantines the row.
The warehouse column keeps the contract's type (e.g. NUMERIC(12,2)).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc

from steadyflow.config import SourceConfig
from steadyflow.errors import SourceTimeout, SteadyflowError
from steadyflow.extract.sql import SqlSource
from steadyflow.model import Contract, Watermark
from steadyflow.observe import logs
from steadyflow.resilience import Watchdog, watchdog_grace

log = logs.get("extract")

_CONNECT_LOCK = threading.Lock()
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


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


def _shutdown(fd: int, link: str) -> None:
    """shutdown(2) libpq's socket through a dup, if the fd still is that socket."""
    try:
        if os.readlink(f"/proc/self/fd/{fd}") != link:
            return
    except OSError:
        return
    sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


def _literal(value: Any) -> str | None:
    """An exact SQL literal for the value types we format ourselves; None → bind it."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return f"'{value.astimezone(UTC).isoformat(timespec='microseconds')}'::timestamptz"
    if isinstance(value, date):
        return f"'{value.isoformat()}'::date"
    if isinstance(value, Decimal) and value.is_finite():
        return f"'{value}'::numeric"
    return None


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
        return pc.cast(col, target)
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
        return pc.cast(text, target)
    except _CAST_ERRORS:
        return text


def conform(raw: pa.Table, contract: Contract) -> pa.Table:
    arrays = [conform_column(raw.column(i), c.arrow_type)
              for i, c in enumerate(contract.columns)]
    return pa.Table.from_arrays(arrays, names=list(contract.names))


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

    # --- connection -------------------------------------------------------------------
    def _adbc_connect(self) -> Any:
        from adbc_driver_postgresql import dbapi

        r = self.config.resilience
        info = conninfo(self.config.dsn or "", {
            "connect_timeout": str(max(2, int(r.connect_timeout))),
            "keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
            "keepalives_count": "3",
            "tcp_user_timeout": str(int(max(r.statement_timeout, r.connect_timeout) * 1000)),
        })
        with _CONNECT_LOCK:  # so that the one new socket is this connection's
            before = _sockets()
            try:
                conn = dbapi.connect(info, autocommit=True)
            except Exception as exc:  # noqa: BLE001 - translated below, never swallowed
                raise self._translate(exc, None) from None
            new = [(fd, link) for fd, link in _sockets().items() if before.get(fd) != link]
        self._socket = sock = new[0] if len(new) == 1 else None
        dog = Watchdog(r.statement_timeout + watchdog_grace(r),
                       lambda: _shutdown(*sock) if sock is not None else None)
        try:
            with dog, conn.cursor() as cur:
                cur.execute(f"SET statement_timeout = {int(r.statement_timeout * 1000)}")
                cur.execute("SET TimeZone = 'UTC'")
        except Exception as exc:  # noqa: BLE001
            conn.close()
            if dog.fired:
                raise SourceTimeout("no answer to the session settings within "
                                    "statement_timeout + grace", stage="extract",
                                    source=self.config.name) from None
            raise self._translate(exc, None) from None
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
        if self._adbc is not None:
            try:
                self._adbc.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._adbc = None
            self._socket = None
        super().close()

    def probe(self, table: str, contract: Contract) -> list[str]:
        extra = super().probe(table, contract)
        super().close()  # the psycopg connection is not needed for the pages
        return extra

    def declared_types(self, table: str) -> dict[str, str]:
        types = super().declared_types(table)
        super().close()
        return types

    def last_position(self, table: str, contract: Contract) -> Watermark | None:
        position = super().last_position(table, contract)
        super().close()
        return position

    def find_keyset_index(self, table: str, contract: Contract) -> bool:
        found = super().find_keyset_index(table, contract)
        super().close()
        return found

    # --- queries ----------------------------------------------------------------------
    def _arrow_select(self, table: str, contract: Contract) -> str:
        """Decimal and string columns as text: exact, cheap, and the same for any source
        type (numeric, varchar, uuid, json...); Arrow casts them to the contract type."""
        cols = []
        for c in contract.columns:
            ident = self.dialect.ident(c.name)
            t = c.arrow_type
            if pa.types.is_decimal(t) or pa.types.is_string(t):
                cols.append(f"{ident}::text AS {ident}")
            else:
                cols.append(ident)
        return f"SELECT {', '.join(cols)} FROM {self.dialect.ident(table)}"

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
    ) -> tuple[pa.Table, Watermark | None]:
        """One keyset page as Arrow, with the (cursor, key) of its last row."""
        if where is not None or not self._adbc_usable:
            return super().page(table, contract, after, since, limit, where)
        self.adbc  # noqa: B018 - connect now: it decides whether ADBC is usable
        if not self._adbc_usable:
            return super().page(table, contract, after, since, limit, where)
        query, params = self.page_query(table, contract, after, since, limit)
        plain = self._select(table, contract)  # page_query's select list, as psycopg reads it
        query = self._arrow_select(table, contract) + query[len(plain):]
        query, binds = self._adbc_query(query, params)
        raw = self._fetch(table, query, binds)
        if raw.num_rows == 0:
            return conform(raw, contract), None
        order = contract.order_by
        last = raw.select(list(order)).slice(raw.num_rows - 1, 1).to_pylist()[0]
        values = [self._watermark_value(last[c], contract, c) for c in order]
        high = Watermark(cursor=values[0], key=tuple(values[1:]))
        return conform(raw, contract), high

    def _watermark_value(self, value: Any, contract: Contract, name: str) -> Any:
        """The raw database value, as psycopg would have returned it."""
        if isinstance(value, str) and pa.types.is_decimal(contract.column(name).arrow_type):
            try:
                return Decimal(value)
            except ArithmeticError:
                return value
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(UTC)
        return self.dialect.from_db(value)


class _Coded(Exception):
    """An ADBC error reduced to what `PostgresDialect.error` reads: message and SQLSTATE."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
