"""The HTTP source against the real flaky sales API (a real server on a real socket).

Every test ends with the warehouse equal to the API's data row for row (`compare_target`
reading the API's own SQLite file), so a fault that lost, doubled or altered a record fails
the test whatever else it checks. What each test adds:

- pages are landed raw before they are parsed, and a second run reads only what changed;
- 429 with Retry-After: the next request waits at least Retry-After (server's own clock);
- 5xx bursts and dropped connections: retried with backoff, counted as server_error;
- malformed payloads (not JSON, wrong envelope) are quarantined raw with their reason and
  requested again, records without their key are quarantined one by one while the rest
  goes on; neither stops the run, and replay loads them once fixed;
- a bad token fails at once: one request, no retries;
- a connection reset mid-body (FaultProxy) is retried from the same page.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tests.conftest import write_pipeline
from tests.faults.test_network import warehouse_rows
from tests.faults.test_resilience_faults import record_page_sizes
from tests.support.faultproxy import FaultProxy

from steadyflow.config import PipelineConfig, load_config, parse_config
from steadyflow.demo.flaky_api import FlakyApiServer, create_api_db, mutate
from steadyflow.extract.http import RawPage, format_param, is_raw_page, step_before
from steadyflow.reconcile.compare import compare_target
from steadyflow.run.extract import replay_pages
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(90)]

ROWS = 1_500
PAGE = 200
TOKEN = "s3cret-api-token"
FAST: dict[str, Any] = {"connect_timeout": 2, "statement_timeout": 3, "retries": 8,
                        "backoff_initial": 0.05, "backoff_max": 0.5, "breaker_failures": 20,
                        "breaker_reset": 1}


@pytest.fixture
def api_db(tmp_path: Path) -> Path:
    path = tmp_path / "api.db"
    create_api_db(path, ROWS, seed=11)
    return path


@pytest.fixture
def api(api_db: Path) -> Iterator[FlakyApiServer]:
    with FlakyApiServer(api_db, token=TOKEN) as server:
        yield server


def http_source(url: str, resilience: dict[str, Any] | None = None, **table: Any
                ) -> dict[str, Any]:
    return {"name": "api", "kind": "http", "url": url,
            "headers": {"Authorization": "Bearer ${API_TOKEN}"},
            "resilience": {**FAST, **(resilience or {})},
            "tables": [{"name": "sales", "contract": "sales", "endpoint": "/v1/sales",
                        "page_size": PAGE, "cursor_order": "ascending", **table}]}


def make_pipeline(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch,
                  token: str = TOKEN, resilience: dict[str, Any] | None = None,
                  **table: Any) -> Pipeline:
    monkeypatch.setenv("API_TOKEN", token)
    cfg = write_pipeline(tmp_path, [http_source(url, resilience, **table)])
    return Pipeline(load_config(cfg))


def api_as_sqlite(api_db: Path) -> PipelineConfig:
    """The same source and table, read straight from the API's SQLite file: the truth."""
    from tests.conftest import SALES_CONTRACT

    return parse_config({
        "contracts": {"sales": SALES_CONTRACT},
        "sources": [{"name": "api", "kind": "sqlite", "path": str(api_db),
                     "sqlite_timestamp_format": "%Y-%m-%dT%H:%M:%S.%fZ",
                     "tables": [{"name": "sales", "contract": "sales"}]}]})


def assert_warehouse_equals_api(pipeline: Pipeline, api_db: Path) -> None:
    wh = warehouse_rows(pipeline)
    cmp = compare_target(api_as_sqlite(api_db), "sales", wh)
    assert cmp.expected_rows > 0
    assert (cmp.missing, cmp.extra, cmp.duplicates, cmp.mismatched) == (0, 0, 0, 0), cmp


def raw_pages(pipeline: Pipeline) -> list[RawPage]:
    root = pipeline.landing.root
    return [RawPage.from_table(pq.read_table(p)) for p in sorted(root.glob("api/sales.raw/*/*"))
            if not p.name.startswith(".")]


