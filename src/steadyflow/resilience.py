"""How steadyflow treats a struggling source: retry transient errors with exponential
backoff and full jitter, stop hammering a failing store (circuit breaker), shrink pages
when queries time out, and cap the queries in flight per source database.

One policy per source, from its `resilience` config, used by every source kind.
"""

from __future__ import annotations

import heapq
import os
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
from steadyflow.errors import (
    AuthError,
    RateLimited,
    RetryableError,
    SourceTimeout,
    SourceUnavailable,
)

T = TypeVar("T")
STOP_POLL = 0.05  # seconds: how often a backoff sleep checks whether to stop
#: After rejected credentials the source is left alone this long, doubled on every further
#: rejection up to AUTH_BACKOFF_MAX. A wrong password retried every cycle (every 5 s with
#: `run --follow`) is enough for many directories to lock the service account; one
#: attempt a minute growing to one an hour is not, and a fixed password is still picked
#: up within the hour (or at once on restart).
AUTH_BACKOFF_INITIAL = 60.0
AUTH_BACKOFF_MAX = 3600.0


def watchdog_grace(policy: ResilienceConfig) -> float:
    """Slack after statement_timeout before the client gives up on a silent connection.

    The server enforces statement_timeout, but its answer can be lost (a black-holed link
    ACKs nothing and sends nothing), so the client stops waiting at timeout + grace.
    """
    return min(10.0, max(1.0, policy.statement_timeout / 2))


def retry_reason(exc: BaseException) -> str:
    """The metrics label of a retried error: timeout, rate_limited, server_error, connection."""
    if isinstance(exc, SourceTimeout):
        return "timeout"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if getattr(exc, "server_error", False):
        return "server_error"
    if isinstance(exc, SourceUnavailable):
        return "connection"
    return "other"


class Watchdog:
    """Calls `fire` once if the guarded block runs longer than `seconds`.

    Used to shut down the socket of a query whose answer never comes: a driver blocked in
    recv() on a black-holed connection then fails at once instead of hanging forever.
    `fire` runs under a lock that the block's exit also takes, so it never touches a
    connection after the block has finished with it.

    Every watchdog of the process waits on one thread (`_Deadlines`); a `fire` runs on a
    thread of its own, so one that blocks (a cancel request to an unreachable server)
    delays no other. A threading.Timer per block started and stopped a thread for every
    page and every source statement: CPU, and on a busy machine a wait for the new
    thread to be scheduled before each query could start.
    """

    def __init__(self, seconds: float, fire: Callable[[], None]) -> None:
        self.seconds = seconds
        self._fire = fire
        self._lock = threading.Lock()
        self._armed = False
        self._entered = 0  # which `with` of this watchdog is armed (a deadline names it)
        self.fired = False

    def _run(self, entered: int) -> None:
        with self._lock:
            if self._armed and self._entered == entered:
                self._armed = False
                self.fired = True
                try:
                    self._fire()
                except OSError:
                    pass

    def __enter__(self) -> Watchdog:
        with self._lock:
            self._entered += 1
            self._armed = True
        _DEADLINES.add(time.monotonic() + self.seconds, self, self._entered)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._armed = False
        _DEADLINES.drop()

    def armed(self, entered: int) -> bool:
        return self._armed and self._entered == entered


