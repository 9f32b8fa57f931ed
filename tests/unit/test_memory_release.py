"""run/memory.py Releaser: when the loader hands freed memory back, on a clock the test
moves (no sleeps, no allocator: `release` is a function field)."""

from __future__ import annotations

import pytest

from steadyflow.run.memory import Releaser


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def releaser(clock: Clock, calls: list[float]) -> Releaser:
    return Releaser(after_rows=20_000, idle_for=0.5, every=10.0,
                    release=lambda: calls.append(clock.now), clock=clock)


def test_a_steady_flow_after_a_spike_releases_without_an_idle_moment() -> None:
    """bench/spike.py's case: a batch every 25 ms before, during and after the spike; the
    loader never waits RELEASE_IDLE for one, and releases every 10 s while rows come."""
    clock, calls = Clock(), []
    r = releaser(clock, calls)
    for step in range(40 * 60):  # 60 s: 20 s at 250 rows/batch, 20 s at 2,500, 20 s at 250
        clock.now += 0.025
        r.loaded(2_500 if 800 <= step < 1600 else 250)
    assert len(calls) == 6
    assert all(b - a >= 10.0 for a, b in zip(calls, calls[1:], strict=False))


def test_an_idle_loader_releases_at_once_after_enough_rows() -> None:
    clock, calls = Clock(), []
    r = releaser(clock, calls)
    clock.now += 1.0
    r.loaded(25_000)  # the first release waits `every` after the start
    clock.now += 0.3
    r.idle()
    assert calls == []
    clock.now += 0.3  # 0.6 s since the last batch
    r.idle()
    assert calls == [pytest.approx(101.6)]
    clock.now += 5.0
    r.idle()  # nothing loaded since: nothing to give back
    assert len(calls) == 1


def test_a_trickle_never_releases_before_enough_rows() -> None:
    clock, calls = Clock(), []
    r = releaser(clock, calls)
    for _ in range(100):  # 19,900 rows over 100 s, idle moments included
        clock.now += 1.0
        r.loaded(199)
        clock.now += 0.6
        r.idle()
    assert calls == []
    r.loaded(100)  # the 20,000th row, 160 s after the start
    assert calls == [pytest.approx(260.0)]
