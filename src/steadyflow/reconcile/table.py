"""One source table against its warehouse rows: compare, classify, then repair and verify.

  1. bucket both sides and compare (count, checksum) per bucket, bisecting differing buckets
     down to (key, hash) pairs (bisect.py, sides.py) — aggregates cross the network, not rows;
  2. classify every differing key, after looking it up on the other side by key (a row whose
     cursor moved sits in another bucket, or outside --since, on the other side):
       missing     at the source, not in the warehouse
       extra       in the warehouse, not at the source (e.g. hard-deleted at the source)
       mismatched  on both, different content (changed without a cursor bump, corrupted)
       quarantined the source row fails validation: it belongs in quarantine, not in the
                   warehouse (the real validation runs on these few rows; not a difference)
       in flight   the source row's cursor is past the horizon: extraction has not reached it
  3. with repair: load the differences as repair batches (repair.py), then compare again.

Which warehouse rows belong to a source table: all rows of its target, or, when several
source tables feed one target (4 stores → `sales`), the rows matching the table's
`warehouse_filter` (e.g. `{store_id: 3}`), applied on both sides. A target fed by several
tables without distinct filters is refused by config.py, and a row outside its table's
filter is quarantined at load, so the filters partition the target.

How a table is bucketed (`_dims`; every key and cursor type works): by its leading integer
key columns; else by its cursor as an integer (µs, days, the integer, a decimal scaled by
10**scale), whose ranges are index range scans on the (cursor, key) index extraction keeps;
either followed by a 60-bit md5 of the canonical key when the integers do not make a row
unique, so a leaf (a date's rows, a second's) stays small. The key hash alone is the last
resort (`--by key` without integer key columns, a float/string cursor): identical on every
engine, whatever the collation, but a range of it scans the table. The bucket arithmetic is
exact at the ends of int64 (sides.py, engines.Engine.bucket).

The horizon: with a landed batch of the table waiting, rows whose cursor is at or past the
checkpoint minus its lookback may be in flight, so they are not compared; with none, every
row up to the checkpoint is (`_horizon`).
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg

from steadyflow.config import SourceConfig, TableConfig
from steadyflow.errors import ConfigError, SteadyflowError
from steadyflow.extract.sql import SqlSource, catalog_text
from steadyflow.merge.plan import SEQ, tomb_table
from steadyflow.model import Contract, TableRef, Watermark, drift_type, step_back
from steadyflow.reconcile import incremental
from steadyflow.reconcile.bisect import Bisector, Key, Row, Scan
from steadyflow.reconcile.encoding import (
    EPOCH_DAY,
    UTF16_CODECS,
    canonical,
    decimal_scale,
    raw_converter,
    register_sqlite,
)
from steadyflow.reconcile.engines import (
    RECORD_PROBE,
    Engine,
    Fragment,
    PostgresEngine,
    SqliteEngine,
    engine_for,
    record_fields,
)
from steadyflow.reconcile.options import Options
from steadyflow.reconcile.report import FETCH_CHUNK, Current, Findings, TableReport
from steadyflow.reconcile.sides import Dim, SqlSide, cursor_us, key_predicate
from steadyflow.state import Lease

if TYPE_CHECKING:
    import pyarrow as pa

    from steadyflow.run.pipeline import Pipeline

DAY_US = 86_400_000_000


def _duckdb_errors(name: str) -> tuple[type[Exception], ...]:
    """duckdb's exception class `name`, once duckdb is loaded (a DuckDB warehouse loads it);
    none before. This module does not import duckdb, so reconcile into a PostgreSQL
    warehouse never does (~18 MiB of peak RSS on top of pyarrow and psycopg, #15), and no
    duckdb error can arise there."""
    duckdb = sys.modules.get("duckdb")
    return (getattr(duckdb, name),) if duckdb is not None else ()


def errors() -> tuple[type[Exception], ...]:
    """What fails one table, not the command: ours and the drivers'."""
    return (SteadyflowError, psycopg.Error, *_duckdb_errors("Error"))


class TableReconciler:
    """Compares (and repairs) one source table against its rows in the warehouse."""

    def __init__(self, pipeline: Pipeline, source: SourceConfig, table: TableConfig,
                 ref: TableRef, options: Options, run_id: int = 0,
                 unowned_by: dict[str, str] | None = None) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.s, self.t, self.ref = source, table, ref
        self.options = options
        self.run_id = run_id
        self.db = SqlSource(source)
        self.guard = pipeline.guards[source.name]
        self.contract = self._with_drift_columns(self.config.contract_of(table))
        self._registered: object | None = None
        self._mark: tuple[Watermark, int] | None = None  # checkpoint, its cursor as an int
        # the checkpoint the last sides() read, and the one the last comparison ran against
        self._checkpoint: Watermark | None = None
        self._compared_at: Watermark | None = None
        self._types: tuple[dict[str, str], dict[str, str]] | None = None  # see _declared
        self._shared: bool | None = None  # see _shared_hash
        self._servers: dict[str, tuple[int, str]] = {}  # see _server
        self._utf16: bool | None = None  # see _source_engine
        self._record = False  # and hash_record_extended too (PostgreSQL 14+ on both)
        # the last comparison: its incremental plan, the due buckets' scan, the merged scan
        self._last: tuple[incremental.Plan | None, Scan, Scan] | None = None
        self.lease: Lease | None = None  # the table's extraction lease during a repair
        # target -> the table that reports its unowned rows in this reconcile run (_unowned)
        self.unowned_by = {} if unowned_by is None else unowned_by
        self.filter = self._filter()
        self.dims, self.by = self._dims()

    # --- setup --------------------------------------------------------------------------
    def _with_drift_columns(self, contract: Contract) -> Contract:
        """With `schema_drift: add`, the source columns extraction added to the warehouse
        table are compared and repaired like the contract's own: a repair that left them out
        would write NULL over their values."""
        if self.t.schema_drift != "add":
            return contract
        w = self.config.warehouse
        engine = engine_for(w.kind)
        no_table: tuple[type[Exception], ...] = (psycopg.errors.UndefinedTable,
                                                 *_duckdb_errors("CatalogException"))
        try:
            target = self.pipeline.warehouse.query(  # type: ignore[attr-defined]
                f"SELECT * FROM {engine.q(w.schema_)}.{engine.q(self.ref.target)} LIMIT 0")
        except no_table:
            return contract  # nothing loaded yet, so nothing added either
        known = {n.lower() for n in (*contract.names, SEQ)}
        extra = [n for n in target.column_names if n.lower() not in known]
        if not extra:
            return contract
        declared = self.guard.call(lambda: self.db.declared_types(self.t.name),
                                   stop=self.pipeline._stop.is_set)
        at_source = {k.lower(): v for k, v in declared.items()}
        return contract.with_added([[n, drift_type(at_source[n.lower()])] for n in extra
                                    if n.lower() in at_source])

    def _filter(self) -> dict[str, Any]:
        """The warehouse rows this table owns. config.py already refused a filter naming a
        column the contract lacks, and a target fed by several tables without filters."""
        return dict(getattr(self.t, "warehouse_filter", None) or {})

    def _dims(self) -> tuple[list[Dim], str]:
        """How this table is bucketed: by its leading integer key columns (`key`, the
        default), or by its cursor (`cursor`: the default when the key has no integer
        column; an index range scan, as extraction keeps an index on it), either followed
        by a hash of the whole key when the integer columns do not make a row unique, so a
        leaf is always small; with neither, by the key's hash alone (`key hash`: every
        bucket query then scans the table). See docs/reconcile.md."""
        c = self.contract
        free = [k for k in c.primary_key if k not in self.filter and k != c.cursor]
        ints: list[Dim] = []
        for k in free:
            if c.column(k).type not in ("int64", "int32"):
                break
            ints.append(Dim(k))
        rest = [] if len(ints) == len(free) else [self._key_hash()]
        by = self.options.by
        if by in (None, "key") and ints:
            return [*ints, *rest], "key"
        cursor = self._cursor_dim() if by != "key" else None
        if cursor is not None:
            return [cursor, *ints, *rest], "cursor"
        if by == "cursor":
            raise ConfigError(
                f"{self.ref.label}: --by cursor needs a timestamp, date, integer or "
                f"decimal(p,s) cursor with p <= 18; {c.cursor} is "
                f"{c.column(c.cursor).type}", hint="leave --by out: the key's hash is used")
        return [self._key_hash()], "key hash"

    def _cursor_dim(self) -> Dim | None:
        """The cursor as an integer dimension, if its type has one: µs, days, the integer,
        or a decimal scaled to an integer (p <= 18 keeps a valid value inside 64 bits)."""
        ctype = self.contract.column(self.contract.cursor).type.strip().lower()
        kind = {"timestamp": "time", "date": "date", "int64": "int", "int32": "int"}.get(ctype)
        if kind is not None:
            return Dim(self.contract.cursor, kind)
        scale = decimal_scale(ctype)
        if scale is not None and _precision(ctype) <= 18:
            return Dim(self.contract.cursor, "decimal", scale=scale)
        return None

    def _key_hash(self) -> Dim:
        key = tuple((k, self.contract.column(k).type) for k in self.contract.primary_key)
        return Dim("", "hash", key=key)

    def _source_run(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        def once() -> list[tuple[Any, ...]]:
            conn = self.db.conn
            if self.s.kind == "sqlite" and conn is not self._registered:
                register_sqlite(conn)
                self._registered = conn
            return [tuple(r) for r in self.db._execute(self.t.name, sql, params)]

        return self.guard.call(once, stop=self.pipeline._stop.is_set)

    def _warehouse_run(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.pipeline.warehouse.rows(  # type: ignore[attr-defined]
            sql, params)
        return rows

    def _where(self, engine: Engine, to_param: Any) -> Fragment:
        """The warehouse filter, `col = ? AND ...`, on either side."""
        if not self.filter:
            return "", []
        sql = " AND ".join(f"{engine.compared(k)} = {engine.placeholder}" for k in self.filter)
        return sql, [to_param(v) for v in self.filter.values()]

    def _bounds(self) -> tuple[int | None, int | None]:
        since = cursor_us(self.options.since) if self.options.since is not None else None
        if since is not None and not self.contract.cursor_is_time:
            raise ConfigError(f"{self.ref.label}: --since needs a timestamp cursor")
        mark = self._checkpoint = self.pipeline.state.checkpoint(self.ref.source, self.ref.table)
        return since, None if mark is None else self._horizon(mark)

    def _horizon(self, mark: Watermark) -> int | None:
        """Rows at or past the horizon are not compared: they may be in flight.

        With no landed batch of this table waiting, every row up to the checkpoint
        (cursor, key) has been read and loaded, so the horizon is just past the checkpoint's
        cursor, and a differing row *at* that cursor is in flight only if its key is past the
        checkpoint's (asked of the source with extraction's own keyset predicate, in
        `_past_mark`). That holds with a lookback too: a row committed late behind the
        checkpoint is missing now (the next run's re-read would bring it; a repair does), and
        a lost warehouse row inside the lookback is missing, not "in flight". With a batch
        waiting, the horizon is the checkpoint minus the lookback: rows landed and not merged
        yet are not differences.
        """
        pending = any(b.source == self.ref.source and b.table == self.ref.table
                      for b in self.pipeline.state.pending_batches())
        ctype = self.contract.column(self.contract.cursor).type.strip().lower()
        scale = decimal_scale(ctype)
        exact = not pending and (ctype in ("timestamp", "date", "int64", "int32")
                                 or scale is not None)
        value: Any = mark.cursor
        if isinstance(value, str) and (ctype in ("int64", "int32") or scale is not None):
            try:  # a number a SQLite column holds as text
                value = Decimal(value)
            except ArithmeticError:
                return None
        try:
            at = cursor_us(value if exact else step_back(value, self.t.lookback), scale or 0)
        except ValueError as exc:
            raise ConfigError(f"{self.ref.label}: no reconcile horizon: {exc}") from None
        if at is None or not exact:
            return at
        self._mark = (mark, at)
        return at + 1

    def _past_checkpoint(self, wh: SqlSide) -> list[Row]:
        """Warehouse rows whose cursor is past the checkpoint's, or NULL. The horizon keeps
        them out of every comparison, and no loaded batch holds one (a batch's rows are at
        most the checkpoint), so a row inserted there (damage, a restore, a repair's row
        whose source row was deleted before extraction caught up) was never reported: the
        table was clean while the warehouse held a row the source has not. Each is looked
        up at the source (_classify): extra if it is not there, in flight if it is past the
        horizon there too. The checkpoint is the one the horizon was drawn from."""
        mark = self._compared_at
        if mark is None:
            return []
        ctype = self.contract.column(self.contract.cursor).type.strip().lower()
        scale = decimal_scale(ctype)
        value: Any = mark.cursor
        try:
            if isinstance(value, str) and (ctype in ("int64", "int32") or scale is not None):
                value = Decimal(value)
            at = cursor_us(value, scale or 0)
        except (ValueError, ArithmeticError):
            return []
        return [] if at is None else wh.past(at, self.options.max_differences)

    def _unowned(self, wh: SqlSide) -> list[Row]:
        """Warehouse rows of a shared target that no table's warehouse_filter owns, reported
        (extra) by the first of the target's tables this reconcile run compares (each
        compare of that table: its repair's check too), once per run. Each table compares
        only the rows its filter names, so a row owned by none (damage, a restore, a store
        taken out of the config) was in no comparison: every table reconciled clean beside
        it. They were the target's first table's in the config, so `--table` of another
        table of the target was clean beside them. A table without a filter owns every
        row: then there is none to find. The query counts in the report's queries."""
        if not self.filter:
            return []
        feeding = [t for _, t, ref in self.config.tables() if ref.target == self.ref.target]
        if any(not t.warehouse_filter for t in feeding):
            return []
        if self.unowned_by.setdefault(self.ref.target, self.ref.label) != self.ref.label:
            return []
        e = wh.engine
        owned: list[str] = []
        params: list[Any] = []
        for t in feeding:
            assert t.warehouse_filter is not None
            owned.append(" AND ".join(f"{e.q(k)} = {e.placeholder}" for k in t.warehouse_filter))
            params.extend(t.warehouse_filter.values())
        anyone = " OR ".join(f"({p})" for p in owned)
        whole = replace(wh, where=("", []), queries=0)  # the target, under no table's filter
        try:
            return whole.matching((f"NOT ({anyone})", params), self.options.max_differences)
        finally:
            wh.queries += whole.queries

    def _horizon_text(self, at: int) -> str:
        """The horizon as the operator reads the cursor: a time, a date, or a number."""
        ctype = self.contract.column(self.contract.cursor).type.strip().lower()
        try:
            if ctype == "timestamp":
                return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at)
                        ).isoformat()
            if ctype == "date":
                return (EPOCH_DAY + timedelta(days=at)).isoformat()
            scale = decimal_scale(ctype)
            if scale:
                return format(Decimal(at).scaleb(-scale), "f")
        except OverflowError:  # just past 9999-12-31
            pass
        return str(at)

    def _past_mark(self, raw_keys: list[tuple[Any, ...]]) -> set[Key]:
        """Of these source keys (rows at the checkpoint's cursor), the canonical keys past
        the checkpoint: the very predicate the next extraction page starts with."""
        if self._mark is None or not raw_keys:
            return set()
        d, engine = self.db.dialect, self._source_engine()
        ctype = {c.name: c.type for c in self.contract.columns}
        select = ", ".join(f"{engine.canon(engine.q(k), ctype[k])} AS k{i}"
                           for i, k in enumerate(self.contract.primary_key))
        params = d.keyset_params(self.db.keyset_values(
            self.t.name, self.contract.order_by, self._mark[0].as_tuple()))
        past_mark = d.keyset(self.contract.order_by, self.db.compare_casts(self.t.name))
        past: set[Key] = set()
        for i in range(0, len(raw_keys), FETCH_CHUNK):
            keys, key_params = key_predicate(engine, self.contract.primary_key,
                                             raw_keys[i:i + FETCH_CHUNK], d.to_param)
            sql = (f"SELECT {select} FROM {d.ident(self.t.name)} WHERE ({past_mark}) "
                   f"AND ({keys})")
            past.update(tuple(r) for r in self._source_run(sql, [*params, *key_params]))
        return past

    def sides(self) -> tuple[SqlSide, SqlSide]:
        since, horizon = self._bounds()
        w = self.config.warehouse
        to_src = self.db.dialect.to_param
        src_engine, wh_engine = self._source_engine(), engine_for(w.kind)
        src_engine.declare(self._declared()[0])
        wh_engine.declare(self._declared()[1])
        for name, engine in (("source", src_engine), ("warehouse", wh_engine)):
            if isinstance(engine, PostgresEngine):
                engine.server_encoding = self._server(name)[1]
        if self._shared_hash():
            src_engine.shared_hash = wh_engine.shared_hash = True
            if self._record:
                src_engine.record_columns = wh_engine.record_columns = record_fields(
                    src_engine.native, wh_engine.native)
        src = SqlSide(src_engine, self.db.dialect.ident(self.t.name), self.contract,
                      self._source_run, self.dims, where=self._where(src_engine, to_src),
                      since_us=since, before_us=horizon, validity=True, to_param=to_src)
        wh = SqlSide(wh_engine, f"{wh_engine.q(w.schema_)}.{wh_engine.q(self.ref.target)}",
                     self.contract, self._warehouse_run, self.dims,
                     where=self._where(wh_engine, lambda v: v), since_us=since,
                     before_us=horizon)
        return src, wh

    def _declared(self) -> tuple[dict[str, str], dict[str, str]]:
        """Declared column types of the source table and the warehouse table (read once),
        so the PostgreSQL and MariaDB encodings can drop casts and guards a column's own
        type makes pointless (same text, less work per row); {} where not needed."""
        if self._types is None:
            src: dict[str, str] = {}
            if self.s.kind in ("postgres", "mysql"):
                src = self.guard.call(lambda: self.db.declared_types(self.t.name),
                                      stop=self.pipeline._stop.is_set)
            wh: dict[str, str] = {}
            w = self.config.warehouse
            if w.kind == "postgres":
                e = engine_for(w.kind)
                rows = self._warehouse_run(
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
                    " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT"
                    " a.attisdropped", [f"{e.q(w.schema_)}.{e.q(self.ref.target)}"])
                wh = {str(n): str(t) for n, t in rows}
            self._types = (src, wh)
        return self._types

    def _shared_hash(self) -> bool:
        """Whether both sides hash rows with PostgreSQL's hashtextextended instead of md5
        (engines.PostgresEngine.shared_hash): only PostgreSQL on both ends, version 11 or
        later, UTF8 on both, and the same hashes of engines.HASH_PROBE on both (the byte
        order and the algorithm's version checked, not assumed). Asked once per table."""
        if self._shared is None:
            self._shared = (self.s.kind == self.config.warehouse.kind == "postgres"
                            and self._same_hash())
        return self._shared

    def _same_hash(self) -> bool:
        """Also sets _record: both servers 14+ and hashing RECORD_PROBE alike."""
        runs = (self._source_run, self._warehouse_run)
        versions = []
        for name in ("source", "warehouse"):
            version, encoding = self._server(name)
            versions.append(version)
            if version < 110000 or encoding != "UTF8":
                return False
        src, wh = ([str(v) for v in run(*PostgresEngine.probe_sql())[0]] for run in runs)
        if src != wh:
            return False
        if min(versions) >= 140000:
            sql, params = RECORD_PROBE
            a, b = (str(run(f"SELECT {sql} AS h", list(params))[0][0]) for run in runs)
            self._record = a == b
        return True

    def _source_engine(self) -> Engine:
        """The source's engine, told the casts its key comparisons need (compare_casts) and a
        SQLite database's text encoding (PRAGMA encoding),
        asked once: a UTF-16 one passes text to the functions otherwise (SqliteEngine.utf16)."""
        engine = engine_for(self.s.kind)
        engine.casts = self.db.compare_casts(self.t.name)
        if isinstance(engine, SqliteEngine):
            if self._utf16 is None:
                (encoding,), = self._source_run("PRAGMA encoding", [])
                self._utf16 = str(encoding) in UTF16_CODECS
            engine.utf16 = self._utf16
        return engine

    def _server(self, name: str) -> tuple[int, str]:
        """A PostgreSQL side's ("source" or "warehouse") version number and encoding, asked
        once: the shared hash needs both, every md5 the encoding (PostgresEngine.md5)."""
        if name not in self._servers:
            run = self._source_run if name == "source" else self._warehouse_run
            (version, encoding), = run(*PostgresEngine.server_sql())
            self._servers[name] = (int(catalog_text(version)), catalog_text(encoding))
        return self._servers[name]

    # --- the comparison -------------------------------------------------------------------
    def compare(self) -> tuple[TableReport, Findings]:
        started = time.monotonic()
        report = TableReport(self.ref.source, self.ref.table, self.ref.target, by=self.by)
        src, wh = self.sides()
        self._compared_at = self._checkpoint
        report.hash = ("md5" if not self._shared_hash() else "hash_record_extended"
                       if src.engine.record_columns else "hashtextextended")
        report.since = self.options.since.isoformat() if self.options.since else None
        if src.before_us is not None:
            report.horizon = self._horizon_text(src.before_us)
        plan = self._plan()
        scopes = self._scopes(src, wh, plan)
        scans = [self._bisector(s, w).scan() for s, w in scopes[:1]]
        if plan is not None:  # the due buckets: one top-level query a side for them all
            s, w = scopes[1]
            scans.append(self._bisector(s, w).scan_ranges([(b.lo, b.hi) for b in plan.due]))
            report.incremental = {"since": None if plan.since is None else self._horizon_text(
                plan.since), "buckets": len(plan.due), "of": plan.buckets}
        scan = scans[0] if len(scans) == 1 else incremental.merge(scans)
        self._last = (plan, scans[-1], scan)
        report.rows_compared = scan.rows_compared
        report.truncated = scan.truncated
        unseen = [self._past_checkpoint(wh) if src.before_us is not None else [],
                  self._unowned(wh)]
        for rows in unseen:
            for row in rows:
                scan.differing.setdefault(row.key, (None, row))
            # as many as one query fetches: the rest is not looked at (a partial result)
            report.truncated |= len(rows) >= self.options.max_differences
        findings = self._classify(scan, src, wh, report)
        if self.filter:
            sql, params = src.where
            report.outside_filter = src.count((f"NOT ({sql})", params))
        report.pending_batches = sum(
            1 for b in self.pipeline.state.pending_batches()
            if b.source == self.ref.source and b.table == self.ref.table)
        for name in ("buckets", "ranges", "leaves", "warehouse_rows", "leaf_rows"):
            setattr(report, name, getattr(scan, name))
        report.duplicates = len(set(scan.duplicates))
        report.queries = src.queries + wh.queries + sum(s.queries + w.queries
                                                        for s, w in scopes)
        report.seconds = round(time.monotonic() - started, 3)
        return report, findings

    # --- incremental (incremental.py) --------------------------------------------------
    def _bisector(self, src: SqlSide, wh: SqlSide) -> Bisector:
        """Top-level buckets: a UTC day of a time dimension, else max(top_buckets, the
        number an incremental cycle wants: one period / the schedule) ranges."""
        o, run = self.options, self.config.run
        want = math.ceil(run.reconcile_reverify / run.reconcile_every) if (
            run.reconcile_every > 0) else 0
        return Bisector(src, wh, len(self.dims),
                        top_width=DAY_US if self.dims[0].time else None,
                        top_buckets=max(o.top_buckets, min(1024, want)), fanout=o.fanout,
                        leaf_rows=o.leaf_rows, max_differences=o.max_differences)

    def _plan(self) -> incremental.Plan | None:
        """The incremental plan, or None for a full comparison (not asked for, a --since
        or --by run, or no clean reconcile remembered)."""
        if not self.options.incremental or self.options.since or self.options.by:
            return None
        buckets = self.pipeline.state.verified_buckets(self.ref.source, self.ref.table)
        run = self.config.run
        return incremental.plan(buckets, time.time(), run.reconcile_reverify,
                                run.reconcile_every)

    def _scopes(self, src: SqlSide, wh: SqlSide, plan: incremental.Plan | None
                ) -> list[tuple[SqlSide, SqlSide]]:
        """The sides of each comparison (copies: each counts its own queries): the whole
        table; or the rows at or past `since`, then the due buckets."""
        if plan is None:
            return [(replace(src), replace(wh))]
        hot = plan.since if src.since_us is None else max(plan.since or src.since_us,
                                                           src.since_us)
        return [(replace(src, since_us=hot), replace(wh, since_us=hot)),
                (replace(src), replace(wh))]

    def _since_next(self) -> int | None:
        """Where the next incremental reconcile starts comparing by cursor: the checkpoint
        the last comparison ran against minus the lookback (the checkpoint's own row and
        rows in flight are at or past it; so are rows committed late inside the lookback).
        Not the checkpoint now: a `run --follow` beside this reconcile may have moved it
        meanwhile, and the rows it loaded then were in no comparison. None: compare
        everything."""
        mark = self._compared_at
        if mark is None:
            return None
        ctype = self.contract.column(self.contract.cursor).type.strip().lower()
        scale = decimal_scale(ctype)
        value: Any = mark.cursor
        try:
            if isinstance(value, str) and (ctype in ("int64", "int32") or scale is not None):
                value = Decimal(value)
            return cursor_us(step_back(value, self.t.lookback), scale or 0)
        except (ValueError, ArithmeticError):
            return None

    def _remember(self, report: TableReport) -> None:
        """After a clean comparison, the buckets it verified (all of them, for a full one);
        after differences, none: the next reconcile is full. A --since or --by run
        verified only part: nothing changes."""
        if self._last is None or self.options.since or self.options.by:
            return
        state, ref = self.pipeline.state, self.ref
        if report.error is not None or report.final.error is not None:
            return
        if not report.clean:
            state.forget_verified_buckets(ref.source, ref.table)
            return
        plan, buckets, scan = self._last
        now, since = time.time(), self._since_next()
        if plan is None:
            state.save_verified_buckets(ref.source, ref.table,
                                        incremental.layout(scan, now, since), since,
                                        replace=True)
            return
        done = []
        for i, b in enumerate(plan.due):
            agg = buckets.top_aggs.get(i)
            done.append(replace(b, rows=agg.rows if agg else 0, checksum=agg.terms if agg else 0,
                                verified_at=now))
        state.save_verified_buckets(ref.source, ref.table, done, since)

    def _classify(self, scan: Scan, src: SqlSide, wh: SqlSide,
                  report: TableReport) -> Findings:
        pairs: dict[Key, tuple[Row | None, Row | None]] = dict(scan.differing)
        # rows left out of the checksums as invalid: in quarantine is checked, not assumed
        for row in src.flagged() if scan.invalid_rows else []:
            pairs.setdefault(row.key, (row, None))
        # the other side of a one-sided key, found by key wherever its cursor puts it
        lonely_src = [k for k, (s, w) in pairs.items() if w is None and s is not None]
        typed = self._typed([pairs[k][0].raw for k in lonely_src])  # type: ignore[union-attr]
        wanted = [t for t in typed if t is not None]
        for row in wh.lookup(wanted) if wanted else []:
            if row.key in pairs:
                pairs[row.key] = (pairs[row.key][0], row)
        lonely_wh = [w.raw for s, w in pairs.values() if s is None and w is not None]
        for row in src.lookup(lonely_wh) if lonely_wh else []:
            if row.key in pairs:
                pairs[row.key] = (row, pairs[row.key][1])

        found = Findings()
        candidates: dict[Key, tuple[Any, ...]] = {}  # → source raw key
        at_mark: list[Key] = []
        for key, (s, w) in pairs.items():
            if s is None:
                if w is not None:
                    found.extra[key] = w.raw
                continue
            if src.before_us is not None and isinstance(s.cursor, int | Decimal) \
                    and s.cursor >= src.before_us:
                report.in_flight += 1
                continue
            if w is not None and w.hash == s.hash and not s.invalid:
                continue
            candidates[key] = s.raw
            if self._mark is not None and s.cursor == self._mark[1]:
                at_mark.append(key)
            if w is not None and _newer(w.cursor, s.cursor):
                found.ahead[key] = w.raw
        for key in self._past_mark([candidates[k] for k in at_mark]) & set(at_mark):
            del candidates[key]
            found.ahead.pop(key, None)
            report.in_flight += 1
        current = self._read_current(candidates)
        report.quarantined += len(current.parked)
        report.rows_compared -= sum(  # compared: valid source rows only
            1 for k in current.parked if k in scan.differing
            and (s := scan.differing[k][0]) is not None and not s.invalid)
        for key in candidates:
            typed_key = current.good.get(key) or current.unparked.get(key)
            if typed_key is None:  # in quarantine, or gone from the source meanwhile
                found.ahead.pop(key, None)
            elif pairs[key][1] is None:
                found.missing[key] = typed_key
            else:
                found.mismatched[key] = typed_key
        found.rows = current.rows
        found.unparked = current.unparked_rows
        report.missing, report.extra = len(found.missing), len(found.extra)
        report.mismatched = len(found.mismatched)
        n = self.options.examples
        for name, keys in (("missing", found.missing), ("extra", found.extra),
                           ("mismatched", found.mismatched)):
            if keys:
                report.examples[name] = [list(v) for v in itertools.islice(
                    (keys[k] for k in sorted(keys, key=_sortable)), n)]
        return found

    def _typed(self, keys: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...] | None]:
        """Source key values as the contract types (current.typed_keys)."""
        if not keys:
            return []
        from steadyflow.reconcile.current import typed_keys  # Arrow, for differing keys only

        return typed_keys(self.contract, keys)

    def _read_current(self, candidates: dict[Key, tuple[Any, ...]]) -> Current:
        """The current source rows of these keys, validated as the loader would
        (current.CurrentReader); nothing to read, nothing imported: an unchanged table's
        reconcile loads no pyarrow (#15)."""
        if not candidates:
            return Current()
        from steadyflow.reconcile.current import CurrentReader

        ref, state = self.ref, self.pipeline.state
        return CurrentReader(self.contract, self._read, self._key_of,
                             self.pipeline.warehouse.text_encoding(),
                             partial(state.parked_by, ref.source, ref.table)).read(candidates)

    def _read(self, raw_keys: list[tuple[Any, ...]]) -> pa.Table:
        """The source rows of these keys (as the source side read them). A key read as
        bytes is sent as the dialect sends it: a SQL_ASCII database's text key, which as a
        bytea parameter compared with no text column ('text = bytea')."""
        engine, d = self._source_engine(), self.db.dialect
        return self.guard.call(partial(self._page, key_predicate(
            engine, self.contract.primary_key, raw_keys,
            lambda v: d.to_param(v) if isinstance(v, bytes) else v), len(raw_keys)),
            stop=self.pipeline._stop.is_set)

    def _key_of(self, values: tuple[Any, ...]) -> Key:
        """The canonical key of key values as read (typed, or text where a page's column
        fell back to text)."""
        types = [self.contract.column(k).type for k in self.contract.primary_key]
        out: list[str | None] = []
        for v, t in zip(values, types, strict=True):
            try:
                out.append(canonical(v, t))
            except (TypeError, ValueError, AttributeError, ArithmeticError):
                out.append(None if v is None else raw_converter(t)(v))
        return tuple(out)

    def _page(self, where: Fragment, limit: int) -> pa.Table:
        rows, _ = self.db.page(self.t.name, self.contract, None, None, limit, where=where)
        return rows

    def _still_gone(self, keys: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Extra keys still absent at the source now, just before deleting them (a key that
        came back is the pipeline's to load, not ours to delete)."""
        if not keys:
            return []
        src, _ = self.sides()
        back = {r.key for r in src.lookup(keys)}
        types = [self.contract.column(k).type for k in self.contract.primary_key]
        return [k for k in keys
                if tuple(canonical(v, t) for v, t in zip(k, types, strict=True)) not in back]

    def _warehouse_seq(self) -> int | None:
        """The highest extraction number in the target and its tombstones. A repair
        batch's number must exceed it: the merge keeps the row of the higher number, and a
        tombstone holds back a row numbered at most its own, so after the state store was
        restored from an older backup or made anew beside a kept warehouse (its sequence
        counting from 1 again), every repair batch changed nothing and reported rows
        upserted. One scan of the target's number column, for a repair only."""
        w = self.config.warehouse
        e = engine_for(w.kind)
        tomb = tomb_table(self.ref.target)
        (exists,), = self._warehouse_run(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = "
            f"{e.placeholder} AND table_name = {e.placeholder}", [w.schema_, tomb])
        tables = [self.ref.target, *([tomb] if int(exists) else [])]
        highest = [row[0] for t in tables for row in self._warehouse_run(
            f"SELECT max({e.q(SEQ)}) FROM {e.q(w.schema_)}.{e.q(t)}", [])]
        numbers = [int(v) for v in highest if v is not None]
        return max(numbers) if numbers else None

    # --- repair ---------------------------------------------------------------------------
    def repair(self, found: Findings) -> dict[str, Any]:
        """Land and load the differences as repair batches (repair.py).

        Which extra keys to delete is decided here: only those still absent at the source
        now, which takes a query on this table's source side.
        """
        from steadyflow.reconcile.repair import load_repairs  # loading: Arrow, the run's stages

        deletes = self._still_gone(list(found.extra.values())) if self.t.mirror_deletes else []
        highest = self._warehouse_seq()
        if highest is not None:
            self.pipeline.state.raise_seq(highest)
        return load_repairs(self.pipeline, self.t, self.ref, self.contract, found, deletes,
                            self.run_id, lease=self.lease)

    # --- one table, start to end -------------------------------------------------------------
    def run(self) -> TableReport:
        try:
            self.pipeline.warehouse.ensure_table(self.ref, self.contract)
        except BaseException:  # refused (a column it lacks or no longer loads): closed
            self.db.close()
            raise
        jit = self._no_jit()
        try:
            if not self.options.repair:
                return self._run()
            from steadyflow.reconcile.repair import repair_lease

            with repair_lease(self.pipeline, self.ref) as self.lease:  # before reading rows
                return self._run()
        finally:
            self.lease = None
            self.db.close()
            if jit is not None:  # the warehouse connection is the pipeline's: as it was
                self._warehouse_run("SELECT set_config('jit', %s, false)", [jit])

    def _no_jit(self) -> str | None:
        """PostgreSQL's JIT off for these queries: it compiles every expression of a bucket
        query (the row hash of each range of a batched level) before running it, seconds
        per query for nothing, as md5 dominates the rows' cost (bench: a 39-range level
        took 4.5 s with it, 0.9 s without). The source connection is ours (closed after);
        on the warehouse's, the previous value is returned, to be put back."""
        if self.s.kind == "postgres":
            self._source_run("SELECT set_config('jit', 'off', false)", [])
        if self.config.warehouse.kind != "postgres":
            return None
        (before,), = self._warehouse_run("SELECT current_setting('jit')", [])
        self._warehouse_run("SELECT set_config('jit', 'off', false)", [])
        return str(before)

    def _run(self) -> TableReport:
        report, found = self.compare()
        if self.options.repair and (report.differences or found.ahead):
            try:
                report.repair = self.repair(found)
            except errors() as exc:
                # batches landed before the failure are in the manifest: the next run's
                # sweep loads them, and the next reconcile sees what is left
                report.error = f"repair failed: {exc}"
                self.pipeline.state.forget_verified_buckets(self.ref.source, self.ref.table)
                return report
            report.after, _ = self.compare()
        self._remember(report)
        return report


def _newer(a: Any, b: Any) -> bool:
    try:
        return a is not None and b is not None and a > b
    except TypeError:
        return False


def _precision(ctype: str) -> int:
    return int(ctype[ctype.index("(") + 1: ctype.index(",")])


def _sortable(key: Key) -> tuple[str, ...]:
    return tuple(f"{len(str(v)):08d}{v}" for v in key)  # numeric text sorts by length first
