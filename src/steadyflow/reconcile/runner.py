"""`steadyflow reconcile`: compare each source table with its warehouse rows, report, repair.

Per source table:
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
  3. with repair: the source rows of missing and mismatched keys, just read by key through
     SqlSource.page, are landed as batches of kind "repair" (landing → manifest → loader:
     validate → merge + ledger, one transaction), so repair is exactly-once like any batch;
     the merge rule (newer-or-equal cursor wins) lets the source's current row overwrite the
     warehouse's. Extra keys are deleted in the same transaction when the table has
     `mirror_deletes: true`. Then the table is compared again.

Which warehouse rows belong to a source table: all rows of its target, or, when several
source tables feed one target (4 stores → `sales`), the rows matching the table's
`warehouse_filter` (e.g. `{store_id: 3}`), applied on both sides. A target fed by several
tables without filters is refused rather than guessed.

The horizon: rows whose cursor is at or past the table's checkpoint minus its lookback may
still be in flight (extracted soon, or landed and not yet merged), so they are not compared.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import duckdb
import psycopg
import pyarrow as pa

from steadyflow.config import SourceConfig, TableConfig
from steadyflow.errors import ConfigError, SteadyflowError
from steadyflow.extract.sql import SqlSource, column_to_arrow
from steadyflow.model import (
    BatchRef,
    Contract,
    TableRef,
    encode_value,
    parse_duration,
    step_back,
)
from steadyflow.observe import logs
from steadyflow.reconcile.bisect import Bisector, Key, Row, Scan
from steadyflow.reconcile.encoding import canonical, register_sqlite
from steadyflow.reconcile.engines import Engine, Fragment, engine_for
from steadyflow.reconcile.sides import Dim, SqlSide, cursor_us, key_predicate
from steadyflow.run.load import BatchLoader
from steadyflow.validate.rules import validate

if TYPE_CHECKING:
    from steadyflow.ports import Warehouse
    from steadyflow.run.pipeline import Pipeline

log = logs.get("reconcile")

DAY_US = 86_400_000_000
FETCH_CHUNK = 400  # keys per source query when reading differing rows
DELETE_CHUNK = 10_000  # keys per repair batch (they travel in the batch's manifest entry)
ERRORS = (SteadyflowError, psycopg.Error, duckdb.Error)  # fail one table, not the command


@dataclass(frozen=True)
class Options:
    since: datetime | None = None
    repair: bool = False
    by: str | None = None  # "key" | "cursor"; None picks key when the key has an integer
    top_buckets: int = 64
    fanout: int = 16
    leaf_rows: int = 256
    examples: int = 5


@dataclass
class TableReport:
    source: str
    table: str
    target: str
    by: str = ""
    buckets: int = 0
    ranges: int = 0
    leaves: int = 0
    rows_compared: int = 0
    warehouse_rows: int = 0
    missing: int = 0
    extra: int = 0
    mismatched: int = 0
    duplicates: int = 0
    quarantined: int = 0
    in_flight: int = 0
    outside_filter: int = 0
    pending_batches: int = 0
    leaf_rows: int = 0
    queries: int = 0
    since: str | None = None
    horizon: str | None = None
    seconds: float = 0.0
    examples: dict[str, list[list[Any]]] = field(default_factory=dict)
    repair: dict[str, Any] | None = None
    after: TableReport | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.source}.{self.table}"

    @property
    def differences(self) -> int:
        return self.missing + self.extra + self.mismatched + self.duplicates

    @property
    def final(self) -> TableReport:
        """The state the warehouse is left in: after the repair, if there was one."""
        return self.after if self.after is not None else self

    @property
    def clean(self) -> bool:
        final = self.final
        return self.error is None and final.error is None and final.differences == 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["after"] = self.after.to_dict() if self.after is not None else None
        return data


@dataclass
class _Findings:
    missing: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # → typed key
    mismatched: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # → typed key
    ahead: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # → warehouse key
    extra: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # → warehouse key
    rows: pa.Table | None = None  # current source rows of missing + mismatched keys


class _RepairWarehouse:
    """The pipeline's warehouse, with the delete keys of repair batches added to their
    load, so upserts, deletes and the ledger row commit in one transaction."""

    def __init__(self, inner: Warehouse) -> None:
        self.inner = inner
        self.deletes: dict[str, pa.Table] = {}

    def ensure_table(self, ref: TableRef, contract: Contract) -> None:
        self.inner.ensure_table(ref, contract)

    def load(self, ref: TableRef, contract: Contract, batch: BatchRef, rows: pa.Table,
             deletes: pa.Table | None = None) -> bool:
        return self.inner.load(ref, contract, batch, rows,
                               deletes=self.deletes.get(batch.batch_id, deletes))

    def is_loaded(self, batch_id: str) -> bool:
        return self.inner.is_loaded(batch_id)

    def close(self) -> None:  # the pipeline owns the warehouse
        pass


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 timestamp (naive = UTC), or a duration back from now ("2h", "7d")."""
    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since {text!r}: not an ISO-8601 time nor a duration like 2h"
                          ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class TableReconciler:
    """Compares (and repairs) one source table against its rows in the warehouse."""

    def __init__(self, pipeline: Pipeline, source: SourceConfig, table: TableConfig,
                 ref: TableRef, options: Options, run_id: int = 0) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.s, self.t, self.ref = source, table, ref
        self.options = options
        self.run_id = run_id
        self.contract = self.config.contract_of(table)
        self.db = SqlSource(source)
        self.guard = pipeline.guards[source.name]
        self._registered: object | None = None
        self.filter = self._filter()
        self.dims, self.by = self._dims()

    # --- setup --------------------------------------------------------------------------
    def _filter(self) -> dict[str, Any]:
        flt: dict[str, Any] = dict(getattr(self.t, "warehouse_filter", None) or {})
        for column in flt:
            if column not in self.contract.names:
                raise ConfigError(f"{self.ref.label}: warehouse_filter names {column!r}, which "
                                  "is not a column of its contract")
        feeders = [r.label for _, _, r in self.config.tables() if r.target == self.ref.target]
        if len(feeders) > 1 and not flt:
            raise ConfigError(
                f"{self.ref.label}: warehouse table {self.ref.target!r} is fed by "
                f"{len(feeders)} source tables ({', '.join(feeders)}); give each one a "
                "warehouse_filter (e.g. {store_id: 3}) naming the rows it owns",
                hint="without it the warehouse rows of one source cannot be told apart")
        return flt

    def _dims(self) -> tuple[list[Dim], str]:
        c = self.contract
        ints: list[str] = []
        for k in c.primary_key:
            if k in self.filter or k == c.cursor:
                continue
            if c.column(k).type not in ("int64", "int32"):
                break
            ints.append(k)
        by = self.options.by
        if by in (None, "key") and ints:
            return [Dim(k) for k in ints], "key"
        cursor_type = c.column(c.cursor).type
        if by == "key" or cursor_type not in ("timestamp", "int64", "int32"):
            raise ConfigError(
                f"{self.ref.label}: reconcile buckets by an integer primary-key column or by a "
                f"timestamp/integer cursor; this table has neither ({'/'.join(c.primary_key)}, "
                f"cursor {c.cursor}: {cursor_type})")
        return [Dim(c.cursor, time=cursor_type == "timestamp"), *[Dim(k) for k in ints]], "cursor"

    def _source_run(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        def once() -> list[tuple[Any, ...]]:
            conn = self.db.conn
            if self.s.kind == "sqlite" and conn is not self._registered:
                register_sqlite(conn)
                self._registered = conn
            return [tuple(r) for r in self.db._execute(self.t.name, sql, params)]

        return self.guard.call(once, stop=self.pipeline._stop.is_set)

    def _warehouse_run(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        table = self.pipeline.warehouse.query(sql, params)  # type: ignore[attr-defined]
        columns = [c.to_pylist() for c in table.columns]
        return list(zip(*columns, strict=True)) if columns else []

    def _where(self, engine: Engine, to_param: Any) -> Fragment:
        """The warehouse filter, `col = ? AND ...`, on either side."""
        if not self.filter:
            return "", []
        sql = " AND ".join(f"{engine.q(k)} = {engine.placeholder}" for k in self.filter)
        return sql, [to_param(v) for v in self.filter.values()]

    def _bounds(self) -> tuple[int | None, int | None]:
        since = cursor_us(self.options.since) if self.options.since is not None else None
        if since is not None and not self.contract.cursor_is_time:
            raise ConfigError(f"{self.ref.label}: --since needs a timestamp cursor")
        mark = self.pipeline.state.checkpoint(self.ref.source, self.ref.table)
        horizon = None
        if mark is not None and not isinstance(mark.cursor, str):
            horizon = cursor_us(step_back(mark.cursor, self.t.lookback))
        return since, horizon

    def sides(self) -> tuple[SqlSide, SqlSide]:
        since, horizon = self._bounds()
        w = self.config.warehouse
        to_src = self.db.dialect.to_param
        src_engine, wh_engine = engine_for(self.s.kind), engine_for(w.kind)
        src = SqlSide(src_engine, self.db.dialect.ident(self.t.name), self.contract,
                      self._source_run, self.dims, where=self._where(src_engine, to_src),
                      since_us=since, before_us=horizon, validity=True, to_param=to_src)
        wh = SqlSide(wh_engine, f"{wh_engine.q(w.schema_)}.{wh_engine.q(self.ref.target)}",
                     self.contract, self._warehouse_run, self.dims,
                     where=self._where(wh_engine, lambda v: v), since_us=since,
                     before_us=horizon)
        return src, wh

    # --- the comparison -------------------------------------------------------------------
    def compare(self) -> tuple[TableReport, _Findings]:
        started = time.monotonic()
        report = TableReport(self.ref.source, self.ref.table, self.ref.target, by=self.by)
        src, wh = self.sides()
        report.since = self.options.since.isoformat() if self.options.since else None
        if src.before_us is not None:
            report.horizon = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
                microseconds=src.before_us)).isoformat() if self.contract.cursor_is_time \
                else str(src.before_us)
        time_first = self.dims[0].time
        scan = Bisector(src, wh, len(self.dims), top_width=DAY_US if time_first else None,
                        top_buckets=self.options.top_buckets, fanout=self.options.fanout,
                        leaf_rows=self.options.leaf_rows).scan()
        report.rows_compared = scan.rows_compared
        findings = self._classify(scan, src, wh, report)
        if self.filter:
            sql, params = src.where
            report.outside_filter = src.count((f"NOT ({sql})", params))
        report.pending_batches = sum(
            1 for b in self.pipeline.state.pending_batches()
            if b.source == self.ref.source and b.table == self.ref.table)
        for name in ("buckets", "ranges", "leaves", "warehouse_rows", "leaf_rows"):
            setattr(report, name, getattr(scan, name))
        report.quarantined += scan.invalid_rows
        report.duplicates = len(set(scan.duplicates))
        report.queries = src.queries + wh.queries
        report.seconds = round(time.monotonic() - started, 3)
        return report, findings

    def _typed(self, keys: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...] | None]:
        """Source key values as the contract types (what the warehouse holds); None where a
        value does not convert (such a row cannot have been loaded)."""
        if not keys:
            return []
        columns = []
        for i, name in enumerate(self.contract.primary_key):
            target = self.contract.column(name).arrow_type
            arr = column_to_arrow([k[i] for k in keys], target)
            columns.append(arr.to_pylist() if arr.type == target else [None] * len(keys))
        return [None if any(v is None for v in vals) else tuple(vals)
                for vals in zip(*columns, strict=True)]

    def _classify(self, scan: Scan, src: SqlSide, wh: SqlSide,
                  report: TableReport) -> _Findings:
        pairs: dict[Key, tuple[Row | None, Row | None]] = dict(scan.differing)
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

        found = _Findings()
        candidates: dict[Key, tuple[Any, ...]] = {}  # → source raw key
        for key, (s, w) in pairs.items():
            if s is None:
                if w is not None:
                    found.extra[key] = w.raw
                continue
            if s.invalid:
                continue  # expected in quarantine (counted by the bucket pass when in range)
            if src.before_us is not None and isinstance(s.cursor, int) \
                    and s.cursor >= src.before_us:
                report.in_flight += 1
                continue
            if w is not None and w.hash == s.hash:
                continue
            candidates[key] = s.raw
            if w is not None and _newer(w.cursor, s.cursor):
                found.ahead[key] = w.raw
        rows, good = self._read_valid(list(candidates.values()))
        invalid = [k for k in candidates if k not in good]
        report.quarantined += len(invalid)
        report.rows_compared -= sum(  # compared: valid source rows only
            1 for k in invalid if k in scan.differing and scan.differing[k][0] is not None)
        for key in candidates:
            if key not in good:
                found.ahead.pop(key, None)
            elif pairs[key][1] is None:
                found.missing[key] = good[key]
            else:
                found.mismatched[key] = good[key]
        found.rows = rows
        report.missing, report.extra = len(found.missing), len(found.extra)
        report.mismatched = len(found.mismatched)
        n = self.options.examples
        for name, keys in (("missing", found.missing), ("extra", found.extra),
                           ("mismatched", found.mismatched)):
            if keys:
                report.examples[name] = [list(v) for v in itertools.islice(
                    (keys[k] for k in sorted(keys, key=_sortable)), n)]
        return found

    def _read_valid(self, raw_keys: list[tuple[Any, ...]]
                    ) -> tuple[pa.Table | None, dict[Key, tuple[Any, ...]]]:
        """Read the current source rows of these keys and validate them exactly as the
        loader does: (valid rows, canonical key → typed key of each valid row)."""
        good: dict[Key, tuple[Any, ...]] = {}
        tables: list[pa.Table] = []
        pk = self.contract.primary_key
        types = [self.contract.column(k).type for k in pk]
        engine = engine_for(self.s.kind)
        for i in range(0, len(raw_keys), FETCH_CHUNK):
            chunk = raw_keys[i:i + FETCH_CHUNK]
            rows = self.guard.call(partial(self._page, key_predicate(engine, pk, chunk),
                                           len(chunk)), stop=self.pipeline._stop.is_set)
            verdict = validate(rows, self.contract)
            valid = verdict.good
            if valid.num_rows:
                tables.append(valid)
                cols = [valid[k].to_pylist() for k in pk]
                for values in zip(*cols, strict=True):
                    key = tuple(canonical(v, t) for v, t in zip(values, types, strict=True))
                    good[key] = tuple(values)
        return (pa.concat_tables(tables) if tables else None), good

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

    # --- repair ---------------------------------------------------------------------------
    def repair(self, found: _Findings) -> dict[str, Any]:
        """Land and load the differences as repair batches; see the module docstring."""
        p = self.pipeline
        pk = self.contract.primary_key
        deletes = self._still_gone(list(found.extra.values())) if self.t.mirror_deletes else []
        warehouse = _RepairWarehouse(p.warehouse)
        loader = BatchLoader(self.config, p.landing, p.buffer, warehouse, p.state,  # type: ignore[arg-type]
                             p.quarantine, p.metrics)
        empty = self.contract.schema.empty_table()
        plan: list[tuple[pa.Table, list[tuple[Any, ...]]]] = []
        if found.ahead:
            # the warehouse row's cursor is newer than the source's: a merge would keep it,
            # so remove it first (its own transaction), then upsert the source row below
            keys = list(found.ahead.values())
            plan += [(empty, keys[i:i + DELETE_CHUNK])
                     for i in range(0, len(keys), DELETE_CHUNK)]
        rows = found.rows if found.rows is not None else empty
        wanted = set(found.missing) | set(found.mismatched)
        if rows.num_rows and len(wanted) < rows.num_rows:
            rows = rows.filter(pa.array([  # keep only keys still classified as differing
                tuple(canonical(v, self.contract.column(k).type) for k, v in zip(pk, vals,
                                                                                  strict=True))
                in wanted for vals in zip(*[rows[k].to_pylist() for k in pk], strict=True)]))
        size = max(1, self.t.page_size)
        row_chunks = [rows.slice(i, size) for i in range(0, rows.num_rows, size)]
        del_chunks = [deletes[i:i + DELETE_CHUNK] for i in range(0, len(deletes), DELETE_CHUNK)]
        for chunk, dels in itertools.zip_longest(row_chunks, del_chunks):
            plan.append((empty if chunk is None else chunk, dels or []))
        result = {"batches": 0, "upserted": 0, "deleted": 0, "quarantined": 0,
                  "deletes_skipped": 0 if self.t.mirror_deletes else len(found.extra)}
        for i, (chunk, dels) in enumerate(plan):
            if not chunk.num_rows and not dels:
                continue
            meta: dict[str, object] = {"reconcile_run": self.run_id}
            if dels:
                meta["deletes"] = [[encode_value(v) for v in key] for key in dels]
            batch = p.landing.write(chunk, self.ref.source, self.ref.table, None, None,
                                    kind="repair", meta=meta, seq=p.state.next_seq())
            batch = replace(batch, batch_id=f"{batch.batch_id}.repair{self.run_id}.{i}")
            p.state.record_landed(batch)
            if dels:
                warehouse.deletes[batch.batch_id] = pa.table(
                    {k: pa.array([key[j] for key in dels], self.contract.column(k).arrow_type)
                     for j, k in enumerate(pk)})
            outcome = loader.process(batch)
            p.state.mark_loaded(batch.batch_id, outcome.good_rows, outcome.bad_rows,
                                status="loaded" if outcome.loaded else "duplicate")
            result["batches"] += 1
            if outcome.loaded:
                result["upserted"] += outcome.good_rows
                result["deleted"] += len(dels)
                result["quarantined"] += outcome.bad_rows
            log.info("repair batch loaded", extra={
                "source": self.ref.source, "table": self.ref.table, "stage": "reconcile",
                "batch_id": batch.batch_id, "rows": outcome.good_rows})
        return result

    # --- one table, start to end -------------------------------------------------------------
    def run(self) -> TableReport:
        self.pipeline.warehouse.ensure_table(self.ref, self.contract)
        try:
            report, found = self.compare()
            if self.options.repair and (report.differences or found.ahead):
                try:
                    report.repair = self.repair(found)
                except ERRORS as exc:
                    # batches landed before the failure are in the manifest: the next run's
                    # sweep loads them, and the next reconcile sees what is left
                    report.error = f"repair failed: {exc}"
                    return report
                report.after, _ = self.compare()
            return report
        finally:
            self.db.close()


