"""The pipeline: wires config to stages and runs the loop.

    run_once:  sweep → extract every table (bounded parallel, per-source guard)
               ∥ load from the buffer until extraction is done and the buffer is empty
    run:       run_once every `run.interval` seconds until stopped

Liveness: the sweep never waits for buffer space (a full buffer after a restart would wait
for a loader that has not started); what it could not queue is queued by the loader as the
buffer drains. A batch that failed for good is taken out of the buffer (parked: the manifest
keeps it, landed with its error, and the sweeper queues it again after a backoff), so a
table's poison batches never fill the buffer and stop every table's extraction in `put`.
If the loader thread ends while extraction runs, the pipeline stops, so `put` returns. A
table's unexpected error (in its extraction or in one of its batches) is
that table's error: recorded, counted, reported in the run summary and the exit code,
while the other tables go on.

Nothing here is global: every component hangs off one Pipeline object, so several
pipelines (or tests) can live in one process and any stage can run alone.

The stages that move rows as Arrow (extraction, landing, quarantine, loading) are imported
where they are first used, not with this module: a command that moves no rows (a
reconcile of an unchanged table into PostgreSQL) then never loads pyarrow, ~80 MiB of
peak RSS (#15, arrow_types.py).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steadyflow.buffer.sqlite import SqliteBuffer
from steadyflow.config import PipelineConfig, load_config
from steadyflow.errors import (
    ExtractionFenced,
    FatalError,
    RetryableError,
    RunFailed,
    StateUnavailable,
    SteadyflowError,
    TableBusy,
    WarehouseUnavailable,
)
from steadyflow.extract.sql import SqlSource
from steadyflow.failpoints import failpoint
from steadyflow.land import open_landing
from steadyflow.model import BatchRef, TextEncoding
from steadyflow.observe import logs
from steadyflow.observe.recording import Recording, Unrecorded
from steadyflow.ports import Buffer, Ledgered, Warehouse
from steadyflow.resilience import SourceGuard, StopRequested, retry_reason
from steadyflow.run.memory import Releaser, bound_memory
from steadyflow.state import StateStore, open_state

if TYPE_CHECKING:
    from steadyflow.land.parquet import LandingZone
    from steadyflow.run.extract import ExtractResult, Source, TableMemory
    from steadyflow.run.load import BatchLoader
    from steadyflow.validate.quarantine import Quarantine
    from steadyflow.validate.rules import Verdict

log = logs.get("run")
# the buffer's depth and age (metrics, status) are read at most this often by the loader
QUEUE_REPORT_EVERY = 0.5
SWEEP_LOOKUP = 1000  # batch ids per ledger lookup of the sweeper
# a batch whose load failed (retryable) waits LOAD_BACKOFF * 2**failures, at most
# LOAD_BACKOFF_MAX, before its next try; module constants so a test can walk a batch
# through its failures in seconds
LOAD_BACKOFF = 0.5
LOAD_BACKOFF_MAX = 30.0


@dataclass
class RunSummary:
    extracted_batches: int = 0
    extracted_rows: int = 0
    loaded_batches: int = 0
    loaded_rows: int = 0  # went to the merge: changed_rows + reread_rows
    quarantined_rows: int = 0
    duplicates_skipped: int = 0
    errors: list[str] = field(default_factory=list)
    # tables whose extraction stopped on an error (bad credentials, missing table or column,
    # source unreachable after the retry policy): the CLI exits 2 for these, 1 otherwise
    failed_tables: list[str] = field(default_factory=list)
    # batches that failed for good in this pass (each is also in `errors`)
    failed_batches: list[str] = field(default_factory=list)
    # of loaded_rows: inserted or updated in the warehouse, and re-read without effect
    # (lookback windows, redelivered pages); operators see changed rows
    changed_rows: int = 0
    reread_rows: int = 0
    # a worker's tables that another worker was extracting (not an error: theirs to do)
    skipped_tables: list[str] = field(default_factory=list)

    cycles: int = 1  # `run --follow`: how many run_once cycles this summary covers

    @property
    def ok(self) -> bool:
        return not self.errors

    def then(self, later: RunSummary) -> RunSummary:
        """This summary followed by a later cycle's: counts add up, the errors and failed
        tables are the later cycle's (what is still wrong when the run stops)."""
        total = replace(later, cycles=self.cycles + later.cycles)
        for name in ("extracted_batches", "extracted_rows", "loaded_batches", "loaded_rows",
                     "quarantined_rows", "duplicates_skipped", "changed_rows", "reread_rows"):
            setattr(total, name, getattr(self, name) + getattr(later, name))
        return total


def _run_failed(summary: RunSummary) -> RunFailed:
    """The error run_once raises for a failed run: the first error, and how many more."""
    tables = summary.failed_tables
    more = len(summary.errors) - 1
    return RunFailed(
        summary.errors[0] + (f" (and {more} more error(s))" if more > 0 else ""),
        stage="run", table=", ".join(tables) if tables else None, summary=summary,
        hint="the other tables ran; `.summary` lists every error; fix and run again, or "
             "call run_once(raise_on_error=False) to get the summary instead")


