"""Per-unit continuous scheduling: a set of units, each with a due time; run what is due on a
bounded pool; report each result.

`run --follow` makes one unit per table (run/pipeline.py), so each table polls on its own
cadence and a slow store never holds up another: a unit waits only for a free worker, never
for another unit's poll to end. A unit that found work is due again after `Cadence.minimum`;
each idle poll doubles its pause up to `Cadence.maximum`, so a quiet table costs its source
one cheap probe per `maximum`. `steadyflow worker` runs the same loop (its units take a lease
across processes inside their callable: the scheduler itself knows nothing of leases).

Why not a thread per unit: with hundreds of tables that is hundreds of threads and
connections polling at once; a bounded pool keeps the load on the sources (and on this
host's two cores) at `workers` polls in flight, earliest due first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from steadyflow.observe import logs

log = logs.get("run")
# the longest the loop sleeps without looking at the stop flag (stop() wakes it at once)
_TICK = 0.5


@dataclass(frozen=True, slots=True)
class Cadence:
    """How often a unit runs: `minimum` apart while it finds work, backing off by doubling
    to `maximum` while it does not."""

    minimum: float
    maximum: float

    def next_delay(self, previous: float, busy: bool) -> float:
        if busy:
            return self.minimum
        return min(self.maximum, max(self.minimum, previous * 2))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run of a unit reports. `busy`: it found work (run it again soon).
    `error`: it failed (run it again after `Cadence.maximum`, or `retry_in`)."""

    busy: bool = False
    error: BaseException | None = None
    retry_in: float | None = None
    detail: object = None  # the unit's own result, handed to `on_result` untouched


@dataclass
class Unit:
    """One schedulable piece of work, e.g. "poll table T". `work` runs it once."""

    key: str
    work: Callable[[], Outcome]
    cadence: Cadence
    due: float = 0.0  # monotonic time; 0 = at once
    delay: float = field(default=0.0, init=False)
    running: bool = field(default=False, init=False)
    runs: int = field(default=0, init=False)


class Scheduler:
    """Runs due units on at most `workers` threads until stopped.

    `on_result(unit, outcome)` is called in the worker thread after each run, before the
    unit is due again (so a caller's bookkeeping sees a unit's runs in order). An
    exception escaping `work` becomes `Outcome(error=...)`, one escaping `on_result` is
    logged: one unit's failure never ends the loop. `stop()` (or `should_stop()` turning
    true) ends `run` once the runs in flight return; units are expected to check the same
    flag between their own steps.
    """

    def __init__(self, units: Iterable[Unit], workers: int,
                 on_result: Callable[[Unit, Outcome], None] = lambda u, o: None,
                 should_stop: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.units = {u.key: u for u in units}
        self.workers = max(1, workers)
        self.on_result = on_result
        self.should_stop = should_stop
        self.clock = clock
        self._cond = threading.Condition()
        self._stopped = False
        self._in_flight = 0

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def wake(self, key: str) -> None:
        """Make a unit due now (an outside event says it has work)."""
        with self._cond:
            unit = self.units.get(key)
            if unit is not None and not unit.running:
                unit.due = self.clock()
                self._cond.notify_all()

    def _stopping(self) -> bool:
        return self._stopped or self.should_stop()

    def run(self) -> None:
        """The loop: start every due unit a worker is free for, earliest due first; sleep
        until the next due time, a finished run, or stop."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="poll") as pool:
            with self._cond:
                while not self._stopping():
                    now = self.clock()
                    waiting = sorted((u for u in self.units.values() if not u.running),
                                     key=lambda u: u.due)
                    for unit in waiting:
                        if unit.due > now or self._in_flight >= self.workers:
                            break
                        unit.running = True
                        self._in_flight += 1
                        pool.submit(self._run_unit, unit)
                    upcoming = [u.due for u in self.units.values() if not u.running]
                    pause = _TICK if not upcoming else min(_TICK, min(upcoming) - now)
                    if self._in_flight >= self.workers:
                        pause = _TICK  # a finished run notifies
                    if pause > 0:
                        self._cond.wait(pause)
            # leaving the pool's block waits for the runs in flight

    def _run_unit(self, unit: Unit) -> None:
        try:
            outcome = unit.work()
        except Exception as exc:  # noqa: BLE001 - one unit's failure never ends the loop
            outcome = Outcome(error=exc)
        try:
            self.on_result(unit, outcome)
        except Exception:  # noqa: BLE001 - the report failed (a state outage): said, not lost
            log.exception("reporting a run of %s failed; it runs again when due", unit.key,
                          extra={"stage": "run"})
        finally:
            with self._cond:
                unit.runs += 1
                if outcome.retry_in is not None:
                    unit.delay = outcome.retry_in
                elif outcome.error is not None:
                    unit.delay = unit.cadence.maximum
                else:
                    unit.delay = unit.cadence.next_delay(unit.delay, outcome.busy)
                unit.due = self.clock() + unit.delay
                unit.running = False
                self._in_flight -= 1
                self._cond.notify_all()
