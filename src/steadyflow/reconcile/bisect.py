"""Bucket, compare, bisect: find the keys that differ between two sides without moving rows.

Pure logic over the `Side` protocol (sides.py implements it with SQL aggregates), so it is
unit-tested with in-memory sides.

A side exposes a table as integer *dimensions* (integer primary-key columns, or the cursor
as an integer, then a 60-bit hash of the key; sides.Dim and table.py say which). A
`Range` fixes the first dimensions to single values (`prefix`) and bounds the next one to
[lo, hi). For a range and a width, a side answers one aggregate query: per sub-bucket
(value - lo) // width, the row count and the sum of row terms (see encoding.py). Equal
(count, sum) → the sub-bucket is taken as equal; different → it is split again (`fanout`
parts), until it holds at most `leaf_rows` rows (or cannot be split), where both sides
return their (key, hash) pairs for the range and the differing keys are read off.

A source row its side flags as invalid (expected in quarantine) is counted apart and left
out of the sums, so a bucket holding only such rows compares equal to the warehouse.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

Key = tuple[Hashable, ...]
BATCH = 64  # ranges asked of a side in one query (aggregates, leaves)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Range:
    prefix: tuple[int, ...]  # values of dimensions 0 .. len(prefix)-1
    lo: int  # dimension len(prefix) >= lo
    hi: int  # dimension len(prefix) < hi

    @property
    def depth(self) -> int:
        return len(self.prefix)

    def split(self, parts: int) -> int:
        """The width that cuts this range into at most `parts` sub-buckets."""
        return max(1, -(-(self.hi - self.lo) // max(1, parts)))

    def sub(self, bucket: int, width: int) -> Range:
        lo = self.lo + bucket * width
        return Range(self.prefix, lo, min(self.hi, lo + width))


@dataclass
class Agg:
    rows: int = 0  # rows taking part in the comparison
    terms: int = 0  # exact sum of their terms
    invalid: int = 0  # source rows flagged invalid (counted, not compared)

    @property
    def total(self) -> int:
        return self.rows + self.invalid

    def same(self, other: Agg) -> bool:
        return self.rows == other.rows and self.terms == other.terms


@dataclass(frozen=True, slots=True)
class Row:
    key: Key  # canonical key, comparable across sides
    raw: tuple[Any, ...]  # the key as this side's driver returned it
    cursor: Any  # canonical cursor value (int for timestamps and integers)
    hash: str
    invalid: bool = False


class Side(Protocol):
    def bounds(self, prefix: tuple[int, ...]) -> tuple[int, int] | None:
        """(min, max) of dimension len(prefix) among rows matching the prefix."""
        ...

    def aggregate(self, rng: Range, width: int) -> dict[int, Agg]:
        """Per non-empty sub-bucket (value - rng.lo) // width of the range."""
        ...

    def leaf(self, rng: Range) -> list[Row]: ...


@dataclass
class Scan:
    """What a comparison saw: sizes for the report and the keys that differ."""

    buckets: int = 0  # top-level buckets holding rows on either side
    ranges: int = 0  # ranges compared by aggregate, all levels
    leaves: int = 0  # ranges compared key by key
    rows_compared: int = 0  # source rows compared (invalid ones excluded)
    warehouse_rows: int = 0
    invalid_rows: int = 0  # source rows flagged invalid
    leaf_rows: int = 0  # (key, hash) pairs fetched, both sides
    differing: dict[Key, tuple[Row | None, Row | None]] = field(default_factory=dict)
    duplicates: list[Key] = field(default_factory=list)  # keys twice on the warehouse side
    # the top level, when it is a range of the first dimension: (lo, hi, width), and the
    # source side's aggregate per top bucket (what an incremental reconcile remembers)
    top: tuple[int, int, int] | None = None
    top_aggs: dict[int, Agg] = field(default_factory=dict)
    truncated: bool = False  # max_differences reached: some differing ranges not resolved

    def count_top(self, at: int, src: Agg, wh: Agg) -> bool:
        """Count one compared top-level bucket (`top_aggs[at]` keeps its source side);
        whether its two sides differ."""
        self.buckets += 1
        self.rows_compared += src.rows
        self.warehouse_rows += wh.rows
        self.invalid_rows += src.invalid
        self.top_aggs[at] = src
        return not src.same(wh)


