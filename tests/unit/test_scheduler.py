"""run/scheduler.py: units on their own cadence, a bounded pool, results reported, a prompt
stop. Events decide every assertion, never a measured time."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from steadyflow.run.scheduler import Cadence, Outcome, Scheduler, Unit

pytestmark = pytest.mark.timeout(30)
FAST = Cadence(minimum=0.0, maximum=0.001)


def in_thread(scheduler: Scheduler) -> threading.Thread:
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    return thread


def test_a_busy_unit_runs_again_at_its_minimum_and_an_idle_one_backs_off() -> None:
    cadence = Cadence(minimum=0.5, maximum=5.0)
    assert cadence.next_delay(4.0, busy=True) == 0.5
    delays = [0.5]
    for _ in range(6):
        delays.append(cadence.next_delay(delays[-1], busy=False))
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_a_slow_unit_never_holds_up_another() -> None:
    release = threading.Event()
    fast_runs = threading.Semaphore(0)

    def slow() -> Outcome:
        release.wait(20)
        return Outcome()

    def fast() -> Outcome:
        fast_runs.release()
        return Outcome(busy=True)

    scheduler = Scheduler([Unit("slow", slow, FAST), Unit("fast", fast, FAST)], workers=2)
    thread = in_thread(scheduler)
    try:
        for _ in range(5):  # five polls of `fast` while `slow`'s first is still running
            assert fast_runs.acquire(timeout=10)
        assert scheduler.units["slow"].runs == 0
    finally:
        release.set()
        scheduler.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_no_more_units_run_at_once_than_workers() -> None:
    lock = threading.Lock()
    running, most, done = [0], [0], threading.Semaphore(0)

    def work() -> Outcome:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        with lock:
            running[0] -= 1
        done.release()
        return Outcome(busy=True)

    units = [Unit(f"t{i}", work, FAST) for i in range(8)]
    scheduler = Scheduler(units, workers=2)
    thread = in_thread(scheduler)
    try:
        for _ in range(40):
            assert done.acquire(timeout=10)
    finally:
        scheduler.stop()
        thread.join(10)
    assert 1 <= most[0] <= 2


def test_an_error_is_reported_and_the_loop_goes_on() -> None:
    results: list[tuple[str, Outcome]] = []
    seen = threading.Semaphore(0)

    def broken() -> Outcome:
        raise RuntimeError("boom")

    def record(unit: Unit, outcome: Outcome) -> None:
        results.append((unit.key, outcome))
        seen.release()

    scheduler = Scheduler([Unit("bad", broken, FAST)], workers=1, on_result=record)
    thread = in_thread(scheduler)
    try:
        for _ in range(3):
            assert seen.acquire(timeout=10)
    finally:
        scheduler.stop()
        thread.join(10)
    assert all(key == "bad" and isinstance(o.error, RuntimeError) for key, o in results)


def test_stop_ends_the_loop_once_the_runs_in_flight_return() -> None:
    stopping = threading.Event()
    started = threading.Event()

    def polite() -> Outcome:  # a unit checks the stop flag between its own steps
        started.set()
        stopping.wait(20)
        return Outcome()

    scheduler = Scheduler([Unit("t", polite, Cadence(minimum=3600, maximum=3600))],
                          workers=1, should_stop=stopping.is_set)
    thread = in_thread(scheduler)
    assert started.wait(10)
    stopping.set()  # the flag alone: no stop() call to wake the loop
    thread.join(10)
    assert not thread.is_alive()


def test_a_woken_unit_runs_before_its_due_time() -> None:
    ran = threading.Semaphore(0)

    def work() -> Outcome:
        ran.release()
        return Outcome()

    hour = Cadence(minimum=3600, maximum=3600)
    scheduler = Scheduler([Unit("t", work, hour)], workers=1)
    thread = in_thread(scheduler)
    wake: Callable[[], None] = lambda: scheduler.wake("t")  # noqa: E731
    try:
        assert ran.acquire(timeout=10)  # due at once
        while not ran.acquire(timeout=0.05):  # not again for an hour, unless woken
            wake()
    finally:
        scheduler.stop()
        thread.join(10)
    assert scheduler.units["t"].runs == 2


def test_a_failing_report_is_logged_and_the_loop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    ran = threading.Semaphore(0)

    def work() -> Outcome:
        ran.release()
        return Outcome()

    def report(unit: Unit, outcome: Outcome) -> None:
        raise RuntimeError("the state store is down")

    scheduler = Scheduler([Unit("t", work, FAST)], workers=1, on_result=report)
    thread = in_thread(scheduler)
    try:
        for _ in range(3):
            assert ran.acquire(timeout=10)
    finally:
        scheduler.stop()
        thread.join(10)
    assert "reporting a run of t failed" in caplog.text
