"""One pipeline loop per state directory.

Two loops over one state directory never help: with DuckDB the second fails on the
warehouse file every cycle (silently, filling the run history with its failures), with
PostgreSQL both run and race each other's checkpoints. So `run`, `run --follow`,
`serve --run` and `reset` take an exclusive lock on `<state_dir>/loop.lock` first, and a
second one is refused at once, naming the holder.

The lock is a kernel `flock`: it is released when the holder exits in any way (a SIGKILL
too), so no stale lock outlives a crash and none needs breaking by hand. The file holds
the holder's host, pid and command for the refusal message only; it is never trusted to
decide who holds the lock. `extract`, `load`, `status` and the read-only `serve` do not
take it: extraction is fenced per table by leases (run/lease.py), the rest only read.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from steadyflow.errors import LoopBusy
from steadyflow.state.store import pid_alive

LOCK_FILE = "loop.lock"


def holder(state_dir: Path) -> dict[str, Any] | None:
    """Who wrote the lock file last (host, pid, command, since), or None."""
    try:
        data = json.loads((state_dir / LOCK_FILE).read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def loop_status(state_dir: Path) -> dict[str, Any] | None:
    """The loop this state directory's lock names, and whether it still holds the lock.

    None when no loop is named: none ran, or the last one let go (a stopping holder
    empties the file). Otherwise the holder (host, pid, command, since) and `status`:
    "running" while the kernel says the lock is held; "killed" when the file names a
    holder that no longer holds it: it ended without letting go (SIGKILL, OOM, a crash),
    so nothing runs the pipeline; "suspended" while it holds the lock stopped (SIGSTOP,
    Ctrl-Z): nothing moves until it is continued; "unknown" for a holder on another host,
    whose lock is not visible from here. Read-only: the lock is never taken to find out, so a loop
    starting at that moment is not refused.
    """
    who = holder(state_dir)
    if not who:
        return None
    if who.get("host") != socket.gethostname():
        return {**who, "status": "unknown"}
    held = _flocked(state_dir / LOCK_FILE)
    if held is None:  # no /proc/locks (not Linux): whether the named process lives
        held = _alive(int(who.get("pid") or 0))
    if held and _suspended(int(who.get("pid") or 0)):
        return {**who, "status": "suspended"}
    return {**who, "status": "running" if held else "killed"}


def _suspended(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP, Ctrl-Z, `docker pause` freezes differently
    and is not seen): it holds its lock and moves nothing. Its tables were called stalled
    only 15 min later, status healthy until then. False where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] in (["T"], ["t"])


def _flocked(path: Path) -> bool | None:
    """Whether any process holds a flock on `path` (Linux /proc/locks), None if unknown."""
    try:
        st = path.stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(f" {inode} " in line and "FLOCK" in line for line in locks.splitlines())


def _alive(pid: int) -> bool:
    return pid > 0 and pid_alive(pid)


def describe(who: dict[str, Any] | None) -> str:
    if not who:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(who.get("since", 0))))
    return (f"`steadyflow {who.get('command', '?')}` (pid {who.get('pid', '?')} on host "
            f"{who.get('host', '?')}, since {since})")


@contextmanager
def hold_loop(state_dir: Path, command: str) -> Iterator[dict[str, Any] | None]:
    """Hold the state directory's loop lock for the block, or raise LoopBusy at once.
    Yields the loop that held it last if that one ended without letting go (killed: the
    file still names it), for the caller to close what it left open; else None."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LoopBusy(
                f"{describe(holder(state_dir))} already runs this pipeline "
                f"(state directory {state_dir})", stage="run",
                hint="one loop per state directory: stop that one first, or watch it "
                     "read-only with `steadyflow serve` / `steadyflow status`") from None
        dead = holder(state_dir)  # a holder that let go emptied the file
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "command": command, "since": time.time()}).encode())
        try:
            yield dead or None
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
