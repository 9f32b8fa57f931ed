"""What the SQLite state file fsyncs, counted by strace on a real process (no mocks).

A sequence number (`next_seq`, taken before every page is read) commits without an fsync
of its own: it is made durable by the fsync of the manifest entry that carries it
(`record_landed`, synchronous=FULL), which writes the same write-ahead log. So:
- twenty numbers cost no fsync; one landed batch after them costs its own;
- numbers survive the process being killed (a committed transaction is in the log), and
  the next number taken after a restart is above every one handed out.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import unavailable

from steadyflow.model import Watermark
from steadyflow.state import SqliteStateStore

pytestmark = pytest.mark.integration

SRC = str(Path(__import__("steadyflow").__file__).resolve().parents[1])
CHILD = """
import os, sys
from pathlib import Path
from steadyflow.model import BatchRef
from steadyflow.model import Watermark
from steadyflow.state import SqliteStateStore
store = SqliteStateStore(Path(sys.argv[1]))
store.next_seq()  # the first commit of the sequence row, whatever it costs
os.write(2, b"MARK-seqs\\n")
print(" ".join(str(store.next_seq()) for _ in range(20)), flush=True)
os.write(2, b"MARK-landed\\n")
store.record_landed(BatchRef("b1", "s", "t", "x", 3, 10, "", None, None, 0.0, seq=21))
os.write(2, b"MARK-end\\n")
if len(sys.argv) > 2:
    os.kill(os.getpid(), 9)  # killed: no close, no checkpoint
