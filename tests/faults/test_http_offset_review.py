"""Reviewer's breaks of `pagination: offset` on a real loopback API (tests/support/paged_api):
conditions the walk's proof did not account for. Each wrote a poll `ok` with a record
missing before its fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.support.paged_api import OffsetApi, run, served, serving, warehouse

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def serve() -> Iterator[Callable[[OffsetApi], str]]:
    yield from serving()


def test_an_api_capping_its_page_at_the_overlap_is_walked_to_its_end(
        tmp_path: Any, serve: Callable[[OffsetApi], str]) -> None:
    """An API serving at most 2 records a page (GitHub-style per_page caps) under overlap
    2: each answer held only the overlap, so the next page was asked from the same offset,
    held the same 2 records, nothing past its anchor and no more than the overlap: taken
    for the end of the list after 2 records. Newest first, the checkpoint moved to the
    newest record and records 1-6 were never read (ok, lost for good). An answer of no
    more than the overlap now keeps one record fewer as its tail, so every page brings a
    record, and the end is an answer shorter than the API has served."""
    api = OffsetApi(8, order="desc")
    api.cap = 2
    url = serve(api)
    summary = run(tmp_path, url, page_size=3, pagination="offset", overlap=2)
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)
    assert api.requests <= 10
