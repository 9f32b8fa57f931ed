"""Incremental extraction from SQL databases: keyset pages in (cursor, key) order as Arrow.

Never OFFSET: each page starts strictly after the last (cursor, key) pair, so a page costs
one index range scan whatever the table size, and rows sharing a cursor value are neither
skipped nor re-read forever. The lookback re-read starts at `cursor >= since` instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from steadyflow.config import SourceConfig
from steadyflow.errors import SteadyflowError
from steadyflow.extract.dialects import DRIVER_ERRORS, Dialect, dialect_for
from steadyflow.model import Contract, Watermark


def column_to_arrow(values: Sequence[Any], target: pa.DataType) -> pa.Array:
    """Convert one column, keeping the contract type when every value fits it.

    A value that does not fit (text in an integer column of a SQLite store, say) must not
    stop extraction: the column then lands as text and validation quarantines that row.
    """
    try:
        return pa.array(values, type=target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        pass
    text = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    try:
        if pa.types.is_timestamp(target):
            naive = pc.cast(pc.replace_substring_regex(text, r"(Z|[+-]00:?00)$", ""),
                            pa.timestamp(target.unit))
            return naive.cast(target)
        return pc.cast(text, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return text


def rows_to_arrow(rows: Sequence[Sequence[Any]], contract: Contract) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in contract.columns]
    arrays = [column_to_arrow(col, c.arrow_type) for col, c in
              zip(columns, contract.columns, strict=True)]
    return pa.Table.from_arrays(arrays, names=list(contract.names))


class SqlSource:
    """One connection to one store database; pages through its tables."""

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.dialect: Dialect = dialect_for(config)
        self._conn: Any = None

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self.dialect.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except DRIVER_ERRORS:
                pass
            self._conn = None

    def _execute(self, table: str, query: str, params: Sequence[Any]) -> list[Any]:
        try:
            cur = self.conn.cursor()
            try:
                cur.execute(query, list(params))
                return list(cur.fetchall())
            finally:
                cur.close()
        except DRIVER_ERRORS as exc:
            translated = self.dialect.error(exc, table)
            if translated.retryable:
                self.close()  # the connection may be dead; reconnect on the next try
            raise translated from None

    def _select(self, table: str, contract: Contract) -> str:
        cols = ", ".join(self.dialect.ident(c) for c in contract.names)
        return f"SELECT {cols} FROM {self.dialect.ident(table)}"

    def probe(self, table: str, contract: Contract) -> None:
        """Fail fast, naming the table or column, before any page is read."""
        self._execute(table, f"{self._select(table, contract)} WHERE 1 = 0", [])

    def page(
        self,
        table: str,
        contract: Contract,
        after: Watermark | None,
        since: Any | None,
        limit: int,
        where: tuple[str, Sequence[Any]] | None = None,
    ) -> tuple[pa.Table, Watermark | None]:
        """Read one keyset page; returns the rows and the (cursor, key) of the last row."""
        d = self.dialect
        order = contract.order_by
        preds: list[str] = []
        params: list[Any] = []
        if after is not None:
            preds.append(d.keyset(order))
            params.extend(d.keyset_params([d.to_param(v) for v in after.as_tuple()]))
        elif since is not None:
            preds.append(f"{d.ident(contract.cursor)} >= {d.placeholder}")
            params.append(d.to_param(since))
        if where is not None:
            preds.append(where[0])
            params.extend(where[1])
        query = self._select(table, contract)
        if preds:
            query += " WHERE " + " AND ".join(preds)
        query += " ORDER BY " + ", ".join(d.ident(c) for c in order) + f" LIMIT {int(limit)}"
        rows = self._execute(table, query, params)
        if not rows:
            return rows_to_arrow([], contract), None
        names = contract.names
        last = rows[-1]
        high = Watermark(
            cursor=d.from_db(last[names.index(contract.cursor)]),
            key=tuple(d.from_db(last[names.index(k)]) for k in order[1:]),
        )
        return rows_to_arrow(rows, contract), high

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
    return isinstance(exc, DRIVER_ERRORS) and not isinstance(exc, SteadyflowError)
