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
        for bucket, src, wh in self._compare(rng, width, scan):
            scan.buckets += 1
            scan.rows_compared += src.rows
            scan.warehouse_rows += wh.rows
            scan.invalid_rows += src.invalid
            scan.top_aggs[bucket] = src
            if not src.same(wh):
                if self._full(scan):
                    continue
                self._descend(rng.sub(bucket, width), max(src.total, wh.rows), scan)
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
        src, wh = self._both(lambda side: side.aggregate(rng, width))
        scan.ranges += 1
        for bucket in sorted(src.keys() | wh.keys()):
            yield bucket, src.get(bucket, Agg()), wh.get(bucket, Agg())

    def _descend(self, rng: Range, size: int, scan: Scan) -> None:
        stack = [(rng, size)]
        while stack and not self._full(scan):
            rng, size = stack.pop()
            if size <= self.leaf_rows:
                self._leaf(rng, scan)
            elif rng.hi - rng.lo > 1:
                width = rng.split(self.fanout)
                for bucket, src, wh in self._compare(rng, width, scan):
                    if not src.same(wh):
                        stack.append((rng.sub(bucket, width), max(src.total, wh.rows)))
            elif rng.depth + 1 < self.dims:
                prefix = (*rng.prefix, rng.lo)
                found = [b for b in self._bounds(prefix) if b]
                if found:
                    stack.append((Range(prefix, min(b[0] for b in found),
                                        max(b[1] for b in found) + 1), size))
            else:
                self._leaf(rng, scan)  # one value of the last dimension: read it whole

    def _leaf(self, rng: Range, scan: Scan) -> None:
        scan.leaves += 1
        src_rows, wh_rows = self._both(lambda side: side.leaf(rng))
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
