"""`run --follow`: every table polls on its own cadence (run/scheduler.py) while the loader
runs beside them, until stopped.

    first:   run_once (every table caught up and loaded, as `run` does)
    then:    one scheduler unit per table: poll it (Pipeline.extract_table), again after
             poll_min while its checkpoint moves, backing off by doubling to its poll_max
             (run.interval) while it does not; the loader thread consumes the buffer
    rounds:  once every table has polled since the last round (and at least run.interval,
             or MIN_ROUND, later), the round is recorded in the run history (one row, as a
             cycle was),
             the parked batches are swept back, and the reconciler gets its tick

A round is what a cycle was for operators and alerts: a run-history row whose outcome
is "error" while a table's last poll or a batch failed, `run_succeeded` when all went well.
Rounds are written at most every run.interval (and MIN_ROUND), never per poll, so an idle
pipeline writes little, as often as its cycles did. Stop (SIGTERM, Ctrl-C: Pipeline.stop)
ends the scheduler within its tick once the polls in flight return (they check the same
flag between pages), then the loader; the last, partial round is recorded too.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from steadyflow.observe import logs
from steadyflow.run.extract import ExtractResult, TableMemory
from steadyflow.run.lease import KeptLease
from steadyflow.run.scheduler import Cadence, Outcome, Scheduler, Unit

if TYPE_CHECKING:
    from steadyflow.run.pipeline import Pipeline, RunSummary

log = logs.get("run")

# the shortest round: a run-history row (a state write) at most this often, and at most
# every run.interval
MIN_ROUND = 1.0
_COUNTS = ("loaded_batches", "loaded_rows", "quarantined_rows", "duplicates_skipped",
           "changed_rows", "reread_rows")


def follow(pipeline: Pipeline, summary: RunSummary) -> RunSummary:
    """Run until stopped; returns `summary` followed by every round (RunSummary.then)."""
    return _Follower(pipeline, summary).run()


def cadence_of(pipeline: Pipeline, table: Any) -> Cadence:
    run = pipeline.config.run
    minimum = table.poll_min if table.poll_min is not None else run.poll_min
    maximum = table.poll_max if table.poll_max is not None else run.interval
    return Cadence(minimum=min(minimum, maximum), maximum=maximum)


class _Follower:
    def __init__(self, pipeline: Pipeline, summary: RunSummary) -> None:
        from steadyflow.run.pipeline import RunSummary

        self.p = pipeline
        self.total = summary
        self.new_summary = RunSummary
        self.lock = threading.Lock()
        self.jobs = {ref.label: (s, t, ref) for s, t, ref in pipeline.config.tables()}
        self.loaded = RunSummary()  # the loader thread's, for the whole follow
        self.loaded_seen: dict[str, int] = dict.fromkeys(_COUNTS, 0)
        self.errors_seen = self.failed_seen = 0
        self.reconciler: Any = None
        self.min_round = max(MIN_ROUND, pipeline.config.run.interval)
        self._start_round()

    def _start_round(self) -> None:
        self.round = self.new_summary()
        self.round_id = self.p.run_started("run")
        self.round_started = time.monotonic()
        self.polled: set[str] = set()

    def run(self) -> RunSummary:
        p = self.p
        if p.config.run.reconcile_every > 0:  # scheduled reconciliation, report only
            from steadyflow.reconcile.runner import Scheduler as Reconciler

            self.reconciler = Reconciler(p)
            self.reconciler.tick()
        extracting = threading.Event()
        extracting.set()
        p.following = True
        consumer = threading.Thread(target=p._consume, args=(extracting, self.loaded),
                                    name="load", daemon=True)
        p.landing.handoff = True  # the loader takes landed pages from memory
        consumer.start()
        if not p.shared:  # one process follows: a busy table keeps its lease between polls
            for label, (_, _, ref) in self.jobs.items():
                p._memory.setdefault(label, TableMemory()).kept = KeptLease(
                    p.state, ref.source, ref.table)
        units = [Unit(label, self._poller(job), cadence_of(p, job[1]))
                 for label, job in self.jobs.items()]
        scheduler = Scheduler(units, p.config.run.max_parallel_sources,
                              on_result=self._polled, should_stop=p._stop.is_set)
        try:
            scheduler.run()
        finally:
            for memory in p._memory.values():
                if memory.kept is not None:
                    with contextlib.suppress(Exception):  # expires by itself if not given
                        memory.kept.release()
                    memory.kept = None
            extracting.clear()
            p._stop.set()  # the loader ends with the follow, as in a cycle that stopped
            consumer.join()
            p.landing.stop_handoff()
            with self.lock:
                self._end_round()
        return self.total

    def _poller(self, job: tuple[Any, Any, Any]) -> Any:
        """One poll of one table; busy while its checkpoint moves (a re-read alone, as an
        adaptive lookback behind a long transaction makes, is not new work)."""

        def poll() -> Outcome:
            ref, result = self.p.extract_table(job)
            moved = isinstance(result, ExtractResult) and result.moved
            error = result if isinstance(result, BaseException) else None
            return Outcome(busy=moved, error=error, detail=(ref, result))

        return poll

    def _polled(self, unit: Unit, outcome: Outcome) -> None:
        detail: tuple[Any, Any] = outcome.detail  # type: ignore[assignment]  # _poller's
        ref, result = detail
        with self.lock:
            self.p.tally(self.round, ref, result)
            self.polled.add(unit.key)
            if (self.polled >= self.jobs.keys()
                    and time.monotonic() - self.round_started >= self.min_round):
                self._end_round()
                self._start_round()
        if self.reconciler is not None and unit.key == next(iter(self.jobs)):
            self.reconciler.tick()  # cheap unless due; once per poll of one table

    def _end_round(self) -> None:
        """Record the round (caller holds the lock): its polls, what the loader did since
        the last round, and the batches still parked."""
        r, loaded = self.round, self.loaded
        for name in _COUNTS:  # added: the polls' tally counted records they quarantined
            now = getattr(loaded, name)
            setattr(r, name, getattr(r, name) + now - self.loaded_seen[name])
            self.loaded_seen[name] = now
        fresh = loaded.errors[self.errors_seen:]
        self.errors_seen += len(fresh)
        r.errors.extend(fresh)
        failed = loaded.failed_batches[self.failed_seen:]
        self.failed_seen += len(failed)
        r.failed_batches.extend(failed)
        # parked batches whose backoff ran out go back to the buffer: the loader sweeps
        # when it next finds the buffer empty (in its own thread, as it does after a full
        # buffer drained), never beside itself
        self.p._unqueued = True
        self.p._report_parked(r)
        if r.ok:
            self.p.metrics.run_succeeded()
        self.p.run_ended(self.round_id, "ok" if r.ok else "error", r.loaded_batches,
                         r.changed_rows, "; ".join(r.errors)[:2000] or None)
        self.total = self.total.then(r)
