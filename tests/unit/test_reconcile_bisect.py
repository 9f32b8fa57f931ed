"""Bucketing and bisection (reconcile/bisect.py) against in-memory sides.

The sides below answer the same three questions the SQL sides answer (bounds, per-bucket
count + sum of terms, and (key, hash) pairs for a small range), from a Python list, and count
what they were asked, so the tests check both *what* is found and *how little* is read.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import random
from dataclasses import dataclass, field

import pytest

from steadyflow.reconcile.bisect import Agg, Bisector, Range, Row

DAY = 86_400_000_000


@dataclass
class Item:
    dims: tuple[int, ...]
    content: str
    invalid: bool = False

    @property
    def key(self) -> tuple[int, ...]:
        return self.dims[-2:] if len(self.dims) > 2 else self.dims

    @property
    def hash(self) -> str:
        return _md5(f"{self.dims}|{self.content}")


@functools.cache
def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()[:16]


@dataclass
class MemorySide:
    items: list[Item]
    aggregates: int = 0
    leaves: int = 0
    pairs: int = 0
    widths: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.items = sorted(self.items, key=lambda i: i.dims)
        self._dims = [i.dims for i in self.items]

    def _slice(self, prefix: tuple[int, ...], lo: float, hi: float) -> list[Item]:
        """Items with dims[:len(prefix)] == prefix and lo <= dims[len(prefix)] < hi."""
        start = bisect.bisect_left(self._dims, (*prefix, lo))
        end = bisect.bisect_left(self._dims, (*prefix, hi))
        return self.items[start:end]

    def _range(self, rng: Range) -> list[Item]:
        return self._slice(rng.prefix, rng.lo, rng.hi)

    def bounds(self, prefix: tuple[int, ...]) -> tuple[int, int] | None:
        found = self._slice(prefix, -math.inf, math.inf)
        values = [i.dims[len(prefix)] for i in found]
        return (min(values), max(values)) if values else None

    def aggregate(self, rng: Range, width: int) -> dict[int, Agg]:
        self.aggregates += 1
        self.widths.append(width)
        out: dict[int, Agg] = {}
        for item in self._range(rng):
            agg = out.setdefault((item.dims[rng.depth] - rng.lo) // width, Agg())
            if item.invalid:
                agg.invalid += 1
            else:
                agg.rows += 1
                agg.terms += int(item.hash[:15], 16)
        return out

    def leaf(self, rng: Range) -> list[Row]:
        self.leaves += 1
        rows = [Row(key=i.key, raw=i.key, cursor=None, hash=i.hash, invalid=i.invalid)
                for i in self._range(rng)]
        self.pairs += len(rows)
        return rows


def table(n: int, stores: int = 1) -> list[Item]:
    return [Item((1 + i % stores, i), f"row {i}") for i in range(n)]


def run(src: list[Item], wh: list[Item], dims: int = 2, **kw: int) -> tuple[
        object, MemorySide, MemorySide]:
    s, w = MemorySide(src), MemorySide(wh)
    return Bisector(s, w, dims, **kw).scan(), s, w


def test_range_split_and_sub() -> None:
    r = Range((), 10, 110)
    assert r.split(16) == 7
    assert r.sub(0, 7) == Range((), 10, 17)
    assert r.sub(14, 7) == Range((), 108, 110)  # the last bucket is cut at hi
    assert Range((1,), 5, 6).split(16) == 1


def test_equal_tables_cost_one_aggregate_per_side() -> None:
    rows = table(10_000)
    scan, s, w = run(rows, list(rows))
    assert scan.differing == {} and scan.leaves == 0
    assert scan.rows_compared == scan.warehouse_rows == 10_000
    assert scan.buckets == 64 and scan.ranges == 1
    assert s.aggregates == w.aggregates == 1


def test_finds_exactly_missing_extra_and_changed_keys_reading_few_pairs() -> None:
    rng = random.Random(7)
    rows = table(40_000)
    wh = [Item(i.dims, i.content) for i in rows]
    missing = {wh.pop(rng.randrange(len(wh))).key for _ in range(5)}
    changed = set()
    for _ in range(5):
        i = rng.randrange(len(wh))
        wh[i] = Item(wh[i].dims, "corrupted")
        changed.add(wh[i].key)
    extra = {(1, 200_000 + n) for n in range(3)}
    wh += [Item(k, "ghost") for k in extra]
    scan, s, w = run(rows, wh)
    assert set(scan.differing) == missing | changed | extra
    for key in missing:
        assert scan.differing[key][1] is None
    for key in extra:
        assert scan.differing[key][0] is None
    for key in changed:
        src_row, wh_row = scan.differing[key]
        assert src_row is not None and wh_row is not None and src_row.hash != wh_row.hash
    # 13 differing keys in 40,000 rows: a few hundred (key, hash) pairs, not the table
    assert scan.leaf_rows < 13 * 2 * 256
    assert s.pairs + w.pairs == scan.leaf_rows


def test_invalid_source_rows_neither_differ_nor_cause_bisection() -> None:
    rows = table(5_000)
    for i in range(0, 5_000, 97):
        rows[i].invalid = True  # the pipeline quarantined them: not in the warehouse
    wh = [Item(i.dims, i.content) for i in rows if not i.invalid]
    scan, s, _ = run(rows, wh)
    assert scan.differing == {} and scan.ranges == 1 and scan.leaves == 0
    assert scan.invalid_rows == len(range(0, 5_000, 97))
    assert scan.rows_compared == len(wh)


def test_invalid_source_row_with_an_older_warehouse_version_is_not_a_difference() -> None:
    rows = table(1_000)
    wh = [Item(i.dims, i.content) for i in rows]
    rows[10] = Item(rows[10].dims, "now broken", invalid=True)  # last valid version loaded
    wh[20] = Item(wh[20].dims, "corrupted")
    scan, _, _ = run(rows, wh)
    assert set(scan.differing) == {rows[20].key}


def test_single_store_prefix_is_entered_before_bucketing() -> None:
    """(store_id, sale_id) with one store_id: buckets split sale_id, not the one store."""
    rows = [Item((7, i), f"r{i}") for i in range(3_000)]
    wh = [Item(i.dims, i.content) for i in rows]
    wh[1234] = Item(wh[1234].dims, "x")
    scan, s, _ = run(rows, wh)
    assert scan.buckets == 64
    assert set(scan.differing) == {(7, 1234)}


def test_several_stores_bisect_into_the_second_dimension() -> None:
    rows = table(20_000, stores=4)
    wh = [Item(i.dims, i.content) for i in rows]
    del wh[9_999]
    scan, _, _ = run(rows, wh, leaf_rows=64)
    assert set(scan.differing) == {rows[9_999].key}
    assert scan.buckets == 4 and scan.leaf_rows <= 2 * 64


def test_a_single_value_with_many_rows_is_read_whole() -> None:
    """Cursor ties: one dimension value holds more rows than a leaf; it cannot be split."""
    rows = [Item((5, i), f"r{i}") for i in range(1_000)]
    wh = [Item(i.dims, i.content) for i in rows[:-1]]
    scan, _, _ = run(rows, wh, dims=1, leaf_rows=10)
    assert set(scan.differing) == {rows[-1].key}
    assert scan.leaf_rows == 1_999


def test_day_buckets_are_aligned_to_utc_days() -> None:
    base = -3 * DAY - 3_600_000_000 + 5  # 23:00 (+5 µs), before the epoch: negatives align
    rows = [Item((base + i * 3_600_000_000, i), f"r{i}") for i in range(24 * 5)]
    wh = [Item(i.dims, i.content) for i in rows]
    wh[30] = Item(wh[30].dims, "x")
    scan, s, _ = run(rows, wh, dims=2, top_width=DAY)
    assert s.widths[0] == DAY
    assert scan.buckets == 6  # 120 hours from 23:00 touch six days
    assert set(scan.differing) == {rows[30].key}


def test_empty_sides() -> None:
    scan, s, w = run([], [])
    assert scan.buckets == 0 and scan.differing == {} and s.aggregates == 0
    rows = table(10)
    scan, _, _ = run([], rows)
    assert set(scan.differing) == {r.key for r in rows}


def test_duplicate_warehouse_keys_are_reported() -> None:
    rows = table(500)
    wh = [Item(i.dims, i.content) for i in rows] + [Item(rows[42].dims, rows[42].content)]
    scan, _, _ = run(rows, wh)
    assert scan.duplicates == [rows[42].key]


@pytest.mark.parametrize("seed", range(20))
def test_random_differences_are_all_found(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(1, 3_000)
    stores = rng.randrange(1, 4)
    rows = [Item((1 + rng.randrange(stores), rng.randrange(10 * n)), str(rng.random()))
            for _ in range(n)]
    rows = list({i.key: i for i in rows}.values())
    wh = []
    expected = set()
    for item in rows:
        roll = rng.random()
        if roll < 0.02:
            expected.add(item.key)  # missing
        elif roll < 0.04:
            wh.append(Item(item.dims, "changed"))
            expected.add(item.key)
        else:
            wh.append(Item(item.dims, item.content))
    for _ in range(rng.randrange(5)):
        ghost = Item((1 + rng.randrange(stores), 10 * n + rng.randrange(n)), "ghost")
        if ghost.key not in {i.key for i in rows} | {i.key for i in wh}:
            wh.append(ghost)
            expected.add(ghost.key)
    scan, _, _ = run(rows, wh, top_buckets=rng.choice([1, 8, 64]),
                     fanout=rng.choice([2, 4, 16]), leaf_rows=rng.choice([1, 16, 256]))
    assert set(scan.differing) == expected


def test_differences_kept_per_pass_are_capped() -> None:
    """A warehouse missing every row (a truncated table) keeps at most max_differences keys
    (plus one batch of leaves) and says it is truncated: memory follows the cap, not the
    table; under the cap, every difference is found and nothing is truncated."""
    src = table(5_000)
    scan, _, _ = run(src, [], max_differences=100, leaf_rows=16)
    assert scan.truncated and 100 <= len(scan.differing) < 100 + 64 * 16
    scan, _, _ = run(src, src[:4_900], max_differences=100, leaf_rows=16)
    assert not scan.truncated and len(scan.differing) == 100
