"""The freshness budget of a traced spike run (bench/budget_trace/sitecustomize.py).

    bench/.venv/bin/python bench/budget.py /tmp/t.jsonl [--from 0 --to 40]

Per batch, its new rows' commit time is estimated as the middle of the cursor range they
span (from the table's previous batch's newest cursor, or the batch's oldest, to its own
newest: a re-read row's old cursor is not a new row's wait), and every stage is weighted by
the batch's rows: commit -> poll start (cadence, the poll pool) -> page read -> landed
(Parquet written and fsynced) -> buffered (manifest entry, queue, checkpoint) -> the loader
got it (waiting behind earlier groups) -> merge transaction -> acked. `--from/--to`: only
batches published that many seconds after the first. Also: polls per table per second,
the warehouse transactions' busy share of the wall time (above 1: lanes overlapped),
per-part merge times by path and the state commits' times.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from typing import Any

STAGES = ("commit -> poll start", "poll start -> page read", "read -> landed",
          "landed -> buffered", "buffered -> loader got", "got -> merge start",
          "merge transaction", "merge end -> acked", "TOTAL commit -> acked")


def weighted(pairs: list[tuple[float, int]], q: float) -> float:
    pairs = sorted(pairs)
    total, seen = sum(w for _, w in pairs), 0
    for value, weight in pairs:
        seen += weight
        if seen >= q * total:
            return value
    return pairs[-1][0]


def read(path: str) -> dict[str, Any]:
    trace: dict[str, Any] = {"pub": {}, "get": {}, "done": {}, "commit": {}, "poll": [],
                             "group": [], "part": [], "state": defaultdict(list), "cpu": [],
                             "step": defaultdict(list), "late": []}
    with open(path) as lines:
        for line in lines:
            event = json.loads(line)
            kind = event[0]
            if kind == "pub":
                trace["pub"][event[2]] = event
            elif kind == "get":
                trace["get"].setdefault(event[1], event)
            elif kind == "done":
                trace["done"][event[1]] = event
            elif kind == "commit":
                for batch_id in event[1]:
                    trace["commit"][batch_id] = event
            elif kind in ("poll", "group", "part", "cpu"):
                trace[kind].append(event)
            elif kind == "state":
                trace["state"][event[1]].append((event[2], event[3] - event[2]))
            elif kind == "step":
                trace["step"][event[1]].append((event[2], event[3] - event[2]))
            elif kind == "late":
                trace["late"].append(event)
    return trace


def commit_times(pub: dict[str, Any]) -> dict[str, float]:
    """A batch's new rows' mean commit time (module docstring)."""
    newest: dict[str, float] = {}
    estimate = {}
    for batch_id, event in sorted(pub.items(), key=lambda kv: kv[1][8]):
        label, lo, hi = event[1], event[4], event[5]
        if lo is None:
            continue
        estimate[batch_id] = (max(lo, newest.get(label, lo)) + hi) / 2
        newest[label] = max(hi, newest.get(label, hi))
    return estimate


def budget(trace: dict[str, Any], start: float | None, end: float | None) -> None:
    pub, get, done, commit = trace["pub"], trace["get"], trace["done"], trace["commit"]
    estimate = commit_times(pub)
    first = min(e[8] for e in pub.values())
    stages: dict[str, list[tuple[float, int]]] = {s: [] for s in STAGES}
    for batch_id, event in pub.items():
        _, _, _, rows, _, _, _, poll, published, landed, buffered = event
        if (batch_id not in estimate or batch_id not in done or batch_id not in get
                or batch_id not in commit or poll is None or landed is None):
            continue
        if start is not None and not start <= published - first < (end or 1e18):
            continue
        committed, got, acked = estimate[batch_id], get[batch_id][3], done[batch_id][3]
        merge = commit[batch_id]
        values = (poll - committed, published - poll, landed - published, buffered - landed,
                  got - buffered, merge[2] - got, merge[3] - merge[2], acked - merge[3],
                  acked - committed)
        for stage, value in zip(STAGES, values, strict=True):
            stages[stage].append((value, rows))
    counted = stages[STAGES[0]]
    print(f"batches {len(counted)}, rows {sum(w for _, w in counted)}"
          + (f", published {start}-{end} s" if start is not None else ""))
    cpu_per_row(trace, first + (start or 0.0), first + end if end is not None else None)
    for stage in STAGES:
        pairs = stages[stage]
        if pairs:
            mean = sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
            print(f"  {stage:26s} mean {mean * 1000:7.0f} ms  p50 "
                  f"{weighted(pairs, 0.5) * 1000:7.0f}  p95 {weighted(pairs, 0.95) * 1000:7.0f}")


def cpu_per_row(trace: dict[str, Any], start: float, end: float | None) -> None:
    """The process's CPU (user + system, sampled every 2 s) over the window, per 1,000 rows
    published in it: comparable between runs where wall times are not (a shared machine)."""
    samples = sorted(tuple(event[1:]) for event in trace["cpu"])
    inside = [s for s in samples if start <= s[0] and (end is None or s[0] <= end)]
    if len(inside) < 2:
        return
    (t0, u0, s0), (t1, u1, s1) = inside[0], inside[-1]
    rows = sum(e[3] for e in trace["pub"].values() if t0 <= e[8] < t1)
    if rows:
        print(f"  CPU {(u1 - u0 + s1 - s0) / (t1 - t0) * 100:.0f}% of a core, per 1,000 rows "
              f"published {(u1 - u0 + s1 - s0) / rows * 1e6:.1f} ms (user "
              f"{(u1 - u0) / rows * 1e6:.1f}, system {(s1 - s0) / rows * 1e6:.1f}), over "
              f"{t1 - t0:.0f} s")


def activity(trace: dict[str, Any], lo: float, hi: float) -> None:
    """What the process did between `lo` and `hi` (epoch seconds): polls, warehouse
    transactions, the poll's steps and the state commits that started in it."""

    def inside(at: float) -> bool:
        return lo <= at < hi

    polls = [p for p in trace["poll"] if inside(p[2])]
    if not polls:
        return
    span = max(p[3] for p in polls) - min(p[2] for p in polls)
    print(f"  polls {len(polls)}, duration p50 "
          f"{statistics.median(p[3] - p[2] for p in polls) * 1000:.0f} ms, per table per s "
          f"{len(polls) / len({p[1] for p in polls}) / span:.2f}")
    txns = sorted({(c[2], c[3]) for c in trace["commit"].values() if inside(c[2])})
    if txns:
        wall = max(t[1] for t in txns) - txns[0][0]
        groups = [g for g in trace["group"] if inside(g[2])]
        each = statistics.mean(g[1] for g in groups) if groups else 0.0
        print(f"  warehouse transactions {len(txns)}, their time / wall "
              f"{sum(t[1] - t[0] for t in txns) / wall:.2f}; gathered groups "
              f"{len(groups)}, batches each {each:.1f}")
    by_path: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for part in trace["part"]:
        if inside(part[4]):
            by_path[part[3]].append((part[5] - part[4], part[2]))
    for path, parts in sorted(by_path.items()):
        times = sorted(t for t, _ in parts)
        rows = statistics.mean(r for _, r in parts)
        print(f"  part {path:7s} n={len(parts)} rows each {rows:.0f} p50 "
              f"{times[len(times) // 2] * 1000:.1f} ms mean {statistics.mean(times) * 1000:.1f}")
    late = sorted(e[3] for e in trace["late"] if inside(e[2]))
    if late:
        print(f"  poll start after due (a poll thread waited for): n={len(late)} p50 "
              f"{late[len(late) // 2] * 1000:.0f} ms p95 {late[int(len(late) * 0.95)] * 1000:.0f}"
              f" mean {statistics.mean(late) * 1000:.0f}")
    # the run loop's steps (with their share of the wall time) and the state store's calls
    for kind, width, busy in (("step", 17, span), ("state", 18, None)):
        for name, spans in sorted(trace[kind].items()):
            times = sorted(t for at, t in spans if inside(at))
            if times:
                print(_timings(f"{kind} {name:{width}s}", times, busy))


def _timings(label: str, times: list[float], busy_over: float | None) -> str:
    """One table line: count, p50, p95 and mean of `times` (sorted, seconds) in ms, and
    with `busy_over` their sum per second of it."""
    line = (f"  {label} n={len(times)} p50 {times[len(times) // 2] * 1000:.1f} ms p95 "
            f"{times[int(len(times) * 0.95)] * 1000:.1f} mean "
            f"{statistics.mean(times) * 1000:.1f}")
    return line if busy_over is None else f"{line}, busy per s {sum(times) / busy_over:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--from", dest="start", type=float)
    parser.add_argument("--to", dest="end", type=float)
    args = parser.parse_args()
    trace = read(args.trace)
    budget(trace, args.start, args.end)
    first = min(e[8] for e in trace["pub"].values())
    activity(trace, first + (args.start or 0.0),
             first + args.end if args.end is not None else float("inf"))


if __name__ == "__main__":
    main()
