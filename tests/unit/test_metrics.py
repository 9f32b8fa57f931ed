"""Unit tests for steadyflow.observe.metrics.PipelineMetrics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from steadyflow.observe.metrics import PipelineMetrics

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"

ALLOWED_LABELS = {"pipeline", "source", "table", "stage", "reason", "version"}


class FakeClock:
    """Controllable clock: returns ``now`` and only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def mono() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def m(clock: FakeClock, mono: FakeClock) -> PipelineMetrics:
    return PipelineMetrics(clock=clock, monotonic=mono)


def families(m: PipelineMetrics) -> dict[str, object]:
    text = m.exposition().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


# -- recording ---------------------------------------------------------------


def test_rows_and_bytes(m: PipelineMetrics) -> None:
    m.rows("shop", "orders", "extract", 10, nbytes=1000)
    m.rows("shop", "orders", "extract", 5, nbytes=500)
    m.rows("shop", "orders", "load", 15)
    labels = {"source": "shop", "table": "orders"}
    assert m.value("steadyflow_rows_total", **labels, stage="extract") == 15
    assert m.value("steadyflow_bytes_total", **labels, stage="extract") == 1500
    assert m.value("steadyflow_rows_total", **labels, stage="load") == 15
    assert m.value("steadyflow_bytes_total", **labels, stage="load") == 0
    assert m.value("steadyflow_rows_total", **labels, stage="land") is None


def test_quarantined_counts_both_counters(m: PipelineMetrics) -> None:
    m.quarantined("shop", "orders", 3, nbytes=90)
    labels = {"source": "shop", "table": "orders"}
    assert m.value("steadyflow_quarantined_rows_total", **labels) == 3
    assert m.value("steadyflow_rows_total", **labels, stage="quarantine") == 3
    assert m.value("steadyflow_bytes_total", **labels, stage="quarantine") == 90


def test_rows_rejects_quarantine_stage(m: PipelineMetrics) -> None:
    with pytest.raises(ValueError, match="quarantined"):
        m.rows("shop", "orders", "quarantine", 1)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.rows("s", "t", "extarct", 1),
        lambda m: m.error("s", "t", "validate"),
        lambda m: m.batch_duration("s", "t", "nope", 1.0),
        lambda m: m.retry("s", "dns"),
        lambda m: m.breaker("s", "half_open"),
    ],
)
def test_unknown_label_values_rejected(m: PipelineMetrics, call) -> None:
    with pytest.raises(ValueError, match="unknown"):
        call(m)


def test_batch_duration_histogram(m: PipelineMetrics) -> None:
    m.batch_duration("shop", "orders", "load", 0.004)
    m.batch_duration("shop", "orders", "load", 45.0)
    labels = {"source": "shop", "table": "orders", "stage": "load"}
    assert m.value("steadyflow_batch_duration_seconds_count", **labels) == 2
    assert m.value("steadyflow_batch_duration_seconds_sum", **labels) == pytest.approx(45.004)
    bucket = "steadyflow_batch_duration_seconds_bucket"
    assert m.value(bucket, **labels, le="0.001") == 0
    assert m.value(bucket, **labels, le="0.005") == 1
    assert m.value(bucket, **labels, le="30.0") == 1
    assert m.value(bucket, **labels, le="60.0") == 2
    assert m.value(bucket, **labels, le="+Inf") == 2


def test_buckets_cover_1ms_to_60s(m: PipelineMetrics) -> None:
    m.batch_duration("s", "t", "load", 1.0)
    les = [
        float(s.labels["le"])
        for s in families(m)["steadyflow_batch_duration_seconds"].samples
        if s.name.endswith("_bucket")
    ]
    finite = [le for le in les if le != float("inf")]
    assert min(finite) == 0.001
    assert max(finite) == 60.0
    assert 8 <= len(finite) <= 20


def test_timed_uses_monotonic_clock_and_records_on_error(
    m: PipelineMetrics, clock: FakeClock, mono: FakeClock
) -> None:
    with m.timed("shop", "orders", "transform"):
        mono.advance(0.25)
        clock.advance(-3600)  # a wall-clock jump must not affect durations
    with pytest.raises(RuntimeError):
        with m.timed("shop", "orders", "transform"):
            mono.advance(2.0)
            raise RuntimeError("boom")
    labels = {"source": "shop", "table": "orders", "stage": "transform"}
    assert m.value("steadyflow_batch_duration_seconds_count", **labels) == 2
    assert m.value("steadyflow_batch_duration_seconds_sum", **labels) == pytest.approx(2.25)


