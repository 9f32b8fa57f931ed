"""`pagination: offset` on a real loopback API whose records change while the walk pages:
each page repeats the previous page's last `overlap` records, so a record deleted before
the walk's position (which shifts every later record one place left, sliding one across
the page boundary onto no page) costs no other record, or the walk is done again, or the
poll fails naming the table. Never ok with a hole.

Writes happen before a given request is answered (the request number is the clock), and
each test compares the warehouse, read by DuckDB's own driver, with the records served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.paged_api import OffsetApi, config, run, served, serving, stamp, warehouse

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(60)]

OFFSET: dict[str, Any] = {"pagination": "offset"}  # overlap 2 by default


@pytest.fixture
def serve() -> Iterator[Callable[[OffsetApi], str]]:
    yield from serving()


def at(request: int, write: Callable[[OffsetApi], None]) -> Callable[[OffsetApi], None]:
    """`write` to the records just before request number `request` is answered."""
    def before(api: OffsetApi) -> None:
        if api.requests == request:
            write(api)
    return before


def delete(*ids: int) -> Callable[[OffsetApi], None]:
    def write(api: OffsetApi) -> None:
        for i in ids:
            del api.records[i]
    return write


def held_served(tmp: Path, api: OffsetApi) -> dict[int, tuple[str, int]]:
    """The warehouse's rows of the records still served (deleted ones stay loaded: an
    incremental run does not see deletes)."""
    held = warehouse(tmp)
    return {i: held[i] for i in served(api) if i in held}


def checkpoint(tmp: Path, url: str, **table: Any) -> Any:
    with Pipeline(config(tmp, url, **table)) as pipeline:
        return pipeline.state.checkpoint("api", "t")


def test_a_record_deleted_during_an_offset_walk_costs_no_other_record(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Oldest first, four a page; record 1 is deleted while page 2 is asked for. Paged by
    plain offsets (the API's own token "4", `pagination: token`), page 2 started at record
    6: record 5 was on no page, the checkpoint passed it (ok, lost for good). Asked from
    two records back, page 2 starts at record 4, read before: the shift is seen and
    absorbed in the same walk, and the walk ends on a page bringing nothing new."""
    api = OffsetApi(12)
    api.before = at(2, delete(1))
    url = serve(api)
    summary = run(tmp_path, url, page_size=4, **OFFSET)
    assert summary.ok, summary.errors
    assert held_served(tmp_path, api) == served(api)
    assert [offset for offset, _ in api.asked] == [0, 2, 4, 6, 8, 9]  # one walk
    assert checkpoint(tmp_path, url, **OFFSET).cursor.isoformat().startswith(
        "2026-01-01T00:00:12")


