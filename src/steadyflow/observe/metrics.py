"""Prometheus metrics for one steadyflow pipeline.

Why a class and not module-level metrics: ``prometheus_client``'s default
``REGISTRY`` is process-global, so two pipelines in one process (or two tests)
would share, and corrupt, each other's counters, and re-registering a name
raises.  :class:`PipelineMetrics` owns a private ``CollectorRegistry``; whoever
serves ``/metrics`` calls :meth:`PipelineMetrics.exposition`.

Why small recording methods: the rest of the code base never touches
prometheus objects.  That keeps label sets closed (only ``source``, ``table``,
``stage`` and the few enumerated ``reason``/state values, never batch ids or
other unbounded values that would explode series cardinality), and lets the
metric layout change in one place.  The alert rules in
``deploy/prometheus/alerts.yml`` and the dashboard in ``deploy/grafana/`` depend on these
exact names; tests check both.

Why a ``pipeline`` label on every series, added at exposition: alerts must tell two
pipelines apart even when they share a scrape job, and ``absent()`` of one pipeline's
series must not be hidden by another's.  Prometheus adds ``instance``; the process adds
the pipeline's configured name.  Adding it at exposition (not in every label tuple)
keeps the recording methods and :meth:`PipelineMetrics.value` unchanged.

Lag versus freshness: freshness is "now minus the newest loaded cursor", which grows on
an idle source that simply has no new rows.  Lag is "the source's high-water mark (what
the last successful poll saw) minus what is loaded", which stays 0 on an idle source and
grows only when the pipeline falls behind.  Alerts use lag and the time since the last
successful poll; freshness stays as information.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from steadyflow.observe.recording import BreakerState, RetryReason, Stage
from steadyflow.secrets import scrub

STAGES: Final[tuple[str, ...]] = get_args(Stage)
RETRY_REASONS: Final[tuple[str, ...]] = get_args(RetryReason)
BREAKER_STATES: Final[dict[str, int]] = {"closed": 0, "half-open": 1, "open": 2}

#: Batch durations span a 1 ms in-memory transform up to a 60 s warehouse merge;
#: roughly 2.5x steps keep quantile error bounded without many series.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
)

_SRC_TBL_STAGE = ("source", "table", "stage")
_SRC_TBL = ("source", "table")


def _version() -> str:
    """The installed distribution's version, for ``steadyflow_build_info``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("steadyflow")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


class _WithPipeline(Collector):
    """Re-exposes a registry with a constant ``pipeline`` label on every sample."""

    def __init__(self, inner: CollectorRegistry, pipeline: str) -> None:
        self._inner = inner
        self._pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                s._replace(labels={"pipeline": self._pipeline, **s.labels})
                for s in family.samples
            ]
            yield labelled


def _check(value: str, allowed: tuple[str, ...] | dict[str, int], what: str) -> None:
    """Reject label values outside a closed set.

    A typo in a label value would silently create a new series that no alert
    or dashboard looks at, so it is treated as a programming error.
    """
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")


#: seconds a recorded time may lie ahead of this process's clock before the clock is taken
#: to have stepped back (hosts' clocks differ a little; NTP slews small errors)
CLOCK_SLACK = 5.0