def test_pages_are_landed_raw_before_parsing_and_runs_are_incremental(
        tmp_path: Path, api: FlakyApiServer, api_db: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with make_pipeline(tmp_path, api.url, monkeypatch) as pipeline:
        first = pipeline.run_once()
        assert first.ok, first.errors
        assert first.extracted_rows == ROWS
        pages = raw_pages(pipeline)
        # one raw file per answer (8 pages of 200, the last one short), each the full body
        assert len(pages) == api.stats()["requests_total"] == -(-ROWS // PAGE)
        assert all(p.status == 200 and p.body.startswith(b'{"data"') for p in pages)
        batches = pipeline.state.batches("api", "sales")
        raw_ids = {p.name.removesuffix(".parquet")
                   for p in pipeline.landing.root.glob("api/sales.raw/*/*.parquet")}
        assert {json_meta(b)["raw_page"] for b in batches} <= raw_ids
        assert_warehouse_equals_api(pipeline, api_db)

        mark = pipeline.state.checkpoint("api", "sales")
        assert mark is not None
        before = {p.request for p in pages}
        mutate(api_db, inserts=30, updates=20)
        second = pipeline.run_once()
        assert second.ok, second.errors
        # from the checkpoint (updated_since = a second before its cursor, records before
        # it dropped), not from the start: the 50 changed records, and the one tying the
        # checkpoint's cursor re-read (a record written later may share it: a lower key)
        assert second.extracted_rows == 51 and second.changed_rows == 50, second
        assert second.reread_rows == 1, second
        new = [p.request for p in raw_pages(pipeline) if p.request not in before]
        since = format_param(step_before(mark.cursor))
        assert len(new) == 1 and f"updated_since={since}".replace(":", "%3A") in new[0], new
        assert_warehouse_equals_api(pipeline, api_db)


def json_meta(batch: dict[str, Any]) -> dict[str, Any]:
    return json.loads(batch["ref"])["meta"]  # type: ignore[no-any-return]


def test_429_retry_after_is_waited_not_hammered(
        tmp_path: Path, api: FlakyApiServer, api_db: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    api.faults.set(rate_limit_every=3, retry_after=1)
    # Retry-After is honoured up to backoff_max (FAST's 0.5 s would cap it)
    with make_pipeline(tmp_path, api.url, monkeypatch,
                       resilience={"backoff_max": 2}) as pipeline:
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        stats = api.stats()
        limited = stats["rate_limited"]
        assert len(limited) >= 2
        for hit in limited:  # the next request came no sooner than Retry-After
            assert hit["next_request_at"] is not None
            assert hit["next_request_at"] - hit["at"] >= hit["retry_after"] - 0.05, hit
        # every 429 cost exactly one extra request: nothing was hammered
        pages = -(-ROWS // PAGE)
        assert stats["requests_total"] == pages + len(limited)
        assert pipeline.metrics.value("steadyflow_retries_total", source="api",
                                      reason="rate_limited") == len(limited)
        assert_warehouse_equals_api(pipeline, api_db)


def test_5xx_bursts_and_dropped_connections_are_retried(
        tmp_path: Path, api: FlakyApiServer, api_db: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    api.faults.set(error_burst=5, drop_every=4)
    with make_pipeline(tmp_path, api.url, monkeypatch,
                       resilience={"backoff_max": 2}) as pipeline:
        started = time.monotonic()
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        stats = api.stats()
        assert stats["by_status"].get("500", 0) + stats["by_status"].get("503", 0) == 5
        assert stats["dropped"] >= 1
        assert pipeline.metrics.value("steadyflow_retries_total", source="api",
                                      reason="server_error") == 5
        assert pipeline.metrics.value("steadyflow_retries_total", source="api",
                                      reason="connection") == stats["dropped"]
        # the three 503s carried Retry-After: 1, and it was honoured
        assert time.monotonic() - started >= 3
        assert_warehouse_equals_api(pipeline, api_db)


def test_malformed_payloads_are_quarantined_raw_and_replayable(
        tmp_path: Path, api: FlakyApiServer, api_db: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    api.faults.set(malformed_every=4, wrong_shape_every=3, truncate_every=5)
    with make_pipeline(tmp_path, api.url, monkeypatch) as pipeline:
        summary = pipeline.run_once()
        assert summary.ok, summary.errors  # bad pages never stop the run
        stats = api.stats()
        assert stats["malformed"] >= 1 and stats["wrong_shape"] >= 2 and stats["truncated"] >= 1
        parked = pipeline.state.quarantined("open")
        assert all(is_raw_page(q["path"]) for q in parked)
        reasons = [r for q in parked for r in q["reasons"]]
        assert any("not JSON" in r for r in reasons)
        assert any("no 'data'" in r for r in reasons)  # {"items": [...]}
        # records without their key: each one quarantined with its reason (the keyless
        # answer also lacks its next token, so that chain, and this run, end there)
        keyless = [q for q in parked if "payload: record lacks sale_id" in q["reasons"]]
        assert len(keyless) == 1 and keyless[0]["rows"] == PAGE
        assert not any("truncat" in r.lower() for r in reasons)  # a cut body is retried
        # each parked item is the raw answer (or record) exactly as it arrived
        for q in parked:
            raw = RawPage.from_table(pq.read_table(pipeline.landing.root / q["path"]))
            assert raw.status == 200 and raw.body
        # the next run reads on from the checkpoint, which never passed the keyless
        # records: the warehouse is complete and exact
        api.faults.clear()
        assert pipeline.run_once().ok
        assert_warehouse_equals_api(pipeline, api_db)

        # replay: with the envelope the odd pages used, the {"items": ...} pages now parse
        # and load (idempotently: the same rows are already there); the HTML stays parked
        api.faults.clear()
        result = replay_pages(pipeline, records_path="items")
        assert result["pages"] == len(parked)
        assert result["loaded_rows"] > 0
        still = pipeline.state.quarantined("open")
        assert still and all(any("not JSON" in r or "lacks sale_id" in r for r in q["reasons"])
                             for q in still)
        assert_warehouse_equals_api(pipeline, api_db)


def test_bad_token_fails_fast_without_retries(
        tmp_path: Path, api: FlakyApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_pipeline(tmp_path, api.url, monkeypatch, token="wrong") as pipeline:
        started = time.monotonic()
        summary = pipeline.extract()
        elapsed = time.monotonic() - started
        assert len(summary.errors) == 1 and "credentials rejected" in summary.errors[0]
        assert "wrong" not in summary.errors[0] and TOKEN not in summary.errors[0]
        assert api.stats()["requests_total"] == 1
        assert elapsed < 1.5
        assert pipeline.state.checkpoint("api", "sales") is None


def test_connection_reset_mid_body_through_proxy(
        tmp_path: Path, api: FlakyApiServer, api_db: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with FaultProxy("127.0.0.1", api.port) as proxy:
        proxy.reset_after(20_000)  # a 200-record page is ~45 kB: every answer is cut mid-body
        with make_pipeline(tmp_path, f"http://{proxy.address}", monkeypatch) as pipeline:
            original = pipeline.metrics.retry
            resets = []

            def count(source: str, reason: Any) -> None:
                resets.append(reason)
                if len(resets) == 3:
                    proxy.reset_after(None)  # the link heals after three cut answers
                original(source, reason)

            pipeline.metrics.retry = count  # type: ignore[method-assign]
            summary = pipeline.run_once()
            assert summary.ok, summary.errors
            assert resets[:3] == ["connection"] * 3
            assert not pipeline.state.quarantined("open")  # a cut body is never "bad data"
            assert_warehouse_equals_api(pipeline, api_db)


def test_silent_api_read_timeout_shrinks_the_page_and_completes(
        tmp_path: Path, api: FlakyApiServer, api_db: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The link goes silent mid-run (black hole): httpx's read timeout (statement_timeout)
    ends each wait, the page is retried smaller, and the run completes once it is back."""
    with FaultProxy("127.0.0.1", api.port) as proxy:
        with make_pipeline(tmp_path, f"http://{proxy.address}", monkeypatch,
                           resilience={"statement_timeout": 1}, min_page_size=25) as pipeline:
            sizes = record_page_sizes(pipeline)
            calls = [0]
            landed = pipeline.state.record_landed  # (the checkpoint moves at the chain's end)

            def hole_after_first_page(*args: Any, **kwargs: Any) -> None:
                landed(*args, **kwargs)
                calls[0] += 1
                if calls[0] == 1:
                    proxy.blackhole(True)
                    threading.Timer(2.5, proxy.blackhole, args=(False,)).start()

            pipeline.state.record_landed = hole_after_first_page  # type: ignore
            started = time.monotonic()
            summary = pipeline.run_once()
            assert summary.ok, summary.errors
            assert time.monotonic() - started < 15
            assert metric_value(pipeline, "steadyflow_timeouts_total", source="api") >= 1
            assert sizes and sizes[0] == PAGE // 2, sizes
            assert_warehouse_equals_api(pipeline, api_db)


def metric_value(pipeline: Pipeline, name: str, **labels: str) -> float:
    return pipeline.metrics.value(name, **labels) or 0.0