def _newer(a: Any, b: Any) -> bool:
    try:
        return a is not None and b is not None and a > b
    except TypeError:
        return False


def _sortable(key: Key) -> tuple[str, ...]:
    return tuple(f"{len(str(v)):08d}{v}" for v in key)  # numeric text sorts by length first


def reconcile(pipeline: Pipeline, tables: Sequence[str] | None = None,
              options: Options | None = None, command: str = "reconcile"
              ) -> list[TableReport]:
    """Reconcile every (selected) SQL source table; record and export each result."""
    options = options or Options()
    if options.by not in (None, "key", "cursor"):
        raise ConfigError(f"--by {options.by!r}: use key or cursor")
    selected = [(s, t, ref) for s, t, ref in pipeline.config.tables()
                if not tables or ref.label in tables or ref.table in tables]
    if tables and not selected:
        raise ConfigError(f"no table {', '.join(tables)} in the config")
    run_id = pipeline.state.start_run(command)
    reports: list[TableReport] = []
    try:
        for s, t, ref in selected:
            if s.kind == "http":
                if tables:
                    reports.append(TableReport(ref.source, ref.table, ref.target, error=(
                        "reconcile compares SQL sources; an HTTP API has no checksum query")))
                continue
            try:
                report = TableReconciler(pipeline, s, t, ref, options, run_id).run()
            except ERRORS as exc:
                report = TableReport(ref.source, ref.table, ref.target, error=str(exc))
                log.error("reconcile failed: %s", exc, extra={
                    "source": ref.source, "table": ref.table, "stage": "reconcile"})
            _record(pipeline, report)
            reports.append(report)
    finally:
        outcome = ("error" if any(r.error for r in reports) else
                   "clean" if all(r.clean for r in reports) else "differences")
        repaired = [r.repair for r in reports if r.repair]
        pipeline.state.end_run(run_id, outcome, sum(x["batches"] for x in repaired),
                               sum(x["upserted"] + x["deleted"] for x in repaired),
                               "; ".join(f"{r.label}: {r.error}" for r in reports if r.error
                                         )[:2000] or None)
    return reports


