"""Holding a table's extraction lease while extracting or repairing it.

Two extractors of one table (an overlapping `steadyflow run`, `extract` beside
`run --follow`, `reconcile --repair` beside a follower) must not interleave: an older read
landed after a newer one would overwrite it. `hold` takes the lease in the state store
(state.py: try_lease), waits briefly for a live holder to finish, and otherwise skips the
table with TableBusy. While held, a keeper thread renews it every third of its length, so a
page read longer than the lease does not lose it; a process that stops (SIGSTOP, swap)
stops renewing, another extractor takes over after the lease expires, and the fencing
checks in state.py turn everything the stalled one tries to record into ExtractionFenced.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from steadyflow.errors import ExtractionFenced, TableBusy
from steadyflow.observe import logs
from steadyflow.state import Lease, StateStore

log = logs.get("extract")

# How long a lease lasts without renewal. It bounds how long a stalled holder delays a
# takeover, not how long a page may take (the keeper renews while the holder runs).
# STEADYFLOW_EXTRACT_LEASE overrides it (fault tests stall an extractor past it).
LEASE_SECONDS = 30.0
MIN_LEASE_SECONDS = 0.5  # a 0 lease would have the keeper renew in a loop
# How long a second extractor waits for a live holder before skipping the table.
WAIT_SECONDS = 5.0


def lease_seconds() -> float:
    value = os.environ.get("STEADYFLOW_EXTRACT_LEASE")
    return max(MIN_LEASE_SECONDS, float(value) if value else LEASE_SECONDS)


def new_holder() -> str:
    """host:pid:token: the host and pid let a restart take a dead process's lease at once;
    the token tells two extractors of one process apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@contextmanager
def hold(state: StateStore, source: str, table: str, purpose: str,
         should_stop: Callable[[], bool] = lambda: False,
         wait: float = WAIT_SECONDS) -> Iterator[Lease]:
    """The table's lease for the duration of the block, renewed, then released."""
    lease = _acquire(state, source, table, purpose, should_stop, wait)
    done = threading.Event()
    keeper = threading.Thread(target=_keep, args=(state, lease, done),
                              name=f"lease-{table}", daemon=True)
    keeper.start()
    try:
        yield lease
    finally:
        done.set()
        keeper.join()
        state.release_lease(lease)


# How long `run --follow` keeps a table's lease across polls that find rows before giving
# it back once (KeptLease): well under WAIT_SECONDS, so another extractor waiting for the
# table (a repair, an overlapping run) finds it free between two polls.
KEEP_SECONDS = 2.0
# how often a waiting extractor asks for a held lease (_acquire), and how long a KeptLease
# given back after KEEP_SECONDS stays free before its holder takes it again: longer than
# that, so the waiter's next ask finds it free whatever the table's poll_min
RETRY_SECONDS = 0.2
YIELD_SECONDS = 0.3


class KeptLease:
    """A table's lease kept from one poll to the next by one process (`run --follow`).

    Taking and giving back the lease is two state commits (fsyncs) per poll; a table
    polled four times a second while rows flow paid them for nothing, the same process
    taking it again 0.25 s later. The first poll that has rows to read takes it (a
    keeper renews it); it is given back when a poll finds nothing new, when a poll fails,
    once it has been held KEEP_SECONDS (the next poll takes it again, unless another
    extractor waiting for it got it in between), and when the process stops. Fencing is
    unchanged: the lease and its generation are checked where anything is recorded."""

    def __init__(self, state: StateStore, source: str, table: str) -> None:
        self.state, self.source, self.table = state, source, table
        self.lease: Lease | None = None
        self._since = 0.0
        self._free_until = 0.0  # given back after KEEP_SECONDS: others' turn until then
        self._done = threading.Event()
        self._keeper: threading.Thread | None = None

    @contextmanager
    def hold(self, purpose: str, should_stop: Callable[[], bool] = lambda: False,
             wait: float = WAIT_SECONDS) -> Iterator[Lease]:
        if self.lease is None:
            pause = self._free_until - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self.lease = _acquire(self.state, self.source, self.table, purpose, should_stop,
                                  wait)
            self._since = time.monotonic()
            self._done = threading.Event()
            self._keeper = threading.Thread(target=_keep, args=(self.state, self.lease,
                                                                 self._done),
                                            name=f"lease-{self.table}", daemon=True)
            self._keeper.start()
        try:
            yield self.lease
        except BaseException:
            self.release()
            raise
        if time.monotonic() - self._since >= KEEP_SECONDS:
            self.release()
            self._free_until = time.monotonic() + YIELD_SECONDS

    def release(self) -> None:
        """Give the lease back now (if held)."""
        if self.lease is None:
            return
        self._done.set()
        if self._keeper is not None:
            self._keeper.join()
        lease, self.lease = self.lease, None
        self.state.release_lease(lease)


def _acquire(state: StateStore, source: str, table: str, purpose: str,
             should_stop: Callable[[], bool], wait: float) -> Lease:
    seconds = lease_seconds()
    holder = new_holder()
    deadline = time.monotonic() + wait
    while True:
        lease = state.try_lease(source, table, holder, seconds)
        if lease is not None:
            return lease
        if time.monotonic() >= deadline or should_stop():
            break
        time.sleep(RETRY_SECONDS)
    current = state.lease_holder(source, table)
    who, until = current if current is not None else (None, 0.0)
    when = datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")
    raise TableBusy(
        f"skipped ({purpose}): another extractor ({who}) holds this table's extraction lease "
        f"until {when} and renews it; waited {wait:g}s. Two extractors of one table could "
        "land an older read after a newer one, so only the holder extracts it",
        stage="extract", source=source, table=table,
        hint="an overlapping run, `extract` beside `run --follow`, or a repair is working on "
             "this table; it is extracted by that process, or by the next run once it ends")


def _keep(state: StateStore, lease: Lease, done: threading.Event) -> None:
    """Renew until `done`; stop quietly once fenced (the holder's next durable step raises
    ExtractionFenced itself, with the table's context)."""
    while not done.wait(lease.seconds / 3):
        try:
            state.renew_lease(lease)
        except ExtractionFenced as exc:
            log.warning("extraction lease lost: %s", exc.message, extra={
                "source": lease.source, "table": lease.table, "stage": "extract"})
            return
        except Exception as exc:  # noqa: BLE001 - a busy state file: try again next round
            log.warning("extraction lease not renewed (retrying): %s", exc, extra={
                "source": lease.source, "table": lease.table, "stage": "extract"})
