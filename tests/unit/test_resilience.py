"""The resilience policy without services: breaker, retry classification, backoff with full
jitter, Retry-After, the concurrency cap, adaptive page size, the watchdog, and the HTTP
source's answer handling (through httpx.MockTransport) and page parsing."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from tenacity import RetryCallState

import steadyflow
from steadyflow.config import ResilienceConfig, SourceConfig, parse_config
from steadyflow.errors import (
    AuthError,
    ConfigError,
    FatalError,
    RateLimited,
    SchemaError,
    SourceTimeout,
    SourceUnavailable,
)
from steadyflow.extract.http import (
    BadPayload,
    HttpSource,
    RawPage,
    ServerError,
    TokenChain,
    format_param,
    parse_page,
    retry_after_seconds,
)
from steadyflow.extract.sql import SqlSource
from steadyflow.model import Contract, Watermark
from steadyflow.resilience import (
    _DEADLINES,
    CircuitBreaker,
    PageSizer,
    SourceGuard,
    StopRequested,
    Watchdog,
    retry_reason,
    watchdog_grace,
)

CONTRACT: dict[str, Any] = {
    "primary_key": ["store_id", "sale_id"], "cursor": "updated_at",
    "columns": {"store_id": {"type": "int64", "nullable": False},
                "sale_id": {"type": "int64", "nullable": False},
                "qty": {"type": "int64"},
                "unit_price": {"type": "decimal(12,2)"},
                "updated_at": {"type": "timestamp", "nullable": False}}}


def policy(**over: Any) -> ResilienceConfig:
    base: dict[str, Any] = {"retries": 4, "backoff_initial": 0.001, "backoff_max": 0.01,
                            "breaker_failures": 3, "breaker_reset": 30}
    return ResilienceConfig(**{**base, **over})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- circuit breaker ------------------------------------------------------------------------
def test_breaker_opens_after_n_failures_fails_fast_then_probes_once() -> None:
    clock, changes = Clock(), []
    breaker = CircuitBreaker("s", failures=3, reset=10, clock=clock,
                             on_change=lambda name, state: changes.append(state))
    for _ in range(2):
        breaker.failure()
    breaker.check()  # still closed after 2
    breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(SourceUnavailable, match="breaker open"):
        breaker.check()
    clock.now += 10
    assert breaker.state == "half-open"
    breaker.check()  # the probe is let through
    breaker.failure()  # the probe failed: open again at once (not after 3 more)
    assert breaker.state == "open"
    clock.now += 10
    breaker.check()
    breaker.success()
    assert breaker.state == "closed"
    assert changes == ["open", "half-open", "open", "half-open", "closed"]


def test_guard_does_not_call_the_source_while_the_breaker_is_open() -> None:
    guard = SourceGuard("s", policy(retries=0, breaker_failures=2))
    calls = []

    def down() -> None:
        calls.append(1)
        raise SourceUnavailable("refused")

    for _ in range(2):
        with pytest.raises(SourceUnavailable):
            guard.call(down)
    with pytest.raises(SourceUnavailable, match="breaker open"):
        guard.call(down)
    assert len(calls) == 2


def test_auth_failures_back_off_long_and_growing_without_calling_the_source() -> None:
    """A wrong password was retried every cycle (~20 a minute), enough to lock a service
    account: now one attempt, then the source is left alone 60 s, 120 s, ... up to 1 h."""
    clock = Clock()
    reported: list[tuple[str, bool]] = []
    guard = SourceGuard("shop", policy(retries=5), on_auth=lambda s, f: reported.append((s, f)))
    guard.breaker.clock = clock
    calls = []

    def rejected() -> None:
        calls.append(clock.now)
        raise AuthError("password authentication failed for user \"etl\"")

    waits = []
    for _ in range(9):
        with pytest.raises(AuthError):
            guard.call(rejected)
        opened = clock.now
        # every cycle in between fails fast, naming the cause, without a connection
        for _ in range(3):
            clock.now += 5
            with pytest.raises(AuthError, match="credentials rejected .* not tried again"):
                guard.call(rejected)
        while guard.breaker.state == "open":
            clock.now += 5
        waits.append(clock.now - opened)
    assert len(calls) == 9
    assert waits[:4] == [60, 120, 240, 480]
    assert waits[-1] == 3600  # capped
    assert reported and all(r == ("shop", True) for r in reported)
    assert guard.breaker.auth_failing

    guard.call(lambda: None)  # the password was fixed: the half-open probe succeeds
    assert guard.breaker.state == "closed" and not guard.breaker.auth_failing
    assert reported[-1] == ("shop", False)
    with pytest.raises(AuthError):  # and a new rejection starts again from 60 s
        guard.call(rejected)
    clock.now += 60
    assert guard.breaker.state == "half-open"


def test_rate_limits_do_not_open_the_breaker() -> None:
    guard = SourceGuard("s", policy(retries=0, breaker_failures=1))
    for _ in range(3):
        with pytest.raises(RateLimited):
            guard.call(lambda: (_ for _ in ()).throw(RateLimited("slow down")))
    assert guard.breaker.state == "closed"


# --- retries: transient only, backoff with full jitter, Retry-After ----------------------------
@pytest.mark.parametrize("error", [
    AuthError("bad password"), SchemaError("no such table"), FatalError("syntax"),
    BadPayload("not JSON"), ValueError("a bug")])
def test_fatal_errors_are_not_retried(error: Exception) -> None:
    retried: list[BaseException] = []
    guard = SourceGuard("s", policy(retries=5), on_retry=lambda s, e: retried.append(e))
    calls = []

    def fail() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        guard.call(fail)
    assert len(calls) == 1 and not retried
    # rejected credentials open the breaker at once (test_auth_failures_back_off_...)
    assert guard.breaker.state == ("open" if isinstance(error, AuthError) else "closed")


@pytest.mark.parametrize("error", [
    SourceTimeout("slow"), SourceUnavailable("reset"), RateLimited("429"),
    ServerError("503")])
def test_transient_errors_are_retried_then_succeed(error: Exception) -> None:
    retried: list[str] = []
    guard = SourceGuard("s", policy(retries=5),
                        on_retry=lambda s, e: retried.append(retry_reason(e)))
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise error
        return "ok"

    assert guard.call(flaky) == "ok"
    assert len(calls) == 3 and len(retried) == 2


def test_retries_stop_after_the_configured_number() -> None:
    guard = SourceGuard("s", policy(retries=3, breaker_failures=100))
    calls = []

    def down() -> None:
        calls.append(1)
        raise SourceUnavailable("down")

    with pytest.raises(SourceUnavailable):
        guard.call(down)
    assert len(calls) == 4


def _state(attempt: int, exc: BaseException) -> RetryCallState:
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    guard = SourceGuard("s", policy(backoff_initial=0.5, backoff_max=8))
    # the n-th retry waits uniform(0, min(backoff_max, backoff_initial * 2**(n-1)))
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (20, 8.0)):
        waits = [guard._wait(_state(attempt, SourceUnavailable("x"))) for _ in range(300)]
        assert all(0 <= w <= ceiling for w in waits), (attempt, max(waits))
        assert min(waits) < ceiling * 0.2 and max(waits) > ceiling * 0.8  # full jitter


def test_retry_after_is_a_floor_on_the_wait_capped_at_backoff_max() -> None:
    guard = SourceGuard("s", policy(backoff_initial=0.01, backoff_max=10))
    assert 7 <= guard._wait(_state(1, RateLimited("429", retry_after=7))) <= 10
    assert 3 <= guard._wait(_state(1, ServerError("503", retry_after=3))) <= 10
    assert guard._wait(_state(1, ServerError("500"))) <= 0.01
    # a server asking for an hour (or a day) waits backoff_max, not the hour
    assert guard._wait(_state(1, RateLimited("429", retry_after=3600))) == 10
    assert guard._wait(_state(1, ServerError("503", retry_after=86400))) == 10


def test_a_backoff_sleep_ends_promptly_when_stop_is_requested() -> None:
    stop = threading.Event()
    guard = SourceGuard("s", policy(retries=3, backoff_max=60))
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(StopRequested):
        guard.call(lambda: (_ for _ in ()).throw(RateLimited("429", retry_after=60)),
                   stop=stop.is_set)
    assert time.monotonic() - started < 1.0


def test_retry_after_is_really_waited() -> None:
    guard = SourceGuard("s", policy(retries=2, backoff_max=1))
    calls: list[float] = []

    def limited() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RateLimited("429", retry_after=0.3)
        return "ok"

    assert guard.call(limited) == "ok"
    assert calls[1] - calls[0] >= 0.3


def test_stop_ends_retrying() -> None:
    stop = threading.Event()
    guard = SourceGuard("s", policy(retries=50))
    calls = []

    def down() -> None:
        calls.append(1)
        stop.set()
        raise SourceUnavailable("down")

    with pytest.raises(StopRequested):
        guard.call(down, stop=stop.is_set)
    assert len(calls) == 1


def test_retry_reasons_are_metric_labels() -> None:
    assert retry_reason(SourceTimeout("t")) == "timeout"
    assert retry_reason(RateLimited("r")) == "rate_limited"
    assert retry_reason(ServerError("5xx")) == "server_error"
    assert retry_reason(SourceUnavailable("reset")) == "connection"
    assert retry_reason(OSError()) == "other"


# --- concurrency cap -------------------------------------------------------------------------
def test_concurrent_queries_per_source_are_capped() -> None:
    guard = SourceGuard("s", policy(max_concurrent_queries=2))
    lock, active, peak = threading.Lock(), [0], [0]

    def query() -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1

    threads = [threading.Thread(target=guard.call, args=(query,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2


# --- adaptive page size ----------------------------------------------------------------------
def test_page_size_halves_on_timeouts_down_to_the_minimum() -> None:
    sizer = PageSizer(current=10_000, minimum=500, maximum=10_000, slow_seconds=5)
    assert [sizer.on_timeout() for _ in range(7)] == [5000, 2500, 1250, 625, 500, 500, 500]


def test_page_size_grows_back_when_healthy_and_shrinks_on_slow_pages() -> None:
    sizer = PageSizer(current=500, minimum=500, maximum=10_000, slow_seconds=4)
    grown = [sizer.on_page(0.1) for _ in range(10)]
    assert grown == sorted(grown) and grown[-1] == 10_000
    assert sizer.on_page(3.0) == 10_000  # neither fast nor slow: unchanged
    assert sizer.on_page(5.0) == 5_000  # slow: halve


def test_page_size_is_clamped_to_its_bounds() -> None:
    sizer = PageSizer(current=50_000, minimum=900, maximum=1_000, slow_seconds=1)
    assert (sizer.current, sizer.minimum) == (1_000, 900)


def test_a_timed_out_page_is_retried_smaller_not_as_the_same_query() -> None:
    """The guard + sizer loop the extractor uses: each timeout shrinks the next attempt."""
    sizer = PageSizer(current=8_000, minimum=100, maximum=8_000, slow_seconds=1)
    guard = SourceGuard("s", policy(retries=6, breaker_failures=100))
    limits: list[int] = []

    def page() -> int:
        limits.append(sizer.current)
        if sizer.current > 1_000:  # the source manages 1 000 rows within its timeout
            raise SourceTimeout("statement timeout")
        return sizer.current

    assert guard.call(page, on_error=lambda e: sizer.on_timeout()) == 1_000
    assert limits == [8_000, 4_000, 2_000, 1_000]


# --- watchdog ------------------------------------------------------------------------------
def test_watchdog_fires_once_when_the_block_overruns() -> None:
    fired: list[float] = []
    with Watchdog(0.1, lambda: fired.append(time.monotonic())) as dog:
        time.sleep(0.3)
    assert dog.fired and len(fired) == 1


def test_watchdog_never_fires_after_the_block() -> None:
    fired: list[int] = []
    with Watchdog(0.1, lambda: fired.append(1)) as dog:
        pass
    time.sleep(0.2)
    assert not dog.fired and not fired


def test_watchdogs_share_one_thread_and_a_blocked_fire_delays_no_other() -> None:
    """A threading.Timer per block started a thread for every page and every source
    statement (CPU, and on a busy machine a wait before each query for the new thread to
    be scheduled); every watchdog now waits on one thread. Each fire still runs on a
    thread of its own: one blocked (a cancel request to a server that does not answer)
    does not hold up the next watchdog's."""
    with Watchdog(60, lambda: None):
        pass  # the process's watchdog thread, started once
    before = threading.active_count()
    with contextlib.ExitStack() as stack:
        dogs = [stack.enter_context(Watchdog(60, lambda: None)) for _ in range(50)]
        assert threading.active_count() == before
    assert not any(dog.fired for dog in dogs)

    release, fired = threading.Event(), threading.Event()
    with Watchdog(0.05, lambda: release.wait(5)) as slow:
        with Watchdog(0.1, fired.set) as following:
            assert fired.wait(5)  # while the first fire is still blocked
        release.set()
    assert slow.fired and following.fired


