"""A reviewer's attempts to make an HTTP walk report ok with a record missing or wrong, or
never end, on a real loopback server. Each test reads the warehouse with DuckDB's own
driver and compares it with what the server holds (or asserts a loud failure naming the
table); none uses steadyflow's code as its oracle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.paged_api import OffsetApi, Page, Query, config, run, serving

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