def test_retries_and_timeouts(m: PipelineMetrics) -> None:
    m.retry("api", "rate_limited")
    m.retry("api", "rate_limited")
    m.retry("api", "timeout")
    m.timeout("api")
    assert m.value("steadyflow_retries_total", source="api", reason="rate_limited") == 2
    assert m.value("steadyflow_retries_total", source="api", reason="timeout") == 1
    assert m.value("steadyflow_retries_total", source="api", reason="other") is None
    assert m.value("steadyflow_timeouts_total", source="api") == 1


def test_breaker_state_and_open_transitions(m: PipelineMetrics) -> None:
    def state() -> float | None:
        return m.value("steadyflow_breaker_state", source="api")

    def opened() -> float | None:
        return m.value("steadyflow_breaker_opened_total", source="api")

    m.breaker("api", "closed")
    assert (state(), opened()) == (0, 0)
    m.breaker("api", "open")
    m.breaker("api", "open")  # repeated report is not a new opening
    assert (state(), opened()) == (2, 1)
    m.breaker("api", "half-open")
    assert (state(), opened()) == (1, 1)
    m.breaker("api", "open")
    assert (state(), opened()) == (2, 2)
    m.breaker("api", "closed")
    assert (state(), opened()) == (0, 2)


def test_page_size_and_queue(m: PipelineMetrics) -> None:
    m.page_size("shop", "orders", 5000)
    m.page_size("shop", "orders", 2500)
    m.queue(depth=7, capacity=64, lag_batches=9, lag_seconds=42.5)
    assert m.value("steadyflow_page_size_rows", source="shop", table="orders") == 2500
    assert m.value("steadyflow_queue_depth_batches") == 7
    assert m.value("steadyflow_queue_capacity_batches") == 64
    assert m.value("steadyflow_consumer_lag_batches") == 9
    assert m.value("steadyflow_consumer_lag_seconds") == 42.5


def test_errors(m: PipelineMetrics) -> None:
    m.error("shop", "orders", "load")
    m.error("shop", "orders", "load")
    m.error("shop", "orders", "extract")
    labels = {"source": "shop", "table": "orders"}
    assert m.value("steadyflow_errors_total", **labels, stage="load") == 2
    assert m.value("steadyflow_errors_total", **labels, stage="extract") == 1


def test_reconcile(m: PipelineMetrics) -> None:
    m.reconcile("shop", "orders", missing=3, extra=1, mismatched=2)
    m.reconcile("shop", "orders", missing=0, extra=1, mismatched=0)
    labels = {"source": "shop", "table": "orders"}
    assert m.value("steadyflow_reconcile_missing_rows", **labels) == 0
    assert m.value("steadyflow_reconcile_extra_rows", **labels) == 1
    assert m.value("steadyflow_reconcile_mismatched_rows", **labels) == 0


# -- freshness and liveness --------------------------------------------------


def test_freshness_grows_while_nothing_loads(m: PipelineMetrics, clock: FakeClock) -> None:
    labels = {"source": "shop", "table": "orders"}
    assert m.value("steadyflow_freshness_seconds", **labels) is None

    m.loaded_cursor("shop", "orders", clock.now - 30)
    assert m.value("steadyflow_freshness_seconds", **labels) == 30
    assert m.value("steadyflow_last_success_timestamp_seconds", **labels) == clock.now
    loaded_at = clock.now

    clock.advance(600)  # nothing loads for 10 minutes
    assert m.value("steadyflow_freshness_seconds", **labels) == 630
    assert m.value("steadyflow_last_success_timestamp_seconds", **labels) == loaded_at
    # the scrape itself (not only value()) sees the growing value
    sample = families(m)["steadyflow_freshness_seconds"].samples[0]
    assert sample.labels == {"pipeline": "steadyflow", **labels}
    assert sample.value == 630

    m.loaded_cursor("shop", "orders", clock.now - 5)
    assert m.value("steadyflow_freshness_seconds", **labels) == 5
    assert m.value("steadyflow_last_success_timestamp_seconds", **labels) == clock.now


def test_freshness_basis_only_moves_forward(m: PipelineMetrics, clock: FakeClock) -> None:
    m.loaded_cursor("shop", "orders", clock.now - 10)
    m.loaded_cursor("shop", "orders", clock.now - 5000)  # replay of an old batch
    assert m.value("steadyflow_freshness_seconds", source="shop", table="orders") == 10