def _fire_within(seconds: float, queue: Any) -> None:
    """In a forked child: does a watchdog armed there fire?"""
    fired = threading.Event()
    with Watchdog(0.05, fired.set):
        queue.put(fired.wait(seconds))


def test_a_watchdog_fires_in_a_child_forked_while_another_thread_held_the_deadlines() -> None:
    """The deadlines' lock is taken by the watching thread at every deadline and by every
    thread arming or ending a watchdog. Forked while another thread held it, the child
    had a copy locked for good (no thread of the child would release it): its first
    watchdog waited for it forever, before its block even began."""
    with Watchdog(60, lambda: None):
        pass  # the watching thread runs
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _DEADLINES._cond:  # what the watching thread does at each deadline
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_fire_within, args=(2, queue))
    try:
        child.start()
    finally:
        release.set()
        holder.join()
    child.join(4)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung and child.exitcode == 0 and queue.get(timeout=1) is True


NO_THREADS = """
import resource, sys, threading
from steadyflow.resilience import Watchdog
with Watchdog(60, lambda: None):
    pass  # the watching thread runs
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
          if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
threading.stack_size(1 << 30)  # from now on no thread can be given its stack
try:
    threading.Thread(target=lambda: None).start()
    sys.exit("a thread could still be started")
except RuntimeError:
    pass
first, second = threading.Event(), threading.Event()

def fails() -> None:  # a fire's own error (a driver's cancel failing) ends nothing else
    first.set()
    raise ValueError("cancel failed")

with Watchdog(0.3, second.set), Watchdog(0.05, fails):
    print(first.wait(2), second.wait(2))
"""


