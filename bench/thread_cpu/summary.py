"""Sum bench/thread_cpu's per-process files of one run over its workers (the processes
that ran a loader thread), one line per thread name, most CPU first.

    bench/.venv/bin/python bench/thread_cpu/summary.py <SF_TCPU dir> [<dir> ...]
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path


def workers(run: Path) -> collections.Counter[str]:
    total: collections.Counter[str] = collections.Counter()
    for path in run.glob("*.json"):
        if path.name.startswith("lanes-"):
            continue
        seconds = json.loads(path.read_text())
        if "load" in seconds:  # a worker, not the bench or its proxies
            total.update(seconds)
    return total


def main() -> None:
    runs = [Path(a) for a in sys.argv[1:]]
    sums = [workers(r) for r in runs]
    names = sorted({n for s in sums for n in s}, key=lambda n: -sum(s[n] for s in sums))
    print("thread".ljust(30) + "".join(r.name[-12:].rjust(13) for r in runs))
    for name in names:
        print(name[:30].ljust(30) + "".join(f"{s[name]:13.2f}" for s in sums))


if __name__ == "__main__":
    main()
