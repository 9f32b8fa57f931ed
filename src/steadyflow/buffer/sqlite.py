"""The embedded buffer: a queue of batch references in its own SQLite file.

It holds references, not rows (the rows are in the landing zone), so it stays small and
a lost buffer file only costs time: the sweeper republishes from the manifest.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from steadyflow.errors import RetryableError
from steadyflow.model import BatchRef
from steadyflow.ports import Delivery
from steadyflow.state import open_sqlite, pid_alive
from steadyflow.state.sqlite import disk_full_as

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
  batch_id TEXT PRIMARY KEY, ref TEXT NOT NULL, enqueued_at REAL NOT NULL,
  visible_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, owner TEXT);
CREATE INDEX IF NOT EXISTS queue_visible ON queue(visible_at, enqueued_at);
"""
# the shortest lease honoured: a 0 lease would leave a leased message visible, so every
# loader polling the queue would take the batch being loaded again, in a loop (config.py
# refuses leases under a second; this keeps the buffer itself from spinning on one)
MIN_LEASE = 0.1


class SqliteBuffer:
    """A bounded, leased, idempotent queue shared by processes on one host."""

    def __init__(self, path: Path, capacity: int = 64, lease: float = 120.0,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.capacity = capacity
        self.lease = max(lease, MIN_LEASE)
        self.should_stop = should_stop
        self.path = path
        # the queue is rebuilt from the durable manifest (the sweeper republishes every
        # landed batch not loaded; the ledger makes a redelivery a no-op), so an OS crash
        # that undoes its last commits costs time, not rows: no fsync per put, get and ack
        with self._full():
            self._conn = open_sqlite(path, durable=False)
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        # a put in this process ends a get's pause in it at once (the loader beside the
        # extractors of `run --follow`); another process's put is seen by polling
        self._arrived = threading.Event()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._released_at = time.monotonic()
        with self._lock, self._full():
            self._conn.executescript(SCHEMA)
        self.release_dead_leases()

    def release_dead_leases(self) -> int:
        """Make messages leased by a dead process on this host visible again at once.

        Without this a SIGKILLed loader's messages would wait out their whole lease.
        Leases held on other hosts are left to expire (we cannot see those processes).
        """
        host = socket.gethostname()
        with self._lock, self._full():
            owners = [r[0] for r in self._conn.execute(
                "SELECT DISTINCT owner FROM queue WHERE owner IS NOT NULL AND visible_at > ?",
                (time.time(),)).fetchall()]
            released = 0
            for owner in owners:
                owner_host, _, pid = owner.rpartition(":")
                if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
                    released += self._conn.execute(
                        "UPDATE queue SET visible_at=?, owner=NULL WHERE owner=?",
                        (time.time(), owner)).rowcount
            return released

    def put(self, ref: BatchRef, timeout: float | None = None) -> None:
        """Enqueue, waiting while the buffer is full. Backpressure, never a drop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            with self._lock:
                with self._immediate() as c:
                    present = c.execute(
                        "SELECT 1 FROM queue WHERE batch_id=?", (ref.batch_id,)
                    ).fetchone()
                    depth = c.execute("SELECT count(*) FROM queue").fetchone()[0]
                    queued = bool(present) or depth < self.capacity
                    if queued:
                        now = time.time()
                        c.execute(
                            "INSERT OR IGNORE INTO queue(batch_id, ref, enqueued_at, visible_at) "
                            "VALUES (?,?,?,?)", (ref.batch_id, ref.to_json(), now, now))
                if queued:
                    self._arrived.set()
                    return
                if self.should_stop():
                    raise RetryableError("stopped while waiting for buffer space",
                                         stage="publish", batch_id=ref.batch_id)
                if deadline is not None and time.monotonic() > deadline:
                    raise RetryableError(
                        f"buffer full ({self.capacity} batches) for {timeout:.0f}s",
                        stage="publish", batch_id=ref.batch_id,
                        hint="the loader is behind or down; extraction resumes when it drains")
                self._space.wait(pause)
            pause = min(pause * 2, 0.5)

    def get(self, wait: float = 0.0) -> Delivery | None:
        """Lease the oldest visible message, waiting up to `wait` seconds for one."""
        deadline = time.monotonic() + wait
        pause = 0.01
        while True:
            with self._lock, self._immediate() as c:
                now = time.time()
                row = c.execute(
                    "SELECT batch_id, ref, attempts FROM queue WHERE visible_at <= ? "
                    "ORDER BY enqueued_at LIMIT 1", (now,)).fetchone()
                if row is not None:
                    c.execute("UPDATE queue SET visible_at=?, attempts=attempts+1, owner=? "
                              "WHERE batch_id=?", (now + self.lease, self.owner, row[0]))
            if row is not None:
                return Delivery(BatchRef.from_json(row[1]), attempt=row[2] + 1)
            if time.monotonic() - self._released_at > 2.0:
                self._released_at = time.monotonic()
                if self.release_dead_leases():
                    continue
            left = deadline - time.monotonic()
            if left <= 0 or self.should_stop():
                return None
            self._pause(min(pause, left))
            pause = min(pause * 2, 0.2)

    def take(self, n: int) -> list[Delivery]:
        """Up to `n` visible messages, leased now; a vain `get` is one local query."""
        taken: list[Delivery] = []
        while len(taken) < n and (delivery := self.get(wait=0)) is not None:
            taken.append(delivery)
        return taken

    def _pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, cut short by a put in this process. Short sleeps beside a
        flag, not a timed wait: a timed lock wait sets an absolute deadline, which a time
        shift under LD_PRELOAD (faketime, the clock-skew tests) turned into hours, and the
        loader hung there."""
        end = time.monotonic() + seconds
        while not self._arrived.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(0.005, left))
        self._arrived.clear()

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction on the queue (the caller holds the lock):
        committed when the block ends, rolled back when it raises."""
        c = self._conn
        with self._full():
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:  # not after SQLite rolled back itself (disk full)
                    c.execute("ROLLBACK")
                raise

    def _full(self) -> AbstractContextManager[None]:
        """A full disk under the queue file as a RetryableError naming it: a put waits
        for space (the batch is landed; the checkpoint stays before it), a loader pauses,
        a sweep queues the rest later."""
        return disk_full_as(RetryableError, self.path, "buffer")

    def ack(self, batch_id: str) -> None:
        with self._lock, self._full():
            self._conn.execute("DELETE FROM queue WHERE batch_id=?", (batch_id,))
            self._space.notify_all()

    def extend(self, batch_id: str) -> None:
        """Restart the lease of a message this process holds (a long group load)."""
        with self._lock, self._full():
            self._conn.execute("UPDATE queue SET visible_at=? WHERE batch_id=? AND owner=?",
                               (time.time() + self.lease, batch_id, self.owner))

    def nack(self, batch_id: str, delay: float = 0.0) -> None:
        with self._lock, self._full():
            self._conn.execute("UPDATE queue SET visible_at=?, owner=NULL WHERE batch_id=?",
                               (time.time() + delay, batch_id))

    def contains(self, batch_id: str) -> bool:
        with self._lock:
            return self._conn.execute(
                "SELECT 1 FROM queue WHERE batch_id=?", (batch_id,)).fetchone() is not None

    def depth(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM queue").fetchone()[0])

    def oldest_age(self) -> float | None:
        with self._lock:
            oldest = self._conn.execute("SELECT min(enqueued_at) FROM queue").fetchone()[0]
        return None if oldest is None else max(0.0, time.time() - oldest)

    def close(self) -> None:
        self._conn.close()