def test_freshness_clamped_at_zero_for_future_cursor(m: PipelineMetrics, clock: FakeClock) -> None:
    m.loaded_cursor("shop", "orders", clock.now + 20)  # source clock ahead of ours
    assert m.value("steadyflow_freshness_seconds", source="shop", table="orders") == 0


def test_freshness_is_per_table(m: PipelineMetrics, clock: FakeClock) -> None:
    m.loaded_cursor("shop", "orders", clock.now - 1)
    m.loaded_cursor("shop", "items", clock.now - 100)
    clock.advance(10)
    assert m.value("steadyflow_freshness_seconds", source="shop", table="orders") == 11
    assert m.value("steadyflow_freshness_seconds", source="shop", table="items") == 110


def test_up_and_run_success(m: PipelineMetrics, clock: FakeClock) -> None:
    started = clock.now
    assert m.value("steadyflow_up") == 1
    # a fresh process gets the same grace period as one that just succeeded
    assert m.value("steadyflow_last_run_success_timestamp_seconds") == started
    clock.advance(120)
    m.run_succeeded()
    assert m.value("steadyflow_last_run_success_timestamp_seconds") == started + 120
    m.stopped()
    assert m.value("steadyflow_up") == 0


def test_declare_creates_zero_series(m: PipelineMetrics) -> None:
    m.declare("shop", "orders")
    labels = {"source": "shop", "table": "orders"}
    for stage in ("extract", "land", "transform", "load", "quarantine"):
        assert m.value("steadyflow_rows_total", **labels, stage=stage) == 0
        assert m.value("steadyflow_bytes_total", **labels, stage=stage) == 0
        assert m.value("steadyflow_errors_total", **labels, stage=stage) == 0
    assert m.value("steadyflow_quarantined_rows_total", **labels) == 0
    for reason in ("timeout", "connection", "rate_limited", "server_error", "other"):
        assert m.value("steadyflow_retries_total", source="shop", reason=reason) == 0
    assert m.value("steadyflow_timeouts_total", source="shop") == 0
    assert m.value("steadyflow_breaker_opened_total", source="shop") == 0
    assert m.value("steadyflow_breaker_state", source="shop") == 0


def test_declare_keeps_existing_breaker_state(m: PipelineMetrics) -> None:
    m.breaker("shop", "open")
    m.declare("shop", "orders")
    assert m.value("steadyflow_breaker_state", source="shop") == 2


# -- isolation and exposition ------------------------------------------------


def test_instances_do_not_share_values(clock: FakeClock) -> None:
    a = PipelineMetrics(clock=clock)
    b = PipelineMetrics(clock=clock)
    assert a.registry is not b.registry
    a.rows("shop", "orders", "extract", 10)
    a.loaded_cursor("shop", "orders", clock.now - 1)
    a.queue(1, 2, 3, 4.0)
    assert a.value("steadyflow_rows_total", source="shop", table="orders", stage="extract") == 10
    assert b.value("steadyflow_rows_total", source="shop", table="orders", stage="extract") is None
    assert b.value("steadyflow_freshness_seconds", source="shop", table="orders") is None
    assert b.value("steadyflow_queue_depth_batches") == 0


def test_global_registry_untouched(m: PipelineMetrics) -> None:
    m.rows("shop", "orders", "extract", 1)
    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("steadyflow_")]


