"""Incremental reconcile: after a clean one, compare what can have changed, and a rolling share.

A full reconcile that finds nothing leaves, per table, its top-level buckets (ranges of the
first bucket dimension, covering every value: the first and last are open-ended) with their
row count and checksum and the time they were verified, plus `since`: the cursor (as the
reconcile's integer: µs, days, the number) from which rows had not been compared, i.e. the
checkpoint's cursor minus the table's lookback (so the row *at* the checkpoint, in flight
then, and rows committed late inside the lookback, are compared next time).

An incremental reconcile then compares, on both sides:
  1. every row whose cursor is at or past `since` (an index range scan on the (cursor, key)
     index extraction keeps): what extraction has loaded since, updates included, as a
     changed row's cursor moves forward;
  2. the buckets that are due: the oldest-verified ceil(buckets × every / period) of them
     (`every` is run.reconcile_every, else the time since the last verification), plus any
     verified longer than the period ago, so every row is compared again within the period
     (run.reconcile_reverify) whatever happened behind the checkpoint: a change without a
     cursor bump, a late commit behind the lookback, a warehouse row lost or damaged.
It costs (changed rows + a share of the table) instead of the table. A result that is not
clean forgets the buckets: the next reconcile is a full one (a difference is reported by
every reconcile until it is repaired, never by one only).

Pure logic; table.py runs the comparisons and the state keeps the buckets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from steadyflow.reconcile.bisect import Scan
from steadyflow.state.store import VerifiedBucket


@dataclass(frozen=True, slots=True)
class Plan:
    """What an incremental reconcile compares: rows with cursor >= since (None: none),
    and these buckets (their [lo, hi) on the first dimension, None unbounded)."""

    since: int | None
    due: tuple[VerifiedBucket, ...]
    buckets: int  # the table's buckets, all of them


def plan(buckets: Sequence[VerifiedBucket], now: float, period: float, every: float
         ) -> Plan | None:
    """The incremental plan, or None when a full reconcile is needed (no clean one yet)."""
    if not buckets:
        return None
    since = buckets[0].since
    last = max(b.verified_at for b in buckets)
    step = every if every > 0 else max(0.0, now - last)
    share = min(len(buckets), max(1, math.ceil(len(buckets) * step / period)))
    oldest = sorted(buckets, key=lambda b: (b.verified_at, b.bucket))
    due = {b.bucket: b for b in oldest[:share]}
    due.update({b.bucket: b for b in buckets if b.verified_at <= now - period})
    return Plan(since, tuple(sorted(due.values(), key=lambda b: b.bucket)), len(buckets))


def layout(scan: Scan, now: float, since: int | None) -> list[VerifiedBucket]:
    """The buckets of a clean full reconcile's top level, covering every value of the first
    dimension (first and last open-ended), with the source side's (rows, checksum)."""
    if scan.top is None:
        return [VerifiedBucket(0, None, None, 0, 0, now, since)]
    lo, hi, width = scan.top
    count = max(1, -(-(hi - lo) // width))
    out = []
    for i in range(count):
        agg = scan.top_aggs.get(i)
        out.append(VerifiedBucket(
            i, None if i == 0 else lo + i * width, None if i == count - 1 else lo + (i + 1) * width,
            agg.rows if agg else 0, agg.terms if agg else 0, now, since))
    return out


def merge(scans: Sequence[Scan]) -> Scan:
    """One Scan of several comparisons (hot rows, due buckets): sizes add up, a key that
    differs in two of them is one difference."""
    out = Scan()
    for s in scans:
        for name in ("buckets", "ranges", "leaves", "rows_compared", "warehouse_rows",
                     "invalid_rows", "leaf_rows"):
            setattr(out, name, getattr(out, name) + getattr(s, name))
        out.differing.update(s.differing)
        out.duplicates.extend(k for k in s.duplicates if k not in out.duplicates)
        out.truncated = out.truncated or s.truncated
    return out
