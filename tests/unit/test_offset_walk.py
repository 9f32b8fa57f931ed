"""OffsetWalk (extract/offset_walk.py): where an offset walk stands after each answer, and
when it can no longer vouch for the records before its position. Lists of letters stand
for the API's list as it is at each request; each case replays the walk by hand."""

from __future__ import annotations

from steadyflow.extract.chain import TokenChain
from steadyflow.extract.http import parse_records
from steadyflow.extract.offset_walk import Identity, OffsetWalk
from steadyflow.model import Column, Contract


def ids(text: str) -> list[Identity]:
    return [("mark", c) for c in text]


def answer(walk: OffsetWalk, records: str, limit: int) -> bool:
    """The API's answer to the walk's next request, `records` being its list now."""
    offset = walk.start()
    return walk.take(ids(records[offset:offset + walk.limit(limit)]))


def test_a_quiet_list_is_walked_with_the_overlap_and_one_closing_request() -> None:
    walk, seen = OffsetWalk(2), []
    while True:
        seen.append(walk.offset)
        if answer(walk, "abcdefghij", 4):
            break
    assert seen == [0, 2, 4, 6, 8] and walk.shifted is None


def test_fewer_deletions_than_the_overlap_are_absorbed_exactly() -> None:
    walk = OffsetWalk(3)
    assert not answer(walk, "abcdefghij", 5)  # abcde; asks from 2 next
    assert walk.offset == 2
    assert not answer(walk, "bdefghij", 5)  # a and c deleted: efghi, e read before
    assert walk.shifted is None and walk.tail == ids("ghi")
    assert walk.offset == 4  # g h i stand at 4 5 6 now


def test_a_deleted_last_record_is_anchored_on_the_one_before() -> None:
    walk = OffsetWalk(2)
    answer(walk, "abcdef", 3)  # abc
    assert not answer(walk, "abdef", 3)  # c deleted: bde, b is the anchor
    assert walk.shifted is None and walk.tail == ids("de")


def test_as_many_deletions_as_the_overlap_lose_the_place() -> None:
    walk = OffsetWalk(2)
    answer(walk, "abcdefgh", 4)  # abcd
    assert answer(walk, "cdefgh", 4)  # a b deleted: from 2, efgh: neither c nor d
    assert walk.shifted is not None and "at offset 2" in walk.shifted


def test_inserts_only_repeat_records() -> None:
    walk = OffsetWalk(2)
    answer(walk, "bcdefgh", 4)  # bcde
    assert not answer(walk, "abcdefgh", 4)  # a inserted: from 2, cdef: c read twice
    assert walk.shifted is None and walk.tail == ids("ef") and walk.offset == 4


def test_an_empty_answer_where_the_overlap_should_be_loses_the_place() -> None:
    walk = OffsetWalk(1)
    answer(walk, "abc", 3)
    assert answer(walk, "", 3)
    assert walk.shifted is not None


def test_no_overlap_checks_nothing() -> None:
    walk = OffsetWalk(0)
    assert not answer(walk, "abcdef", 3)
    assert walk.offset == 3
    assert not answer(walk, "bcdef", 3)  # a deleted: d skipped, unseen (overlap 0)
    assert walk.shifted is None
    assert answer(walk, "bcdef", 3)


def test_each_page_asks_for_at_least_one_record_past_the_overlap() -> None:
    assert OffsetWalk(2).limit(1) == 3
    assert OffsetWalk(2).limit(50) == 50


def test_a_full_page_of_records_read_before_is_walked_on() -> None:
    """Inserts before the position pushed a whole answer back onto records already read:
    not the end (the old rule, 'nothing new', ended the walk there, g and h unread)."""
    walk = OffsetWalk(2)
    answer(walk, "cdefgh", 4)  # cdef
    assert not answer(walk, "abcdefgh", 4)  # from 2: cdef, nothing new, a full page
    assert not answer(walk, "abcdefgh", 4)  # from 4: efgh
    assert walk.tail == ids("gh")
    assert answer(walk, "abcdefgh", 4)  # from 6: gh, the overlap only: the end


def test_an_api_ignoring_the_offset_is_given_up() -> None:
    walk = OffsetWalk(2)
    answer(walk, "abcdefgh", 4)
    for _ in range(2):  # the first page again, whatever the offset
        walk.start()
        assert not walk.take(ids("abcd"))
    walk.start()
    assert walk.take(ids("abcd"))
    assert walk.shifted is not None and "ignores the offset" in walk.shifted


