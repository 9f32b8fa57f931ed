"""How the generated suites run their examples: one place for the settings both share.

CI replays the same examples every time (derandomized: a red CI is reproducible by anyone).
A longer local hunt wants new examples instead, so `STEADYFLOW_GENERATED_SEED=<n>` draws a
different, still reproducible, set (the seed is printed with any failure), and
`STEADYFLOW_GENERATED_EXHAUSTIVE=<n>` sets the exhaustive tiers' example count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, seed, settings

SEED = os.environ.get("STEADYFLOW_GENERATED_SEED")


def exhaustive_examples(default: int) -> int:
    return int(os.environ.get("STEADYFLOW_GENERATED_EXHAUSTIVE", str(default)))


def tier_timeout(examples: int) -> pytest.MarkDecorator:
    """An exhaustive tier's pytest-timeout: the ini's 300 s bounds one test function, which
    here runs every example (350 took 614 s on a busy machine; 40 ran past 300 s at load
    20), so the bound grows with the count: a hang still ends the test, a long tier does
    not."""
    return pytest.mark.timeout(max(300, 30 * examples))


def generated(examples: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The settings of one generated test, applied over its @given."""
    # shrinking re-runs the pipeline hundreds of times (minutes per failure): on only where
    # asked (STEADYFLOW_SHRINK=1), to turn a failure into a minimal regression test
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("STEADYFLOW_SHRINK"):
        phases.append(Phase.shrink)
    chosen = settings(max_examples=examples, deadline=None, derandomize=SEED is None,
                      database=None, print_blob=True, phases=phases,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.filter_too_much,
                                             HealthCheck.function_scoped_fixture])

    def apply(test: Callable[..., Any]) -> Callable[..., Any]:
        test = chosen(test)
        return seed(int(SEED))(test) if SEED is not None else test

    return apply
