"""Summarise a py-spy `--format raw` profile (collapsed stacks) as text tables.

Per thread: share of samples, then the frames that hold the most time inclusively (a
frame counted once per stack) and the leaf frames (self time), steadyflow's frames first.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def summarise(path: str, top: int = 12) -> str:
    threads: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            thread = frames[0]
            names = [short(f) for f in frames[1:]]
            thread = re.sub(r"\s*\(\d+\)|\s*\(idle\)|0x[0-9a-f]+", "", thread).strip()
            label = next((f.split(" (")[0] for f in names if f.startswith(
                ("run_once", "load (steadyflow", "_worker", "Thread.run"))), "")
            key = f"{thread} {label}".strip()
            totals[key] += n
            for name in set(names):
                threads[key][name] += n
            if names:
                leaves[key][names[-1]] += n
    grand = sum(totals.values()) or 1
    out = []
    for key, n in totals.most_common():
        if n / grand < 0.02:
            continue
        out.append(f"\n### thread `{key}` — {n} samples ({100 * n / grand:.0f}% of all)\n")
        out.append("| inclusive | frame |\n|---:|---|")
        interesting = [(f, c) for f, c in threads[key].most_common()
                       if "importlib" not in f and "runpy" not in f]
        for f, c in interesting[:top]:
            out.append(f"| {100 * c / n:.0f}% | `{f}` |")
        out.append("\n| self | leaf frame |\n|---:|---|")
        for f, c in leaves[key].most_common(top // 2):
            out.append(f"| {100 * c / n:.0f}% | `{f}` |")
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12))