CONTRACT = Contract((Column("id", "int64", nullable=False), Column("at", "int64")),
                    ("id",), "at")


def walk_tokens(tokens: list[str | None], per_page: int = 3) -> TokenChain:
    """A token walk answered `per_page` records a page with these next tokens."""
    chain, n = TokenChain(None), 0
    for token in tokens:
        records = [{"id": n + i, "at": n + i} for i in range(per_page)]
        n += per_page
        chain.follow(parse_records(CONTRACT, records, token))
    return chain


def test_tokens_counting_records_or_pages_are_told_apart_from_keyset_tokens() -> None:
    assert walk_tokens(["3", "6", None]).counts_records  # plain offsets
    assert not walk_tokens(["3", "6", None]).counts_pages
    assert walk_tokens(["2", "3", None]).counts_pages  # page numbers
    assert not walk_tokens(["3", None]).counts_records  # one token tells nothing
    for keyset in (["a3", "a6", None], ["5", "9", None], ["eyJvIjozfQ", "eyJvIjo2fQ", None]):
        chain = walk_tokens(keyset)
        assert not chain.counts_records and not chain.counts_pages, keyset


def walk_cursors(pages: list[list[int]], order: str = "unknown") -> TokenChain:
    """A token walk whose pages serve records with these cursors (ids in order), on a
    table declaring `cursor_order: order`."""
    chain, n = TokenChain(None, order=order), 0
    for i, cursors in enumerate(pages):
        records = [{"id": n + j, "at": at} for j, at in enumerate(cursors)]
        n += len(cursors)
        chain.follow(parse_records(CONTRACT, records, None if i == len(pages) - 1 else f"t{i}"))
    return chain


def test_only_a_multi_page_walk_in_no_cursor_order_needs_settling() -> None:
    assert not walk_cursors([[1, 2, 2], [3, 5, 9]], "ascending").needs_settling
    assert not walk_cursors([[9, 5, 5], [3, 2, 1]], "descending").needs_settling
    assert walk_cursors([[9, 5, 5], [3, 2, 1]], "ascending").needs_settling  # not as told
    assert walk_cursors([[1, 2, 3], [2, 5, 9]]).needs_settling  # by id: 3 then 2
    assert walk_cursors([[4, 1, 3], [2]]).needs_settling
    # cursors that happen to rise prove no order: an API by id whose records were written
    # in id order serves them so, and one updated in place behind the walk is not met again
    assert walk_cursors([[1, 2, 2], [3, 5, 9]]).needs_settling
    assert not walk_cursors([[4, 1, 3]]).needs_settling  # one answer: nothing written during
    assert not walk_cursors([[4, 1, 3], []]).needs_settling  # and an empty last page


def test_an_api_serving_no_more_than_the_overlap_is_walked_to_its_end() -> None:
    """An API capping its pages at the overlap (2): each answer was the overlap only, the
    next was asked from the same offset and taken for the list's end after 2 records. An
    answer of no more than the overlap keeps one record fewer as its tail."""
    walk, seen, read = OffsetWalk(2), [], []
    while True:
        offset = walk.start()
        got = ids("abcdef"[offset:offset + 2])  # at most 2, whatever the limit
        read += got
        seen.append(offset)
        if walk.take(got):
            break
    assert set(read) == set(ids("abcdef")) and walk.shifted is None
    assert seen == [0, 1, 2, 3, 4, 5]


def test_an_offset_walk_of_one_page_and_its_closing_answer_is_not_walked_twice() -> None:
    """The closing answer of an offset walk repeats the overlap only: it reads nothing, so
    a one-page walk in an unknown order (a quiet poll) is one read, not walked again; a
    second answer bringing a record is a second read."""
    def offset_walk(lists: list[list[int]]) -> TokenChain:
        chain = TokenChain(None, offsets=OffsetWalk(2))
        for cursors in lists:
            records = [{"id": i, "at": at} for i, at in enumerate(cursors)]
            chain.follow(parse_records(CONTRACT, records[chain.offsets.start():]))
        return chain
    assert not offset_walk([[4, 1, 3], [4, 1, 3]]).needs_settling
    assert offset_walk([[4, 1, 3], [4, 1, 3, 2]]).needs_settling