def test_exposition_parses(m: PipelineMetrics, clock: FakeClock) -> None:
    m.declare("shop", "orders", poll_interval=3600)
    m.rows("shop", "orders", "extract", 10, nbytes=100)
    m.batch_duration("shop", "orders", "extract", 0.3)
    m.breaker("shop", "open")
    m.page_size("shop", "orders", 1000)
    m.quarantined("shop", "orders", 1)
    m.loaded_cursor("shop", "orders", clock.now - 60)
    m.reconcile("shop", "orders", 1, 0, 0)
    fams = families(m)
    expected_types = {
        "steadyflow_rows": "counter",
        "steadyflow_bytes": "counter",
        "steadyflow_batch_duration_seconds": "histogram",
        "steadyflow_retries": "counter",
        "steadyflow_timeouts": "counter",
        "steadyflow_breaker_state": "gauge",
        "steadyflow_breaker_opened": "counter",
        "steadyflow_page_size_rows": "gauge",
        "steadyflow_queue_depth_batches": "gauge",
        "steadyflow_queue_capacity_batches": "gauge",
        "steadyflow_consumer_lag_batches": "gauge",
        "steadyflow_consumer_lag_seconds": "gauge",
        "steadyflow_quarantined_rows": "counter",
        "steadyflow_errors": "counter",
        "steadyflow_freshness_seconds": "gauge",
        "steadyflow_last_success_timestamp_seconds": "gauge",
        "steadyflow_up": "gauge",
        "steadyflow_last_run_success_timestamp_seconds": "gauge",
        "steadyflow_reconcile_missing_rows": "gauge",
        "steadyflow_reconcile_extra_rows": "gauge",
        "steadyflow_reconcile_mismatched_rows": "gauge",
        "steadyflow_lag_seconds": "gauge",
        "steadyflow_source_cursor_timestamp_seconds": "gauge",
        "steadyflow_loaded_cursor_timestamp_seconds": "gauge",
        "steadyflow_last_poll_success_timestamp_seconds": "gauge",
        "steadyflow_poll_interval_seconds": "gauge",
        "steadyflow_auth_failing": "gauge",
        "steadyflow_build_info": "gauge",
    }
    fams = {n: f for n, f in fams.items() if not n.startswith("process_")}
    # The 0.0.4 text format exposes counter/histogram "_created" as separate gauges.
    created = {n for n in fams if n.endswith("_created")}
    assert created == {
        n + "_created" for n, t in expected_types.items() if t in ("counter", "histogram")
    }
    assert {n: f.type for n, f in fams.items() if n not in created} == expected_types
    for fam in fams.values():
        assert fam.documentation
        for sample in fam.samples:
            assert set(sample.labels) - {"le"} <= ALLOWED_LABELS, sample
    by_name = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples
    }
    key = (("pipeline", "steadyflow"), ("source", "shop"), ("stage", "extract"),
           ("table", "orders"))
    assert by_name[("steadyflow_rows_total", key)] == 10
    key = (("pipeline", "steadyflow"), ("source", "shop"), ("table", "orders"))
    assert by_name[("steadyflow_freshness_seconds", key)] == 60


# -- alert rules reference only metrics that exist ---------------------------