class Pipeline:
    """One configured pipeline. `Pipeline.from_yaml(path).run_once()` is the library API."""

    def __init__(self, config: PipelineConfig, view: bool = False,
                 recorded: bool = True) -> None:
        """`view`: the pipeline is only shown (status, a read-only serve): a buffer server
        that does not answer is reported by the status, not an error here. `recorded`:
        its metrics are kept (observe/metrics.py); False for a process that never shows
        them, which then never imports prometheus_client (observe/recording.py)."""
        bound_memory()
        self.config = config
        self.metrics: Recording
        if recorded:
            from steadyflow.observe.metrics import PipelineMetrics

            self.metrics = PipelineMetrics(pipeline=config.name)
        else:
            self.metrics = Unrecorded()
        self._stop = threading.Event()
        # run_once's halt: its loader could not open the warehouse, so this run's extraction
        # stops (see run_once); unlike `_stop` it ends neither the pipeline nor `--follow`
        self._halt = threading.Event()
        self._keeps_warehouse = False  # set by run_once: the floor's open is the run's
        self._alone = False  # set by `extract` alone (see _highest_seq_above)
        self._failures: dict[str, int] = {}
        # a worker among others (run/worker.py): a table another worker holds is theirs, so
        # its extraction is skipped at once and is no error; tables are tried in a random
        # order so workers do not all queue for the same one
        self.shared = False
        state_dir = config.resolve(config.state_dir)
        self.state: StateStore = open_state(config.state.kind, state_dir, config.state.dsn,
                                            config.state.schema_)
        # no extraction number below one the warehouse holds (run_once asks first thing;
        # any other first number taken, `extract` alone or a repair, asks then)
        self.state.floor_seq_by(self._highest_seq_above)
        # the landing store now (a bad setting fails here), its Parquet side when first used
        self._landing_store = open_landing(config.landing, Path(config.base_dir))
        self._landing: LandingZone | None = None
        self._quarantine: Quarantine | None = None
        self._making = threading.Lock()  # for those two (`_opening` may wait on a warehouse)
        self.buffer: Buffer = self._open_buffer(state_dir, view)
        self._warehouse: Warehouse | None = None
        self._lanes: list[Warehouse] | None = None  # the loader's other connections
        self._opening = threading.Lock()
        # SQL sources stay connected between the cycles of `run --follow` (a cycle after a
        # small change is then mostly its queries, not connection set-up); keyed by table,
        # each used by one extraction thread at a time, dropped after any error
        self._open_sources: dict[str, Source] = {}
        # what each table's polls carry to the next (run/extract.py TableMemory)
        self._memory: dict[str, TableMemory] = {}
        # a table's ExtractResult when it stopped with an error after landing batches
        # (extract_table → tally: the summary counts what was extracted, not 0)
        self._partial: dict[str, ExtractResult] = {}
        # `run --follow` / worker: the loader runs beside polls that never end (run/follow.py)
        self.following = False
        # run_once is the first step of a follow (`run --follow`, a worker): its end is
        # not waited for by anyone, so its loader waits as a follower's does (see load)
        self._follow_next = False
        self._queue_reported = 0.0
        self._swept = False
        # landed batches the last sweep could not queue (the buffer was full): the loader
        # sweeps again once the buffer drains
        self._unqueued = False
        # batches that failed for good in this process, out of the buffer (see _park):
        # batch id -> (its table's label, monotonic time from which the sweep queues it)
        self._parked: dict[str, tuple[str, float]] = {}
        self.guards = {s.name: SourceGuard(s.name, s.resilience, on_retry=self._on_retry,
                                           on_breaker=self._on_breaker,
                                           on_auth=self.metrics.auth_failing)
                       for s in config.sources}
        for _, t, ref in config.tables():
            self.metrics.declare(ref.source, ref.table, page_size=t.page_size,
                                 poll_interval=t.poll_max if t.poll_max is not None
                                 else config.run.interval)

    @classmethod
    def from_yaml(cls, path: str | Path, view: bool = False, recorded: bool = True
                  ) -> Pipeline:
        return cls(load_config(path), view=view, recorded=recorded)

    def _open_buffer(self, state_dir: Path, view: bool = False) -> Buffer:
        b = self.config.buffer
        if b.kind == "jetstream":
            from steadyflow.buffer.jetstream import JetStreamBuffer

            def open_jetstream() -> Buffer:
                return JetStreamBuffer(b.url, b.stream, capacity=b.capacity, lease=b.lease,
                                       should_stop=self._stopping)

            if view:
                from steadyflow.buffer.viewed import ViewedBuffer

                return ViewedBuffer(open_jetstream, b.capacity, b.lease)
            return open_jetstream()
        return SqliteBuffer(state_dir / "buffer.db", capacity=b.capacity, lease=b.lease,
                            should_stop=self._stopping)

    def _stopping(self) -> bool:
        """What extraction and the buffer's waits check: the pipeline stopping, or this
        run_once halted (its warehouse could not be opened)."""
        return self._stop.is_set() or self._halt.is_set()

    @property
    def warehouse(self) -> Warehouse:
        with self._opening:  # opened once, whichever thread asks first (a DuckDB file is
            return self._open_warehouse()  # created by a rename: two at once collided)

    def _open_warehouse(self) -> Warehouse:
        if self._warehouse is None:
            failpoint("warehouse.open")  # `:1:sleep3`, a slow open (tests/faults/test_stop.py)
            w = self.config.warehouse
            # imported here: a run loads one warehouse's driver, not both
            if w.kind == "postgres":
                from steadyflow.merge.postgres import PostgresWarehouse

                self._warehouse = PostgresWarehouse(w.dsn or "", w.schema_,
                                                    lock_timeout=w.lock_timeout)
            else:
                from steadyflow.merge.duckdb import DuckdbWarehouse

                self._warehouse = DuckdbWarehouse(self.config.resolve(w.path or "wh.duckdb"),
                                                  w.schema_, memory_limit=w.memory_limit,
                                                  threads=w.threads)
        return self._warehouse

    def _highest_seq_above(self, current: int) -> int | None:
        """The highest extraction number above the state's `current` that the warehouse's
        ledger holds for this pipeline's targets (StateStore.floor_seq raises the sequence
        above it). None unless the state fell behind the warehouse: lost or restored from
        an older backup beside it, or a warehouse another state store fed. Only this
        pipeline's targets: another pipeline's, sharing the schema, count on their own."""
        targets = sorted({ref.target for _, _, ref in self.config.tables()})
        with self._opening:
            # `extract` alone: opened for this only, and closed again (a DuckDB file has
            # one writer: a `run` beside it must be able to take it); never under run_once,
            # whose loader thread may have taken the same warehouse meanwhile
            opened = self._warehouse is None and not self._keeps_warehouse
            try:
                warehouse = self._open_warehouse()
            except WarehouseUnavailable as exc:
                if not (self._alone and self.config.warehouse.kind == "duckdb"):
                    raise  # the table's first number waits for it (its retries)
                # `extract` alone beside the process holding the DuckDB file (a `load` or
                # `run` of this pipeline, which asked the floor when it opened the file):
                # the stages run side by side as they did, without asking
                log.warning("the sequence's floor is not asked: %s; the process holding the "
                            "warehouse asked it when it opened it", exc,
                            extra={"stage": "state"})
                return None
        try:
            highest = warehouse.highest_seq(targets, current)
        finally:
            if opened:
                with self._opening:
                    if self._warehouse is warehouse:
                        self._warehouse = None
                        warehouse.close()
        if highest is not None:
            log.warning("the warehouse holds extraction number %d, the state's sequence is at "
                        "%d (the state store lost, or restored from an older backup?): the "
                        "sequence is raised above it, so the rows read from now on replace "
                        "the warehouse's", highest, current, extra={"stage": "state"})
        return highest

    @property
    def landing(self) -> LandingZone:
        """The landing zone, made when first asked for (Parquet: pyarrow, see above)."""
        with self._making:
            if self._landing is None:
                from steadyflow.land.parquet import LandingZone

                self._landing = LandingZone(self._landing_store,
                                            self.config.landing.compression)
                self._landing.locate = self.state.batch  # a batch compaction moved is there
            return self._landing

    @property
    def quarantine(self) -> Quarantine:
        landing = self.landing
        with self._making:
            if self._quarantine is None:
                from steadyflow.validate.quarantine import Quarantine

                self._quarantine = Quarantine(landing, self.state)
            return self._quarantine

    @property
    def loader(self) -> BatchLoader:
        from steadyflow.run.load import BatchLoader

        return BatchLoader(self.config, self.landing, self.buffer, self.warehouse, self.state,
                           self.quarantine, self.metrics, lanes=self._lane_warehouses())

    def _lane_warehouses(self) -> list[Warehouse]:
        """The loader's connections beside `warehouse` (run/load.py, Lanes): PostgreSQL
        only, `load_lanes` - 1 of them, each connecting when first used. DuckDB has one
        writer."""
        with self._opening:
            if self._lanes is None:
                w = self.config.warehouse
                self._lanes = []
                if w.kind == "postgres":
                    from steadyflow.merge.postgres import PostgresWarehouse

                    self._lanes = [PostgresWarehouse(w.dsn or "", w.schema_,
                                                     lock_timeout=w.lock_timeout)
                                   for _ in range(w.load_lanes - 1)]
            return self._lanes

    def transform(self, batch: BatchRef) -> Verdict:
        """Validate one landed batch as the loader would. An embedded (DuckDB) warehouse
        is not opened (`run --follow` may hold its file); a PostgreSQL one is asked for its
        text encoding, if it can be reached (one lacking characters quarantines more)."""
        from steadyflow.run.load import transform

        return transform(self.config, self.landing, self.metrics, batch,
                         self._text_encoding())

    def _text_encoding(self) -> TextEncoding | None:
        if self.config.warehouse.kind != "postgres":
            return None
        try:
            return self.warehouse.text_encoding()
        except RetryableError as exc:
            log.warning("cannot ask the warehouse for its text encoding (%s): a character "
                        "it lacks is not counted as quarantined here", exc,
                        extra={"stage": "transform"})
            return None

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        while self._open_sources:
            self._open_sources.popitem()[1].close()
        for closeable in (self._warehouse, *(self._lanes or ()), self.buffer, self.state):
            if closeable is not None:
                closeable.close()
        self.metrics.stopped()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- callbacks from the resilience layer -------------------------------------------
    def _on_retry(self, source: str, exc: BaseException) -> None:
        self.metrics.retry(source, retry_reason(exc))  # type: ignore[arg-type]
        log.warning("retrying after: %s", exc, extra={"source": source, "stage": "extract"})

    def _on_breaker(self, source: str, state: str) -> None:
        self.metrics.breaker(source, state)  # type: ignore[arg-type]
        for s, _, ref in self.config.tables():
            if s.name == source:
                self.state.record_source_state(source, ref.table, breaker=state)
        log.warning("circuit breaker %s", state, extra={"source": source, "stage": "extract"})

    # --- stages -------------------------------------------------------------------------
    def sweep(self) -> int:
        """Republish landed batches that are neither loaded nor queued (the truth is the
        manifest and the ledger; the buffer is only the fast path).

        Never waits for space: it runs before any loader, so a full buffer (a restart
        after extraction was killed waiting in `put`) would wait forever. What does not
        fit stays in the manifest and `load` sweeps again when the buffer drains. A batch
        parked by this process (failed for good, see _park) waits out its backoff here.
        """
        # a batch that failed in an earlier process waits out its backoff (up to minutes):
        # this process retries it once now, instead of waiting for it before ending its run
        retry_now: set[str] = set()
        if not self._swept:  # temp files are a dead writer's: none appear while we run, and
            # walking a growing landing tree every cycle of `run --follow` would cost more
            # each time. The store's own walk: the Parquet side (pyarrow) is not needed here
            self._landing_store.sweep_temp()
            self._swept = True
            retry_now = self.state.failed_batch_ids()
        republished = 0
        self._unqueued = False
        now = time.monotonic()
        pending = self.state.pending_batches()
        for gone in self._parked.keys() - {batch.batch_id for batch in pending}:
            del self._parked[gone]  # loaded meanwhile (by another process): not failing
        ledger: dict[str, Ledgered] = {}
        for i in range(0, len(pending), SWEEP_LOOKUP):
            ledger |= self.warehouse.ledgered(
                [b.batch_id for b in pending[i:i + SWEEP_LOOKUP]])
        for batch in pending:
            if batch.batch_id in ledger:  # its loader died after the commit: its counts
                # are in the ledger row (record_loaded). Imported here, not for every sweep:
                # a first run's sweep then leaves run/load.py to its loader thread
                from steadyflow.run.load import duplicate

                self.buffer.ack(batch.batch_id)
                self.state.record_loaded([duplicate(batch, ledger[batch.batch_id])])
                self._parked.pop(batch.batch_id, None)
            elif self.buffer.contains(batch.batch_id):
                if batch.batch_id in retry_now:
                    self.buffer.nack(batch.batch_id, delay=0)
            elif self._parked.get(batch.batch_id, ("", now))[1] > now:
                continue  # failed for good in this process: it waits out its backoff
            else:
                try:
                    self.buffer.put(batch, timeout=0)
                except RetryableError:  # full (or unreachable): the rest waits its turn
                    self._unqueued = True
                    break
                except FatalError as exc:  # this batch can never be queued; the rest can
                    self._refused(batch, exc)
                    continue
                self._parked.pop(batch.batch_id, None)
                republished += 1
        return republished

    def _refused(self, batch: BatchRef, exc: FatalError) -> None:
        """A landed batch the buffer refuses for good (its reference over the server's
        message size): its error goes on the batch and its table, where status shows it,
        and the sweep goes on with the other batches instead of stopping at it."""
        log.error("cannot queue a landed batch: %s", exc, extra={
            "source": batch.source, "table": batch.table, "stage": "publish",
            "batch_id": batch.batch_id})
        self.metrics.error(batch.source, batch.table, "load")
        self._record_error(batch.source, batch.table, str(exc), batch.batch_id)

    def extract(self, tables: list[str] | None = None, dry_run: bool = False,
                alone: bool = False) -> RunSummary:
        """Extract every (selected) table until caught up; sources run in parallel.

        `alone`: no loader runs in this process (`steadyflow extract`), so a full buffer is
        waited for at most `buffer.extract_wait`, then that table stops with an error
        instead of waiting for a loader that may never come.
        """
        summary = RunSummary()
        put_timeout = self.config.buffer.extract_wait if alone else None
        self._alone = alone
        jobs = [(s, t, ref) for s, t, ref in self.config.tables()
                if not tables or ref.label in tables or ref.table in tables]
        if self.shared:
            random.shuffle(jobs)
        from steadyflow.run import steal

        slots = self.config.run.max_parallel_sources
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="extract") as pool:
            futures = [pool.submit(self.extract_table, job, dry_run, put_timeout)
                       for job in jobs]
            # queued behind every table: a slot starts one once no table is left to
            # start, and takes the far part of first loads still being read (run/steal.py)
            thieves = [pool.submit(steal.steal_until_done, self, put_timeout,
                                   lambda: not all(f.done() for f in futures), jobs)
                       for _ in range(slots)] if not dry_run and steal.enabled(self) else []
            for future in futures:
                self.tally(summary, *future.result())
            for thief in thieves:
                for ref, result in thief.result():
                    self.tally(summary, ref, result)
        return summary

    def extract_table(self, job: tuple[Any, Any, Any], dry_run: bool = False,
                      put_timeout: float | None = None
                      ) -> tuple[Any, ExtractResult | BaseException]:
        """One table until caught up, on its kept connection: (its ref, its result or the
        error that stopped it, recorded and logged here). `extract` runs every table
        through it; `run --follow` one poll of one table (run/follow.py)."""
        from steadyflow.run.extract import LEASE_WAIT, TableExtractor, TableMemory, open_source

        s, t, ref = job
        extractor = TableExtractor(
            s, t, ref, self.config.contract_of(t), self.landing, self.buffer, self.state,
            self.guards[s.name], self.metrics, should_stop=self._stopping,
            memory=self._memory.setdefault(ref.label, TableMemory()),
            put_timeout=put_timeout)
        # SQL or HTTP: the same extractor loop and guard
        db = self._open_sources.pop(ref.label, None) or open_source(s)
        keep = False
        try:
            result = extractor.run(db, dry_run=dry_run,
                                   lease_wait=0.0 if self.shared else LEASE_WAIT)
            keep = isinstance(db, SqlSource) and not self._stop.is_set()
            return ref, result
        except (TableBusy, ExtractionFenced) as exc:
            # another extractor has the table: not this table's failure (its health is
            # the holder's to record), but this run did not extract it, so not ok. Among
            # workers a busy table is the normal case (another worker has it): not logged
            # above debug, or every poll of every worker would warn
            quiet = self.shared and isinstance(exc, TableBusy)
            log.log(logging.DEBUG if quiet else logging.WARNING, "extract skipped: %s", exc,
                    extra={"source": ref.source, "table": ref.table, "stage": "extract"})
            return ref, exc
        except StopRequested as exc:
            # stopping (SIGTERM): the table is picked up where its checkpoint is by the
            # next run or another worker; not the table's error, so its health is untouched
            log.info("extract stopped: %s", exc, extra={
                "source": ref.source, "table": ref.table, "stage": "extract"})
            return ref, exc
        except Exception as exc:  # noqa: BLE001 - one table's error, whatever it is
            if self._halted(exc):  # the run's warehouse could not be opened: its error
                log.info("extract stopped: %s", exc, extra={  # is the run's (run_once)
                    "source": ref.source, "table": ref.table, "stage": "extract"})
                return ref, exc
            self.metrics.error(ref.source, ref.table, "extract")
            log.error("extract failed: %s", exc, exc_info=not isinstance(
                exc, SteadyflowError), extra={
                "source": ref.source, "table": ref.table, "stage": "extract"})
            self._record_error(ref.source, ref.table, str(exc) or repr(exc))
            return ref, exc
        finally:
            if keep:
                self._open_sources[ref.label] = db
            else:
                db.close()
            if extractor.result.batches:  # what it landed before it stopped still counts
                self._partial[ref.label] = extractor.result

    def tally(self, summary: RunSummary, ref: Any, result: ExtractResult | BaseException
              ) -> None:
        """Add one table's extraction result (see extract_table) to a summary; a table
        that stopped with an error still counts the batches it landed and queued."""
        partial = self._partial.pop(ref.label, None)
        if partial is not None and isinstance(result, BaseException):
            summary.extracted_batches += partial.batches
            summary.extracted_rows += partial.rows
            summary.quarantined_rows += partial.quarantined
        if isinstance(result, TableBusy) and self.shared:
            summary.skipped_tables.append(ref.label)
        elif isinstance(result, BaseException) and self._halted(result):
            pass  # stopped by run_once's halt: the run's error is the warehouse's
        elif isinstance(result, TableBusy | ExtractionFenced):
            summary.errors.append(f"{ref.label}: {result}")
        elif isinstance(result, BaseException):
            summary.errors.append(f"{ref.label}: {result or repr(result)}")
            summary.failed_tables.append(ref.label)
        else:
            summary.extracted_batches += result.batches
            summary.extracted_rows += result.rows
            summary.quarantined_rows += result.quarantined

    def load(self, until_empty: bool = True, extracting: threading.Event | None = None,
             summary: RunSummary | None = None, max_failures: int = 5) -> RunSummary:
        """Consume the buffer. Stops when it is empty and no extraction is running."""
        from steadyflow.run.load import gather

        summary = summary or RunSummary()
        loader = self.loader
        # kept across runs: a batch that failed for good is not waited for again each cycle
        failures = self._failures
        releaser = Releaser()  # freed memory back to the OS after a spike (run/memory.py)
        looked = False  # run_once: the buffer was found empty since its extraction ended
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._queue_reported + QUEUE_REPORT_EVERY:
                    self._report_queue()  # JetStream: two API requests, so not every get
                # beside a running extraction (run_once) poll finely: a landed batch is
                # picked up, and the end of the run noticed, within ~20 ms instead of 200 ms.
                # A follower's loader waits longer: a batch wakes it as it arrives (the
                # SQLite buffer notifies a get in this process, a JetStream fetch returns
                # with the message), and only the stop is noticed later. Once run_once's
                # extraction has ended every batch it landed is queued (or left to the
                # sweep): the first look after a group does not wait, so a cycle ends
                # when its last batch is loaded, not 20 ms later (a warm `--follow`-style
                # cycle is ~0.15 s); a batch still held back (a retry's delay) is then
                # waited for as before, without spinning. A run_once that a follow comes
                # after (a worker's first load) waits as a follower: ending it 0.25 s later
                # delays nothing, and an idle JetStream loader sent a pull request every
                # 0.1 s (a get lives at least MIN_FETCH); among four workers sharing the
                # queue each loader is idle part of the load (bench/NOTES.md, session 14)
                ended = extracting is not None and not extracting.is_set()
                delivery = self.buffer.get(wait=0.0 if ended and not looked else
                                           0.2 if extracting is None else
                                           0.25 if self.following or self._follow_next
                                           else 0.02)
                looked = ended and delivery is None
                if (delivery is None and self._unqueued
                        and self.buffer.depth() < self.buffer.capacity and self.sweep()):
                    continue  # the buffer drained: queue what the last sweep left out
                if delivery is None:
                    releaser.idle()
                    if until_empty and (extracting is None or not extracting.is_set()) and (
                            self.buffer.depth() == 0 or all(
                                n >= max_failures for n in failures.values()) and failures):
                        break
                    continue
            except RetryableError as exc:  # the buffer unreachable (NATS down), or the
                # warehouse the sweep opens: the error names which
                log.warning("loading waits 1s: %s", exc, extra={"stage": "load"})
                self._stop.wait(1.0)
                continue
            group = self.config.warehouse
            retry_wait, handled = 0.0, 0
            for batch, result in loader.handle_all(gather(
                    self.buffer, delivery, group.group_batches, group.group_rows)):
                if isinstance(result, Exception):
                    retry_wait = max(retry_wait, self._batch_failed(
                        batch, result, failures, max_failures, summary))
                    continue
                failures.pop(batch.batch_id, None)
                handled += result.good_rows + result.bad_rows
                if result.loaded:
                    summary.loaded_batches += 1
                    summary.loaded_rows += result.good_rows
                    summary.changed_rows += result.changed_rows
                    summary.reread_rows += result.reread_rows
                    summary.quarantined_rows += result.bad_rows
                else:
                    summary.duplicates_skipped += 1
            if handled:  # between groups, never inside one
                releaser.loaded(handled)
            if retry_wait:  # the warehouse (or buffer) failed: a pause, once per group
                self._stop.wait(retry_wait)
        self._report_queue()
        return summary

    def _batch_failed(self, batch: BatchRef, exc: Exception, failures: dict[str, int],
                      max_failures: int, summary: RunSummary) -> float:
        """Count a batch's failure; returns how long the loader pauses before going on."""
        # a fatal error, or an unexpected one (a bug, a contract changed under a pending
        # batch), will not heal by itself within this run: count it as final at once
        # instead of waiting out max_failures delayed retries
        final = isinstance(exc, FatalError) or not isinstance(exc, SteadyflowError)
        failures[batch.batch_id] = (max_failures if final
                                    else failures.get(batch.batch_id, 0) + 1)
        return self._load_failed(batch, exc, failures[batch.batch_id], max_failures, summary)

    def _load_failed(self, batch: BatchRef, exc: Exception, attempt: int,
                     max_failures: int, summary: RunSummary) -> float:
        """Record the failure as the table's error, and delay the batch, or park it once it
        failed for good (never drop it: it stays in the manifest with its error until a load
        succeeds, and the table is reported failing until then)."""
        if not isinstance(exc, SteadyflowError):
            exc = FatalError(f"unexpected error loading a batch: {exc!r}", stage="load",
                             source=batch.source, table=batch.table, batch_id=batch.batch_id,
                             hint="a bug or a contract changed while batches were pending; "
                                  "the batch stays pending and is retried by the next run")
            log.exception("unexpected load error", extra={
                "source": batch.source, "table": batch.table, "stage": "load",
                "batch_id": batch.batch_id})
        self.metrics.error(batch.source, batch.table, "load")
        self._record_error(batch.source, batch.table, str(exc), batch.batch_id)
        delay = (min(LOAD_BACKOFF_MAX, LOAD_BACKOFF * 2 ** attempt)
                 if isinstance(exc, RetryableError) else 300.0)
        # a warehouse outage (retryable) never parks a batch for an hour: it stays at the
        # capped backoff, so loading resumes by itself within 30 s of the warehouse's return
        final = attempt >= max_failures or isinstance(exc, FatalError)
        try:
            if final:
                self._park(batch, delay)
            else:
                self.buffer.nack(batch.batch_id, delay=delay)
        except RetryableError as unreachable:  # the batch comes back after its lease
            log.warning("could not give the failed batch back: %s", unreachable, extra={
                "source": batch.source, "table": batch.table, "stage": "load",
                "batch_id": batch.batch_id})
        log.error("load failed (attempt %d): %s", attempt, exc, extra={
            "source": batch.source, "table": batch.table, "stage": "load",
            "batch_id": batch.batch_id, "attempt": attempt})
        if final:
            summary.errors.append(f"batch {batch.batch_id}: {exc}")
            summary.failed_batches.append(batch.batch_id)
        return min(delay, 2.0) if isinstance(exc, RetryableError) else 0.0

    def _record_error(self, source: str, table: str, error: str,
                      batch_id: str | None = None) -> None:
        """The table's (and batch's) error into the state store, if it can be reached.
        When the state store is what failed, recording that fails too: the step is retried
        as any failed step is, and the loader and the polls go on (a worker cut off from
        its state store waits for it; it does not stop, nor skip logging the error)."""
        try:
            self.state.record_error(source, table, error)
            if batch_id is not None:
                self.state.mark_failed(batch_id, error)
        except StateUnavailable as unreachable:
            log.warning("could not record the error: %s", unreachable, extra={
                "source": source, "table": table, "stage": "state", "batch_id": batch_id})

    def _park(self, batch: BatchRef, backoff: float) -> None:
        """Take a batch that failed for good out of the buffer; the manifest keeps it
        (landed, with the error mark_failed wrote before this), so the sweep queues it again
        after `backoff` in this process, or on the next process's first sweep at once.

        Left in the buffer, it would hold capacity until its retry: a table's few poison
        batches fill the buffer, every table's extraction waits in `put`, and `run` never
        returns. A crash between the manifest write and this ack only redelivers it.
        """
        label = f"{batch.source}.{batch.table}"
        self._parked[batch.batch_id] = (label, time.monotonic() + backoff)
        self.buffer.ack(batch.batch_id)

    def _report_parked(self, summary: RunSummary) -> None:
        """Batches parked in an earlier cycle of `run --follow` and not retried in this one
        (their backoff runs) still fail their tables: this cycle is not ok either."""
        now = time.monotonic()
        waiting: dict[str, tuple[int, float]] = {}
        parked = dict(self._parked)  # `run --follow`: the loader thread parks meanwhile
        for batch_id in parked.keys() - set(summary.failed_batches):
            label, retry_at = parked[batch_id]
            count, soonest = waiting.get(label, (0, retry_at))
            waiting[label] = (count + 1, min(soonest, retry_at))
        for label, (count, soonest) in sorted(waiting.items()):
            summary.errors.append(
                f"{label}: {count} batch(es) failed to load for good and wait in the manifest "
                f"for their retry in {max(0.0, soonest - now):.0f}s (their error: "
                "`steadyflow status`)")

    def _report_queue(self) -> None:
        self._queue_reported = time.monotonic()
        depth = self.buffer.depth()
        age = self.buffer.oldest_age() or 0.0
        # parked batches are behind too, though out of the buffer; and a batch queued again
        # (after failing for good, or by the sweep) is a new message: the manifest says how
        # long the oldest one has waited, the buffer only since it was queued last
        waiting = depth + len(self._parked)
        try:  # the manifest's count is the truth: it has the batches landed but not
            waiting, waited = self.state.pending()  # queued (a full buffer) too
        except StateUnavailable:
            waited = None
        if waited is not None:  # aged by the state's clock, which stamped it
            age = max(age, waited)
        self.metrics.queue(depth, self.buffer.capacity, waiting, age)

    def run_once(self, raise_on_error: bool = True) -> RunSummary:
        """Extract and load concurrently until every table is caught up and loaded.

        A table's error does not stop the others; at the end, RunFailed (carrying this
        summary) is raised if any table or batch failed, so a library caller cannot take a
        failed run for a good one. `raise_on_error=False` returns the summary instead (the
        CLI and `run` do: they report its errors and set the exit code from it).
        """
        self._keeps_warehouse = True  # see _highest_seq_above
        run_id = self.run_started("run")
        summary = RunSummary()
        unopened: list[Exception] = []  # the warehouse's error, from the loader thread
        self._halt.clear()
        try:
            self.sweep()
            extracting = threading.Event()
            extracting.set()
            consumer = threading.Thread(target=self._consume, name="load", daemon=True,
                                        args=(extracting, summary, unopened))
            self.landing.handoff = True  # the loader below takes landed pages from memory
            consumer.start()
            try:
                extracted = self.extract()
            finally:
                extracting.clear()
                consumer.join()
                self.landing.stop_handoff()
            summary.extracted_batches = extracted.extracted_batches
            summary.extracted_rows = extracted.extracted_rows
            summary.quarantined_rows += extracted.quarantined_rows  # refused at extraction
            summary.errors[:0] = extracted.errors
            summary.failed_tables[:0] = extracted.failed_tables
            if unopened:  # reported as when it was opened before the extraction
                raise unopened[0]
            self._report_parked(summary)
        except SteadyflowError as exc:
            summary.errors.append(str(exc))
        finally:
            self._halt.clear()
        outcome = "ok" if summary.ok else "error"
        if summary.ok:
            self.metrics.run_succeeded()
        if not self.run_ended(run_id, outcome, summary.loaded_batches, summary.changed_rows,
                              "; ".join(summary.errors)[:2000] or None):
            summary.errors.append("the run's outcome could not be recorded: the state store "
                                  "is unreachable")
        if raise_on_error and not summary.ok:
            raise _run_failed(summary)
        return summary

    def run_started(self, command: str) -> int | None:
        """A run's (or a follow round's) history row; None while the state store is
        unreachable. The run goes on without it: each of its steps meets the outage and
        retries or reports it, as in every later round. Raising here ended a worker whose
        first catch-up met a state server restart (exit 2), while the follow loop itself
        rides such an outage out."""
        try:
            return self.state.start_run(command)
        except StateUnavailable as exc:
            log.warning("could not record the run's start: %s", exc, extra={"stage": "run"})
            return None

    def run_ended(self, run_id: int | None, outcome: str, batches: int, rows: int,
                  error: str | None) -> bool:
        """Record a run's outcome (see run_started); False when it could not be: the row
        stays open, and the next start's `close_runs` ends it as unfinished."""
        if run_id is None:
            return False
        try:
            self.state.end_run(run_id, outcome, batches, rows, error)
        except StateUnavailable as exc:
            log.warning("could not record the run's outcome: %s", exc, extra={"stage": "run"})
            return False
        return True

    def staged(self, command: str, work: Callable[[], RunSummary]) -> RunSummary:
        """A stage command (`extract`, `load`) recorded in the run history as `run` is.
        Run alone from cron, a `load` whose warehouse could not be opened left nothing
        behind it (no table carries that error), so `status` said healthy, exit 0, while
        nothing loaded; status now reads each stage's last finished run (failed_run)."""
        run_id = self.state.start_run(command)
        try:
            summary = work()
        except SteadyflowError as exc:
            self.state.end_run(run_id, "error", 0, 0, str(exc)[:2000])
            raise
        except BaseException:
            self.state.end_run(run_id, "error", 0, 0, "the command stopped unfinished")
            raise
        self.state.end_run(run_id, "ok" if summary.ok else "error", summary.loaded_batches,
                           summary.changed_rows, "; ".join(summary.errors)[:2000] or None)
        return summary

    def _consume(self, extracting: threading.Event, summary: RunSummary,
                 unopened: list[Exception] | None = None) -> None:
        """run_once's loader thread. Batches' errors are handled in `load`; an error outside
        a batch (the buffer or the state file failing in a way no retry covers) stops the
        pipeline: with no loader, extraction would wait for buffer space forever. So does
        any other end of the loader while extraction runs (`put` checks the stop).

        With `unopened` (run_once) it opens the warehouse first, beside the extraction's
        connect, probe and first page rather than before them (a DuckDB file's open, and
        the process's first duckdb import, were ~0.1 CPU-s on the full load's critical
        path: bench/NOTES.md, session 14). A warehouse that cannot be opened still fails
        the run with its error: it goes into `unopened` for run_once to raise, and the
        run's halt stops the extraction (its waits for buffer space too) without stopping
        the pipeline, so a table is not reported failed for it and `--follow` goes on as
        it did. What was landed meanwhile stays in the manifest for the next run's sweep.
        """
        if unopened is not None:
            try:
                _ = self.warehouse
            except Exception as exc:  # noqa: BLE001 - run_once raises it on its thread
                unopened.append(exc)
                self._halt.set()
                return
        try:
            if unopened is not None:
                self._floor_seq()
            self.load(extracting=extracting, summary=summary)
        except Exception as exc:  # noqa: BLE001 - reported as the run's error, not lost
            log.exception("the loader stopped", extra={"stage": "load"})
            summary.errors.append(f"the loader stopped: {exc!r}")
            self._stop.set()
        finally:
            if extracting.is_set():  # ended before extraction did: nothing drains the buffer
                self._stop.set()

    def ask_floor(self) -> None:
        """`load` alone: the sequence's floor asked when it opens the warehouse, as run_once
        does, so an `extract` run beside it while it holds a DuckDB file (which that
        extract cannot open) takes its numbers above the warehouse's."""
        self._keeps_warehouse = True  # the load goes on with the warehouse opened here
        self._floor_seq()

    def _floor_seq(self) -> None:
        """The state's floor asked once per process, before any number is taken, on the
        loader thread right after it opened the warehouse (the extraction's first next_seq
        waits for it on the state's floor lock, or asks itself). A warehouse that does not
        answer is not the run's failure: each table's first number asks again, and no
        table is extracted until it answers."""
        try:
            self.state.floor_seq()
        except RetryableError as exc:
            log.warning("cannot ask the warehouse for its highest extraction number (%s): no "
                        "table is extracted until it answers", exc, extra={"stage": "state"})

    def _halted(self, exc: BaseException) -> bool:
        """Whether a table's extraction ended because run_once halted (see _consume): a
        stop or a wait for buffer space given up, not the table's own error."""
        return (self._halt.is_set() and isinstance(exc, RetryableError)
                and not isinstance(exc, TableBusy | ExtractionFenced))

    def run(self, follow: bool = False) -> RunSummary:
        """run_once, and with `follow` then every table on its own cadence until stopped
        (run/follow.py: fast while changes flow, backing off to `run.interval` when idle).

        The summary covers the whole run (every round's counts, the last round's errors):
        stopping a long `run --follow` reports what it did, not what its last round did.
        """
        self._follow_next = follow
        try:
            summary = self.run_once(raise_on_error=False)
        finally:
            self._follow_next = False
        if follow and not self._stop.is_set():
            from steadyflow.run.follow import follow as follow_tables

            summary = follow_tables(self, summary)
        return summary
