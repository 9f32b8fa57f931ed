"""The processing half of the loop: buffer → read landed batch → validate → quarantine the
bad rows → merge the good rows with the ledger in one warehouse transaction → ack.

Commit order (the one place it is decided):
  1. quarantine file + index (idempotent: named by batch id),
  2. warehouse transaction: merge rows + ledger row, committed together,
  3. ack the buffer message,
  4. mark the manifest entry loaded.
A crash between any two steps only causes a redelivery, and the ledger turns the repeat
into a no-op. Nothing is acked before it is committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from steadyflow.config import PipelineConfig, owned_value
from steadyflow.failpoints import failpoint
from steadyflow.land.parquet import LandingZone
from steadyflow.model import BatchRef, Contract, decode_value
from steadyflow.observe import logs
from steadyflow.observe.metrics import PipelineMetrics
from steadyflow.ports import Buffer, Warehouse
from steadyflow.state import StateStore
from steadyflow.validate.quarantine import Quarantine
from steadyflow.validate.rules import Owner, Verdict, validate

log = logs.get("load")


@dataclass
class LoadOutcome:
    """One batch's load, in counts that each mean one thing.

    `good_rows` passed validation and went to the merge; of them `changed_rows` inserted or
    changed a warehouse row, the rest (`reread_rows`) were re-reads equal to what the
    warehouse held (a lookback window, a redelivered page). `bad_rows` were quarantined.
    """

    loaded: bool
    good_rows: int
    bad_rows: int
    changed_rows: int = 0

    @property
    def reread_rows(self) -> int:
        return max(0, self.good_rows - self.changed_rows)


def contract_of(config: PipelineConfig, batch: BatchRef) -> Contract:
    """The batch's contract: the configured one plus the columns `schema_drift: add`
    extracted with it (batch.meta["columns"], see run/extract.py)."""
    _, table_cfg, _ = config.table(batch.source, batch.table)
    return config.contract_of(table_cfg).with_added(batch.meta.get("columns"))


def owner_of(config: PipelineConfig, batch: BatchRef, contract: Contract) -> Owner | None:
    """The rows the batch's table owns in its target (its warehouse_filter), if it names
    any: a row outside them is quarantined rather than allowed to replace another table's
    row of the same key (config.PipelineConfig._check_owners)."""
    _, table_cfg, ref = config.table(batch.source, batch.table)
    if not table_cfg.warehouse_filter:
        return None
    return Owner(ref.target, {
        name: owned_value(value, contract.column(name).arrow_type)
        for name, value in table_cfg.warehouse_filter.items()})


def deletes_of(batch: BatchRef, contract: Contract) -> pa.Table | None:
    """The warehouse keys a repair batch deletes in its load transaction.

    They travel in the batch's meta (reconcile/repair.py), i.e. in its manifest entry, not
    in memory: a repair batch the sweeper republishes after a crash deletes them too.
    """
    keys = batch.meta.get("deletes")
    if not isinstance(keys, list) or not keys:
        return None
    return pa.table({name: pa.array([decode_value(key[i]) for key in keys],
                                    contract.column(name).arrow_type)
                     for i, name in enumerate(contract.primary_key)})


def transform(config: PipelineConfig, landing: LandingZone, metrics: PipelineMetrics,
              batch: BatchRef) -> Verdict:
    """Read a landed batch and validate it. Needs no warehouse, so `steadyflow transform`
    runs while `run --follow` holds an embedded DuckDB file."""
    rows = landing.read(batch)
    started = time.monotonic()
    contract = contract_of(config, batch)
    verdict = validate(rows, contract, owner_of(config, batch, contract))
    metrics.batch_duration(batch.source, batch.table, "transform", time.monotonic() - started)
    metrics.rows(batch.source, batch.table, "transform", rows.num_rows, rows.nbytes)
    return verdict


@dataclass
class BatchLoader:
    config: PipelineConfig
    landing: LandingZone
    buffer: Buffer
    warehouse: Warehouse
    state: StateStore
    quarantine: Quarantine
    metrics: PipelineMetrics

    def __post_init__(self) -> None:
        self._ensured: set[tuple[str, tuple[str, ...]]] = set()

    def process(self, batch: BatchRef) -> LoadOutcome:
        """Validate and load one batch; safe to call again for the same batch."""
        _, _, ref = self.config.table(batch.source, batch.table)
        contract = contract_of(self.config, batch)
        if (ref.target, contract.names) not in self._ensured:
            self.warehouse.ensure_table(ref, contract)  # also adds columns new to the target
            self._ensured.add((ref.target, contract.names))
        verdict = transform(self.config, self.landing, self.metrics, batch)
        parked = self.quarantine.park(batch, verdict) if verdict.bad.num_rows else 0
        started = time.monotonic()
        merged = self.warehouse.load(ref, contract, batch, verdict.good,
                                     deletes=deletes_of(batch, contract))
        self.metrics.batch_duration(batch.source, batch.table, "load",
                                    time.monotonic() - started)
        failpoint("load.after_commit")
        if merged is None:
            return LoadOutcome(False, verdict.good.num_rows, parked)
        outcome = LoadOutcome(True, verdict.good.num_rows, parked, merged.changed)
        self._record(batch, verdict, outcome, contract.cursor)
        return outcome

    def _record(self, batch: BatchRef, verdict: Verdict, outcome: LoadOutcome,
                cursor: str) -> None:
        """`outcome.bad_rows`: bad rows newly quarantined (a lookback re-read of a row
        parked before does not count twice). The load rows metric counts changed rows, as
        the status page does: re-reads would make throughput several times too high."""
        good, parked = verdict.good, outcome.bad_rows
        # bytes: all good rows the merge compared and wrote, re-reads included (its work)
        self.metrics.rows(batch.source, batch.table, "load", outcome.changed_rows, good.nbytes)
        if parked:
            self.metrics.quarantined(batch.source, batch.table, parked)
        newest, epoch = _newest(good, cursor)
        if epoch is not None:
            self.metrics.loaded_cursor(batch.source, batch.table, epoch)
        self.state.record_load(batch.source, batch.table, good.num_rows, parked, newest, epoch,
                               changed=outcome.changed_rows)

    def handle(self, batch: BatchRef) -> LoadOutcome:
        """process, then ack, then mark: the commit order in the module docstring."""
        outcome = self.process(batch)
        self.buffer.ack(batch.batch_id)
        self.state.mark_loaded(batch.batch_id, outcome.good_rows, outcome.bad_rows,
                               status="loaded" if outcome.loaded else "duplicate")
        log.debug("loaded" if outcome.loaded else "already loaded", extra={
            "source": batch.source, "table": batch.table, "stage": "load",
            "batch_id": batch.batch_id, "rows": outcome.good_rows})
        return outcome


def _newest(rows: pa.Table, cursor: str) -> tuple[str | None, float | None]:
    if rows.num_rows == 0:
        return None, None
    value = pc.max(rows[cursor]).as_py()
    if isinstance(value, datetime):
        return value.isoformat(), value.timestamp()
    return (str(value), None) if value is not None else (None, None)
