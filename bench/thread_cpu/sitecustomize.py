"""CPU per thread name of each steadyflow worker, for bench/scale.py (session 14, h-scale).

    SF_TCPU=/tmp/tcpu PYTHONPATH=bench/thread_cpu:src bench/.venv/bin/python bench/scale.py \\
        --workers 4 --repeat 1 --proxy delay --out /tmp/SCALE.md
    bench/.venv/bin/python bench/thread_cpu/summary.py /tmp/tcpu

Loaded by every interpreter started with it on PYTHONPATH (sitecustomize); it does nothing
without SF_TCPU. A thread started through `threading` adds its thread CPU (thread_time) under
its name when it ends (digits dropped: `extract_0` and `extract_1` are `extract`); at exit
the threads still running are read from /proc/self/task. Each process writes
$SF_TCPU/<pid>.json: seconds per name, `unnamed` (native threads: Arrow's pools, drivers),
`main` and `_process_total` (os.times). The CLI leaves by os._exit, which skips atexit, so
os._exit is wrapped too. One machine's busy CPU and the workers' total are what scale.py
reports; this says which of a worker's threads used it (its whole life: start-up included,
mostly `main`). With SF_LANES=<dir> it also counts, per process, the loader's gathers by
(batches, lanes used) (run/load.py BatchLoader._by_lane) into <dir>/lanes-<pid>.json.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import threading
import time
from typing import Any

OUT = os.environ.get("SF_TCPU")


def _name(name: str) -> str:
    if name.startswith("jetstream-"):  # the buffer's event loop, named after its stream
        return "jetstream"
    target = re.match(r"Thread-\d+ \((.*)\)$", name)
    return f"Thread({target.group(1)})" if target else re.sub(r"[-_ ]?\d+$", "", name)


if OUT:
    _ended: collections.Counter[str] = collections.Counter()
    _live: dict[int, str] = {}
    _lock = threading.Lock()
    _bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def _inner(self: threading.Thread) -> None:
        _live[threading.get_native_id()] = self.name
        try:
            _bootstrap(self)
        finally:
            with _lock:
                _ended[_name(self.name)] += time.thread_time()
            _live.pop(threading.get_native_id(), None)

    threading.Thread._bootstrap_inner = _inner  # type: ignore[attr-defined]

    def _dump() -> None:
        total: collections.Counter[str] = collections.Counter(_ended)
        tick = os.sysconf("SC_CLK_TCK")
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = "main" if int(tid) == os.getpid() else _live.get(int(tid), "unnamed")
            total[_name(name)] += (int(fields[11]) + int(fields[12])) / tick
        times = os.times()
        total["_process_total"] = times.user + times.system
        with open(os.path.join(OUT, f"{os.getpid()}.json"), "w") as fh:
            json.dump(dict(total), fh)

    _exit = os._exit

    def _exit_dumped(code: int) -> Any:
        try:
            _dump()
            if _lanes is not None:
                _dump_lanes()
        finally:
            _exit(code)

    os._exit = _exit_dumped  # type: ignore[assignment]
    atexit.register(_dump)

    _lanes: collections.Counter[tuple[int, int]] | None = None
    if os.environ.get("SF_LANES"):
        _lanes = collections.Counter()
        from steadyflow.run import load as _load

        _by_lane = _load.BatchLoader._by_lane

        def _counted(self: Any, batches: list[Any]) -> Any:
            out = _by_lane(self, batches)
            assert _lanes is not None
            _lanes[(len(batches), len(out))] += 1
            return out

        _load.BatchLoader._by_lane = _counted  # type: ignore[method-assign]

    def _dump_lanes() -> None:
        assert _lanes is not None
        with open(os.path.join(os.environ["SF_LANES"], f"lanes-{os.getpid()}.json"), "w") as fh:
            json.dump({f"{b} batches / {n} lanes": c for (b, n), c in sorted(_lanes.items())},
                      fh)
