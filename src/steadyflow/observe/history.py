"""The status page's short memory: a ring buffer of `status.collect()` snapshots.

State holds totals, not rates: throughput comes from the difference between consecutive
snapshots, and the freshness trend from their sequence.  The snapshots are kept in memory
only, so the buffer starts empty when the server starts; it is bounded to
`HISTORY_SAMPLES`, which keeps memory flat however long the server runs.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

HISTORY_SAMPLES = 150  # 5 minutes at one sample every 2 s


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    rows: dict[str, int]  # table label -> cumulative rows changed in the warehouse
    freshness: dict[str, float | None]


class History:
    """A bounded ring buffer of snapshots; the page's sparklines are computed from it."""

    def __init__(self, maxlen: int = HISTORY_SAMPLES) -> None:
        self._samples: deque[Sample] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, report: dict[str, Any]) -> None:
        sample = Sample(
            at=float(report["at"]),
            rows={t["table"]: int(t.get("rows_changed") or 0) for t in report["tables"]},
            freshness={t["table"]: t["freshness_seconds"] for t in report["tables"]},
        )
        with self._lock:
            self._samples.append(sample)

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)

    def series(self) -> dict[str, Any]:
        """Per-table and pipeline-wide throughput (rows/s) and freshness (s) series."""
        with self._lock:
            samples = list(self._samples)
        labels = list(dict.fromkeys(k for s in samples for k in s.rows))
        throughput: dict[str, list[float | None]] = {k: [] for k in labels}
        freshness: dict[str, list[float | None]] = {
            k: [s.freshness.get(k) for s in samples] for k in labels}
        total: list[float | None] = []
        for prev, cur in zip(samples, samples[1:], strict=False):
            dt = cur.at - prev.at
            step: list[float] = []
            for k in labels:
                if dt <= 0 or k not in cur.rows or k not in prev.rows:
                    throughput[k].append(None)
                    continue
                rate = max(0, cur.rows[k] - prev.rows[k]) / dt
                throughput[k].append(rate)
                step.append(rate)
            total.append(sum(step) if step else None)
        worst = [max((v for v in s.freshness.values() if v is not None), default=None)
                 for s in samples]
        span = samples[-1].at - samples[0].at if len(samples) > 1 else 0.0
        return {"throughput": throughput, "freshness": freshness,
                "total_throughput": total, "max_freshness": worst, "span_seconds": span}
