"""One run's walk along an API's pages, from one resume point (`TokenChain`).

The walk follows the API's next-page tokens (`pagination: token`: the answer's `next_path`
field, else its RFC 8288 `Link: <url>; rel="next"` header, whose URL is asked as written,
on the source's own origin only) or counts positions
itself (`pagination: offset`, extract/offset_walk.py). Either way it keeps every record
past the run's resume point, raises its high as a running maximum, and says when it has
ended, and whether it may have skipped a record on the way (`unsettled`): the checkpoint
moves to its high only at a settled end (run.extract).

Which APIs a token walk is safe on: a token that carries its own filter (a keyset cursor,
`after=<last (cursor, key)>` or `after=<last id>`, or a server-side snapshot) names a
place in the ORDER, not a position: a record deleted before it moves nothing, and a
record updated before it is met again at its new place (a move: `_track`). A plain offset
or page number names a position: a record deleted before it moves its neighbour onto no
page and no token walk can notice; tokens that count records or pages are told to the
operator (`counts_records`, `counts_pages`), an opaque token hiding an offset cannot be.
And in an API in no cursor order (by id, unordered) a record updated behind the walk is
not met again, whatever the pagination: `needs_settling`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steadyflow.errors import FatalError
from steadyflow.extract.offset_walk import STALE_PAGES, OffsetWalk
from steadyflow.model import Watermark
from steadyflow.secrets import scrub

if TYPE_CHECKING:
    from steadyflow.extract.http import HttpPage

MAX_EMPTY_PAGES = 100  # empty pages in a row with new tokens before a chain is refused
MAX_TRACKED_KEYS = 500_000  # keys a chain remembers to notice a record moving mid-walk


@dataclass
class TokenChain:
    """One run's walk along an API's pages (its next-page tokens, or the positions an
    `offsets` walk counts), from one resume point.

    `resume` and `since` are the run's start (the checkpoint, or the lookback's `since`)
    and stay fixed for the whole chain: pages keep every record past them whatever order
    the API serves. `high` is the running maximum over every page read so far; the
    checkpoint may move to it only once `ended` (see `follow`),
    because before that an older record may still be on a later page.
    """

    resume: Watermark | None
    since: Any | None = None
    token: str | None = None
    high: Watermark | None = None
    pages: int = 0
    filled: int = 0  # pages with records
    ended: bool = False
    source: str | None = None
    table: str | None = None
    empty_pages: int = 0  # empty pages in a row, each handing out a new token
    walks: int = 1  # this walk's number from the same resume point in this run
    moved: tuple[Any, ...] | None = None  # the key of a record seen at two positions
    offsets: OffsetWalk | None = None  # `pagination: offset`: steadyflow counts positions
    counted: int = 0  # records answered so far on this walk
    offset_tokens: int = 0  # next tokens that were the count of records so far (-1: not)
    page_tokens: int = 0  # next tokens that were the one before plus one (-1: not)
    rising: bool = True  # every record's cursor at or above the one served before it
    falling: bool = True  # ... at or below
    settles: Watermark | None = None  # a settling walk: the high it moves the checkpoint to
    order: str = "unknown"  # the table's declared cursor_order
    asked: int = 0  # the page size the last request asked for (0: no limit_param sent)
    next_seen: bool = False  # an answer of this walk had the next token's field
    unproven: bool = False  # ended on records, no answer saying whether more follow
    link: bool = False  # `token` is an answer's Link rel="next" URL, asked as it is
    stale: int = 0  # answers of records in a row, each holding only records read before
    _last: Any = field(default=None, repr=False)
    _seen: dict[int, int] = field(default_factory=dict, repr=False)
    _tokens: set[int] = field(default_factory=set, repr=False)  # hashes of tokens handed out
    _unplaced: set[int] = field(default_factory=set, repr=False)  # unplaceable records'

    def _track(self, marks: list[tuple[Any, ...]]) -> None:
        """Note a record met again at another (cursor, key) position: it was updated while
        this chain walked. An API paging by offset or page number then shifted every later
        record by one, and the record at the shift was skipped with a cursor below the
        chain's high: the walk is unsettled (see run.extract: walked again, or the
        checkpoint held). Hashes only, at most MAX_TRACKED_KEYS per chain. Not on an
        offset walk with an overlap: it sees the shift itself (absorbed, or `shifted`),
        and a record met again at its new place is simply read; counting it as unsettled
        walked a busily written API three times a run and never moved its checkpoint."""
        for mark in marks:
            key, where = hash(mark[1:]), hash(mark)
            first = self._seen.get(key)
            if first is None:
                if len(self._seen) < MAX_TRACKED_KEYS:
                    self._seen[key] = where
            elif first != where and self.moved is None:
                self.moved = mark[1:]

    def _brings_news(self, page: HttpPage) -> bool:
        """Does `page` hold a record this walk had not read (at that position)? Call it
        before `_track` takes the page in. A key past MAX_TRACKED_KEYS is not remembered,
        so it counts as new: the check never refuses what it cannot see."""
        news = False
        for ident in page.ids:
            if ident[0] == "mark":
                mark = ident[1:]
                news = news or self._seen.get(hash(mark[1:])) != hash(mark)
            elif (where := hash(ident)) not in self._unplaced:
                news = True
                if len(self._unplaced) < MAX_TRACKED_KEYS:
                    self._unplaced.add(where)
        return news

    def _order(self, marks: list[tuple[Any, ...]], across: bool) -> None:
        """Note whether the API serves its records by cursor, up or down (TypeError: a
        cursor of another type than the ones before: unordered). An offset walk's page
        starts by repeating the previous one's last records: its order is judged within
        pages (each holds more than the overlap)."""
        if not across:
            self._last = None
        for mark in marks:
            if self._last is not None:
                try:
                    if mark[0] < self._last:
                        self.rising = False
                    elif mark[0] > self._last:
                        self.falling = False
                except TypeError:
                    self.rising = self.falling = False
            self._last = mark[0]

    def _no_next_field(self, page: HttpPage, token: str | None) -> None:
        """Mark a walk ending on records `unproven` when no answer of it has said whether
        more follow: neither the next token's field (next_path, null or not) nor a Link
        header naming a page of a list. The walk cannot tell the last page from one whose
        token sits elsewhere (a next_path the API does not use, a cursor in `meta`).
        Ended there, a newest-first API lost every older record for good, each run ok.
        A page shorter than asked proves nothing either: APIs cap the page size (GitHub
        at 100, whatever `limit` says), so the first answer of such an API with its token
        elsewhere was short, taken for the last, and the walk ended after page 1. An API
        that leaves the field out only on its last page had it on the ones before; one
        that leaves it out on a walk's only page answers a smaller page with it. So the
        caller asks one page a record smaller than answered (run.extract: `unproven`
        holds the checkpoint until then, or refuses with `no_next_field`). Proven without
        a request: an empty answer, no `limit_param` (the table says the API has no
        pages), and one record answered for more asked (a cap of one record a page is
        taken for none: no smaller page can be asked)."""
        self.next_seen = self.next_seen or page.next_field
        self.unproven = not (token is not None or self.next_seen or not self.asked
                             or page.records == 0 or page.records == 1 < self.asked)

    def no_next_field(self, probe: int, answered: int) -> FatalError:
        """The refusal of an unproven walk whose smaller page (`probe` records asked,
        `answered` answered) was full and had no next field either: the token is not where
        next_path looks."""
        return FatalError(
            f"the API answered {self.counted} record(s) for a page of {self.asked}, and "
            f"{answered} for a page of {probe}, and no answer had the next-page token's field "
            "(next_path) or a Link header: the walk cannot tell whether more pages follow "
            "(an API capping its page size answers short pages before its end); the "
            "checkpoint stays where it was", stage="extract", source=self.source,
            table=self.table,
            hint="set the table's next_path to where the API puts its next-page token "
                 "(use pagination: offset if the API takes an offset), or limit_param: "
                 "null if the API has no pages")

    @property
    def needs_settling(self) -> bool:
        """This walk's high may pass a record updated while it walked, unseen.

        An API not ordered by cursor (by id, unordered) keeps an updated record in its
        place: one the walk had passed is not met again, and a record ahead updated later
        raises the high above its new cursor, so the checkpoint moved past it (lost, every
        run ok). Ordered by cursor it is safe: ascending, the record moves ahead and is
        read (or met twice: `moved`); descending, it moves behind, above every cursor
        ahead. A walk with one page of records is one answer: nothing is written during
        it (an empty last page adds nothing; an offset walk's closing answer, the
        overlap only, reads nothing new). Rising cursors do not prove the order: an API
        by id whose records were written in id order serves them rising, and a record
        updated in place behind the walk (the one that matters) is never seen; so the
        order is trusted only where the table declares it (`cursor_order`) and every
        page kept it. Otherwise a walk of several pages of records is walked once more
        from the same start, and the checkpoint moves only to the FIRST walk's high
        (`settles`): whatever was updated during the first walk is read by the second,
        whatever during the second has a cursor above the first's high, for the next
        run."""
        return (self.settles is None and self.filled > 1
                and not (self.order == "ascending" and self.rising)
                and not (self.order == "descending" and self.falling))

    @property
    def shifted(self) -> str | None:
        """Why an offset walk can no longer vouch for the records before its position."""
        return self.offsets.shifted if self.offsets is not None else None

    @property
    def counts_records(self) -> bool:
        """Every next token of this walk (two at least) was the number of records answered
        before it: likely a plain offset, which a record deleted during the walk shifts
        (its neighbour on no page) and `pagination: offset` makes safe (a keyset token of
        ids numbered 1, 2, 3... looks the same: hence only a warning)."""
        return self.offset_tokens >= 2

    @property
    def counts_pages(self) -> bool:
        """Every next token (two at least) was the one before plus one: a page number, as
        blind to a record deleted during the walk as an offset, and no overlap can be
        asked of it."""
        return self.page_tokens >= 2 and not self.counts_records

    @property
    def unsettled(self) -> bool:
        """The walk may have skipped a record (or not proven it read the last page): the
        checkpoint must not move to its high."""
        return self.moved is not None or self.shifted is not None or self.unproven

    def follow(self, page: HttpPage) -> None:
        """Take in a parsed page: raise the high, keep its token, or end the chain.

        The chain ends on a null or empty ("" as Slack's next_cursor) token, or on an empty
        page handing back the token it was asked with. An empty page with a NEW token is
        followed: APIs that filter after paging (or skip deleted rows) serve empty pages
        before the end, and ending there moved the checkpoint past every record on the
        later pages (a newest-first API's older records: lost). A page with records that
        hands back the token it was asked with would be served again for ever: refused,
        as are a token handed out before in this walk (tokens going round in a circle:
        the same pages for ever), more than MAX_EMPTY_PAGES empty pages in a row, and
        STALE_PAGES answers in a row holding only records the walk had read, each with a
        new token: an API that does not read the token where next_param sends it serves
        its first page again and again, and one minting a fresh token per answer (a
        signed or timestamped cursor) passed every token check: the run never ended. An
        offset walk ends, and moves on, where OffsetWalk.take says.
        """
        self.pages += 1
        self.filled += 1 if page.records and self.offsets is None else 0
        news = self.offsets is not None or self._brings_news(page)
        if self.offsets is None or not self.offsets.overlap:  # the overlap proves shifts
            self._track(page.marks)
        self._order(page.marks, across=self.offsets is None)
        if page.high is not None and self.settles is None and (
                self.high is None or page.high.as_tuple() > self.high.as_tuple()):
            self.high = page.high
        if self.offsets is not None:  # its end and next position: OffsetWalk.take
            self.ended = self.offsets.take(page.ids)
            if self.ended and self.offsets.shifted is None and page.next_token:
                raise FatalError(
                    f"the offset walk reached an answer that ends the list (at offset "
                    f"{self.offsets.asked}, {page.records} record(s), none new) while the "
                    f"API says more follow (next: {scrub(page.next_token)[:40]!r}): it serves "
                    "pages shorter than asked before its end (filtering after paging?), and "
                    "positions it does not show cannot be counted; the checkpoint stays "
                    "where it was", stage="extract", source=self.source, table=self.table,
                    hint="use the API's own next-page token (pagination: token); if `next` "
                         "means nothing here, set next_path to a field the API does not send")
            # an answer of records read before only (the closing overlap) reads nothing
            self.filled += 1 if self.offsets.brought else 0
            return
        sent, token = self.token, page.next_token or None
        self.counted += page.records
        if token is not None and self.offset_tokens >= 0:
            self.offset_tokens = self.offset_tokens + 1 if token == str(self.counted) else -1
        if token is not None and self.page_tokens >= 0:
            follows = sent is None or (sent.isdigit() and token == str(int(sent) + 1))
            self.page_tokens = self.page_tokens + 1 if token.isdigit() and follows else -1
        if token is not None and token == sent:
            if page.records > 0:
                raise FatalError(
                    f"the API handed back the next-page token it was asked with "
                    f"({scrub(sent)[:40]!r}) on a page with records: following it would "
                    "read that page for ever",
                    stage="extract", source=self.source, table=self.table,
                    hint="check the table's next_param and next_path: the token must be "
                         "sent back in the parameter the API reads it from")
            token = None
        if token is not None and hash(token) in self._tokens:
            raise FatalError(
                f"the API handed out a next-page token it had handed out before in this walk "
                f"({scrub(token)[:40]!r}, page {self.pages}): following it would read the "
                "same pages for ever; the checkpoint stays where it was",
                stage="extract", source=self.source, table=self.table,
                hint="the API's tokens go round in a circle (a token cache or a failover "
                     "resetting its cursor?); page it by offset (pagination: offset) if it "
                     "takes one")
        self.stale = self.stale + 1 if page.records and not news else 0
        if token is not None and self.stale >= STALE_PAGES:
            raise FatalError(
                f"{self.stale} answers in a row (the last on page {self.pages}) held only "
                "records this walk had read, each with a new next-page token: the API "
                "does not read the token where it is sent (next_param), so its tokens "
                "would be followed for ever over the same records; the checkpoint stays "
                "where it was", stage="extract", source=self.source, table=self.table,
                hint="set the table's next_param to the query parameter the API reads its "
                     "next-page token from")
        if token is not None:
            self._tokens.add(hash(token))
        self.link = token is not None and page.next_link
        self._no_next_field(page, token)
        self.empty_pages = self.empty_pages + 1 if page.records == 0 and token else 0
        if self.empty_pages > MAX_EMPTY_PAGES:
            raise FatalError(
                f"{self.empty_pages} empty pages in a row, each with a new next-page token: "
                "the chain may never end; the checkpoint stays where it was",
                stage="extract", source=self.source, table=self.table,
                hint="check the table's next_path: it must be null or absent on the last page")
        self.token = token
        self.ended = token is None