def test_watchdogs_still_fire_when_no_thread_can_be_started() -> None:
    """A fire runs on a thread of its own. When none could be started (a thread or memory
    limit: every fire blocked on a dead network holds one), Thread.start's RuntimeError
    ended the watching thread: that deadline and every other armed one never fired, so
    each black-holed query they guarded hung for good (and the next watchdog armed,
    restarting the thread, emptied the deadlines). A fire is now run by the watching
    thread itself when no thread of its own can be had."""
    src = Path(steadyflow.__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", NO_THREADS], capture_output=True,
                          text=True, timeout=20,
                          env={**os.environ, "PYTHONPATH": str(src)}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"], done.stderr


def test_watchdog_grace_scales_with_the_statement_timeout() -> None:
    assert watchdog_grace(policy(statement_timeout=1)) == 1
    assert watchdog_grace(policy(statement_timeout=8)) == 4
    assert watchdog_grace(policy(statement_timeout=600)) == 10


def test_sqlite_query_overrunning_its_bound_is_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    sqlite3.connect(db).close()
    config = SourceConfig(name="s", kind="sqlite", path=str(db),
                          resilience=policy(statement_timeout=0.5),
                          tables=[{"name": "t", "contract": "c"}])  # type: ignore[list-item]
    source = SqlSource(config)
    started = time.monotonic()
    with pytest.raises(SourceTimeout, match="watchdog"):
        source._execute("t", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                             "WHERE x < 1000000000) SELECT count(*) FROM c", [])
    assert time.monotonic() - started < 3
    source.close()


# --- config ------------------------------------------------------------------------------------
def _config(source: dict[str, Any]) -> Any:
    return parse_config({"contracts": {"sales": CONTRACT}, "sources": [source]})


def test_http_tables_need_an_endpoint_and_sql_tables_must_not_have_one() -> None:
    with pytest.raises(ConfigError, match="needs 'endpoint'"):
        _config({"name": "a", "kind": "http", "url": "http://x",
                 "tables": [{"name": "sales", "contract": "sales"}]})
    with pytest.raises(ConfigError, match="http sources only"):
        _config({"name": "a", "kind": "sqlite", "path": "/x.db",
                 "tables": [{"name": "sales", "contract": "sales", "endpoint": "/v1"}]})
    with pytest.raises(ConfigError, match="schema_drift"):
        _config({"name": "a", "kind": "sqlite", "path": "/x.db",
                 "tables": [{"name": "sales", "contract": "sales", "schema_drift": "bogus"}]})
    with pytest.raises(ConfigError, match="schema_drift: add is for SQL sources"):
        _config({"name": "a", "kind": "http", "url": "http://x", "tables": [
            {"name": "sales", "contract": "sales", "endpoint": "/v1", "schema_drift": "add"}]})
    cfg = _config({"name": "a", "kind": "http", "url": "http://x", "tables": [
        {"name": "sales", "contract": "sales", "endpoint": "/v1/sales"}]})
    table = cfg.sources[0].tables[0]
    assert (table.records_path, table.next_path, table.next_param, table.since_param,
            table.schema_drift) == ("data", "next", "after", "updated_since", "ignore")


# --- HTTP: answers → errors ----------------------------------------------------------------
def http_source(handler: Any, **table: Any) -> HttpSource:
    config = _config({"name": "api", "kind": "http", "url": "http://api.test",
                      "headers": {"Authorization": "Bearer s3cr3t-tok"},
                      "resilience": {"statement_timeout": 2},
                      "tables": [{"name": "sales", "contract": "sales",
                                  "endpoint": "/v1/sales", **table}]})
    return HttpSource(config.sources[0], transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("status", "headers", "error", "retry_after"), [
    (429, {"Retry-After": "7"}, RateLimited, 7.0),
    (503, {"Retry-After": "2"}, ServerError, 2.0),
    (500, {}, ServerError, None),
    (502, {}, ServerError, None),
    (401, {}, AuthError, None),
    (403, {}, AuthError, None),
    (404, {}, SchemaError, None),
    (400, {}, FatalError, None),
    (408, {}, SourceTimeout, None),
])
def test_http_status_codes_map_to_what_the_caller_must_do(
        status: int, headers: dict[str, str], error: type[Exception],
        retry_after: float | None) -> None:
    src = http_source(lambda req: httpx.Response(status, headers=headers, text="nope"))
    with pytest.raises(error) as info:
        src.fetch("sales", TokenChain(None), 10)
    assert getattr(info.value, "retry_after", None) == retry_after
    assert "s3cr3t" not in str(info.value)
    assert isinstance(info.value, FatalError) != info.value.retryable  # type: ignore[attr-defined]


def test_http_transport_failures_are_retryable() -> None:
    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    def slow(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=req)

    with pytest.raises(SourceUnavailable):
        http_source(refuse).fetch("sales", TokenChain(None), 10)
    with pytest.raises(SourceTimeout):
        http_source(slow).fetch("sales", TokenChain(None), 10)


def test_http_params_start_from_the_checkpoint_then_follow_tokens() -> None:
    seen: list[dict[str, str]] = []
    pages = [{"data": [rec(1, "2026-01-01T00:00:01.000001Z"),
                       rec(2, "2026-01-01T00:00:02Z")], "next": "tok-1"},
             {"data": [rec(3, "2026-01-01T00:00:03Z")], "next": None}]

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(dict(req.url.params))
        assert req.headers["authorization"] == "Bearer s3cr3t-tok"
        return httpx.Response(200, json=pages[len(seen) - 1])

    src = http_source(handler, params={"region": "eu"})
    contract = _config_contract()
    mark = Watermark(datetime(2026, 1, 1, tzinfo=UTC), (900, 0))
    chain = TokenChain(mark)
    first = src.parse("sales", contract, src.fetch("sales", chain, 2), chain)
    chain.follow(first)
    second = src.parse("sales", contract, src.fetch("sales", chain, 2), chain)
    chain.follow(second)
    # a second before the checkpoint: an exclusive since would drop a record tying it
    assert seen == [{"region": "eu", "limit": "2", "updated_since": "2025-12-31T23:59:59.000000Z"},
                    {"region": "eu", "limit": "2", "after": "tok-1"}]
    assert first.rows.num_rows == 2 and src.has_more(first)
    assert second.rows.num_rows == 1 and not src.has_more(second)
    assert chain.ended and chain.high == second.high


def test_a_chain_keeps_every_record_past_its_resume_point_in_any_page_order() -> None:
    """Newest first: page 2 is older than page 1's high, and is kept all the same; the
    chain's high is the running maximum, and the chain ends on a null token."""
    contract = _config_contract()
    table = _config({"name": "a", "kind": "http", "url": "http://x", "tables": [
        {"name": "sales", "contract": "sales", "endpoint": "/v1"}]}).sources[0].tables[0]
    resume = Watermark(datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC), (900, 2))
    chain = TokenChain(resume)
    pages = [{"data": [rec(6, "2026-01-01T00:00:06Z"), rec(5, "2026-01-01T00:00:05Z")],
              "next": "t1"},
             {"data": [rec(4, "2026-01-01T00:00:04Z"), rec(3, "2026-01-01T00:00:03Z")],
              "next": "t2"},
             {"data": [rec(2, "2026-01-01T00:00:02Z"), rec(1, "2026-01-01T00:00:01Z")],
              "next": None}]
    kept = []
    for body in pages:
        assert not chain.ended
        page = parse_page(table, contract, raw(body), chain.resume, since=chain.since)
        chain.follow(page)
        kept += page.rows["sale_id"].to_pylist()
    assert kept == [6, 5, 4, 3] and chain.ended
    assert chain.high == Watermark(datetime(2026, 1, 1, 0, 0, 6, tzinfo=UTC), (900, 6))
    # with a lookback, `since` is an inclusive floor even when the API ignores since_param
    page = parse_page(table, contract, raw(pages[2]), None,
                      since=datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC))
    assert page.rows["sale_id"].to_pylist() == [2]


