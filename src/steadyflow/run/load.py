"""The processing half of the loop: buffer → read landed batch → validate → quarantine the
bad rows → merge the good rows with the ledger in one warehouse transaction → ack.

Commit order (the one place it is decided), for every batch of a group alike:
  1. quarantine file + index (idempotent: named by batch id),
  2. warehouse transaction: merge rows + ledger row, committed together (a group: every
     batch's rows and ledger row, committed once),
  3. mark the manifest entry loaded and add the rows to the table's counts (a group: one
     state transaction for all its batches),
  4. ack the buffer message.
A crash between any two steps only causes a redelivery, and the ledger turns the repeat
into a no-op (a redelivered batch marked loaded stays marked, with its counts, which
are added once, in step 3). Nothing is acked before it is committed and marked.

Group commit: the loader takes the batches that are ready (up to `warehouse.group_batches`
batches and `group_rows` rows) and merges them in one transaction, whatever their targets
(ordered by target: concurrent loaders lock tables in the same order), so a spike of small
batches, or a poll of many tables, costs a few commits, not one per batch. A group that fails is
rolled back whole and its batches are loaded again one by one: a batch whose rows fail
for good fails alone, as it would have without the group.

Lanes (a PostgreSQL warehouse, `warehouse.load_lanes`): the batches taken are split by
target over that many connections, whose transactions run at once; every target is in one
lane only (its batches in their order, in one transaction as before), so lanes never touch
the same rows, and each still locks its targets in target order. Steps 3 and 4 stay in the
loader's thread, group by group as each lane's commit returns. One load thread for twenty
targets made every batch wait for the whole gathered group's round trips (session 12's
trace: ~0.7 s in the buffer and ~1 s in the transaction per row at 5,000 rows/s).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from steadyflow.arrow_types import owned_value
from steadyflow.config import PipelineConfig
from steadyflow.errors import ConfigError, FatalError, RetryableError
from steadyflow.failpoints import failpoint
from steadyflow.land.parquet import LandingZone
from steadyflow.model import BatchRef, Contract, TableRef, TextEncoding, decode_value
from steadyflow.observe import logs
from steadyflow.observe.recording import Recording
from steadyflow.ports import Buffer, Delivery, Ledgered, LoadPart, Warehouse
from steadyflow.state import LoadedBatch, StateStore
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
    # the newest cursor among the good rows (the table's freshness), for the state
    newest: str | None = None
    epoch: float | None = None
    # not loaded: what the ledger says the earlier load did (see StateStore.record_loaded)
    ledgered: Ledgered | None = None

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
    return table_owner(config, batch.source, batch.table, contract)


def table_owner(config: PipelineConfig, source: str, table: str, contract: Contract
                ) -> Owner | None:
    """`owner_of` a table of the config (replay validates parked rows as load does)."""
    _, table_cfg, ref = config.table(source, table)
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


def transform(config: PipelineConfig, landing: LandingZone, metrics: Recording,
              batch: BatchRef, encoding: TextEncoding | None = None) -> Verdict:
    """Read a landed batch and validate it (`encoding`: the warehouse's text encoding, if
    it lacks characters). Needs no warehouse, so `steadyflow transform` runs while
    `run --follow` holds an embedded DuckDB file."""
    rows = landing.read(batch)
    started = time.monotonic()
    contract = contract_of(config, batch)
    verdict = validate(rows, contract, owner_of(config, batch, contract), encoding)
    metrics.batch_duration(batch.source, batch.table, "transform", time.monotonic() - started)
    metrics.rows(batch.source, batch.table, "transform", rows.num_rows, rows.nbytes)
    return verdict


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What is kept of a batch once its part went to the merge: counts, not rows."""

    batch: BatchRef
    good_rows: int
    good_bytes: int
    parked: int
    newest: str | None
    epoch: float | None


