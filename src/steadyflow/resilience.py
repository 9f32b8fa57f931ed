"""How steadyflow treats a struggling source: retry transient errors with exponential
backoff and full jitter, stop hammering a failing store (circuit breaker), shrink pages
when queries time out, and cap the queries in flight per source database.

One policy per source, from its `resilience` config, used by every source kind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from steadyflow.config import ResilienceConfig
from steadyflow.errors import RateLimited, RetryableError, SourceUnavailable

T = TypeVar("T")


class CircuitBreaker:
    """closed → (N consecutive failures) → open → (reset time) → half-open → one probe.

    Written out instead of taken from pybreaker: pybreaker wraps calls and raises its own
    exceptions, while we need the state as data (metrics, status page) and our own errors.
    """

    def __init__(self, name: str, failures: int, reset: float,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str], None] | None = None) -> None:
        self.name = name
        self.threshold = failures
        self.reset = reset
        self.clock = clock
        self.on_change = on_change
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._state = "closed"

    @property
    def state(self) -> str:
        with self._lock:
            self._tick()
            return self._state

    def _set(self, state: str) -> None:
        if state != self._state:
            self._state = state
            if self.on_change:
                self.on_change(self.name, state)

    def _tick(self) -> None:
        if (self._state == "open" and self._opened_at is not None
                and self.clock() - self._opened_at >= self.reset):
            self._set("half-open")

    def check(self) -> None:
        """Raise SourceUnavailable without touching the source while the breaker is open."""
        with self._lock:
            self._tick()
            if self._state == "open":
                remaining = self.reset - (self.clock() - (self._opened_at or 0))
                raise SourceUnavailable(
                    f"circuit breaker open; next probe in {max(0.0, remaining):.1f}s",
                    stage="extract", source=self.name,
                    hint="the source failed repeatedly; it is left alone for a while")

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._set("closed")

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == "half-open" or self._failures >= self.threshold:
                self._opened_at = self.clock()
                self._set("open")


@dataclass
class PageSizer:
    """Adaptive page size: halve on a timeout or slow page, grow back by half when healthy."""

    current: int
    minimum: int
    maximum: int
    slow_seconds: float

    def on_timeout(self) -> int:
        self.current = max(self.minimum, self.current // 2)
        return self.current

    def on_page(self, seconds: float) -> int:
        if seconds > self.slow_seconds:
            self.current = max(self.minimum, self.current // 2)
        elif seconds < self.slow_seconds / 4:
            self.current = min(self.maximum, int(self.current * 1.5) + 1)
        return self.current


class SourceGuard:
    """Everything that protects one source: breaker, concurrency cap, retry policy."""

    def __init__(self, name: str, policy: ResilienceConfig,
                 on_retry: Callable[[str, BaseException], None] | None = None,
                 on_breaker: Callable[[str, str], None] | None = None) -> None:
        self.name = name
        self.policy = policy
        self.breaker = CircuitBreaker(name, policy.breaker_failures, policy.breaker_reset,
                                      on_change=on_breaker)
        self.slots = threading.BoundedSemaphore(policy.max_concurrent_queries)
        self.on_retry = on_retry

    def _wait(self, state: RetryCallState) -> float:
        base: float = wait_random_exponential(
            multiplier=self.policy.backoff_initial, max=self.policy.backoff_max)(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return max(exc.retry_after, min(base, self.policy.backoff_max))
        return base

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and self.on_retry is not None:
            self.on_retry(self.name, exc)

    def call(self, fn: Callable[[], T], on_error: Callable[[BaseException], None] | None = None,
             stop: Callable[[], bool] = lambda: False) -> T:
        """Run `fn` under the breaker and cap, retrying transient errors with jitter.

        Fatal errors (bad password, missing table) propagate on the first attempt.
        """

        def attempt() -> T:
            if stop():
                raise StopRequested(f"stopping; {self.name} not retried", source=self.name)
            self.breaker.check()
            with self.slots:
                try:
                    result = fn()
                except RetryableError as exc:
                    if not isinstance(exc, RateLimited):
                        self.breaker.failure()
                    if on_error is not None:
                        on_error(exc)
                    raise
            self.breaker.success()
            return result

        retrying = Retrying(
            stop=stop_after_attempt(self.policy.retries + 1),
            wait=self._wait,
            retry=retry_if_exception(
                lambda e: isinstance(e, RetryableError) and not isinstance(e, StopRequested)),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        return retrying(attempt)


class StopRequested(RetryableError):
    """The process is shutting down; the work will be picked up by the next run."""