def _config_contract() -> Contract:
    cfg = _config({"name": "a", "kind": "sqlite", "path": "/x.db",
                   "tables": [{"name": "sales", "contract": "sales"}]})
    return cfg.contract_of(cfg.sources[0].tables[0])


def rec(sale_id: int, updated_at: str, **over: Any) -> dict[str, Any]:
    return {"store_id": 900, "sale_id": sale_id, "qty": 2, "unit_price": "1.50",
            "updated_at": updated_at, **over}


def raw(body: Any) -> RawPage:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RawPage("GET /v1/sales", 200, "application/json", data)


# --- HTTP: page parsing -----------------------------------------------------------------------
def test_parse_page_rows_watermark_and_token() -> None:
    table = _config({"name": "a", "kind": "http", "url": "http://x", "tables": [
        {"name": "sales", "contract": "sales", "endpoint": "/v1"}]}).sources[0].tables[0]
    page = parse_page(table, _config_contract(), raw({"data": [
        rec(2, "2026-01-01T00:00:05.123456Z"), rec(1, "2026-01-01T00:00:05.123456Z"),
        rec(3, "2026-01-01T00:00:04Z", note="new field")], "next": "abc"}))
    assert page.rows.num_rows == 3 and page.next_token == "abc" and page.records == 3
    assert page.high == Watermark(datetime(2026, 1, 1, 0, 0, 5, 123456, tzinfo=UTC), (900, 2))
    assert page.extra_fields == ["note"]
    assert str(page.rows["unit_price"].type) == "decimal128(12, 2)"
    # resuming after a watermark drops the records at or before it
    after = Watermark(datetime(2026, 1, 1, 0, 0, 5, 123456, tzinfo=UTC), (900, 1))
    again = parse_page(table, _config_contract(), raw({"data": [
        rec(1, "2026-01-01T00:00:05.123456Z"), rec(2, "2026-01-01T00:00:05.123456Z")],
        "next": None}), after)
    assert again.rows["sale_id"].to_pylist() == [2] and again.records == 2


