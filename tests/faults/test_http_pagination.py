"""What real APIs do to a page walk, on a real loopback server: empty pages before the end,
an empty-string token on the last page, a token handed back unchanged, and an offset walk
that shifts because a record moved while the client was paging.

Each test runs steadyflow for real and compares the warehouse, read with DuckDB's own
driver, with the records the server holds: the only acceptable outcomes are equality, or
a run that fails naming the source and table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from tests.support.paged_api import (
    T0,
    OffsetApi,
    Page,
    Query,
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


def test_an_empty_page_before_the_end_does_not_end_the_walk(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Newest first, and the second answer is an empty page carrying a token (an API that
    filters after paging): the walk used to end there and the checkpoint moved to the
    newest record, so every older record was behind it for good (ok, 9 of 12 lost)."""
    api = OffsetApi(12, order="desc")

    def empty_second(api: OffsetApi, query: Query, page: Page) -> Page:
        return {**page, "next": "e3"} if page["next"] == "3" else page

    api.shape = empty_second
    url = serve(api)
    first = run(tmp_path, url)
    assert first.ok, first.errors
    second = run(tmp_path, url)
    assert second.ok, second.errors
    assert warehouse(tmp_path) == served(api)


def test_an_empty_string_token_ends_the_walk(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Slack's next_cursor is "" on the last page: it used to be sent back as `after=`,
    and an API that reads that as "from the start" was walked for ever."""
    api = OffsetApi(7)

    def blank_last(api: OffsetApi, query: Query, page: Page) -> Page:
        if api.requests > 20:
            raise AssertionError("walked past the end")
        return {**page, "next": page["next"] or ""}

    api.shape = blank_last
    url = serve(api)
    summary = run(tmp_path, url)
    assert summary.ok, summary.errors
    assert api.requests == 3
    assert warehouse(tmp_path) == served(api)


def test_a_token_handed_back_unchanged_is_refused(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """A page with records whose next token is the one it was asked with would be read
    for ever: the run fails at once naming the table, the checkpoint unmoved."""
    api = OffsetApi(7)

    def stuck(api: OffsetApi, query: Query, page: Page) -> Page:
        if api.requests > 20:
            return {"data": [], "next": None}  # the old code looped until here
        return {**page, "next": query["after"][0]} if "after" in query else page

    api.shape = stuck
    summary = run(tmp_path, serve(api))
    assert not summary.ok
    text = " ".join(str(e) for e in summary.errors)
    assert "next-page token it was asked with" in text and "api" in text, text
    assert api.requests == 2


def test_tokens_that_come_round_again_are_refused(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """An API whose third page hands back the FIRST page's token (tokens "3", "0", "3",
    ...: a cursor reset by a failover, a bug in a token cache): only a token equal to the
    one just sent was noticed, so the walk read the same two pages for ever (here until
    the server gave up after 60 requests), landing each. A token handed out before in
    the walk now fails the table at once, naming it, the checkpoint unmoved."""
    api = OffsetApi(12)

    def round_again(api: OffsetApi, query: Query, page: Page) -> Page:
        if api.requests > 60:
            return {"data": [], "next": None}  # the old code walked until here
        return {**page, "next": "0"} if page["next"] == "6" else page

    api.shape = round_again
    summary = run(tmp_path, serve(api))
    assert not summary.ok
    text = " ".join(str(e) for e in summary.errors)
    assert "handed out before" in text and "table=t" in text, text
    assert api.requests <= 4, api.requests
    with Pipeline(config(tmp_path, "http://unused")) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is None


def test_a_record_moving_during_an_offset_walk_costs_no_other_record(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Oldest first by offset; record 1 is updated while page 2 is asked for, so it moves
    to the end and every later record one place up: record 4 was on no page the walk read,
    and the checkpoint moved past it to record 1's new time (ok, record 4 lost for good).
    The moved record is met twice at different positions: the walk is done again."""
    api = OffsetApi(12)

    def update_first(api: OffsetApi) -> None:
        if api.requests == 2:
            api.records[1] = {"id": 1, "updated_at": stamp(100), "qty": 999}

    api.before = update_first
    url = serve(api)
    for _ in range(2):
        summary = run(tmp_path, url)
        assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