def gather(buffer: Buffer, first: Delivery, max_batches: int, max_rows: int
           ) -> list[BatchRef]:
    """`first` and the batches ready in the buffer right now, leased to this loader, until
    `max_batches` batches or about `max_rows` rows.

    Never waits for a batch: a group is what is ready, so a quiet pipeline loads each batch
    as soon as it arrives. The batches are asked for together (`Buffer.take`: one JetStream
    pull request for all, where a depth request and a pull request per batch were asked
    before), as many as the rows left allow at the size of those taken so far; the group
    may end a few batches over `max_rows` (`BatchLoader._groups` cuts it into runs of at
    most that many rows, each its own transaction, under the same lease keeper).
    """
    taken = [first.ref]
    rows = first.ref.rows
    seen = {first.ref.batch_id}
    try:
        while len(taken) < max_batches and rows < max_rows:
            fits = -(-(max_rows - rows) * len(taken) // max(rows, 1))  # at the mean size
            want = max(1, min(max_batches - len(taken), fits))
            got = buffer.take(want)
            before = len(taken)
            for delivery in got:
                if delivery.ref.batch_id not in seen:  # a lease that ran out while gathering
                    seen.add(delivery.ref.batch_id)
                    taken.append(delivery.ref)
                    rows += delivery.ref.rows
            if len(got) < want or len(taken) == before:
                break
    except RetryableError as exc:  # the buffer went away: load what was taken
        log.warning("buffer unavailable while gathering a group: %s", exc,
                    extra={"stage": "load"})
    return taken


class LeaseKeeper:
    """Restarts the buffer leases of batches this loader holds while it works through them.

    A group holds its batches for as long as all of them take to merge and commit, longer
    than any one batch: without this, a long group's later batches would be delivered to
    another loader meanwhile (JetStream's ack_wait, the SQLite buffer's visible_at). A
    thread extends every held batch each third of the lease until it is acked (`release`).
    """

    def __init__(self, buffer: Buffer, batch_ids: list[str]) -> None:
        self._buffer = buffer
        self._held = set(batch_ids)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def release(self, batch_id: str) -> None:
        with self._lock:
            self._held.discard(batch_id)

    def _keep(self) -> None:
        every = max(self._buffer.lease / 3, 0.05)
        while not self._stop.wait(every):
            with self._lock:
                held = list(self._held)
            for batch_id in held:
                try:
                    self._buffer.extend(batch_id)
                except RetryableError as exc:  # the buffer is unreachable: it redelivers
                    log.warning("could not extend a lease: %s", exc, extra={
                        "stage": "load", "batch_id": batch_id})


@dataclass
class BatchLoader:
    config: PipelineConfig
    landing: LandingZone
    buffer: Buffer
    warehouse: Warehouse
    state: StateStore
    quarantine: Quarantine
    metrics: Recording
    # more connections to the same warehouse: handle_all merges different targets on them
    # at once (module docstring, Lanes); empty: every group on `warehouse`, one at a time
    lanes: list[Warehouse] = field(default_factory=list)
    _ensured: set[tuple[str, tuple[str, ...]]] = field(default_factory=set, init=False)

    def process(self, batch: BatchRef) -> LoadOutcome:
        """Validate and load one batch; safe to call again for the same batch."""
        return self._process([batch])[0]

    def handle(self, batch: BatchRef) -> LoadOutcome:
        """load, then mark, then ack: the commit order in the module docstring."""
        outcome = self.load_and_mark(batch)
        self._ack(batch, outcome)
        return outcome

    def load_and_mark(self, batch: BatchRef) -> LoadOutcome:
        """load, then mark the manifest with the batch's counts in one state transaction:
        a batch this process landed itself (repair, replay). Marking apart from the counts
        would count twice a batch whose process died between the two."""
        outcome = self._process([batch], record=False)[0]
        self._mark([batch], [outcome])
        return outcome

    def handle_all(self, batches: list[BatchRef]
                   ) -> Iterator[tuple[BatchRef, LoadOutcome | Exception]]:
        """Load batches taken from the buffer: those of one target as groups (one
        transaction each, bounded by `group_rows`), each acked once its group committed.
        Yields every batch with its outcome, or the error it failed with (its caller gives
        it back to the buffer); one batch's error never ends the others."""
        with LeaseKeeper(self.buffer, [b.batch_id for b in batches]) as keeper:
            known = []
            for batch in batches:
                unknown = self._unconfigured(batch)
                if unknown is None:
                    known.append(batch)
                else:
                    keeper.release(batch.batch_id)
                    yield batch, unknown
            lanes = self._by_lane(known)
            handled = (self._handle_lanes(lanes) if len(lanes) > 1 else
                       (pair for group in self._groups(known)
                        for pair in self._handle_group(group)))
            for batch, result in handled:
                keeper.release(batch.batch_id)
                yield batch, result

    def _by_lane(self, batches: list[BatchRef]) -> list[tuple[Warehouse, list[BatchRef]]]:
        """The batches split by target over the lanes (all of a target's in one, in their
        order), the most rows to the lane with the fewest so far; lanes left empty are
        left out."""
        warehouses = [self.warehouse, *self.lanes]
        by_target: dict[str, list[BatchRef]] = {}
        for batch in batches:
            by_target.setdefault(self._ref(batch).target, []).append(batch)
        taken: list[list[BatchRef]] = [[] for _ in warehouses]
        rows = [0] * len(warehouses)
        for _, mine in sorted(by_target.items(), key=lambda kv: -sum(b.rows for b in kv[1])):
            lane = rows.index(min(rows))
            taken[lane].extend(mine)
            rows[lane] += sum(b.rows for b in mine)
        return [(w, lane) for w, lane in zip(warehouses, taken, strict=True) if lane]

    def _handle_lanes(self, lanes: list[tuple[Warehouse, list[BatchRef]]]
                      ) -> Iterator[tuple[BatchRef, LoadOutcome | Exception]]:
        """Each lane's groups merged in a thread of its own, on its own connection; each
        group marked and acked here, in the caller's thread, as its commit returns. A
        group that failed is loaded again one by one in its lane before the lane's next
        group (`_lane_group`), as `_handle_group` does on one connection."""
        done: queue.Queue[tuple[list[BatchRef], list[LoadOutcome] | Exception] | None] = (
            queue.Queue())

        def merge(warehouse: Warehouse, batches: list[BatchRef]) -> None:
            try:
                for group in self._groups(batches):
                    for item in self._lane_group(group, warehouse):
                        done.put(item)
            finally:
                done.put(None)

        threads = [threading.Thread(target=merge, args=lane, name="load-lane", daemon=True)
                   for lane in lanes]
        for thread in threads:
            thread.start()
        try:
            running = len(threads)
            while running:
                item = done.get()
                if item is None:
                    running -= 1
                    continue
                group, outcomes = item
                if isinstance(outcomes, Exception):
                    for batch in group:
                        yield batch, outcomes
                else:
                    yield from self._finish_group(group, outcomes)
        finally:
            for thread in threads:
                thread.join()

    def _lane_group(self, group: list[BatchRef], warehouse: Warehouse
                    ) -> Iterator[tuple[list[BatchRef], list[LoadOutcome] | Exception]]:
        """A lane's group merged, or, if the warehouse refused it, each of its batches
        alone (committed, not yet marked), in order and before the lane's next group.

        Kept until every lane was done (as at first), a refused group's batches loaded
        after the target's later groups: an upsert does not mind (the later extraction
        wins by seq), but a repair batch's delete removes what is there when it runs, so
        an older batch loaded after it brought a deleted key back."""
        try:
            outcomes = self._process(group, record=False, warehouse=warehouse)
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
            if isinstance(exc, RetryableError) or len(group) == 1:
                yield group, exc  # the warehouse itself, or a batch alone already
                return
            log.warning("a group of %d batches failed (%s); loading them one by one",
                        len(group), exc, extra={"stage": "load", "batch_id": exc_batch(exc)})
        else:
            yield group, outcomes
            return
        for batch in group:
            try:
                alone: list[LoadOutcome] | Exception = self._process(
                    [batch], record=False, warehouse=warehouse)
            except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
                alone = exc
            yield [batch], alone

    def _unconfigured(self, batch: BatchRef) -> FatalError | None:
        """The error of a batch whose table the config no longer names (taken out while
        its batches were pending), None for any other: it fails alone, and stays pending
        for a config that names the table again. Ordering the group by target raised for
        it, which stopped the loader, so no batch of any table loaded."""
        try:
            self._ref(batch)
        except ConfigError:
            return FatalError(
                f"batch of {batch.source}.{batch.table}, which the config no longer names: "
                "not loaded, kept pending", stage="load", source=batch.source,
                table=batch.table, batch_id=batch.batch_id,
                hint=f"name {batch.source}.{batch.table} in the config again to load it")
        return None

    def _groups(self, batches: list[BatchRef]) -> list[list[BatchRef]]:
        """Batches ordered by target (stable: a target's batches keep their order), cut
        into runs of at most `group_rows` rows. One run is one transaction, whatever its
        targets: a poll of twenty tables is one commit, not twenty. The order by target
        makes every loader lock the targets in the same order, so two workers' groups
        cannot deadlock on each other's tables."""
        limit = self.config.warehouse.group_rows
        runs: list[list[BatchRef]] = [[]]
        rows = 0
        for batch in sorted(batches, key=lambda b: self._ref(b).target):
            if runs[-1] and rows + batch.rows > limit:
                runs.append([])
                rows = 0
            runs[-1].append(batch)
            rows += batch.rows
        return [run for run in runs if run]

    def _handle_group(self, group: list[BatchRef]
                      ) -> Iterator[tuple[BatchRef, LoadOutcome | Exception]]:
        if len(group) > 1:
            try:
                outcomes = self._process(group, record=False)
            except Exception as exc:  # noqa: BLE001 - one batch's error: see below
                if isinstance(exc, RetryableError):  # the warehouse itself: alone is no better
                    for batch in group:
                        yield batch, exc
                    return
                log.warning("a group of %d batches failed (%s); loading them one by one",
                            len(group), exc, extra={"stage": "load", "batch_id": exc_batch(exc)})
            else:
                yield from self._finish_group(group, outcomes)
                return
        yield from self._alone(group)

    def _finish_group(self, group: list[BatchRef], outcomes: list[LoadOutcome]
                      ) -> Iterator[tuple[BatchRef, LoadOutcome | Exception]]:
        """Steps 3 and 4 of a committed group."""
        try:
            self._mark(group, outcomes)
        except Exception as exc:  # noqa: BLE001 - committed; redelivery is a no-op
            for batch in group:
                yield batch, exc
            return
        for batch, outcome in zip(group, outcomes, strict=True):
            try:
                self._ack(batch, outcome)
            except Exception as exc:  # noqa: BLE001 - committed, marked: redelivery
                yield batch, exc  # is a no-op; the batches acked are loaded
            else:
                yield batch, outcome

    def _alone(self, group: list[BatchRef]
               ) -> Iterator[tuple[BatchRef, LoadOutcome | Exception]]:
        for batch in group:  # alone: a batch that fails fails by itself
            try:
                yield batch, self.handle(batch)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, per batch
                yield batch, exc

    def _ref(self, batch: BatchRef) -> TableRef:
        return self.config.table(batch.source, batch.table)[2]

    def _process(self, group: list[BatchRef], record: bool = True,
                 warehouse: Warehouse | None = None) -> list[LoadOutcome]:
        """Validate, park and merge the batches in one transaction; each batch is
        validated (and its bad rows parked) just before its merge, so the group holds one
        batch's rows at a time and every park precedes the commit. `record`: add each
        batch's rows to its table's counts here (a caller that marks the manifest itself,
        as `replay_batches` does); every other caller does it in `_mark` instead, in the
        one state transaction that marks the group. `warehouse`: a lane's (handle_all)."""
        warehouse = warehouse or self.warehouse
        contracts = [contract_of(self.config, batch) for batch in group]
        for batch, contract in zip(group, contracts, strict=True):
            ref = self._ref(batch)
            if (ref.target, contract.names) not in self._ensured:
                warehouse.ensure_table(ref, contract)  # also adds new columns
                self._ensured.add((ref.target, contract.names))
        prepared: list[_Prepared] = []
        encoding = warehouse.text_encoding()  # asked here: load_group holds its lock

        def parts() -> Iterator[LoadPart]:
            for batch, contract in zip(group, contracts, strict=True):
                verdict = transform(self.config, self.landing, self.metrics, batch, encoding)
                parked = self.quarantine.park(batch, verdict) if verdict.bad.num_rows else 0
                good = verdict.good
                prepared.append(_Prepared(batch, good.num_rows, good.nbytes, parked,
                                          *_newest(good, contract.cursor)))
                yield LoadPart(self._ref(batch), contract, batch, good,
                               deletes_of(batch, contract), parked)

        started = time.monotonic()
        merged = warehouse.load_group(parts())
        share = (time.monotonic() - started) / len(group)
        failpoint("load.after_commit")
        # redeliveries: the counts of a load whose process died before recording them
        ledger = warehouse.ledgered([p.batch.batch_id for p, result
                                          in zip(prepared, merged, strict=True)
                                          if result is None])
        outcomes: list[LoadOutcome] = []
        for p, result in zip(prepared, merged, strict=True):
            self.metrics.batch_duration(p.batch.source, p.batch.table, "load", share)
            outcome = LoadOutcome(result is not None, p.good_rows, p.parked,
                                  result.changed if result is not None else 0,
                                  p.newest, p.epoch, ledger.get(p.batch.batch_id))
            if result is not None:
                self._record(p, outcome, record)
            outcomes.append(outcome)
        return outcomes

    def _record(self, p: _Prepared, outcome: LoadOutcome, state: bool = True) -> None:
        """`outcome.bad_rows`: bad rows newly quarantined (a lookback re-read of a row
        parked before does not count twice). The load rows metric counts changed rows, as
        the status page does: re-reads would make throughput several times too high."""
        batch, parked = p.batch, outcome.bad_rows
        # bytes: all good rows the merge compared and wrote, re-reads included (its work)
        self.metrics.rows(batch.source, batch.table, "load", outcome.changed_rows, p.good_bytes)
        if parked:
            self.metrics.quarantined(batch.source, batch.table, parked)
        if p.epoch is not None:
            self.metrics.loaded_cursor(batch.source, batch.table, p.epoch)
        if state:
            self.state.record_load(batch.source, batch.table, p.good_rows, parked, p.newest,
                                   p.epoch, changed=outcome.changed_rows)

    def _mark(self, group: list[BatchRef], outcomes: list[LoadOutcome]) -> None:
        """Step 3: one state transaction marks every batch of the group (and adds the
        counts of those loaded)."""
        self.state.record_loaded([
            LoadedBatch(batch, "loaded", o.good_rows, o.bad_rows, o.changed_rows, o.newest,
                        o.epoch) if o.loaded else duplicate(batch, o.ledgered, o.newest,
                                                            o.epoch)
            for batch, o in zip(group, outcomes, strict=True)])
        failpoint("load.after_mark")

    def _ack(self, batch: BatchRef, outcome: LoadOutcome) -> None:
        """Step 4, per batch: one that fails to ack is redelivered (a no-op), the others
        are loaded and reported so."""
        self.buffer.ack(batch.batch_id)
        failpoint("load.after_ack")
        log.debug("loaded" if outcome.loaded else "already loaded", extra={
            "source": batch.source, "table": batch.table, "stage": "load",
            "batch_id": batch.batch_id, "rows": outcome.good_rows})


def duplicate(batch: BatchRef, ledgered: Ledgered | None, newest: str | None = None,
              epoch: float | None = None) -> LoadedBatch:
    """A batch the ledger had already, for StateStore.record_loaded: with the counts its
    ledger row kept, which the state adds only if no process recorded them yet."""
    if ledgered is None or ledgered.changed is None:
        return LoadedBatch(batch, "duplicate", ledgered.rows if ledgered else 0, 0, None)
    return LoadedBatch(batch, "duplicate", ledgered.rows, ledgered.quarantined or 0,
                       ledgered.changed, newest, epoch)


def exc_batch(exc: BaseException) -> str | None:
    """The batch an error names, if it names one."""
    batch_id = getattr(exc, "batch_id", None)
    return batch_id if isinstance(batch_id, str) else None


def _newest(rows: pa.Table, cursor: str) -> tuple[str | None, float | None]:
    if rows.num_rows == 0:
        return None, None
    value = pc.max(rows[cursor]).as_py()
    if isinstance(value, datetime):
        return value.isoformat(), value.timestamp()
    return (str(value), None) if value is not None else (None, None)