@pytest.mark.parametrize(("body", "reason"), [
    (b"<html>oops</html>", "not JSON"),
    (b"\xff\xfe\x00", "not UTF-8"),
    ({"items": []}, "no 'data'"),
    ({"data": {"a": 1}}, "not a list"),
    ({"data": [], "next": {"deep": 1}}, "'next' is dict"),
    ([1, 2], "no 'data'"),
])
def test_bad_payloads_name_their_reason(body: Any, reason: str) -> None:
    table = _config({"name": "a", "kind": "http", "url": "http://x", "tables": [
        {"name": "sales", "contract": "sales", "endpoint": "/v1"}]}).sources[0].tables[0]
    with pytest.raises(BadPayload, match=reason):
        parse_page(table, _config_contract(), raw(body))


@pytest.mark.parametrize(("bad", "reason"), [
    (1, "record is int"),
    ({"store_id": 900, "updated_at": "2026-01-01T00:00:00Z"}, "lacks sale_id"),
    (rec(1, "yesterday"), "not an ISO-8601 time"),
    (rec(1, 1767225600), "not an ISO-8601 time"),  # an epoch in a timestamp cursor
    (rec("x", "2026-01-01T00:00:00Z"), "sale_id is not an integer"),
])
def test_a_record_that_cannot_be_placed_costs_only_itself(bad: Any, reason: str) -> None:
    table = _config({"name": "a", "kind": "http", "url": "http://x", "tables": [
        {"name": "sales", "contract": "sales", "endpoint": "/v1"}]}).sources[0].tables[0]
    page = parse_page(table, _config_contract(), raw({"data": [
        rec(7, "2026-01-01T00:00:07Z"), bad, rec(8, "2026-01-01T00:00:08Z")], "next": "n"}))
    assert page.rows["sale_id"].to_pylist() == [7, 8] and page.records == 3
    assert page.next_token == "n"
    assert page.high == Watermark(datetime(2026, 1, 1, 0, 0, 8, tzinfo=UTC), (900, 8))
    [rejected] = page.rejected
    assert rejected.record == bad and reason in rejected.reason


def test_raw_page_round_trips_through_a_table() -> None:
    page = RawPage("GET /v1/sales?limit=5", 200, "text/html", b"<html>\x00bytes</html>")
    assert RawPage.from_table(page.as_table()) == page


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds("-4") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    # an HTTP date is measured against the server's Date header, not our (skewed) clock
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT",
                               "Wed, 21 Oct 2015 07:28:00 GMT") == 30.0


def test_cursor_params_keep_microseconds_in_utc() -> None:
    from datetime import timedelta, timezone

    local = datetime(2026, 1, 1, 2, 0, 0, 7, tzinfo=timezone(timedelta(hours=2)))
    assert format_param(local) == "2026-01-01T00:00:00.000007Z"
    assert format_param(42) == "42"
