"""The ingestion half of the loop: pages from a source → landing → manifest → buffer →
checkpoint, in that order, for one table.

The order is the guarantee. The checkpoint moves only after its batch is landed and
published, so a crash anywhere re-reads at most the pages after the last checkpoint, and
because a batch id is derived from its content, a re-read page is the same batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from steadyflow.config import SourceConfig, TableConfig
from steadyflow.errors import SourceTimeout
from steadyflow.extract.sql import SqlSource
from steadyflow.failpoints import failpoint
from steadyflow.land.parquet import LandingZone
from steadyflow.model import BatchRef, Contract, TableRef, Watermark, step_back
from steadyflow.observe import logs
from steadyflow.observe.metrics import PipelineMetrics
from steadyflow.ports import Buffer
from steadyflow.resilience import PageSizer, SourceGuard
from steadyflow.state import StateStore

log = logs.get("extract")


@dataclass
class ExtractResult:
    batches: int = 0
    rows: int = 0


@dataclass
class TableExtractor:
    """Extracts one table of one source until it is caught up."""

    source: SourceConfig
    table: TableConfig
    ref: TableRef
    contract: Contract
    landing: LandingZone
    buffer: Buffer
    state: StateStore
    guard: SourceGuard
    metrics: PipelineMetrics
    should_stop: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        self.sizer = PageSizer(
            current=self.table.page_size, minimum=min(self.table.min_page_size,
                                                      self.table.page_size),
            maximum=self.table.page_size,
            slow_seconds=max(1.0, self.source.resilience.statement_timeout / 4))

    def start_point(self) -> tuple[Watermark | None, object | None]:
        """Where this run starts: after the checkpoint, minus the lookback window."""
        mark = self.state.checkpoint(self.ref.source, self.ref.table)
        if mark is None:
            return None, None  # first run: full load in keyset pages
        if self.table.lookback > 0:
            return None, step_back(mark.cursor, self.table.lookback)
        return mark, None

    def run(self, db: SqlSource, dry_run: bool = False) -> ExtractResult:
        result = ExtractResult()
        after, since = self.start_point()
        self.guard.call(lambda: db.probe(self.ref.table, self.contract),
                        stop=self.should_stop)
        while not self.should_stop():
            rows, high, seconds = self._read_page(db, after, since)
            if high is None:
                break
            if dry_run:
                log.info("would land %d rows up to %s", rows.num_rows, high.to_json(),
                         extra={"source": self.ref.source, "table": self.ref.table,
                                "stage": "extract", "rows": rows.num_rows})
            else:
                self.publish(rows, self._low(rows, after, since), high)
            result.batches += 1
            result.rows += rows.num_rows
            self.metrics.rows(self.ref.source, self.ref.table, "extract", rows.num_rows)
            self.metrics.batch_duration(self.ref.source, self.ref.table, "extract", seconds)
            if rows.num_rows < self.sizer.current:
                break
            self.sizer.on_page(seconds)
            self.metrics.page_size(self.ref.source, self.ref.table, self.sizer.current)
            after, since = high, None
        return result

    def _read_page(self, db: SqlSource, after: Watermark | None,
                   since: object | None) -> tuple[pa.Table, Watermark | None, float]:
        def once() -> tuple[pa.Table, Watermark | None, float]:
            started = time.monotonic()
            rows, high = db.page(self.ref.table, self.contract, after, since,
                                 self.sizer.current)
            return rows, high, time.monotonic() - started

        def shrink(exc: BaseException) -> None:
            if isinstance(exc, SourceTimeout):
                size = self.sizer.on_timeout()
                self.metrics.timeout(self.ref.source)
                self.metrics.page_size(self.ref.source, self.ref.table, size)
                log.warning("timeout; page size now %d", size, extra={
                    "source": self.ref.source, "table": self.ref.table, "stage": "extract",
                    "page_size": size})

        return self.guard.call(once, on_error=shrink, stop=self.should_stop)

    def _low(self, rows: pa.Table, after: Watermark | None, since: object | None
             ) -> Watermark | None:
        return after

    def publish(self, rows: pa.Table, low: Watermark | None, high: Watermark) -> BatchRef:
        """Land, record, enqueue, then move the checkpoint. The order is the guarantee."""
        started = time.monotonic()
        batch = self.landing.write(rows, self.ref.source, self.ref.table, low, high)
        self.state.record_landed(batch)
        failpoint("extract.after_land")
        self.metrics.rows(self.ref.source, self.ref.table, "land", batch.rows, batch.nbytes)
        self.buffer.put(batch)
        failpoint("extract.after_enqueue")
        self.state.advance_checkpoint(self.ref.source, self.ref.table, high)
        self.metrics.batch_duration(self.ref.source, self.ref.table, "land",
                                    time.monotonic() - started)
        log.debug("landed", extra={"source": self.ref.source, "table": self.ref.table,
                                   "stage": "land", "batch_id": batch.batch_id,
                                   "rows": batch.rows})
        return batch
