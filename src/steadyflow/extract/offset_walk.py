"""Offset pagination that proves no record slid past a page boundary (`pagination: offset`).

An offset names a position in the API's list as it is NOW. A record deleted (or moved
away by an update) before the position while the walk goes on shifts every later record
one place to the left: the record that stood at the next page's first position now
stands at the previous page's last one, was read on neither, and the chain's high
passes it (lost, every run ok). An offset token is only a number: nothing in it
notices.

So each page is asked from `overlap` records before where the previous one ended, and
those records must come back. Where the walk stands is then known exactly:

    previous page ...  p  q | r  s  t   (E = end; overlap 2: ask from E-2)
    no shift:                p  q  r  s  ...     q found at index 1: new from r
    one deleted before p:       q  r  s  t ...   q found at index 0: r still read
    two deleted before p:          r  s  t ...   neither p nor q: r may have been
                                                 skipped -> `shifted` (walk again)
    one inserted before p:   o  p  q  r  ...     q found at index 2: o read twice

The last record of the previous page still present (the latest of `tail`) anchors the
walk: everything after it in this page is new, everything before it was read (or was
inserted since: a record written during the walk, which the next run's since reads).
A shift by `d < overlap` deletions is absorbed exactly; inserts only re-read records
(fewer than a page between two requests: the anchor is still in the answer); a larger
or unexplainable shift (none of the overlap comes back, an empty page where the overlap
should be, or an order that is not stable) sets `shifted`, and the run walks again from
the same start (run.extract `_unsettled`), failing the poll loudly if every walk shifts.

The walk ends on an answer holding nothing past its anchor, no more than the overlap, and
fewer records than an answer of this walk has held: each page asks for more than the
overlap (`limit`), and the API has shown it serves more, so the list ends there. A short
page is not trusted as the last one (an API capping `limit` below what was asked serves
short pages before the end), so a walk costs one request more than its pages, answered
with the overlap's records only. An API capping its pages at the overlap or fewer (a
per_page maximum of 100 under overlap 100) answered every page with the overlap only: the
next was asked from the same offset, held the same records, and was taken for the end
(newest first: every older record lost, the run ok). So an answer keeps at most one
record fewer than it holds as its tail: such an API moves on a record a request, each
boundary proven by one record fewer. The cost per page is `overlap` records read twice.

What it cannot see: an API whose order changes between requests is noticed only when the
repeated records do not come back in place (likely on every walk with a page of several
records; a shuffled API fails the poll), and records inserted before the position are new
records, read by the next run from its since (as on a keyset walk).

Offsets count every record of the answer, placeable or not (a record without its
cursor still holds a position); it is identified by its (cursor, key...) mark, or by
its JSON text when it has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Identity = tuple[Any, ...]
STALE_PAGES = 3  # answers in a row bringing nothing new before a walk is given up


def identity(record: Any, mark: tuple[Any, ...] | None) -> Identity:
    """What a record is compared by in the overlap: its (cursor, key...) position (so a
    record updated in place, at another position now, does not pass for itself), or its
    JSON text when it cannot be placed."""
    if mark is not None:
        return ("mark", *mark)
    return ("json", json.dumps(record, sort_keys=True, default=str))


@dataclass
class OffsetWalk:
    """Where an offset walk stands: the offset to ask next and the records it must find.

    `asked` is the offset of the request in flight, `offset` the next one's; `tail` the
    identities of the last `overlap` records read, oldest first. `shifted` says why the
    walk can no longer vouch for the records before its position (None while it can).
    """

    overlap: int
    offset: int = 0
    asked: int = 0
    tail: list[Identity] = field(default_factory=list)
    shifted: str | None = None
    stale: int = 0  # answers in a row that brought no record not read before
    served: int = 0  # the most records one answer of this walk held
    brought: int = 0  # records the last answer brought that the walk had not read

    def limit(self, size: int) -> int:
        """The page size to ask for: at least one record past the overlap, so each page
        brings a new record (the adaptive size may shrink below the overlap)."""
        return max(int(size), self.overlap + 1)

    def start(self) -> int:
        """The offset to send now (noted as the one in flight)."""
        self.asked = self.offset
        return self.asked

    def take(self, ids: list[Identity]) -> bool:
        """Take in one answer's records (asked at `asked`); True when the walk has ended.

        The walk ends on an answer holding nothing past its anchor and no more records
        than the overlap (the list ends within it: each page asks for more). An answer
        of already-read records only (inserts before the position pushed them back) is
        walked on from its end. Sets `shifted` (and ends) when the answer holds none of
        the `tail` records it was asked to repeat, or when STALE_PAGES answers in a row
        brought nothing new (an API ignoring `offset_param`, or inserts outrunning the
        walk)."""
        new = ids
        if self.tail:
            where = {ident: i for i, ident in enumerate(ids)}
            anchor = next((i for ident in reversed(self.tail)
                           if (i := where.get(ident)) is not None), None)
            if anchor is None:
                self.shifted = (
                    f"none of the {len(self.tail)} record(s) read last came back at offset "
                    f"{self.asked} ({len(ids)} record(s) answered): at least "
                    f"{len(self.tail)} record(s) before it were deleted (or moved) while "
                    "the walk went on, or the API's order is not stable")
                return True
            new = ids[anchor + 1:]
        self.brought = len(new)
        if not new and (not self.tail or len(ids) <= self.overlap and len(ids) < self.served):
            return True
        self.stale = 0 if new else self.stale + 1
        if self.stale >= STALE_PAGES:
            self.shifted = (
                f"{self.stale} answers in a row (the last at offset {self.asked}) brought "
                "no record the walk had not read: the API ignores the offset parameter, or "
                "records are inserted before the walk's position faster than it pages")
            return True
        self.served = max(self.served, len(ids))
        # the answer's own last records, where they stand now (a record of the old tail
        # may be gone: it must not be counted as a position); one fewer than it holds, so
        # the next offset moves on even when the API serves no more than the overlap
        keep = min(self.overlap, len(ids) - 1)
        self.tail = ids[-keep:] if keep > 0 else []
        self.offset = self.asked + len(ids) - len(self.tail)
        return False