def exposed_sample_names(m: PipelineMetrics) -> set[str]:
    """All sample names the registry can expose, incl. counter/histogram suffixes."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "unknown": ("",),
    }
    names: set[str] = set()
    for fam in text_string_to_metric_families(m.exposition().decode()):
        names.update(fam.name + s for s in suffixes[fam.type])
    return names


def test_alert_rules_use_only_existing_metrics() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    used = {name for r in rules for name in re.findall(r"\bsteadyflow_\w+", r["expr"])}
    assert used, "no steadyflow metric found in alert expressions"
    missing = used - exposed_sample_names(PipelineMetrics())
    assert not missing, f"alerts.yml uses metrics PipelineMetrics does not define: {missing}"


def test_alert_rules_have_required_fields() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert names == {
        "SteadyflowTableStale",
        "SteadyflowPollFailing",
        "SteadyflowAuthFailing",
        "SteadyflowLagGrowing",
        "SteadyflowHighErrorRate",
        "SteadyflowBreakerOpen",
        "SteadyflowQuarantineGrowing",
        "SteadyflowNoSuccessfulRun",
        "SteadyflowDown",
        "SteadyflowReconcileDiscrepancy",
    }
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        assert r["annotations"]["runbook"].startswith("Check first:"), r["alert"]


def test_exposition_scrubs_label_values_but_never_sample_values() -> None:
    from steadyflow import secrets

    secrets.register("store-secret-7")
    secrets.register("1234.5")  # a value that happens to spell a sample value
    metrics = PipelineMetrics()
    metrics.batch_duration("store-secret-7", "sales", "load", 1234.5)
    text = metrics.exposition().decode()
    assert "store-secret-7" not in text
    assert ('steadyflow_batch_duration_seconds_sum{pipeline="steadyflow",source="***",stage="load",'
            'table="sales"} '
            '1234.5') in text


# -- lag, polls, identity (issue 13) -------------------------------------------


def test_every_declared_table_has_lag_and_poll_series_from_start(
        m: PipelineMetrics, clock: FakeClock) -> None:
    """A table that never loads must still have series an alert can see."""
    started = clock.now
    m.declare("shop", "never_loaded", page_size=5000)
    labels = {"source": "shop", "table": "never_loaded"}
    assert m.value("steadyflow_lag_seconds", **labels) == 0
    assert m.value("steadyflow_last_poll_success_timestamp_seconds", **labels) == started
    assert m.value("steadyflow_page_size_rows", **labels) == 5000
    assert m.value("steadyflow_auth_failing", source="shop") == 0


def test_an_idle_source_has_no_lag_while_freshness_grows(
        m: PipelineMetrics, clock: FakeClock) -> None:
    """Issue 13: a store with no sales reached freshness 848 s and fired 'stale'."""
    labels = {"source": "shop", "table": "orders"}
    m.declare("shop", "orders")
    newest = clock.now - 10
    m.polled("shop", "orders", newest)
    m.loaded_cursor("shop", "orders", newest)
    for _ in range(60):  # an hour of polls that find nothing new
        clock.advance(60)
        m.polled("shop", "orders", newest)
    assert m.value("steadyflow_lag_seconds", **labels) == 0
    assert m.value("steadyflow_freshness_seconds", **labels) == 3610
    assert m.value("steadyflow_last_poll_success_timestamp_seconds", **labels) == clock.now


def test_lag_is_source_high_minus_loaded_and_zero_when_caught_up(
        m: PipelineMetrics, clock: FakeClock) -> None:
    labels = {"source": "shop", "table": "orders"}
    m.declare("shop", "orders")
    m.loaded_cursor("shop", "orders", clock.now - 500)
    m.polled("shop", "orders", clock.now - 20)  # the source has rows up to 20 s ago
    assert m.value("steadyflow_lag_seconds", **labels) == 480
    assert m.value("steadyflow_source_cursor_timestamp_seconds", **labels) == clock.now - 20
    clock.advance(100)  # the lag is a difference of cursors: it does not grow with time
    assert m.value("steadyflow_lag_seconds", **labels) == 480
    m.loaded_cursor("shop", "orders", clock.now - 120)
    assert m.value("steadyflow_lag_seconds", **labels) == 0


def test_lag_of_a_table_not_loaded_yet_grows_from_the_poll_that_saw_rows(
        m: PipelineMetrics, clock: FakeClock) -> None:
    labels = {"source": "shop", "table": "orders"}
    m.declare("shop", "orders")
    m.polled("shop", "orders", None)  # an empty table, or a non-time cursor
    clock.advance(30)
    assert m.value("steadyflow_lag_seconds", **labels) == 0
    m.polled("shop", "orders", clock.now - 5)
    clock.advance(600)
    m.polled("shop", "orders", clock.now - 5)
    assert m.value("steadyflow_lag_seconds", **labels) == 600


def test_every_exposed_series_carries_the_pipeline_label(clock: FakeClock) -> None:
    """Two pipelines scraped by one job must stay apart in every alert."""
    m = PipelineMetrics(clock=clock, pipeline="stores-eu", version="1.2.3")
    m.declare("shop", "orders")
    fams = families(m)
    for fam in fams.values():
        for sample in fam.samples:
            assert sample.labels.get("pipeline") == "stores-eu", sample
    info = fams["steadyflow_build_info"].samples[0]
    assert info.labels == {"pipeline": "stores-eu", "version": "1.2.3"} and info.value == 1
    assert "process_cpu_seconds" in fams  # prometheus_client's process collector
    assert fams["steadyflow_up"].samples[0].labels == {"pipeline": "stores-eu"}


def test_a_backward_clock_step_does_not_freeze_the_last_poll_or_the_lag(
        m: PipelineMetrics, clock: FakeClock) -> None:
    """The wall clock steps back an hour (NTP, a restored VM): every later poll read as
    older than the last one before the step and was ignored, so the last poll and the
    source's high-water mark (so the lag) froze for the hour. Polls of this process, and
    recorded polls once the known one lies ahead of the clock, are taken."""
    labels = {"source": "shop", "table": "orders"}
    m.declare("shop", "orders")
    m.polled("shop", "orders", clock.now - 10)
    m.loaded_cursor("shop", "orders", clock.now - 10)
    clock.advance(-3600)
    source_now = clock.now + 3600  # the source's clock did not step
    m.polled("shop", "orders", source_now + 50)  # this process's poll: new rows
    assert m.value("steadyflow_last_poll_success_timestamp_seconds", **labels) == clock.now
    assert m.value("steadyflow_source_cursor_timestamp_seconds", **labels) == source_now + 50
    assert m.value("steadyflow_lag_seconds", **labels) == pytest.approx(60)
    clock.advance(30)  # the state's record of a later poll (a viewer, a worker)
    m.polled("shop", "orders", source_now + 80, at=clock.now - 1)
    assert m.value("steadyflow_last_poll_success_timestamp_seconds", **labels) == clock.now - 1
    # an older record with the clock sound is still ignored
    m.polled("shop", "orders", clock.now - 900, at=clock.now - 20)
    assert m.value("steadyflow_last_poll_success_timestamp_seconds", **labels) == clock.now - 1