@dataclass
class Bisector:
    source: Side
    warehouse: Side
    dims: int
    top_width: int | None = None  # fixed top-level width (a day of µs), else top_buckets
    top_buckets: int = 64
    fanout: int = 16
    leaf_rows: int = 256
    parallel: bool = True  # query the two sides concurrently
    # keys kept per pass: memory follows the differences, never the table (a truncated
    # warehouse table has as many as it has rows); past it, the scan stops descending
    max_differences: int = 100_000
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def scan(self) -> Scan:
        if not self.parallel:
            return self._scan()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile") as pool:
            self._pool = pool
            try:
                return self._scan()
            finally:
                self._pool = None

    def _scan(self) -> Scan:
        scan = Scan()
        top = self._top()
        if top is None:
            return scan
        rng, width = top
        if rng.depth == 0:
            scan.top = (rng.lo, rng.hi, width)
        differing: list[tuple[Range, int]] = []
        for bucket, src, wh in self._compare(rng, width, scan):
            if scan.count_top(bucket, src, wh):
                differing.append((rng.sub(bucket, width), max(src.total, wh.rows)))
        self._descend(differing, scan)
        return scan

    def scan_ranges(self, spans: list[tuple[int | None, int | None]]) -> Scan:
        """Compare these ranges of the first dimension ([lo, hi), None: unbounded), each as
        one top-level bucket (`top_aggs` by position in `spans`), all in one query a side."""
        if not self.parallel:
            return self._scan_ranges(spans)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile") as pool:
            self._pool = pool
            try:
                return self._scan_ranges(spans)
            finally:
                self._pool = None

    def _scan_ranges(self, spans: list[tuple[int | None, int | None]]) -> Scan:
        scan = Scan()
        found = [b for b in self._bounds(()) if b]
        if not found or not spans:
            return scan
        first, last = min(b[0] for b in found), max(b[1] for b in found) + 1
        ranges: list[tuple[int, Range, int]] = []
        for i, (lo, hi) in enumerate(spans):
            rng = Range((), first if lo is None else max(lo, first),
                        last if hi is None else min(hi, last))
            if rng.hi > rng.lo:  # open ends clamped to the values both sides hold
                ranges.append((i, rng, rng.hi - rng.lo))
        differing: list[tuple[Range, int]] = []
        for i in range(0, len(ranges), BATCH):
            chunk = ranges[i:i + BATCH]
            compared = self._compare_all([(r, w) for _, r, w in chunk], scan)
            for (pos, _, _), (rng, src_aggs, wh_aggs) in zip(chunk, compared, strict=True):
                src, wh = src_aggs.get(0, Agg()), wh_aggs.get(0, Agg())
                if scan.count_top(pos, src, wh):
                    differing.append((rng, max(src.total, wh.rows)))
        self._descend(differing, scan)
        return scan

    def _full(self, scan: Scan) -> bool:
        if len(scan.differing) >= self.max_differences:
            scan.truncated = True
        return scan.truncated

    def _top(self) -> tuple[Range, int] | None:
        prefix: tuple[int, ...] = ()
        while True:
            found = [b for b in self._bounds(prefix) if b]
            if not found:
                return None
            lo = min(b[0] for b in found)
            hi = max(b[1] for b in found) + 1
            if self.top_width:
                lo -= lo % self.top_width  # align: a bucket is a calendar day (UTC)
                return Range(prefix, lo, hi), self.top_width
            if hi - lo > 1 or len(prefix) + 1 >= self.dims:
                rng = Range(prefix, lo, hi)
                return rng, rng.split(self.top_buckets)
            prefix = (*prefix, lo)  # one value (a store's id in a store's table): go inside

    def _bounds(self, prefix: tuple[int, ...]) -> tuple[tuple[int, int] | None, ...]:
        return self._both(lambda side: side.bounds(prefix))

    def _both(self, ask: Callable[[Side], T]) -> tuple[T, T]:
        """Ask both sides at once: they are different databases, each busy hashing."""
        if self._pool is None:
            return ask(self.source), ask(self.warehouse)
        wh = self._pool.submit(ask, self.warehouse)
        return ask(self.source), wh.result()

    def _compare(self, rng: Range, width: int, scan: Scan) -> Iterator[tuple[int, Agg, Agg]]:
        ((_, src, wh),) = self._compare_all([(rng, width)], scan)
        for bucket in sorted(src.keys() | wh.keys()):
            yield bucket, src.get(bucket, Agg()), wh.get(bucket, Agg())

    def _compare_all(self, ranges: list[tuple[Range, int]], scan: Scan
                     ) -> list[tuple[Range, dict[int, Agg], dict[int, Agg]]]:
        """Aggregate many ranges at once: one round trip per side for a whole level of the
        bisection where the side can (SqlSide.aggregate_many), not one per differing range."""
        def ask(side: Side) -> list[dict[int, Agg]]:
            many = getattr(side, "aggregate_many", None)
            if many is not None:
                return list(many(ranges))
            return [side.aggregate(r, w) for r, w in ranges]

        src, wh = self._both(ask)
        scan.ranges += len(ranges)
        return [(r, a, b) for (r, _), a, b in zip(ranges, src, wh, strict=True)]

    def _descend(self, pending: list[tuple[Range, int]], scan: Scan) -> None:
        """Level by level: split every differing range of a level in one batch, read every
        small one's (key, hash) pairs in one batch."""
        while pending and not self._full(scan):
            leaves: list[Range] = []
            splits: list[tuple[Range, int]] = []
            nxt: list[tuple[Range, int]] = []
            for rng, size in pending:
                if size <= self.leaf_rows:
                    leaves.append(rng)
                elif rng.hi - rng.lo > 1:
                    splits.append((rng, rng.split(self.fanout)))
                elif rng.depth + 1 < self.dims:
                    prefix = (*rng.prefix, rng.lo)
                    found = [b for b in self._bounds(prefix) if b]
                    if found:
                        nxt.append((Range(prefix, min(b[0] for b in found),
                                          max(b[1] for b in found) + 1), size))
                else:
                    leaves.append(rng)  # one value of the last dimension: read it whole
            for i in range(0, len(leaves), BATCH):
                if not self._full(scan):
                    self._leaf(leaves[i:i + BATCH], scan)
            for i in range(0, len(splits), BATCH):
                for rng, src, wh in self._compare_all(splits[i:i + BATCH], scan):
                    width = rng.split(self.fanout)
                    for bucket in sorted(src.keys() | wh.keys()):
                        a, b = src.get(bucket, Agg()), wh.get(bucket, Agg())
                        if not a.same(b):
                            nxt.append((rng.sub(bucket, width), max(a.total, b.rows)))
            pending = nxt

    def _leaf(self, ranges: list[Range], scan: Scan) -> None:
        def ask(side: Side) -> list[Row]:
            many = getattr(side, "leaf_many", None)
            if many is not None:
                return list(many(ranges))
            return [row for r in ranges for row in side.leaf(r)]

        scan.leaves += len(ranges)
        src_rows, wh_rows = self._both(ask)
        scan.leaf_rows += len(src_rows) + len(wh_rows)
        src = {r.key: r for r in src_rows}
        wh: dict[Key, Row] = {}
        for r in wh_rows:
            if r.key in wh:
                scan.duplicates.append(r.key)
            wh[r.key] = r
        for key in src.keys() | wh.keys():
            s, w = src.get(key), wh.get(key)
            if s is not None and s.invalid:
                continue  # expected in quarantine; the warehouse may keep an older version
            if s is not None and w is not None and s.hash == w.hash:
                continue
            scan.differing[key] = (s, w)