def test_more_deletions_than_the_overlap_walk_again(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Records 1-3 deleted while page 2 is asked for: page 2 (from offset 2) starts at
    record 6, and record 5 is on no page. None of the two records it had to repeat came
    back: the walk cannot vouch for its position and starts again from the run's start
    (one run, nothing lost)."""
    api = OffsetApi(12)
    api.before = at(2, delete(1, 2, 3))
    url = serve(api)
    summary = run(tmp_path, url, page_size=4, **OFFSET)
    assert summary.ok, summary.errors
    assert held_served(tmp_path, api) == served(api)
    offsets = [offset for offset, _ in api.asked]
    assert offsets[:3] == [0, 2, 0], offsets  # lost its place at page 2, walked again


def test_deletions_and_inserts_in_one_walk(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Newest first: while page 2 is asked for, record 13 arrives at the front and records
    12 and 11 (read on page 1) are deleted, a net shift of one to the left, absorbed: one
    walk. Record 13, newer than every record read, arrives with the next run."""
    api = OffsetApi(12, order="desc")

    def write(api: OffsetApi) -> None:
        api.records[13] = {"id": 13, "updated_at": stamp(100), "qty": 13}
        delete(12, 11)(api)

    api.before = at(2, write)
    url = serve(api)
    summary = run(tmp_path, url, page_size=4, cursor_order="descending", **OFFSET)
    assert summary.ok, summary.errors
    assert 0 not in [offset for offset, _ in api.asked[1:]]  # one walk
    assert held_served(tmp_path, api) == {i: v for i, v in served(api).items() if i != 13}
    summary = run(tmp_path, url, page_size=4, cursor_order="descending", **OFFSET)
    assert summary.ok, summary.errors
    assert held_served(tmp_path, api) == served(api)


def test_inserts_pushing_a_whole_page_back_do_not_end_the_walk(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Newest first, four a page: three records arrive at the front while page 2 is
    asked for, so page 2 holds one new record and three read before, nothing past the
    record it repeats: a full page of re-reads is not the end (taken for it, the walk
    would have moved the checkpoint to the newest record with records 1-9 unread)."""
    api = OffsetApi(12, order="desc")

    def write(api: OffsetApi) -> None:
        for i in (13, 14, 15):
            api.records[i] = {"id": i, "updated_at": stamp(100 + i), "qty": i}

    api.before = at(2, write)
    url = serve(api)
    summary = run(tmp_path, url, page_size=4, cursor_order="descending", **OFFSET)
    assert summary.ok, summary.errors
    assert [offset for offset, _ in api.asked].count(0) == 1, api.asked
    assert set(warehouse(tmp_path)) == set(range(1, 14))  # 14 and 15 with the next run
    summary = run(tmp_path, url, page_size=4, cursor_order="descending", **OFFSET)
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


def test_a_deletion_before_the_last_page_costs_no_other_record(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Three a page; record 1 deleted while the last page is asked for. By plain offset
    the last page (offset 6) held only record 8: record 7 slid onto page 2's end, after
    it was read, and the walk ended there (ok, record 7 lost). With the overlap, the
    last page repeats record 6 and brings 7 and 8; with `overlap: 1` the one repeated
    record is gone from its place and the walk is done again. Either way, all arrive."""
    for overlap, walks in ((2, 1), (1, 2)):
        api = OffsetApi(8)
        tmp = tmp_path / f"overlap{overlap}"
        last = 4 if overlap == 1 else 6  # the request of the page that ends the walk
        api.before = at(last, delete(1))
        url = serve(api)
        summary = run(tmp, url, overlap=overlap, **OFFSET)
        assert summary.ok, summary.errors
        assert held_served(tmp, api) == served(api), overlap
        assert [offset for offset, _ in api.asked].count(0) == walks, api.asked


def test_an_api_that_serves_no_stable_order_fails_the_poll_naming_the_table(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """An API sorting by nothing stable serves other records at each offset: offset
    pages then skip records at random. The overlap never matches; after three walks the
    poll fails naming the table and the fix, checkpoint unmoved (not ok, not silent).
    Once the API serves one order, the next run completes."""
    api = OffsetApi(12)
    api.shuffle = True
    url = serve(api)
    summary = run(tmp_path, url, **OFFSET)
    assert not summary.ok
    text = " ".join(str(e) for e in summary.errors)
    assert "lost its place" in text and "table=t" in text and "stable order" in text, text
    assert [offset for offset, _ in api.asked].count(0) == 3
    assert checkpoint(tmp_path, url, **OFFSET) is None
    api.shuffle = False
    summary = run(tmp_path, url, **OFFSET)
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


def test_short_pages_from_a_capped_api_do_not_end_the_walk(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """An API that serves at most 3 records whatever the limit (many cap it at 100): a
    page shorter than asked is not its last, so the walk counts the records it got and
    goes on (a deletion mid-walk absorbed too)."""
    api = OffsetApi(10)
    api.cap = 3
    api.before = at(3, delete(2))
    url = serve(api)
    summary = run(tmp_path, url, page_size=50, **OFFSET)
    assert summary.ok, summary.errors
    assert held_served(tmp_path, api) == served(api)
    assert {limit for _, limit in api.asked} == {50}


def test_a_page_size_halved_mid_walk_keeps_the_walk_exact(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Request 3 times out (408): the adaptive page size halves and the retry asks for
    fewer records from the same offset; offsets count records, not pages, so the walk
    goes on exactly (a deletion on the next page absorbed as well)."""
    api = OffsetApi(14)
    api.timeout_at = {3}
    api.before = at(4, delete(1))
    url = serve(api)
    summary = run(tmp_path, url, page_size=6, retries=1, **OFFSET)
    assert summary.ok, summary.errors
    assert held_served(tmp_path, api) == served(api)
    limits = [limit for _, limit in api.asked]
    assert limits[:2] == [6, 6] and limits[2] == 3, limits
    assert [offset for offset, _ in api.asked].count(0) == 1, api.asked


def test_a_record_updated_during_an_offset_walk_costs_no_other_record(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Record 1 updated while page 2 is asked for moves to the end (a deletion at its
    place and an insert at the end): nothing is skipped, and its new version arrives."""
    api = OffsetApi(12)

    def update(api: OffsetApi) -> None:
        api.records[1] = {"id": 1, "updated_at": stamp(100), "qty": 999}

    api.before = at(2, update)
    url = serve(api)
    summary = run(tmp_path, url, **OFFSET)
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


def test_a_quiet_poll_costs_one_request_more(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """The price, as documented: a walk of n pages asks n + 1 times (the last answer
    repeats the overlap only), each page after the first re-reading `overlap` records."""
    api = OffsetApi(6)
    url = serve(api)
    assert run(tmp_path, url, page_size=4, **OFFSET).ok
    assert api.asked == [(0, 4), (2, 4), (4, 4)]  # 4 + 2 new + 0 new: the end
    api.asked.clear()
    assert run(tmp_path, url, page_size=4, **OFFSET).ok  # since a second before record 6
    # one record (6): its answer keeps no tail (one fewer than it holds), and the next,
    # from past it, is empty: the end
    assert api.asked == [(0, 4), (1, 4)]
    assert warehouse(tmp_path) == served(api)