class PipelineMetrics:
    """All metrics of one pipeline, in a registry of its own.

    ``clock`` returns wall-clock epoch seconds; it drives the freshness gauge
    and the "last success" timestamps, and is injectable so tests can move
    time.  ``monotonic`` times batches (wall-clock jumps must not produce
    negative durations).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.perf_counter,
        pipeline: str = "steadyflow",
        version: str | None = None,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self.pipeline = pipeline
        self._lock = threading.Lock()
        self._newest_cursor: dict[tuple[str, str], float] = {}
        # the source's high-water mark (epoch seconds of the newest cursor the last
        # successful poll saw) and when a poll first saw it while nothing was loaded
        self._source_high: dict[tuple[str, str], float] = {}
        self._behind_since: dict[tuple[str, str], float] = {}
        self._polled_at: dict[tuple[str, str], float] = {}  # when the recorded poll was
        self._declared: set[tuple[str, str]] = set()
        self._breaker_state: dict[str, str] = {}
        self.registry: CollectorRegistry = CollectorRegistry()
        self._exposed = CollectorRegistry(auto_describe=False)
        self._exposed.register(_WithPipeline(self.registry, pipeline))
        r = self.registry
        # process_cpu_seconds_total, process_resident_memory_bytes, process_start_time_...
        ProcessCollector(registry=r)

        # prometheus_client appends "_total" to counter names on exposition.
        self._rows = Counter(
            "steadyflow_rows", "Rows processed, per pipeline stage.", _SRC_TBL_STAGE, registry=r
        )
        self._bytes = Counter(
            "steadyflow_bytes",
            "Bytes processed (Arrow/Parquet size), per pipeline stage.",
            _SRC_TBL_STAGE,
            registry=r,
        )
        self._duration = Histogram(
            "steadyflow_batch_duration_seconds",
            "Wall time spent on one batch in one stage.",
            _SRC_TBL_STAGE,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._retries = Counter(
            "steadyflow_retries",
            "Retried source calls, by failure class.",
            ("source", "reason"),
            registry=r,
        )
        self._timeouts = Counter(
            "steadyflow_timeouts", "Source calls that timed out.", ("source",), registry=r
        )
        self._breaker = Gauge(
            "steadyflow_breaker_state",
            "Circuit breaker state per source: 0 closed, 1 half-open, 2 open.",
            ("source",),
            registry=r,
        )
        self._breaker_opened = Counter(
            "steadyflow_breaker_opened",
            "Transitions of a source's circuit breaker into the open state.",
            ("source",),
            registry=r,
        )
        self._page_size = Gauge(
            "steadyflow_page_size_rows",
            "Current adaptive extraction page size in rows.",
            _SRC_TBL,
            registry=r,
        )
        self._queue_depth = Gauge(
            "steadyflow_queue_depth_batches", "Batches waiting in the buffer queue.", registry=r
        )
        self._queue_capacity = Gauge(
            "steadyflow_queue_capacity_batches",
            "Buffer queue capacity; depth near capacity means backpressure.",
            registry=r,
        )
        self._lag_batches = Gauge(
            "steadyflow_consumer_lag_batches",
            "Batches landed but not yet loaded into the warehouse.",
            registry=r,
        )
        self._lag_seconds = Gauge(
            "steadyflow_consumer_lag_seconds",
            "Age of the oldest landed batch not yet loaded (0 when caught up); computed at "
            "scrape time so it keeps growing while nothing loads.",
            registry=r,
        )
        self._unloaded_since: float | None = None  # when the oldest unloaded batch landed
        self._lag_seconds.set_function(self._consumer_lag)
        self._quarantined = Counter(
            "steadyflow_quarantined_rows",
            "Rows rejected by validation and written to quarantine.",
            _SRC_TBL,
            registry=r,
        )
        self._errors = Counter(
            "steadyflow_errors",
            "Batch failures (after retries), per pipeline stage.",
            _SRC_TBL_STAGE,
            registry=r,
        )
        self._freshness = Gauge(
            "steadyflow_freshness_seconds",
            "Now minus the newest source cursor value present in the warehouse; "
            "computed at scrape time so it keeps growing while nothing loads.",
            _SRC_TBL,
            registry=r,
        )
        self._last_success = Gauge(
            "steadyflow_last_success_timestamp_seconds",
            "Epoch time of the last successful warehouse load of a table.",
            _SRC_TBL,
            registry=r,
        )
        self._lag = Gauge(
            "steadyflow_lag_seconds",
            "The source's high-water mark (newest cursor seen by the last successful poll) "
            "minus the newest cursor loaded; 0 when caught up or idle. Time cursors only "
            "(other cursor types report 0: see steadyflow_consumer_lag_seconds).",
            _SRC_TBL,
            registry=r,
        )
        self._source_high_gauge = Gauge(
            "steadyflow_source_cursor_timestamp_seconds",
            "Newest source cursor (as epoch seconds) seen by the last successful poll.",
            _SRC_TBL,
            registry=r,
        )
        self._loaded_high_gauge = Gauge(
            "steadyflow_loaded_cursor_timestamp_seconds",
            "Newest cursor (as epoch seconds) present in the warehouse.",
            _SRC_TBL,
            registry=r,
        )
        self._last_poll = Gauge(
            "steadyflow_last_poll_success_timestamp_seconds",
            "Epoch time of the last successful poll of a table (its source read to the end); "
            "initialised to the process start time, like the run timestamp.",
            _SRC_TBL,
            registry=r,
        )
        self._poll_interval = Gauge(
            "steadyflow_poll_interval_seconds",
            "The longest pause between two polls of a table that finds nothing new (its "
            "poll_max, else run.interval): an idle table's last successful poll may be this "
            "old (SteadyflowPollFailing allows three of them).",
            _SRC_TBL,
            registry=r,
        )
        self._auth_failing = Gauge(
            "steadyflow_auth_failing",
            "1 while a source rejects the configured credentials (its breaker is open with "
            "a growing back-off), 0 once a call succeeds.",
            ("source",),
            registry=r,
        )
        self._build_info = Gauge(
            "steadyflow_build_info",
            "Always 1; the version label is the running steadyflow release.",
            ("version",),
            registry=r,
        )
        self._build_info.labels(version or _version()).set(1)
        self._up = Gauge("steadyflow_up", "1 while the pipeline process is running.", registry=r)
        self._last_run_success = Gauge(
            "steadyflow_last_run_success_timestamp_seconds",
            "Epoch time of the last fully successful pipeline run; initialised to the "
            "process start time so a fresh process gets the same grace period.",
            registry=r,
        )
        self._reconcile_missing = Gauge(
            "steadyflow_reconcile_missing_rows",
            "Rows in the source but missing from the warehouse at the last reconcile.",
            _SRC_TBL,
            registry=r,
        )
        self._reconcile_extra = Gauge(
            "steadyflow_reconcile_extra_rows",
            "Rows in the warehouse but absent from the source at the last reconcile.",
            _SRC_TBL,
            registry=r,
        )
        self._reconcile_mismatched = Gauge(
            "steadyflow_reconcile_mismatched_rows",
            "Rows present on both sides whose contents differ at the last reconcile.",
            _SRC_TBL,
            registry=r,
        )

        self._up.set(1)
        # Without this a fresh process would report "never succeeded" (0) and
        # SteadyflowNoSuccessfulRun would fire before the first run could finish.
        self._last_run_success.set(self._clock())

    # -- setup -------------------------------------------------------------

    def declare(self, source: str, table: str, page_size: int | None = None,
                poll_interval: float | None = None) -> None:
        """Create all series of a source/table at zero before any traffic.

        Prometheus' ``rate``/``increase`` cannot see the first increment of a
        series that appears from nothing, so e.g. the very first quarantined
        rows would not trigger SteadyflowQuarantineGrowing.  Call this once per
        configured table at startup.  Lag starts at 0 and the last successful poll at
        the process start (the same grace a fresh process gets for its first run), so a
        table that never polls successfully still reaches SteadyflowPollFailing.
        """
        key = (source, table)
        with self._lock:
            first = key not in self._declared
            self._declared.add(key)
        if first:
            self._lag.labels(source, table).set_function(lambda: self._lag_of(key))
        self._last_poll.labels(source, table).set(self._clock())
        if page_size is not None:
            self._page_size.labels(source, table).set(page_size)
        if poll_interval is not None:
            self._poll_interval.labels(source, table).set(poll_interval)
        self._auth_failing.labels(source)
        for stage in STAGES:
            self._rows.labels(source, table, stage)
            self._bytes.labels(source, table, stage)
            self._errors.labels(source, table, stage)
        self._quarantined.labels(source, table)
        for reason in RETRY_REASONS:
            self._retries.labels(source, reason)
        self._timeouts.labels(source)
        self._breaker_opened.labels(source)
        with self._lock:
            if source not in self._breaker_state:
                self._breaker_state[source] = "closed"
                self._breaker.labels(source).set(0)

    def stopped(self) -> None:
        """Mark a graceful shutdown (``steadyflow_up`` = 0) before the last scrape."""
        self._up.set(0)

    # -- recording -----------------------------------------------------------

    def rows(self, source: str, table: str, stage: Stage, n: int, nbytes: int = 0) -> None:
        """Count ``n`` rows (and ``nbytes`` bytes) that passed ``stage``.

        Quarantined rows go through :meth:`quarantined`, which also records
        the ``stage="quarantine"`` rows/bytes, so the two counters never drift.
        """
        _check(stage, STAGES, "stage")
        if stage == "quarantine":
            raise ValueError("record quarantined rows with PipelineMetrics.quarantined()")
        self._rows.labels(source, table, stage).inc(n)
        self._bytes.labels(source, table, stage).inc(nbytes)

    def batch_duration(self, source: str, table: str, stage: Stage, seconds: float) -> None:
        """Observe how long one batch spent in ``stage``."""
        _check(stage, STAGES, "stage")
        self._duration.labels(source, table, stage).observe(seconds)

    @contextmanager
    def timed(self, source: str, table: str, stage: Stage) -> Iterator[None]:
        """Time the block as one batch of ``stage``.

        The duration is recorded even if the block raises: slow failures are
        exactly what an operator needs to see.  Errors are counted separately
        by :meth:`error`.
        """
        _check(stage, STAGES, "stage")
        start = self._monotonic()
        try:
            yield
        finally:
            self._duration.labels(source, table, stage).observe(max(0.0, self._monotonic() - start))

    def retry(self, source: str, reason: RetryReason) -> None:
        """Count one retried call to ``source``, classified by ``reason``."""
        _check(reason, RETRY_REASONS, "retry reason")
        self._retries.labels(source, reason).inc()

    def timeout(self, source: str) -> None:
        """Count one timed-out call to ``source``."""
        self._timeouts.labels(source).inc()

    def breaker(self, source: str, state: BreakerState) -> None:
        """Report the circuit breaker state of ``source``.

        ``steadyflow_breaker_opened_total`` counts transitions into "open", so
        reporting the same state repeatedly is safe.
        """
        _check(state, BREAKER_STATES, "breaker state")
        with self._lock:
            previous = self._breaker_state.get(source)
            self._breaker_state[source] = state
            self._breaker.labels(source).set(BREAKER_STATES[state])
            opened = self._breaker_opened.labels(source)
            if state == "open" and previous != "open":
                opened.inc()

    def page_size(self, source: str, table: str, rows: int) -> None:
        """Report the current (adaptive) page size used to extract ``table``."""
        self._page_size.labels(source, table).set(rows)

    def queue(self, depth: int, capacity: int, lag_batches: int, lag_seconds: float) -> None:
        """Report buffer queue depth/capacity and consumer lag.

        ``lag_seconds`` is the age of the oldest batch that is landed but not
        yet loaded; 0 when the consumer is caught up.
        """
        self._queue_depth.set(depth)
        self._queue_capacity.set(capacity)
        self._lag_batches.set(lag_batches)
        # as the time it landed: between two reports (a loader waiting out a warehouse
        # outage reports nothing for up to 30 s) the age goes on growing at scrape time
        with self._lock:
            self._unloaded_since = self._clock() - lag_seconds if lag_seconds > 0 else None

    def pending_age(self, waited: float | None, batches: int | None = None) -> None:
        """Set the consumer lag's basis from the state: how long the oldest landed batch
        not yet loaded has waited (None: none waits), and how many wait (`batches`, if
        known). The age, not the landing time: landed_at is the state's clock, and this
        process's clock may be skewed from it; the age goes on growing from now by ours.
        The loader reports them only between groups, so one blocked inside a merge (a
        lock another warehouse session holds) left the age at 0 and the batch count at
        what it was before, however many landed meanwhile, for as long as it waited;
        whoever serves /metrics calls this from the manifest at each scrape and sample
        (observe/service.py)."""
        with self._lock:
            self._unloaded_since = None if waited is None else self._clock() - waited
        if batches is not None:
            self._lag_batches.set(batches)

    def _consumer_lag(self) -> float:
        with self._lock:
            since = self._unloaded_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    def quarantined(self, source: str, table: str, n: int, nbytes: int = 0) -> None:
        """Count ``n`` rows rejected by validation.

        Increments ``steadyflow_quarantined_rows_total`` and the
        ``stage="quarantine"`` rows/bytes counters together.
        """
        self._quarantined.labels(source, table).inc(n)
        self._rows.labels(source, table, "quarantine").inc(n)
        self._bytes.labels(source, table, "quarantine").inc(nbytes)

    def error(self, source: str, table: str, stage: Stage) -> None:
        """Count one failed batch in ``stage`` (after retries were exhausted)."""
        _check(stage, STAGES, "stage")
        self._errors.labels(source, table, stage).inc()

    def loaded_cursor(self, source: str, table: str, newest_cursor_epoch_seconds: float) -> None:
        """Record a successful warehouse load of ``table``.

        ``newest_cursor_epoch_seconds`` is the newest source cursor value (as
        epoch seconds) now present in the warehouse.  Freshness is computed at
        scrape time as ``clock() - newest``, so it grows while nothing loads;
        the basis only moves forward (a replayed older batch does not make the
        table look staler than it is).  Also sets the table's last-success time.
        """
        key = (source, table)
        with self._lock:
            first = key not in self._newest_cursor
            current = self._newest_cursor.get(key, newest_cursor_epoch_seconds)
            self._newest_cursor[key] = max(current, newest_cursor_epoch_seconds)
            self._loaded_high_gauge.labels(source, table).set(self._newest_cursor[key])
            if first:
                self._freshness.labels(source, table).set_function(lambda: self._freshness_of(key))
        self._last_success.labels(source, table).set(self._clock())

    def _freshness_of(self, key: tuple[str, str]) -> float:
        # Clamped at 0: a cursor slightly ahead of our clock (source clock skew)
        # means "fresh", not "negatively stale".
        with self._lock:
            newest = self._newest_cursor[key]
        return max(0.0, self._clock() - newest)

    def polled(self, source: str, table: str, high_epoch_seconds: float | None,
               at: float | None = None) -> None:
        """Record a successful poll of ``table``: its source was read to the end.

        ``high_epoch_seconds`` is the newest cursor the poll saw (the last page's high,
        or the checkpoint when nothing new was found) as epoch seconds; None for a cursor
        that is not a time, or an empty table.  Lag is computed at scrape time from it.
        ``at``: when the poll happened, if not now (a poll recorded by another process,
        or by this one: the state hears of a poll less often than this process does). A
        recorded poll older than the one known already is ignored: it would move the last
        poll and the high-water mark back. Not so a poll this process made just now (no
        ``at``), nor one when the poll known lies ahead of the clock: the wall clock
        stepped back (NTP, a VM restored), and every later poll read as older than the
        one before the step, so the last poll and the high-water mark froze for as long as
        the step (an hour back: an hour of polls, new rows, a source gone, unseen).
        """
        key = (source, table)
        clock = self._clock()
        now = clock if at is None else at
        with self._lock:
            known = self._polled_at.get(key, -math.inf)
            if at is not None and now < known <= clock + CLOCK_SLACK:
                return
            self._polled_at[key] = now
            if high_epoch_seconds is not None:
                self._source_high[key] = high_epoch_seconds
                self._source_high_gauge.labels(source, table).set(high_epoch_seconds)
                self._behind_since.setdefault(key, now)
        self._last_poll.labels(source, table).set(now)

    def auth_failing(self, source: str, failing: bool) -> None:
        """Report whether ``source`` currently rejects the configured credentials."""
        self._auth_failing.labels(source).set(1 if failing else 0)

    def _lag_of(self, key: tuple[str, str]) -> float:
        """High-water mark minus loaded cursor, clamped at 0 (a late-loaded batch of an
        older poll never makes it negative).  Nothing loaded yet: how long a poll has
        known of rows that are not in the warehouse."""
        with self._lock:
            high = self._source_high.get(key)
            loaded = self._newest_cursor.get(key)
            since = self._behind_since.get(key)
        if high is None:
            return 0.0
        if loaded is None:
            return 0.0 if since is None else max(0.0, self._clock() - since)
        return max(0.0, high - loaded)

    def run_succeeded(self, at: float | None = None) -> None:
        """Record that a whole pipeline run (all tables) completed successfully; ``at``:
        when, if not now (a run another process recorded in the state)."""
        self._last_run_success.set(self._clock() if at is None else at)

    def reconcile(self, source: str, table: str, missing: int, extra: int, mismatched: int) -> None:
        """Publish the result of the latest source-vs-warehouse reconciliation."""
        self._reconcile_missing.labels(source, table).set(missing)
        self._reconcile_extra.labels(source, table).set(extra)
        self._reconcile_mismatched.labels(source, table).set(mismatched)

    # -- reading -------------------------------------------------------------

    def exposition(self) -> bytes:
        """Prometheus text exposition of this pipeline's registry (for /metrics).

        Label values are scrubbed like every other output: they are config names, and a
        name filled in from `${VAR}` is registered as a secret like any other expanded
        value. Only the `name{labels}` part of a sample line: a value must stay a number.
        """
        lines = generate_latest(self._exposed).decode().split("\n")
        for i, line in enumerate(lines):
            head, brace, value = line.rpartition("}")
            if brace and not line.startswith("#"):
                lines[i] = scrub(head) + brace + value
        return "\n".join(lines).encode()

    def value(self, name: str, **labels: str) -> float | None:
        """Current value of one sample (full sample name, e.g. ``..._total``).

        Returns ``None`` if no such series exists.  Meant for tests.
        """
        return self.registry.get_sample_value(name, labels)
