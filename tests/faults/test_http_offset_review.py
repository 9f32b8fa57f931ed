"""Reviewer's breaks of `pagination: offset` on a real loopback API (tests/support/paged_api):
conditions the walk's proof did not account for. Each wrote a poll `ok` with a record
missing before its fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.faults.test_http_pagination import ById
from tests.support.paged_api import (
    OffsetApi,
    config,
    run,
    served,
    serving,
    stamp,
    warehouse,
)

from steadyflow.run.pipeline import Pipeline

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
    summary = run(tmp_path, url, page_size=3, pagination="offset", overlap=2,
                  cursor_order="descending")
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)
    assert api.requests <= 10


def by_id_update(api: OffsetApi) -> None:
    """Before request 2: record 1 (behind the walk, not in the overlap) and the last record
    (ahead) updated in place."""
    if api.requests == 2:
        api.records[1] = {"id": 1, "updated_at": stamp(100), "qty": -1}
        last = max(api.records)
        api.records[last] = {"id": last, "updated_at": stamp(200), "qty": -last}


@pytest.mark.parametrize("pagination", ["offset", "token"])
def test_an_id_ordered_api_whose_cursors_happen_to_rise_is_walked_once_more(
        tmp_path: Any, serve: Callable[[OffsetApi], str], pagination: str) -> None:
    """An API in id order whose records were written in id order: every cursor served rises,
    so the walk took the API for one ordered by cursor (an updated record moves ahead and is
    met again) and did not walk once more. While page 2 is asked for, record 1 (behind the
    walk) is updated in place, then the last record (ahead): the walk read the last one's
    new version, the checkpoint moved to its cursor (200 s), past record 1's new one
    (100 s), which no later run's since reaches (ok, lost for good)."""
    api = OffsetApi(12, order="id") if pagination == "offset" else ById(12)
    api.before = by_id_update
    url = serve(api)
    summary = run(tmp_path, url, pagination=pagination, cursor_order="unknown")
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


def test_records_updated_during_every_offset_walk_still_move_the_checkpoint(
        tmp_path: Any, serve: Callable[[OffsetApi], str]) -> None:
    """Oldest first by offset (overlap 2), one record updated before every other request:
    it moves to the end and every later record one place up. The overlap absorbs that
    shift (one record moved away before the position) and the moved record is read at its
    new place; yet a key met at two positions marked each walk unsettled (a check for
    token walks, which cannot see a shift), three walks a run and the checkpoint held: an
    API written to faster than one walk never moved its checkpoint, every run re-reading
    everything since. One walk now, and the checkpoint moves."""
    api = OffsetApi(12)

    def update_one(api: OffsetApi) -> None:
        if api.requests % 2 == 0 and api.requests < 40:
            i = api.requests % 12 + 1
            api.records[i] = {"id": i, "updated_at": stamp(100 + api.requests), "qty": -i}

    api.before = update_one
    url = serve(api)
    summary = run(tmp_path, url, pagination="offset")
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)
    with Pipeline(config(tmp_path, url, pagination="offset")) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is not None


def hide(*ids: int) -> Callable[[OffsetApi, Any, Any], Any]:
    """An API filtering AFTER paging (rows it skips, soft-deleted, still counted in its
    offsets): the page's window is cut, its `next` kept."""
    def shape(api: OffsetApi, query: Any, page: Any) -> Any:
        return {**page, "data": [r for r in page["data"] if r["id"] not in ids]}
    return shape


def test_an_api_serving_short_pages_before_its_end_is_refused_not_ended(
        tmp_path: Any, serve: Callable[[OffsetApi], str]) -> None:
    """Newest first; the API counts records 8-6 in its offsets but never serves them (it
    filters after paging) and says, in `next`, that more follow. The answer past record 9
    held only the overlap, taken for the end of the list: the checkpoint moved to record 12
    and records 1-5 were never read (ok, lost for good). The walk cannot count positions
    it is not shown: the poll now fails naming the table, the checkpoint unmoved."""
    api = OffsetApi(12, order="desc")
    api.shape = hide(8, 7, 6)
    url = serve(api)
    summary = run(tmp_path, url, pagination="offset", cursor_order="descending")
    assert not summary.ok and "next" in str(summary.errors)
    with Pipeline(config(tmp_path, url, pagination="offset")) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is None
    assert api.requests < 10
