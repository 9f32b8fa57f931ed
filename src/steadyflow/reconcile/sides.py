"""One side of a comparison (a source table, or the warehouse rows of that source) as SQL.

Each method is one query that returns aggregates or (key, hash) pairs, never rows:

    bounds     SELECT min(d), max(d)                                  one index probe
    aggregate  SELECT b, count, sum(term), sum(invalid) ... GROUP BY b  one range scan
               (aggregate_many: several ranges of one level, GROUP BY range, b)
    leaf       SELECT key, cursor, hash ... WHERE range               small ranges only
               (leaf_many: several, as an OR of ranges)
    lookup     SELECT key, cursor, hash ... WHERE key IN (...)        differing keys only
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from steadyflow.extract.sql import catalog_text
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
    """An integer dimension a side is bucketed by, computed alike on every engine:

        int      an integer column, as it is
        time     a timestamp, as µs since 1970-01-01 UTC
        date     a date, as days since 1970-01-01
        decimal  a decimal, as floor(value * 10**scale) (scale 0: the cursor's horizon)
        hash     the row's primary key: the first 60 bits of the md5 of its canonical
                 encoding (`key`: (column, contract type) pairs), in [0, 2**60), on
                 every engine pair (Engine.key_term)
    """

    column: str
    kind: str = "int"
    scale: int = 0
    key: tuple[tuple[str, str], ...] = ()

    @property
    def time(self) -> bool:
        return self.kind == "time"


WIDE_FREE = 2 ** 62  # a range inside ±2**62 subtracts within 64 bits


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
    # [lo, hi) of the first dimension (None: unbounded), an incremental reconcile's bucket
    span: tuple[int | None, int | None] = (None, None)
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

    # --- SQL pieces -------------------------------------------------------------------
    def _exec(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        self.queries += 1
        return self.run(sql, params)

    def _aggregate_run(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        """A bucket query, under the engine's bucket_settings (put back after it, whatever
        happens: the warehouse connection is the pipeline's, and the source's also reads
        rows by key, which the settings would slow down)."""
        e = self.engine
        if not e.bucket_settings:
            return self._exec(sql, params)
        # catalog_text: a SQL_ASCII database's text arrives as bytes, and str() gave
        # "b'on'", which no setting takes (every reconcile of such a source failed)
        before = [(name, catalog_text(self.run(*e.setting(name))[0][0]))
                  for name, _ in e.bucket_settings]
        try:
            for name, value in e.bucket_settings:
                self.run(*e.assign(name, value))
            return self._exec(sql, params)
        finally:
            for name, value in before:
                self.run(*e.assign(name, value))

    def _dim_expr(self, i: int) -> str:
        return self._expr(self.dims[i])

    def _expr(self, d: Dim, col: str | None = None) -> str:
        """The dimension's integer value of a row (of `col`, default its column)."""
        e = self.engine
        x = col or e.q(d.column)
        if d.kind == "time":
            return e.ts_us(x)
        if d.kind == "date":
            return e.days(x)
        if d.kind == "decimal":
            return e.scaled(x, d.scale)
        if d.kind == "hash":
            return e.key_term([(e.q(k), t) for k, t in d.key])
        return x

    def _cmp(self, dim: Dim, op: str, value: int) -> Fragment:
        """dim `op` value (op one of = >= <), on the native column where the engine can
        (uses its index), else on the dimension's expression. `< v` is written `<= v - 1`
        where that is equivalent (integers, µs, days), so a bound past the largest value
        (2**63 for a bigint at its maximum, a day after 9999-12-31) is never written."""
        e, col = self.engine, self.engine.q(dim.column)
        if op == "<" and dim.kind != "decimal":
            op, value = "<=", value - 1
        native = e.native_time and dim.kind in ("time", "date", "decimal")
        if native and dim.kind == "time":
            return f"{col} {op} {e.placeholder}", [self.to_param(datetime_of(value))]
        if native and dim.kind == "date":
            return f"{col} {op} {e.placeholder}", [
                self.to_param(EPOCH_DAY + timedelta(days=value))]
        if native:  # a decimal bound as an exact literal of the column's own type
            return f"{col} {op} {format(Decimal(value).scaleb(-dim.scale), 'f')}", []
        return f"{self._expr(dim)} {op} {e.int_literal(value)}", []

    def _cursor_dim(self) -> Dim:
        """The cursor, in the units of --since and the horizon (cursor_us)."""
        scale = decimal_scale(self._cursor_type)
        if scale is not None:
            return Dim(self.contract.cursor, "decimal", scale=scale)
        kind = {"timestamp": "time", "date": "date"}.get(self._cursor_type, "int")
        return Dim(self.contract.cursor, kind)

    def _base(self) -> list[Fragment]:
        frags: list[Fragment] = []
        if self.where[0]:
            frags.append(self.where)
        cursor = self._cursor_dim()
        if self.since_us is not None:
            frags.append(self._cmp(cursor, ">=", self.since_us))
        if self.before_us is not None:
            frags.append(self._cmp(cursor, "<", self.before_us))
        lo, hi = self.span
        if lo is not None:
            frags.append(self._cmp(self.dims[0], ">=", lo))
        if hi is not None:
            frags.append(self._cmp(self.dims[0], "<", hi))
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
        if e.native_time and dim.kind in ("time", "date", "decimal"):  # monotonic: an index
            lo, hi = self._expr(dim, f"min({col})"), self._expr(dim, f"max({col})")
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
        return self.aggregate_many([(rng, width)])[0]

    def aggregate_many(self, ranges: Sequence[tuple[Range, int]]) -> list[dict[int, Agg]]:
        """Per range, per non-empty sub-bucket, in one statement and one pass: each row's
        hash is computed once, its range `r` picked by a CASE and its sub-bucket by that
        range's (lo, width); the row-hash expression is written once, not once per range
        (it was most of the bytes a difference cost). The ranges of one bisection level
        never overlap (a row is in one at most)."""
        if len(ranges) == 1:
            return [self._aggregate(*ranges[0])]
        e = self.engine
        preds: list[Fragment] = []
        for rng, _ in ranges:
            frags = self._range(rng)
            params: list[Any] = []
            for _, ps in frags:
                params.extend(ps)
            preds.append((" AND ".join(f"({sql})" for sql, _ in frags), params))
        depths = sorted({rng.depth for rng, _ in ranges})
        buckets = []
        for i, (rng, width) in enumerate(ranges):
            d = self.dims[rng.depth]
            wide = d.kind == "decimal" or rng.lo < -WIDE_FREE or rng.hi > WIDE_FREE
            # one bucket: no arithmetic (its width may not even be a 64-bit literal)
            b = "0" if width >= rng.hi - rng.lo else e.bucket(f"d{rng.depth}", rng.lo, width,
                                                               wide)
            buckets.append(f"WHEN {i} THEN {b}")
        pick = " ".join(f"WHEN {sql} THEN {i}" for i, (sql, _) in enumerate(preds))
        dims = "".join(f", {self._dim_expr(j)} AS d{j}" for j in depths)
        inv_sql, inv_params = self._invalid
        where, where_params = self._where([*self._base(), (
            " OR ".join(f"({sql})" for sql, _ in preds), [p for _, ps in preds for p in ps])])
        parts = e.term_parts("h")
        sums = ", ".join(f"sum({p}) AS s{i}" for i, p in enumerate(parts))
        sql = (f"SELECT r, b, inv, count(*) AS n, {sums} FROM ("
               f"SELECT r, CASE r {' '.join(buckets)} END AS b, h, inv FROM ("
               f"SELECT CASE {pick} END AS r{dims}, {e.row_term(self._cols)} AS h, "
               f"{inv_sql} AS inv FROM {self.table}{where}{e.fence}) q0{e.fence}) q1 "
               "GROUP BY r, b, inv")
        params = [p for _, ps in preds for p in ps] + inv_params + where_params
        out: list[dict[int, Agg]] = [{} for _ in ranges]
        for row in self._aggregate_run(sql, params):
            self._add(out[int(row[0])], row[1:])
        return out

    def _aggregate(self, rng: Range, width: int) -> dict[int, Agg]:
        out: dict[int, Agg] = {}
        for row in self._aggregate_run(*self._aggregate_sql(rng, width)):
            self._add(out, row)
        return out

    def _add(self, out: dict[int, Agg], row: Sequence[Any]) -> None:
        """One (b, inv, n, sums...) result row into its bucket's Agg."""
        agg = out.setdefault(int(row[0]), Agg())
        if int(row[1] or 0):
            agg.invalid += int(row[2])
        else:
            agg.rows += int(row[2])
            agg.terms += self.engine.combine(row[3:])

    def _aggregate_sql(self, rng: Range, width: int) -> Fragment:
        e = self.engine
        d = self.dims[rng.depth]
        wide = d.kind == "decimal" or rng.lo < -WIDE_FREE or rng.hi > WIDE_FREE
        # one bucket: no arithmetic (its width may not even be a 64-bit literal)
        bucket = ("0" if width >= rng.hi - rng.lo
                  else e.bucket(self._expr(d), rng.lo, width, wide))
        inv_sql, inv_params = self._invalid
        where, params = self._where(self._base() + self._range(rng))
        parts = e.term_parts("h")
        sums = ", ".join(f"sum({p}) AS s{i}" for i, p in enumerate(parts))
        # grouped by (bucket, invalid) so every per-row expression is referenced once: an
        # engine that inlines the subquery (PostgreSQL, MariaDB) then computes it once
        sql = (f"SELECT b, inv, count(*) AS n, {sums} FROM ("
               f"SELECT {bucket} AS b, {e.row_term(self._cols)} AS h, {inv_sql} AS inv "
               f"FROM {self.table}{where}{e.fence}) q GROUP BY b, inv")
        return sql, inv_params + params

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
        """The canonical cursor as a number where it is one (µs, days, the integer, the
        decimal scaled to an integer), comparable with the horizon; else its text."""
        if text is None:
            return None
        try:
            if self._cursor_type in ("timestamp", "int64", "int32", "date"):
                return int(text)
            scale = decimal_scale(self._cursor_type)
            if scale is not None:  # in the horizon's units: floor(value * 10**scale)
                return cursor_us(Decimal(text), scale)
        except (ValueError, ArithmeticError):
            pass  # not readable as its type: an invalid row
        return text

    def leaf(self, rng: Range) -> list[Row]:
        return self.leaf_many([rng])

    def leaf_many(self, ranges: Sequence[Range]) -> list[Row]:
        """The (key, hash) pairs of several small ranges in one statement (OR of ranges)."""
        preds: list[str] = []
        params: list[Any] = []
        for rng in ranges:
            frags = self._range(rng)
            preds.append(" AND ".join(f"({sql})" for sql, _ in frags))
            for _, ps in frags:
                params.extend(ps)
        pred = " OR ".join(f"({p})" for p in preds)
        sql, all_params = self._pairs_sql([*self._base(), (pred, params)])
        return self._rows(sql, all_params)

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

    def past(self, at: int, limit: int) -> list[Row]:
        """Up to `limit` rows whose cursor is past `at` (the checkpoint's) or NULL, under the
        warehouse filter only: rows no comparison bounded by the horizon sees. In the
        warehouse none can be loaded yet (a batch holds rows up to the checkpoint), so
        each is an extra row or one in flight (table.py looks it up at the source)."""
        sql, params = self._cmp(self._cursor_dim(), ">=", at + 1)
        cursor = self.engine.q(self.contract.cursor)
        return self.matching((f"{sql} OR {cursor} IS NULL", params), limit)

    def matching(self, pred: Fragment, limit: int) -> list[Row]:
        """Up to `limit` rows matching `pred`, under the side's filter only."""
        frags = [f for f in (self.where, pred) if f[0]]
        select, params = self._pairs_sql(frags)
        return self._rows(f"{select} LIMIT {int(limit)}", params)

    def count(self, pred: Fragment) -> int:
        where, params = self._where([pred])
        rows = self._exec(f"SELECT count(*) AS c0 FROM {self.table}{where}", params)
        return int(rows[0][0]) if rows else 0


def key_predicate(engine: Engine, columns: Sequence[str], keys: Sequence[Sequence[Any]],
                  to_param: Callable[[Any], Any] = lambda v: v) -> Fragment:
    """`(a = ? AND b = ?) OR ...`: index lookups on every engine (MariaDB does not use an
    index for row-value IN lists)."""
    one = " AND ".join(f"{engine.compared(c)} = {engine.placeholder}" for c in columns)
    params: list[Any] = []
    for key in keys:
        params.extend(to_param(v) for v in key)
    return " OR ".join(f"({one})" for _ in keys) or "1 = 0", params


def cursor_us(value: Any, scale: int = 0) -> int | None:
    """A --since value or a checkpoint cursor as the integer the cursor dimension uses:
    µs for a time (SQLite text parsed as extraction loads it), days for a date, an integer,
    floor(value * 10**scale) for a decimal(p,scale). None if it is none of these (then there
    is no horizon)."""
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
    if isinstance(value, int):
        return value * 10 ** scale
    if isinstance(value, Decimal):
        with localcontext() as ctx:
            ctx.prec = 200  # exact for any decimal(38,s)
            return math.floor(value.scaleb(scale))
    return None
