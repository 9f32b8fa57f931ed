"""Named crash points for fault tests: a real SIGKILL at a precise place in the code.

`STEADYFLOW_FAILPOINT=load.after_merge` kills the process the first time that point is
reached; `load.after_merge:3` on the third time; `extract.before_land:1:SIGSTOP` stops it
there instead (a stalled process: tests/faults/test_fencing.py); `load.after_merge:1:sleep2`
pauses the calling thread 2 s there, every time from the first (a slow step: a group load
outlasting its buffer lease, tests/integration/test_group_commit.py). The points are the
boundaries between durable steps, so the tests can prove that a crash at each one loses
and doubles nothing. The check is one dict lookup when unset, cheap enough to leave in
production code.
"""

from __future__ import annotations

import os
import signal
import threading
import time

# the points every run crosses (tests/faults/test_crash.py kills a plain run at each)
POINTS = (
    "land.mid_write",  # half the Parquet bytes are in the temp file
    "land.after_rename",  # file visible, manifest entry not yet written
    "extract.after_land",  # landed + manifest, not yet enqueued
    "extract.after_enqueue",  # enqueued, checkpoint not yet moved
    "transform.mid",  # validation half done
    "load.after_merge",  # a group's merges + ledger rows executed, not committed
    "load.after_commit",  # a group committed, none of its batches acked
    "load.after_mark",  # a group committed and marked loaded in the manifest, none acked
    "load.after_ack",  # a batch of a committed, marked group acked, the next not yet
)

# points only a run with work stealing crosses (workers, or several queries per source:
# tests/faults/test_steal_breaks.py), so not in POINTS
STEAL_POINTS = (
    "extract.cut",  # a first load's reader learned a stealer cut its bound (LoadCut)
)

_lock = threading.Lock()
_hits: dict[str, int] = {}


def _armed() -> tuple[str, int, str] | None:
    spec = os.environ.get("STEADYFLOW_FAILPOINT")
    if not spec:
        return None
    name, _, rest = spec.partition(":")
    count, _, sig = rest.partition(":")
    return name, int(count or 1), sig or "SIGKILL"


def failpoint(name: str) -> None:
    """SIGKILL (or the armed signal, or a pause) this process if the failpoint `name` is
    armed and its count is reached."""
    armed = _armed()
    if armed is None or armed[0] != name:
        return
    action = armed[2]
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        once = action.startswith("SIG") and action != "SIGKILL"
        fire = _hits[name] == armed[1] if once else _hits[name] >= armed[1]
    if fire and action.startswith("sleep"):
        time.sleep(float(action.removeprefix("sleep")))
    elif fire:  # outside the lock, and to this very thread: a process-wide SIGSTOP lets the
        # calling thread run on into the next step (a state transaction) before it stops
        signal.pthread_kill(threading.get_ident(), getattr(signal, action))
