"""A reviewer's attempts to make an HTTP walk report ok with a record missing or wrong, or
never end, on a real loopback server. Each test reads the warehouse with DuckDB's own
driver and compares it with what the server holds (or asserts a loud failure naming the
table); none uses steadyflow's code as its oracle.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.support.loopback_http import send_json, serve_get
from tests.support.paged_api import OffsetApi, Page, Query, config, run, serving

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def serve() -> Iterator[Callable[[OffsetApi], str]]:
    yield from serving()


def test_an_api_ignoring_the_token_with_fresh_tokens_is_refused_not_walked_for_ever(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """next_param names a parameter the API does not read (it takes `after`, the table
    sends `cursor`), and the API mints a new token per answer (signed, timestamped
    cursors do): every request got the first page again with a token never seen before,
    so neither the handed-back nor the come-round-again check fired and the run never
    ended (482 requests in 20 s, each page landed). Three answers of records already read
    now fail the table naming next_param, the checkpoint unmoved."""
    api = OffsetApi(12)

    def fresh_token(api: OffsetApi, query: Query, page: Page) -> Page:
        if api.requests > 40:
            return {"data": [], "next": None}  # the old code walked until here
        return {**page, "next": f"c{api.requests}"}  # never read back: always page 1

    api.shape = fresh_token
    url = serve(api)
    done: list[RunSummary] = []
    worker = threading.Thread(
        target=lambda: done.append(run(tmp_path, url, next_param="cursor")), daemon=True)
    worker.start()
    worker.join(30)
    assert done, "the run did not end"
    summary = done[0]
    assert not summary.ok
    text = " ".join(str(e) for e in summary.errors)
    assert "next_param" in text and "table=t" in text, text
    assert api.requests == 4, api.requests  # the first page and three stale answers
    with Pipeline(config(tmp_path, "http://unused")) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is None


def _dated_run(tmp: Path, url: str) -> RunSummary:
    """A table whose cursor is a date column (`day`), read into DuckDB."""
    config = parse_config({
        "name": "dated", "base_dir": str(tmp), "state_dir": str(tmp / "state"),
        "landing": {"path": str(tmp / "landing")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "w"},
        "contracts": {"t": {"primary_key": ["id"], "cursor": "day", "columns": {
            "id": {"type": "int64", "nullable": False},
            "day": {"type": "date", "nullable": False}, "v": {"type": "string"}}}},
        "sources": [{"name": "api", "kind": "http", "url": url,
                     "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "t", "endpoint": "/items"}]}]})
    with Pipeline(config) as pipeline:
        return pipeline.run_once(raise_on_error=False)


def test_a_date_cursor_spelled_wrongly_once_drops_no_later_record(tmp_path: Path) -> None:
    """A date cursor was compared as the API's text: one record spelled "2026-1-9" sorted
    after every "2026-01-..". Its own record was quarantined (the column's cast refuses
    it), but its text was the page's high: the checkpoint moved there, and the next run
    dropped every later record, spelled right, as at or before it (records 3 and 4 never
    loaded, each run ok, nothing quarantined). The cursor is now read as a date: such a
    record is rejected alone and raises nothing."""
    records = [{"id": 1, "day": "2026-01-09", "v": "a"}, {"id": 2, "day": "2026-1-9", "v": "b"}]
    url, stop = serve_get(
        lambda handler: send_json(handler, json.dumps({"data": records, "next": None}).encode()))
    try:
        first = _dated_run(tmp_path, url)
        assert first.ok, first.errors
        records += [{"id": 3, "day": "2026-01-10", "v": "c"},
                    {"id": 4, "day": "2026-02-11", "v": "d"}]
        second = _dated_run(tmp_path, url)
        assert second.ok, second.errors
    finally:
        stop()
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        loaded = con.execute("SELECT id, day, v FROM w.t ORDER BY id").fetchall()
    finally:
        con.close()
    expected = [(r["id"], date.fromisoformat(r["day"]), r["v"]) for r in records
                if len(r["day"]) == 10]  # the test's own reading: "2026-1-9" is no date
    assert loaded == expected


def _sized_api(tmp: Path, url: str, **table: Any) -> RunSummary:
    """`config`'s table with a 64-record page, a 200 kB body cap and quick retries (fewer
    than the breaker's 5 failures)."""
    return run(tmp, url, page_size=64, max_page_bytes=200_000, retries=3, **table)


def test_a_page_past_max_page_bytes_is_asked_again_smaller_and_every_record_lands(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Records of 10 kB at 64 a page: 640 kB answers, read whole into memory whatever
    their size (nothing bounded a page: a page of large records at the default page size
    of 122,880, or a gzip bomb, ran the process into the OOM killer). An answer past
    max_page_bytes is now cut unparsed, the page size halves and the page is asked
    again: every record lands, and no answer read was larger than the cap allows."""
    api = OffsetApi(40)
    for record in api.records.values():
        record["note"] = "x" * 10_000
    served_sizes: list[int] = []

    def note_size(api: OffsetApi, query: Query, page: Page) -> Page:
        served_sizes.append(len(json.dumps(page)))
        return page

    api.shape = note_size
    summary = _sized_api(tmp_path, serve(api))
    assert summary.ok, summary.errors
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        loaded = dict(con.execute("SELECT id, qty FROM w.t").fetchall())
    finally:
        con.close()
    assert loaded == {i: r["qty"] for i, r in api.records.items()}
    assert max(served_sizes) > 200_000  # the first answers were cut
    assert api.asked[-1][1] <= 16, api.asked  # then asked for what fits


@pytest.mark.parametrize("gzipped", [False, True])
def test_an_api_ignoring_the_limit_past_max_page_bytes_fails_naming_it(
        tmp_path: Path, serve: Callable[[OffsetApi], str], gzipped: bool) -> None:
    """An API serving every record on one page whatever limit it is asked (here 2 MB of
    JSON; gzip-encoded, a few kB on the wire): no smaller page can be asked, so the table
    fails naming max_page_bytes, its checkpoint unmoved, instead of reading an answer of
    any size (decoded size counts: a gzip bomb is cut at the cap)."""
    api = OffsetApi(200)
    for record in api.records.values():
        record["note"] = "x" * 10_000
    api.cap = None
    api.gzip = gzipped

    def everything(api: OffsetApi, query: Query, page: Page) -> Page:
        return {"data": sorted(api.records.values(), key=lambda r: r["id"]), "next": None}

    api.shape = everything
    summary = _sized_api(tmp_path, serve(api), min_page_size=8)
    assert not summary.ok
    text = " ".join(str(e) for e in summary.errors)
    assert "max_page_bytes" in text and "table=t" in text, text
    with Pipeline(config(tmp_path, "http://unused")) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is None