def _record(pipeline: Pipeline, report: TableReport) -> None:
    if not report.by:
        return  # it failed before comparing anything
    state, metrics = pipeline.state, pipeline.metrics
    repaired = (report.repair or {}).get("upserted", 0) + (report.repair or {}).get("deleted", 0)
    detail = report.to_dict()
    state.record_reconcile(report.source, report.table, report.buckets, report.rows_compared,
                           report.missing, report.extra, report.mismatched, repaired, detail)
    after = report.after
    if after is not None:
        state.record_reconcile(after.source, after.table, after.buckets, after.rows_compared,
                               after.missing, after.extra, after.mismatched, 0,
                               {**after.to_dict(), "verifies_repair": True})
    final = report.final
    metrics.reconcile(report.source, report.table, final.missing, final.extra + final.duplicates,
                      final.mismatched)
    log.info("reconciled: %d missing, %d extra, %d mismatched", final.missing, final.extra,
             final.mismatched, extra={"source": report.source, "table": report.table,
                                      "stage": "reconcile"})


class Scheduler:
    """Follow mode: reconcile every `run.reconcile_every` seconds, between two runs.

    Report only (history, metrics, logs; the SteadyflowReconcileDiscrepancy alert fires on
    the gauges); repairs stay a deliberate `steadyflow reconcile --repair`.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.every = pipeline.config.run.reconcile_every
        # due from the recorded history, so a process that restarts often still reconciles
        last = [r["at"] for r in pipeline.state.last_reconcile() if r["at"]]
        self.due = min(last) + self.every if last else 0.0

    def tick(self) -> list[TableReport] | None:
        """Reconcile if due (wall clock); called by Pipeline.run between two runs."""
        if self.every <= 0 or time.time() < self.due:
            return None
        self.due = time.time() + self.every
        try:
            return reconcile(self.pipeline, command="reconcile (scheduled)")
        except SteadyflowError as exc:
            log.error("scheduled reconcile failed: %s", exc, extra={"stage": "reconcile"})
            return None


def text_report(reports: Sequence[TableReport]) -> str:
    """What `steadyflow reconcile` prints: one block per table, examples included."""
    lines: list[str] = []
    for r in reports:
        if r.error:
            lines.append(f"{r.label}: ERROR {r.error}")
            continue
        lines.append(
            f"{r.label} → {r.target}: {r.buckets} buckets ({r.by}), {r.rows_compared:,} rows "
            f"compared in {r.seconds:.2f}s; missing {r.missing}, extra {r.extra}, mismatched "
            f"{r.mismatched}" + (f", duplicates {r.duplicates}" if r.duplicates else "")
            + f"; {r.quarantined} expected in quarantine"
            + (f", {r.in_flight} in flight" if r.in_flight else ""))
        for name, keys in r.examples.items():
            lines.append(f"  {name}: " + ", ".join(
                "(" + ", ".join(str(v) for v in k) + ")" for k in keys)
                + (" …" if getattr(r, name) > len(keys) else ""))
        if r.outside_filter:
            lines.append(f"  warning: {r.outside_filter} source rows do not match its "
                         "warehouse_filter")
        if r.pending_batches:
            lines.append(f"  note: {r.pending_batches} landed batches of this table are not "
                         "loaded yet")
        if r.repair is not None:
            x = r.repair
            lines.append(f"  repaired: {x['upserted']} rows upserted, {x['deleted']} deleted in "
                         f"{x['batches']} repair batches" + (
                             f"; {x['deletes_skipped']} extra rows kept (mirror_deletes is off)"
                             if x["deletes_skipped"] else ""))
        if r.after is not None:
            a = r.after
            lines.append(f"  after repair: missing {a.missing}, extra {a.extra}, mismatched "
                         f"{a.mismatched}" + (f", duplicates {a.duplicates}"
                                              if a.duplicates else ""))
    clean = all(r.clean for r in reports)
    lines.append("OK: warehouse matches the sources" if clean else "DIFFERENCES remain")
    return "\n".join(lines)
