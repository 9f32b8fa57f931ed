"""One side of a comparison (a source table, or the warehouse rows of that source) as SQL.

Each method is one query that returns aggregates or (key, hash) pairs, never rows:

    bounds     SELECT min(d), max(d)                                  one index probe
    aggregate  SELECT b, count, sum(term), sum(invalid) ... GROUP BY b  one range scan
    leaf       SELECT key, cursor, hash ... WHERE range               small ranges only
    lookup     SELECT key, cursor, hash ... WHERE key IN (...)        differing keys only
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from steadyflow.model import TEXT_DATE, Contract
from steadyflow.reconcile.bisect import Agg, Range, Row
from steadyflow.reconcile.encoding import (
    EPOCH_DAY,
    datetime_of,
    decimal_scale,
    timestamp_us,
    us_of,
)
from steadyflow.reconcile.engines import Engine, Fragment

Run = Callable[[str, list[Any]], list[tuple[Any, ...]]]
LOOKUP_CHUNK = 400


@dataclass(frozen=True, slots=True)
class Dim:
    """An integer dimension: a key column, or the cursor (`time`: a timestamp, as µs)."""

    column: str
    time: bool = False
    date: bool = False  # a date, as days since 1970-01-01 (the cursor's horizon only)


@dataclass
class SqlSide:
    engine: Engine
    table: str  # already quoted, schema-qualified if needed
    contract: Contract
    run: Run
    dims: Sequence[Dim]
    where: Fragment = ("", [])  # always applied (the warehouse filter)
    since_us: int | None = None  # cursor >= since
    before_us: int | None = None  # cursor < horizon
    validity: bool = False  # flag rows that are certainly invalid (a source side)
    to_param: Callable[[Any], Any] = lambda v: v
    queries: int = 0
    _invalid: Fragment = field(init=False)

    def __post_init__(self) -> None:
        e = self.engine
        self._cols = [(e.q(c.name), c.type) for c in self.contract.columns]
        preds: list[str] = []
        params: list[Any] = []
        if self.validity:
            for c in self.contract.columns:
                sql, ps = e.invalid(e.q(c.name), c)
                if sql:
                    preds.append(sql)
                    params.extend(ps)
        self._invalid = ((f"CASE WHEN {' OR '.join(f'({p})' for p in preds)} THEN 1 ELSE 0 END"
                          if preds else "0"), params)
        self._cursor_type = self.contract.column(self.contract.cursor).type.strip().lower()
        self._cursor_time = self._cursor_type == "timestamp"

    # --- SQL pieces -------------------------------------------------------------------
    def _exec(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        self.queries += 1
        return self.run(sql, params)

    def _dim_expr(self, i: int) -> str:
        d = self.dims[i]
        return self.engine.ts_us(self.engine.q(d.column)) if d.time else self.engine.q(d.column)

    def _time_param(self, us: int) -> Any:
        return self.to_param(datetime_of(us))

    def _cmp(self, dim: Dim, op: str, value: int) -> Fragment:
        """dim `op` value, on the native column where the engine can (uses its index)."""
        e, col = self.engine, self.engine.q(dim.column)
        if dim.date:
            day = EPOCH_DAY + timedelta(days=value)
            return f"{col} {op} {e.placeholder}", [
                day.isoformat() if e.kind == "sqlite" else self.to_param(day)]
        if dim.time and e.native_time:
            return f"{col} {op} {e.placeholder}", [self._time_param(value)]
        if dim.time:
            return f"{e.ts_us(col)} {op} {int(value)}", []
        return f"{col} {op} {int(value)}", []

    def _base(self) -> list[Fragment]:
        frags: list[Fragment] = []
        if self.where[0]:
            frags.append(self.where)
        cursor = Dim(self.contract.cursor, time=self._cursor_time,
                     date=self._cursor_type == "date")
        if self.since_us is not None:
            frags.append(self._cmp(cursor, ">=", self.since_us))
        if self.before_us is not None:
            frags.append(self._cmp(cursor, "<", self.before_us))
        return frags

    def _range(self, rng: Range) -> list[Fragment]:
        frags = [self._cmp(self.dims[i], "=", v) for i, v in enumerate(rng.prefix)]
        dim = self.dims[rng.depth]
        frags.append(self._cmp(dim, ">=", rng.lo))
        frags.append(self._cmp(dim, "<", rng.hi))
        return frags

    @staticmethod
    def _where(frags: list[Fragment]) -> Fragment:
        if not frags:
            return "", []
        params: list[Any] = []
        for _, ps in frags:
            params.extend(ps)
        return " WHERE " + " AND ".join(f"({sql})" for sql, _ in frags), params

    # --- the Side protocol -------------------------------------------------------------
    def bounds(self, prefix: tuple[int, ...]) -> tuple[int, int] | None:
        e = self.engine
        dim = self.dims[len(prefix)]
        col = e.q(dim.column)
        if dim.time and e.native_time:
            lo, hi = e.ts_us(f"min({col})"), e.ts_us(f"max({col})")
        else:
            expr = self._dim_expr(len(prefix))
            lo, hi = f"min({expr})", f"max({expr})"
        frags = self._base() + [self._cmp(self.dims[i], "=", v) for i, v in enumerate(prefix)]
        where, params = self._where(frags)
        rows = self._exec(f"SELECT {lo} AS c0, {hi} AS c1 FROM {self.table}{where}", params)
        if not rows or rows[0][0] is None:
            return None
        return int(rows[0][0]), int(rows[0][1])

    def aggregate(self, rng: Range, width: int) -> dict[int, Agg]:
        e = self.engine
        dim = self._dim_expr(rng.depth)
        bucket = e.idiv(f"{e.as_int(dim)} - {int(rng.lo)}", width)
        inv_sql, inv_params = self._invalid
        where, params = self._where(self._base() + self._range(rng))
        parts = e.term_parts("h")
        sums = ", ".join(f"sum({p}) AS s{i}" for i, p in enumerate(parts))
        # grouped by (bucket, invalid) so every per-row expression is referenced once: an
        # engine that inlines the subquery (PostgreSQL, MariaDB) then computes it once
        sql = (f"SELECT b, inv, count(*) AS n, {sums} FROM ("
               f"SELECT {bucket} AS b, {e.row_term(self._cols)} AS h, {inv_sql} AS inv "
               f"FROM {self.table}{where}{e.fence}) q GROUP BY b, inv")
        out: dict[int, Agg] = {}
        for row in self._exec(sql, inv_params + params):
            agg = out.setdefault(int(row[0]), Agg())
            if int(row[1] or 0):
                agg.invalid += int(row[2])
            else:
                agg.rows += int(row[2])
                agg.terms += e.combine(row[3:])
        return out

    def _pairs_sql(self, frags: list[Fragment]) -> Fragment:
        e = self.engine
        keys = self.contract.primary_key
        cursor = self.contract.cursor
        ctype = {c.name: c.type for c in self.contract.columns}
        select = [f"{e.canon(e.q(k), ctype[k])} AS k{i}" for i, k in enumerate(keys)]
        select += [f"{e.q(k)} AS r{i}" for i, k in enumerate(keys)]
        select.append(f"{e.canon(e.q(cursor), ctype[cursor])} AS cur")
        select.append(f"{e.row_hash(self._cols)} AS h")
        inv_sql, inv_params = self._invalid
        select.append(f"{inv_sql} AS inv")
        where, params = self._where(frags)
        return f"SELECT {', '.join(select)} FROM {self.table}{where}", inv_params + params

    def _rows(self, sql: str, params: list[Any]) -> list[Row]:
        n = len(self.contract.primary_key)
        out = []
        for r in self._exec(sql, params):
            out.append(Row(key=tuple(r[:n]), raw=tuple(r[n:2 * n]),
                           cursor=self._cursor_value(r[2 * n]), hash=str(r[2 * n + 1]),
                           invalid=bool(r[2 * n + 2])))
        return out

    def _cursor_value(self, text: Any) -> Any:
        """The canonical cursor as a number where it is one (µs, days, the integer or the
        decimal), comparable with the horizon; else its text."""
        if text is None:
            return None
        try:
            if self._cursor_type in ("timestamp", "int64", "int32", "date"):
                return int(text)
            if decimal_scale(self._cursor_type) is not None:
                return Decimal(text)
        except (ValueError, ArithmeticError):
            pass  # not readable as its type: an invalid row
        return text

    def leaf(self, rng: Range) -> list[Row]:
        sql, params = self._pairs_sql(self._base() + self._range(rng))
        return self._rows(sql, params)

    def flagged(self) -> list[Row]:
        """The rows the validity predicate flags (left out of every bucket's checksum), under
        the same bounds: they are not compared, but whether each is in quarantine is
        checked (table.py), so it is never assumed."""
        sql, params = self._invalid
        return self._rows(*self._pairs_sql([*self._base(), (f"({sql}) = 1", list(params))]))

    def lookup(self, keys: Sequence[Sequence[Any]]) -> list[Row]:
        """Rows with these keys (driver-ready values), whatever their cursor: only the
        warehouse filter applies."""
        out: list[Row] = []
        for i in range(0, len(keys), LOOKUP_CHUNK):
            pred = key_predicate(self.engine, self.contract.primary_key,
                                 keys[i:i + LOOKUP_CHUNK], self.to_param)
            frags = [self.where, pred] if self.where[0] else [pred]
            sql, params = self._pairs_sql(frags)
            out.extend(self._rows(sql, params))
        return out

    def count(self, pred: Fragment) -> int:
        where, params = self._where([pred])
        rows = self._exec(f"SELECT count(*) AS c0 FROM {self.table}{where}", params)
        return int(rows[0][0]) if rows else 0


def key_predicate(engine: Engine, columns: Sequence[str], keys: Sequence[Sequence[Any]],
                  to_param: Callable[[Any], Any] = lambda v: v) -> Fragment:
    """`(a = ? AND b = ?) OR ...`: index lookups on every engine (MariaDB does not use an
    index for row-value IN lists)."""
    one = " AND ".join(f"{engine.q(c)} = {engine.placeholder}" for c in columns)
    params: list[Any] = []
    for key in keys:
        params.extend(to_param(v) for v in key)
    return " OR ".join(f"({one})" for _ in keys) or "1 = 0", params


def cursor_us(value: Any) -> int | None:
    """A --since value or a checkpoint cursor as the integer the cursor dimension uses:
    µs for a time (SQLite text parsed as extraction loads it), days for a date, the floor
    of a decimal. None if it is none of these (then there is no horizon)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return us_of(value)
    if isinstance(value, date):
        return (value - EPOCH_DAY).days
    if isinstance(value, str):
        if TEXT_DATE.match(value):
            return (date.fromisoformat(value) - EPOCH_DAY).days
        return timestamp_us(value)
    if isinstance(value, int | Decimal):
        return math.floor(value)
    return None