class _Deadlines:
    """The process's armed watchdogs by deadline, watched by one daemon thread (started
    on first use, again in a forked child). An ended block's entry stays in the heap
    until its deadline or until ended entries are most of the heap; `_run` ignores it."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Watchdog, int]] = []
        self._ended = 0
        self._count = 0
        self._thread: threading.Thread | None = None
        self._pid = 0

    def after_fork(self) -> None:
        """In a forked child: a lock and a heap of its own. The parent's lock may have been
        held at the fork (by the watching thread, or by another thread arming a watchdog),
        and no thread of the child would ever release it: the child's first watchdog then
        waited for it forever."""
        self._cond = threading.Condition(threading.Lock())
        self._heap, self._ended, self._thread, self._pid = [], 0, None, os.getpid()

    def add(self, deadline: float, dog: Watchdog, entered: int) -> None:
        with self._cond:
            if self._pid != os.getpid():  # a child forked without after_fork
                self._heap, self._ended, self._thread = [], 0, None
                self._pid = os.getpid()
            if self._thread is None or not self._thread.is_alive():
                # the armed deadlines stay: emptied here, every block guarded meanwhile
                # would never be cut short
                self._thread = threading.Thread(target=self._watch, name="watchdogs",
                                                daemon=True)
                self._thread.start()
            self._count += 1
            heapq.heappush(self._heap, (deadline, self._count, dog, entered))
            if self._heap[0][2] is dog:
                self._cond.notify()

    def drop(self) -> None:
        """A block ended: its entry is dead weight, cleared out once most entries are."""
        with self._cond:
            self._ended += 1
            if self._ended > 64 and 2 * self._ended > len(self._heap):
                self._heap = [e for e in self._heap if e[2].armed(e[3])]
                heapq.heapify(self._heap)
                self._ended = 0

    def _watch(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(max(0.0, self._heap[0][0] - time.monotonic())
                                    if self._heap else None)
                _, _, dog, entered = heapq.heappop(self._heap)
                if not dog.armed(entered):
                    self._ended = max(0, self._ended - 1)
                    continue
            try:
                threading.Thread(target=dog._run, args=(entered,), name="watchdog-fire",
                                 daemon=True).start()
            except (RuntimeError, MemoryError):
                # no thread to be had (a thread or memory limit; blocked fires each hold
                # one): fired here, late for the deadlines behind it if it blocks, where
                # the exception ended this thread and every armed deadline with it
                try:
                    dog._run(entered)
                except Exception:  # noqa: BLE001 - a fire's error must not end this thread
                    pass


_DEADLINES = _Deadlines()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_DEADLINES.after_fork)


class CircuitBreaker:
    """closed → (N consecutive failures) → open → (reset time) → half-open → one probe.

    Rejected credentials open it at the first failure, for AUTH_BACKOFF_INITIAL doubled
    on each further rejection (up to AUTH_BACKOFF_MAX); while open for that reason,
    `check` raises AuthError (fatal: the run does not retry it) without touching the source.

    Written out instead of taken from pybreaker: pybreaker wraps calls and raises its own
    exceptions, while we need the state as data (metrics, status page) and our own errors.
    """

    def __init__(self, name: str, failures: int, reset: float,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str], None] | None = None,
                 auth_backoff: tuple[float, float] = (AUTH_BACKOFF_INITIAL,
                                                      AUTH_BACKOFF_MAX)) -> None:
        self.name = name
        self.threshold = failures
        self.reset = reset
        self.auth_backoff = auth_backoff
        self._auth_rejections = 0  # in a row; 0: the last call was not an auth failure
        self.clock = clock
        self.on_change = on_change
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._state = "closed"
        self._cause: str | None = None  # the last failure, so "open" says what is wrong

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

    @property
    def auth_failing(self) -> bool:
        """The last call was rejected for its credentials."""
        with self._lock:
            return self._auth_rejections > 0

    def _reset_after(self) -> float:
        """How long the breaker stays open: growing while credentials are rejected."""
        if self._auth_rejections:
            initial, cap = self.auth_backoff
            return float(min(cap, initial * 2 ** min(self._auth_rejections - 1, 32)))
        return self.reset

    def _tick(self) -> None:
        if (self._state == "open" and self._opened_at is not None
                and self.clock() - self._opened_at >= self._reset_after()):
            self._set("half-open")

    def check(self) -> None:
        """Raise SourceUnavailable (AuthError after rejected credentials) without touching
        the source while the breaker is open."""
        with self._lock:
            self._tick()
            if self._state == "open":
                remaining = self._reset_after() - (self.clock() - (self._opened_at or 0))
                if self._auth_rejections:
                    raise AuthError(
                        f"credentials rejected {self._auth_rejections} time(s) in a row "
                        f"(last: {self._cause}); not tried again for {max(0.0, remaining):.0f}s",
                        stage="extract", source=self.name,
                        hint="fix the source's credentials; the wait doubles on every "
                             "rejection (up to 1 h) so the service account is not locked "
                             "out; a restart tries again at once")
                cause = f" after {self._failures} failures in a row, last: {self._cause}" \
                    if self._cause else ""
                raise SourceUnavailable(
                    f"circuit breaker open{cause}; next probe in {max(0.0, remaining):.1f}s",
                    stage="extract", source=self.name,
                    hint="the source failed repeatedly; it is left alone for a while")

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._auth_rejections = 0
            self._opened_at = None
            self._set("closed")

    def failure(self, cause: str | None = None) -> None:
        with self._lock:
            self._failures += 1
            self._cause = cause or self._cause
            if self._state == "half-open" or self._failures >= self.threshold:
                self._opened_at = self.clock()
                self._set("open")

    def auth_failure(self, cause: str) -> None:
        """Rejected credentials: open at once, for a back-off that doubles per rejection."""
        with self._lock:
            self._auth_rejections += 1
            self._failures += 1
            self._cause = cause
            self._opened_at = self.clock()
            self._set("open")


@dataclass
class PageSizer:
    """Adaptive page size: halve on a timeout or slow page, grow back by half when healthy.

    A timed-out page is retried smaller, never as the same query: each timeout halves the
    page down to `minimum`, so a page that fits the statement timeout is reached in
    log2(maximum/minimum) steps. Fast pages (under a quarter of `slow_seconds`) grow the
    size by half again, up to `maximum`, so a source that recovers is read at full speed.
    """

    current: int
    minimum: int
    maximum: int
    slow_seconds: float

    def __post_init__(self) -> None:
        self.minimum = max(1, min(self.minimum, self.maximum))
        self.current = max(self.minimum, min(self.current, self.maximum))

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
                 on_breaker: Callable[[str, str], None] | None = None,
                 on_auth: Callable[[str, bool], None] | None = None) -> None:
        self.name = name
        self.policy = policy
        self.breaker = CircuitBreaker(name, policy.breaker_failures, policy.breaker_reset,
                                      on_change=on_breaker)
        self.on_auth = on_auth
        self.slots = threading.BoundedSemaphore(policy.max_concurrent_queries)
        self.on_retry = on_retry

    def _wait(self, state: RetryCallState) -> float:
        """Full-jitter exponential backoff; a Retry-After (429, or 503 with one) is a floor
        on the wait, capped at `backoff_max`.

        Why the cap is backoff_max: it is the source's own statement of the longest pause
        between two attempts, and a server's Retry-After is no more binding than that. An
        uncapped one (86400) would hold the table, and the run, for a day. Past the cap
        the retry comes early; if the server still refuses, the retries run out and the
        table fails visibly for this run, and the next run asks again.
        """
        cap = self.policy.backoff_max
        base: float = wait_random_exponential(
            multiplier=self.policy.backoff_initial, max=cap)(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(max(float(retry_after), base), cap)
        return base

    def _sleep_until(self, stop: Callable[[], bool]) -> Callable[[float], None]:
        """A backoff sleep that ends early, with StopRequested, once `stop()` turns true:
        Ctrl-C or SIGTERM must end a run within a poll, not after a 30 s backoff."""

        def sleep(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while True:
                if stop():
                    raise StopRequested(f"stopping; {self.name} not retried", source=self.name)
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                time.sleep(min(left, STOP_POLL))

        return sleep

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and self.on_retry is not None:
            self.on_retry(self.name, exc)

    def call(self, fn: Callable[[], T], on_error: Callable[[BaseException], None] | None = None,
             stop: Callable[[], bool] = lambda: False) -> T:
        """Run `fn` under the breaker and cap, retrying transient errors with jitter.

        Fatal errors (bad password, missing table) propagate on the first attempt; a
        bad password also opens the breaker with a long, growing back-off.
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
                        self.breaker.failure(exc.message)
                    if on_error is not None:
                        on_error(exc)
                    raise
                except AuthError as exc:
                    self.breaker.auth_failure(exc.message)
                    if self.on_auth is not None:
                        self.on_auth(self.name, True)
                    raise
            if self.breaker.auth_failing and self.on_auth is not None:
                self.on_auth(self.name, False)
            self.breaker.success()
            return result

        retrying = Retrying(
            stop=stop_after_attempt(self.policy.retries + 1),
            wait=self._wait,
            sleep=self._sleep_until(stop),
            retry=retry_if_exception(
                lambda e: isinstance(e, RetryableError) and not isinstance(e, StopRequested)),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        return retrying(attempt)


class StopRequested(RetryableError):
    """The process is shutting down; the work will be picked up by the next run."""