def test_records_moving_during_every_walk_hold_the_checkpoint(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Writes during every walk: after three unsettled walks the checkpoint stays where the
    run started (a record may have been skipped), and a quiet run then gets everything."""
    api = OffsetApi(12)

    def update_one(api: OffsetApi) -> None:
        if api.requests % 2 == 0:
            i = api.requests % 12 + 1
            api.records[i] = {"id": i, "updated_at": stamp(100 + api.requests), "qty": -i}

    api.before = update_one
    url = serve(api)
    summary = run(tmp_path, url)
    assert summary.ok, summary.errors
    assert api.requests == 3 * 4  # three walks of four pages
    with Pipeline(config(tmp_path, url)) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is None
    api.before = None
    summary = run(tmp_path, url)
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


def test_a_redirect_is_refused_naming_where_the_api_went(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """A 301 is not followed (it may drop the query or the credentials): the run fails at
    once naming the table and the new location (it said only 'HTTP 301' and to check the
    table's parameters)."""
    api = OffsetApi(3)
    api.moved_to = "https://api.example.com/v2/items"
    summary = run(tmp_path, serve(api))
    assert not summary.ok
    text = " ".join(str(e) for e in summary.errors)
    assert "redirected to https://api.example.com/v2/items" in text and "table=t" in text, text


def test_an_expired_token_fails_the_walk_saying_so_and_the_next_run_completes(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """A 410 for the token of page 3 said 'endpoint not found' (the endpoint had answered
    two pages); it now says the token was refused. Nothing is lost: the checkpoint is
    unmoved and the next run walks again."""
    api = OffsetApi(10)
    api.gone_after = "6"
    url = serve(api)
    summary = run(tmp_path, url)
    assert not summary.ok
    text = " ".join(str(e) for e in summary.errors)
    assert "refused the next-page token" in text and "table=t" in text, text
    api.gone_after = ""
    summary = run(tmp_path, url)
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


def test_records_refused_at_extraction_are_counted(tmp_path: Path,
                                                   serve: Callable[[OffsetApi], str]) -> None:
    """A record whose cursor is missing or null cannot be placed: it is quarantined when
    its page is parsed, before any load. The run summary and the table's health said 0
    quarantined while three records sat in quarantine (only the loader's bad rows were
    counted); both now count them, once, a re-read of the same page included."""
    api = OffsetApi(8)
    for i in (2, 5, 7):  # sorted first ('' is below every stamp), sent without a cursor
        api.records[i]["updated_at"] = ""
    api.shape = lambda _, __, page: {**page, "data": [
        {**r, "updated_at": None} if r["id"] == 7  # 7: a null cursor, 2 and 5: none
        else {k: v for k, v in r.items() if (k, v) != ("updated_at", "")}
        for r in page["data"]]}
    url = serve(api)
    first = run(tmp_path, url)
    assert first.quarantined_rows == 3, first
    assert sorted(warehouse(tmp_path)) == [1, 3, 4, 6, 8]
    with Pipeline(config(tmp_path, url)) as pipeline:
        (health,) = pipeline.state.health()
        parked = sum(item["rows"] for item in pipeline.state.quarantined())
    assert health.rows_quarantined == parked == 3
    again = run(tmp_path, url)  # the same records again: parked once, counted once
    assert again.quarantined_rows == 0
    with Pipeline(config(tmp_path, url)) as pipeline:
        (health,) = pipeline.state.health()
    assert health.rows_quarantined == 3


def test_a_lone_surrogate_costs_its_record_not_the_table(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """"\\ud800" is valid JSON but no Unicode character (not UTF-8 text, no warehouse holds
    it). In a field it failed the whole table on every run ('utf-8' codec can't encode
    character, naming no record or column), and in a record rejected for its cursor it
    failed writing the rejected records; now each costs its own record, with its reason."""
    api = OffsetApi(8)
    api.records[3]["qty"] = "\ud800x"
    url = serve(api)
    api.shape = lambda _, __, page: {**page, "data": [
        {**r, "updated_at": r["updated_at"] + "\udc00"} if r["id"] == 5 else r
        for r in page["data"]]}
    first = run(tmp_path, url)
    assert first.ok, first.errors
    assert first.quarantined_rows == 2, first
    assert warehouse(tmp_path) == {i: v for i, v in served(api).items() if i not in (3, 5)}
    with Pipeline(config(tmp_path, url)) as pipeline:
        reasons = {reason for item in pipeline.state.quarantined()
                   for reason in item["reasons"]}
    assert reasons == {"qty: a lone UTF-16 surrogate, not Unicode text: '\\ud800x'",
                       "payload: updated_at is not an ISO-8601 time: "
                       f"{stamp(5)[:36] + chr(0xdc00)!r}"}, reasons



def test_a_record_added_during_a_newest_first_offset_walk_costs_no_other_record(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Newest first by offset; a new record arrives while page 2 is asked for and pushes
    every record one place down: the one at the boundary is met twice, so the walk is
    done again and nothing is lost (the insert's twin of the delete above)."""
    api = OffsetApi(12, order="desc")

    def add(api: OffsetApi) -> None:
        if api.requests == 2:
            api.records[13] = {"id": 13, "updated_at": stamp(100), "qty": 13}

    api.before = add
    url = serve(api)
    for _ in range(2):
        summary = run(tmp_path, url)
        assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


def test_a_record_tying_the_checkpoint_arrives_from_an_api_whose_since_is_exclusive(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """An API answering `updated_since` with the records strictly after it (many spell it
    `updated_after`): a record written after a run with the very time of the checkpoint's
    cursor (another id) was never answered, every run ok. The API is asked from a second
    before the checkpoint; what that adds before it is dropped."""
    api = OffsetApi(5)
    api.exclusive = True
    url = serve(api)
    assert run(tmp_path, url).ok
    api.records[6] = {"id": 6, "updated_at": stamp(5), "qty": 6}  # ties record 5's time
    summary = run(tmp_path, url)
    assert summary.ok, summary.errors
    # record 5, tying its cursor, is re-read (a later record tying it may have a lower key)
    assert summary.extracted_rows == 2 and summary.changed_rows == 1, summary
    assert warehouse(tmp_path) == served(api)


@pytest.mark.parametrize("exclusive", [False, True])
def test_a_record_tying_the_checkpoint_with_a_lower_key_arrives(
        tmp_path: Path, serve: Callable[[OffsetApi], str], exclusive: bool) -> None:
    """An API stamping times to the second: record 2 is updated within the second the
    checkpoint's record 5 was (the same updated_at, a lower id) after the run that set the
    checkpoint. The API served it again (since steps back a second), but the walk kept
    only marks past the checkpoint's (cursor, key), and (t5, 2) is below (t5, 5): the
    update was lost for good, every run ok. The run now keeps every record at or after
    the checkpoint's cursor (the few tying it are re-read, harmlessly)."""
    api = OffsetApi(5)
    api.exclusive = exclusive
    url = serve(api)
    assert run(tmp_path, url).ok
    api.records[2] = {"id": 2, "updated_at": stamp(5), "qty": -2}
    summary = run(tmp_path, url)
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


def test_a_walk_whose_answers_never_hold_the_next_field_is_refused_on_a_full_page(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Newest first, and the API puts its token where next_path does not look (a Link
    header, `meta.next_cursor`): every answer lacked the field, so the walk ended after
    page 1 and the checkpoint moved to the newest record; the 9 older records were behind
    it for good, every run ok. A full page with no next field in any answer of the walk
    now fails the table naming next_path, checkpoint unmoved; an API that leaves the
    field out only on its last (short or full) page is walked as before."""
    api = OffsetApi(12, order="desc")
    api.shape = lambda _, __, page: {"data": page["data"],
                                     "meta": {"next_cursor": page["next"]}}
    url = serve(api)
    summary = run(tmp_path, url, cursor_order="descending")
    assert not summary.ok
    text = " ".join(str(e) for e in summary.errors)
    assert "next_path" in text and "table=t" in text, text
    with Pipeline(config(tmp_path, url)) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is None
    summary = run(tmp_path, url, cursor_order="descending", next_path="meta.next_cursor")
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


@pytest.mark.parametrize("count", [9, 10])
def test_an_api_leaving_the_next_field_out_on_its_last_page_is_walked_to_its_end(
        tmp_path: Path, serve: Callable[[OffsetApi], str], count: int) -> None:
    """JSON.stringify drops a key whose value is undefined: the last page has no `next`
    at all, full (9 records, 3 a page) or short (10)."""
    api = OffsetApi(count, order="desc")
    api.shape = lambda _, __, page: page if page["next"] else {"data": page["data"]}
    url = serve(api)
    summary = run(tmp_path, url, cursor_order="descending")
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


@pytest.mark.parametrize("first", [0, 2])
def test_a_single_full_page_without_the_next_field_is_proven_the_last_not_refused(
        tmp_path: Path, serve: Callable[[OffsetApi], str], first: int) -> None:
    """An API that leaves `next` out when there is no next page (JSON.stringify drops
    undefined), and a poll whose whole walk is one page of exactly the page size: three
    records in all (a first load), or one more after a first load of two (the poll's
    start steps back over the records before it: three again). No answer of the walk had
    the field, so the table failed telling the operator to fix a correct next_path, on
    every such poll. One page one record smaller, asked from the same start, has the field
    (more follow): the field is where next_path looks, and the full page was the last."""
    api = OffsetApi(first or 3, order="desc")
    api.shape = lambda _, __, page: page if page["next"] else {"data": page["data"]}
    url = serve(api)
    if first:
        assert run(tmp_path, url, cursor_order="descending").ok
        api.records[3] = {"id": 3, "updated_at": stamp(3), "qty": 3}
    summary = run(tmp_path, url, cursor_order="descending")
    assert summary.ok, (summary.errors, api.asked)
    assert warehouse(tmp_path) == served(api)
    with Pipeline(config(tmp_path, url)) as pipeline:
        mark = pipeline.state.checkpoint("api", "t")
    assert mark is not None and mark.cursor == T0 + timedelta(seconds=len(api.records))


def test_a_full_page_unproven_because_records_vanished_holds_the_checkpoint(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """The one full page had no next field, and two records were deleted before the
    smaller page proving it the last was answered: that answer (one record of two asked,
    no field) proves nothing. The poll loads its records and keeps the checkpoint where it
    was; the next poll, on one record, moves it."""
    api = OffsetApi(3, order="desc")
    api.shape = lambda _, __, page: page if page["next"] else {"data": page["data"]}
    api.before = lambda a: [a.records.pop(i) for i in (1, 2)] if a.requests == 2 else None
    url = serve(api)
    summary = run(tmp_path, url, cursor_order="descending")
    assert summary.ok, summary.errors
    assert sorted(warehouse(tmp_path)) == [1, 2, 3]
    with Pipeline(config(tmp_path, url)) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is None
    assert run(tmp_path, url, cursor_order="descending").ok
    with Pipeline(config(tmp_path, url)) as pipeline:
        mark = pipeline.state.checkpoint("api", "t")
    assert mark is not None and mark.cursor == T0 + timedelta(seconds=3)


def test_a_process_that_saw_the_next_field_asks_no_proof(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """One process, two polls: the first walks two pages (the first has `next`), so the
    second, one full page without the field, is the last without asking a smaller one."""
    api = OffsetApi(4, order="desc")
    api.shape = lambda _, __, page: page if page["next"] else {"data": page["data"]}
    url = serve(api)
    with Pipeline(config(tmp_path, url, cursor_order="descending")) as pipeline:
        first = pipeline.run_once(raise_on_error=False)
        assert first.ok, first.errors
        assert len(api.asked) == 2, api.asked
        api.records[5] = {"id": 5, "updated_at": stamp(5), "qty": 5}  # answered: 3, 4, 5
        second = pipeline.run_once(raise_on_error=False)
        assert second.ok, second.errors
    assert api.asked[2:] == [(0, 3)], api.asked
    assert warehouse(tmp_path) == served(api)


@pytest.mark.parametrize("count", [1, 2])
def test_a_page_of_one_record_is_proven_with_a_page_of_two(
        tmp_path: Path, serve: Callable[[OffsetApi], str], count: int) -> None:
    """A page size of one cannot be asked smaller: the proof asks two. One record in all
    (no next field: the API leaves it out) is the last; two, and the token elsewhere, is
    refused as before."""
    api = OffsetApi(count, order="desc")
    api.shape = lambda _, __, page: {"data": page["data"], "meta": {"next": page["next"]}}
    url = serve(api)
    summary = run(tmp_path, url, cursor_order="descending", page_size=1)
    if count == 1:
        assert summary.ok, summary.errors
        assert warehouse(tmp_path) == served(api)
    else:
        assert not summary.ok
        assert "next_path" in " ".join(str(e) for e in summary.errors)
        with Pipeline(config(tmp_path, url)) as pipeline:
            assert pipeline.state.checkpoint("api", "t") is None


def test_a_token_walk_whose_tokens_count_records_says_to_page_by_offset(
        tmp_path: Path, serve: Callable[[OffsetApi], str], caplog: pytest.LogCaptureFixture
        ) -> None:
    """A token walk cannot notice a record deleted before a plain offset token (its
    neighbour lands on no page: `pagination: offset` proves each boundary). Tokens that
    are the number of records answered so far look like one: the operator is told once,
    naming the setting; a second run says nothing more."""
    api = OffsetApi(7)
    url = serve(api)
    with caplog.at_level(logging.WARNING, logger="steadyflow"):
        with Pipeline(config(tmp_path, url)) as pipeline:
            for second in (10, 20):
                assert pipeline.run_once(raise_on_error=False).ok
                for i in range(second, second + 7):  # the next walk has 3 pages again
                    api.records[i] = {"id": i, "updated_at": stamp(i), "qty": i}
    told = [r.getMessage() for r in caplog.records if "count records" in r.getMessage()]
    assert len(told) == 1 and "pagination: offset" in told[0], told


class Keyset(OffsetApi):
    """Oldest first, paged by a keyset token: `after=<updated_at>|<id>` of the last record
    served, the filter carried in the token itself (as real cursors do)."""

    def page(self, query: Query) -> Page:
        self.requests += 1
        if self.before is not None:
            self.before(self)
        limit = int(query.get("limit", ["100"])[0])
        at, _, key = query.get("after", ["|0"])[0].partition("|")
        since = query.get("updated_since", [""])[0]
        rows = sorted((r for r in self.records.values() if r["updated_at"] >= since
                       and (r["updated_at"], r["id"]) > (at, int(key))),
                      key=lambda r: (r["updated_at"], r["id"]))[:limit]
        last = f"{rows[-1]['updated_at']}|{rows[-1]['id']}" if rows else None
        return {"data": rows, "next": last if len(rows) == limit else None}


def test_records_deleted_during_a_keyset_token_walk_cost_no_other_record(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """A guard (passes on main too): a token naming a place in the order, not a position,
    is safe against deletions mid-walk, whatever their number, read or not;
    and a record updated mid-walk is met again at its new place (the walk redone)."""
    api = Keyset(12)

    def write(api: OffsetApi) -> None:
        if api.requests == 2:
            for i in (1, 2, 3, 5):  # read on page 1, and one ahead
                del api.records[i]
        if api.requests == 3:
            api.records[4] = {"id": 4, "updated_at": stamp(100), "qty": -4}

    api.before = write
    url = serve(api)
    summary = run(tmp_path, url)
    assert summary.ok, summary.errors
    held = warehouse(tmp_path)
    assert {i: held[i] for i in served(api)} == served(api)


class ById(OffsetApi):
    """Records in id order, paged by a keyset token: `after=<last id read>`."""

    def page(self, query: Query) -> Page:
        self.requests += 1
        if self.before is not None:
            self.before(self)
        limit = int(query.get("limit", ["100"])[0])
        after = int(query.get("after", ["0"])[0])
        since = query.get("updated_since", [""])[0]
        rows = sorted((r for r in self.records.values()
                       if r["updated_at"] >= since and r["id"] > after),
                      key=lambda r: r["id"])[:limit]
        return {"data": rows, "next": str(rows[-1]["id"]) if len(rows) == limit else None}


def test_a_record_updated_behind_a_by_id_walk_arrives(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """An API in id order (no cursor order), a keyset token; while page 2 is asked for,
    record 2 (behind the walk) is updated, then record 10 (ahead of it). The walk read 10's
    new version and the checkpoint moved to its cursor, past record 2's new one, which no
    later run's since reached (ok, every run; no pagination notices it: the record is met
    once). A multi-page walk in no cursor order is walked once more and the checkpoint
    moves to the first walk's high: record 2's new version arrives in the same run."""
    api = ById(12)

    def update(api: OffsetApi) -> None:
        if api.requests == 2:
            api.records[2] = {"id": 2, "updated_at": stamp(100), "qty": -2}
            api.records[10] = {"id": 10, "updated_at": stamp(105), "qty": -10}

    api.before = update
    url = serve(api)
    summary = run(tmp_path, url)
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)
    assert api.requests == 2 * 5  # two walks of four pages and a last, empty one each
    with Pipeline(config(tmp_path, url)) as pipeline:
        mark = pipeline.state.checkpoint("api", "t")
    assert mark is not None and (mark.cursor.second, mark.key) == (45, (10,))  # 105 s


def test_a_one_page_poll_in_no_cursor_order_is_not_walked_twice(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """The settling walk's price falls on walks of several pages only: one answer is one
    read, nothing is written during it (a quiet poll of an API filtering by since)."""
    api = ById(2)
    url = serve(api)
    assert run(tmp_path, url).ok
    assert api.requests == 1
    assert warehouse(tmp_path) == served(api)


def test_an_api_capping_its_pages_with_its_token_elsewhere_is_refused_not_ended(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """An API serving at most 2 records a page whatever `limit` asks (GitHub caps per_page
    at 100 under a page_size of 122,880), newest first, its token where next_path does not
    look: the first answer was short of the page size, taken for the last; the walk ended
    after page 1, the checkpoint moved to the newest record and the 8 older ones were
    behind it for good, run ok. A short answer proves no end now: a page one record
    smaller than answered is asked, full without the field too, so the table fails naming
    next_path, checkpoint unmoved; with next_path set, every record arrives."""
    api = OffsetApi(10, order="desc")
    api.cap = 2
    api.shape = lambda _, __, page: {"data": page["data"],
                                     "meta": {"next_cursor": page["next"]}}
    url = serve(api)
    summary = run(tmp_path, url, cursor_order="descending")
    assert not summary.ok, api.asked
    text = " ".join(str(e) for e in summary.errors)
    assert "next_path" in text and "table=t" in text, text
    assert api.asked == [(0, 3), (0, 1)], api.asked
    with Pipeline(config(tmp_path, url)) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is None
    summary = run(tmp_path, url, cursor_order="descending", next_path="meta.next_cursor")
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)


def test_a_single_short_page_without_the_next_field_is_proven_the_last(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """An API that leaves `next` out when no page follows, and a poll whose records fit
    one page short of the page size: the same answer as a capped API's first page with
    its token elsewhere. The page one record smaller than answered has the field (more
    follow): the short page was the last, the checkpoint moves to its newest record."""
    api = OffsetApi(2, order="desc")
    api.shape = lambda _, __, page: page if page["next"] else {"data": page["data"]}
    url = serve(api)
    summary = run(tmp_path, url, cursor_order="descending")
    assert summary.ok, (summary.errors, api.asked)
    assert api.asked == [(0, 3), (0, 1)], api.asked
    assert warehouse(tmp_path) == served(api)
    with Pipeline(config(tmp_path, url)) as pipeline:
        mark = pipeline.state.checkpoint("api", "t")
    assert mark is not None and mark.cursor == T0 + timedelta(seconds=2)


@pytest.mark.parametrize("cap", [None, 2])
def test_an_api_paging_by_link_headers_is_walked_to_its_end(
        tmp_path: Path, serve: Callable[[OffsetApi], str], cap: int | None) -> None:
    """GitHub-style: no token in the body, each answer's `Link: <url>; rel="next"` names
    the next page's whole URL, the last page has rel="first" only, a list of one page no
    Link header. The header was not read: a full first page was refused naming next_path,
    a capped (short) one taken for the last, 8 of 10 lost, run ok. Now the link is asked
    as written, to the end; the next poll, one page with no Link header at all, is proven
    the last by a page one record smaller (which has rel="next")."""
    api = OffsetApi(10, order="desc")
    api.link, api.cap = True, cap
    url = serve(api)
    summary = run(tmp_path, url, cursor_order="descending")
    assert summary.ok, (summary.errors, api.asked)
    assert warehouse(tmp_path) == served(api)
    api.records[11] = {"id": 11, "updated_at": stamp(11), "qty": 11}
    summary = run(tmp_path, url, cursor_order="descending")
    assert summary.ok, (summary.errors, api.asked)
    assert warehouse(tmp_path) == served(api)
    with Pipeline(config(tmp_path, url)) as pipeline:
        mark = pipeline.state.checkpoint("api", "t")
    assert mark is not None and mark.cursor == T0 + timedelta(seconds=11)


def test_a_link_to_another_origin_is_refused_before_any_request_goes_there(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """The source's headers (its credentials) go with every request: a rel="next" naming
    another host or port is not followed. The table fails naming the link's origin, the
    first page landed, the checkpoint unmoved, and the other server never asked."""
    elsewhere = OffsetApi(0)
    api = OffsetApi(10, order="desc")
    api.link, api.link_origin = True, serve(elsewhere)
    url = serve(api)
    summary = run(tmp_path, url, cursor_order="descending")
    assert not summary.ok
    text = " ".join(str(e) for e in summary.errors)
    assert "Link" in text and api.link_origin in text and "table=t" in text, text
    assert elsewhere.requests == 0
    with Pipeline(config(tmp_path, url)) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is None
