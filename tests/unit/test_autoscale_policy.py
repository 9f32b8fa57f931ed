"""`decide`, the autoscaler's pure decision: hysteresis, cooldown, bounds, and the lag sum.

Time is the samples' own (`decide` reads no clock), so every history is replayed exactly.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steadyflow.run.autoscale import Policy, Sample, decide, extraction_lag

POLICY = Policy(minimum=1, maximum=5, backlog_high=4, lag_high=10.0, backlog_low=0,
                lag_low=2.0, up_after=3.0, down_after=6.0, cooldown=5.0)


def series(start: float, end: float, backlog: int | None, lag: float | None,
           every: float = 1.0) -> list[Sample]:
    out, at = [], start
    while at <= end + 1e-9:
        out.append(Sample(at, backlog, lag))
        at += every
    return out


def test_below_the_minimum_or_above_the_maximum_is_corrected_at_once() -> None:
    assert decide([], 0, None, POLICY).desired == 1
    assert decide(series(0, 1, 100, 0), 9, 0.5, POLICY).desired == 5  # even in a cooldown


def test_pressure_must_hold_for_up_after_before_a_scale_up() -> None:
    assert decide(series(0, 2, 8, 0), 1, None, POLICY).desired == 1  # 2 s of 3
    decision = decide(series(0, 3, 8, 0), 1, None, POLICY)
    assert decision.desired == 2 and "backlog 8" in decision.reason


def test_a_scale_up_is_proportional_to_the_sustained_pressure_and_capped() -> None:
    # backlog 3x the threshold all along, lag 1.5x: x3 of 1 worker
    assert decide(series(0, 3, 12, 15.0), 1, None, POLICY).desired == 3
    # the weakest sample of the run sets the pressure: one sample at 1.25x -> +1 only
    history = series(0, 3, 12, 0)
    history[1] = Sample(1, 5, 0)
    assert decide(history, 1, None, POLICY).desired == 2
    assert decide(series(0, 3, 400, 0), 2, None, POLICY).desired == 5
    at_max = decide(series(0, 3, 400, 0), 5, None, POLICY)
    assert at_max.desired == 5 and "maximum" in at_max.reason


def test_lag_alone_is_pressure() -> None:
    assert decide(series(0, 3, 0, 25.0), 2, None, POLICY).desired == 5  # ceil(2 x 2.5)


def test_one_sample_below_the_threshold_restarts_the_wait() -> None:
    history = series(0, 5, 8, 0)
    history[3] = Sample(3, 4, 0)  # == threshold: not above it
    assert decide(history, 1, None, POLICY).desired == 1
    history.append(Sample(6, 8, 0))
    assert decide(history, 1, None, POLICY).desired == 1  # 2 s since 4: not yet 3
    history.append(Sample(7, 8, 0))
    assert decide(history, 1, None, POLICY).desired == 2


def test_cooldown_and_samples_before_the_last_change_do_not_count() -> None:
    history = series(0, 20, 8, 0)
    cooling = decide(history[:15], 2, 10.0, POLICY)  # t=14: 4 s after a change at 10
    assert cooling.desired == 2 and "cooling down" in cooling.reason
    # t=15: cooled down, and pressure since the change (11..15, 4 s > up_after): x2
    assert decide(history[:16], 2, 10.0, POLICY).desired == 4
    # with a short cooldown, the pressure before a change at 13 is not counted: 14..15 is
    # 1 s of pressure, then 3 s at t=17
    short = Policy(minimum=1, maximum=5, backlog_high=4, up_after=3.0, cooldown=1.0)
    assert decide(history[:16], 2, 13.0, short).desired == 2
    assert decide(history[:18], 2, 13.0, short).desired == 4


def test_quiet_must_hold_for_down_after_and_removes_one_worker_at_a_time() -> None:
    assert decide(series(0, 5, 0, 1.0), 4, None, POLICY).desired == 4  # 5 s of 6
    decision = decide(series(0, 6, 0, 1.0), 4, None, POLICY)
    assert decision.desired == 3 and "low marks" in decision.reason
    floor = decide(series(0, 6, 0, 1.0), 1, None, POLICY)
    assert floor.desired == 1 and "minimum" in floor.reason


def test_between_the_marks_nothing_changes() -> None:
    # backlog 2: not pressure (<= 4), not quiet (> 0)
    for current in (1, 3, 5):
        assert decide(series(0, 60, 2, 0), current, None, POLICY).desired == current


def test_an_unread_signal_is_never_quiet_and_never_pressure_by_itself() -> None:
    assert decide(series(0, 60, None, None), 3, None, POLICY).desired == 3
    assert decide(series(0, 60, 0, None), 3, None, POLICY).desired == 3  # lag unknown
    assert decide(series(0, 3, None, 30.0), 1, None, POLICY).desired == 3  # lag alone


def test_policy_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="min"):
        Policy(minimum=3, maximum=2)
    with pytest.raises(ValueError, match="low marks"):
        Policy(backlog_high=2, backlog_low=2)
    with pytest.raises(ValueError, match="negative"):
        Policy(cooldown=-1)
    with pytest.raises(ValueError, match="negative"):
        Policy(lag_low=-1)


def test_extraction_lag_is_the_worst_tables_cursor_gap_capped_by_time_seen_behind() -> None:
    behind: dict[tuple[str, str], float] = {}
    highs = {("a", "t"): 1000.0, ("a", "u"): 500.0, ("b", "t"): None}
    loaded = {("a", "t"): 990.0, ("a", "u"): 600.0, ("b", "t"): 10.0}
    # a.t is 10 s behind in cursors, but only just seen so; a.u is ahead (0); b.t: no time
    assert extraction_lag(highs, loaded, behind, now=2000.0) == 0.0
    assert extraction_lag(highs, loaded, behind, now=2004.0) == 4.0
    assert extraction_lag(highs, loaded, behind, now=2030.0) == 10.0  # the gap is smaller
    # caught up: forgotten; behind again: counted from then
    loaded[("a", "t")] = 1000.0
    assert extraction_lag(highs, loaded, behind, now=2031.0) == 0.0 and not behind
    # an idle table's first new row: a 1-hour cursor gap, seen behind for 2 s -> 2 s
    highs[("a", "t")] = 4600.0
    assert extraction_lag(highs, loaded, behind, now=2040.0) == 0.0
    assert extraction_lag(highs, loaded, behind, now=2042.0) == 2.0
    # nothing loaded yet: behind since it was first seen so
    highs[("c", "t")] = 1500.0
    assert extraction_lag(highs, loaded, behind, now=2042.0) == 2.0
    assert extraction_lag(highs, loaded, behind, now=2072.0) == 32.0
    loaded[("c", "t")] = 1500.0
    loaded[("a", "t")] = 4600.0
    assert extraction_lag(highs, loaded, behind, now=2080.0) == 0.0 and not behind


samples_strategy = st.lists(
    st.tuples(st.floats(0.1, 3.0), st.one_of(st.none(), st.integers(0, 40)),
              st.one_of(st.none(), st.floats(0, 60))), max_size=120)


@settings(max_examples=150, deadline=None)
@given(samples_strategy, st.integers(0, 3), st.integers(1, 6))
def test_any_history_stays_in_bounds_with_cooldowns_and_one_step_down(
        steps: list[tuple[float, int | None, float | None]], minimum: int, span: int) -> None:
    """Replays the autoscaler's loop on any sample history: the count never leaves [min,
    max], two changes are at least the cooldown apart, and a scale-down removes one."""
    policy = Policy(minimum=minimum, maximum=minimum + span, backlog_high=8, lag_high=20.0,
                    up_after=4.0, down_after=8.0, cooldown=5.0)
    desired, last_change, at = minimum, None, 0.0
    history: list[Sample] = []
    for gap, backlog, lag in steps:
        at += gap
        history.append(Sample(at, backlog, lag))
        decision = decide(history, desired, last_change, policy)
        assert policy.minimum <= decision.desired <= policy.maximum
        if decision.desired != desired:
            assert last_change is None or at - last_change >= policy.cooldown
            assert decision.desired >= desired - 1
            if decision.desired > desired:
                assert all((policy.pressure(s) or 0) > 1 for s in history
                           if s.at >= at - policy.up_after)
            else:
                assert all(policy.quiet(s) for s in history if s.at >= at - policy.down_after)
            desired, last_change = decision.desired, at