store.close()
"""


def _syncs_between(trace: str, start: str, end: str) -> int:
    lines = trace.splitlines()
    first = next(i for i, line in enumerate(lines) if start in line)
    last = next(i for i, line in enumerate(lines) if end in line)
    return sum(1 for line in lines[first:last]
               if "fsync(" in line or "fdatasync(" in line)


def _traced(tmp_path: Path, script: str, *args: str, killed: bool = False
            ) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run `script` under strace (its fsync, fdatasync and write calls, so that the
    MARK-* lines it writes to stderr place them) on tmp_path/state.db; the process and the
    trace. The script ends with exit 0, or with `killed` by its own SIGKILL."""
    if shutil.which("strace") is None:
        unavailable("strace is not installed")
    out = tmp_path / "trace.txt"
    proc = subprocess.run(
        ["strace", "-f", "-e", "trace=fsync,fdatasync,write", "-o", str(out),
         sys.executable, "-c", script, str(tmp_path / "state.db"), *args],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": SRC})
    expected = -signal.SIGKILL if killed else 0
    if proc.returncode != expected and "ptrace" in proc.stderr:
        unavailable(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == expected, proc.stderr
    return proc, out.read_text()


def test_sequence_numbers_take_no_fsync_of_their_own(tmp_path: Path) -> None:
    proc, trace = _traced(tmp_path, CHILD)
    numbers = [int(n) for n in proc.stdout.split()]
    assert numbers == list(range(2, 22))
    seqs = _syncs_between(trace, "MARK-seqs", "MARK-landed")
    landed = _syncs_between(trace, "MARK-landed", "MARK-end")
    assert seqs == 0, f"20 sequence numbers cost {seqs} fsyncs"
    assert landed >= 1, "the manifest entry was not fsynced"


def test_sequence_numbers_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), "kill"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    handed_out = [int(n) for n in proc.stdout.split()]
    assert handed_out == list(range(2, 22))
    store = SqliteStateStore(path)
    try:
        assert store.next_seq() > max(handed_out)
        assert store.batch("b1") is not None
    finally:
        store.close()


KILLED_AFTER_NUMBERS = """
import os, sys
from pathlib import Path
from steadyflow.model import Watermark
from steadyflow.state import SqliteStateStore
store = SqliteStateStore(Path(sys.argv[1]))
print(" ".join(str(store.next_seq()) for _ in range(int(sys.argv[2]))), flush=True)
os.kill(os.getpid(), 9)  # no fsynced commit after the numbers, no close, no checkpoint
"""


def test_numbers_alone_survive_a_killed_process(tmp_path: Path) -> None:
    """The case the test above does not reach: killed right after taking numbers, with no
    fsynced (FULL) commit after them. A SIGKILL is not a power loss: the WAL frames of a
    synchronous=NORMAL commit were written to the OS, which keeps them, so a number is
    never handed out twice across a process crash (each run here starts from the last)."""
    path = tmp_path / "state.db"
    handed_out: list[int] = []
    for count in (1, 7, 3):
        proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_NUMBERS, str(path),
                               str(count)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": SRC})
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        numbers = [int(n) for n in proc.stdout.split()]
        assert len(numbers) == count and min(numbers) > max(handed_out, default=0), (
            handed_out, numbers)
        handed_out += numbers
    store = SqliteStateStore(path)
    try:
        assert store.next_seq() == max(handed_out) + 1
    finally:
        store.close()



# a busy poll's state writes, in its order: the lease taken, a number, the manifest entry
# (the one durable commit), the checkpoint moved, the poll recorded, the lease renewed and
# given back (KeptLease gives it back every 2 s while a table stays busy) and taken again;
# then the process is killed, with no commit, close or WAL checkpoint after them
POLL = """
import os, sys
from pathlib import Path
from steadyflow.model import BatchRef, Watermark
from steadyflow.state import SqliteStateStore
store = SqliteStateStore(Path(sys.argv[1]))
store.next_seq()  # the first commits of the sequence and the lease rows
store.release_lease(store.try_lease("s", "t", "warmup", 30))
os.write(2, b"MARK-lease\\n")
lease = store.try_lease("s", "t", "poller", 30)
seq = store.next_seq()
os.write(2, b"MARK-landed\\n")
store.record_landed(BatchRef("b1", "s", "t", "x", 3, 10, "", None, None, 0.0, seq=seq),
                    lease=lease)
os.write(2, b"MARK-after\\n")
store.advance_checkpoint("s", "t", Watermark(cursor=7, key=(3,)), lease=lease)
store.record_poll("s", "t", Watermark(cursor=7, key=(3,)), 7.0)
store.renew_lease(lease)
store.release_lease(lease)
store.try_lease("s", "t", "again", 30)
os.write(2, b"MARK-end\\n")
os.kill(os.getpid(), 9)
"""


def test_a_polls_checkpoint_record_and_lease_take_no_fsync_of_their_own(tmp_path: Path
                                                                          ) -> None:
    """Of a busy poll's state commits only the manifest entry is fsynced: the checkpoint
    moved after it, the poll's record and the lease's taking, renewal and giving back are
    light commits (StateStore._light_tx), made durable by the next manifest entry or load
    mark (on main each was an fsync of its own, in series under the state's writer lock
    with every other table's polls). Killed right after them, with nothing fsynced since,
    the process loses none of them: a SIGKILL is not a power loss."""
    path = tmp_path / "state.db"
    _, trace = _traced(tmp_path, POLL, killed=True)
    before = _syncs_between(trace, "MARK-lease", "MARK-landed")
    landed = _syncs_between(trace, "MARK-landed", "MARK-after")
    after = _syncs_between(trace, "MARK-after", "MARK-end")
    assert landed >= 1, "the manifest entry was not fsynced"
    assert (before, after) == (0, 0), (
        f"the lease and the number cost {before} fsyncs; the checkpoint, the poll's record "
        f"and the lease's renewal, release and taking again {after}")
    store = SqliteStateStore(path)
    try:
        assert store.checkpoint("s", "t") == Watermark(cursor=7, key=(3,))
        assert store.polls()[("s", "t")][0] == 7.0
        assert store.batch("b1") is not None
        holder = store.lease_holder("s", "t")
        assert holder is not None and holder[0] == "again"
    finally:
        store.close()


# a run's history rows: started, then ended; killed with no commit, close or WAL checkpoint
RUN = """
import os, sys
from pathlib import Path
from steadyflow.state import SqliteStateStore
store = SqliteStateStore(Path(sys.argv[1]))
store.end_run(store.start_run("warmup"), "ok", 0, 0)  # the runs table's first pages
os.write(2, b"MARK-run-a\\n")
run_id = store.start_run("run")
os.write(2, b"MARK-run-b\\n")
store.end_run(run_id, "error", 2, 20, "the warehouse could not be opened")
os.write(2, b"MARK-run-c\\n")
os.kill(os.getpid(), 9)
"""


def test_a_runs_history_rows_take_no_fsync_of_their_own(tmp_path: Path) -> None:
    """start_run and end_run are light commits: each was an fsync on the critical path of
    every command and every `--follow` cycle, for rows nothing outside the state file
    refers to. Killed right after them, the process loses neither (a SIGKILL is not a
    power loss): the run is there, ended, with its outcome and error."""
    path = tmp_path / "state.db"
    _, trace = _traced(tmp_path, RUN, killed=True)
    started = _syncs_between(trace, "MARK-run-a", "MARK-run-b")
    ended = _syncs_between(trace, "MARK-run-b", "MARK-run-c")
    assert (started, ended) == (0, 0), f"start_run cost {started} fsyncs, end_run {ended}"
    import sqlite3

    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT command, outcome, batches, rows, error, ended_at IS NOT NULL "
                          "FROM runs ORDER BY run_id").fetchall()
    assert rows[-1] == ("run", "error", 2, 20, "the warehouse could not be opened", 1), rows
