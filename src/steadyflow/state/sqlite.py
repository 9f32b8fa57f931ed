"""The embedded state store: one SQLite file in the pipeline's state_dir.

WAL mode lets the extract, load and status processes of one host share it; BEGIN IMMEDIATE
serialises writers, which is the row lock the shared SQL relies on.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from steadyflow.errors import RetryableError, StateUnavailable
from steadyflow.state.store import ADDED_COLUMNS, SCHEMA, StateStore, Tx


def open_sqlite(path: Path, durable: bool = True) -> sqlite3.Connection:
    """A connection tuned for several processes sharing one small state file.

    `durable`: every commit is fsynced (synchronous=FULL), so it survives the host
    losing power. A file whose content can be rebuilt from one that is durable (the
    buffer's queue, from the manifest) commits without the fsync (synchronous=NORMAL: still
    atomic and consistent, and safe when the process is killed; only an OS crash can undo
    its last commits): each fsync costs 2-13 ms on this class of disk, and the buffer
    commits three times per batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@contextmanager
def disk_full_as(error: type[RetryableError], path: Path, stage: str) -> Iterator[None]:
    """A write SQLite refused for want of space raised as `error`, naming the file:
    SQLite's own "database or disk is full" (or, opening a file whose -shm index cannot be
    made, "disk I/O error") names neither. SQLite rolls the transaction back itself, so
    nothing half-written is kept and the step is retried whole once there is room."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE):
            raise
        raise error(f"{path}: the disk is full ({exc})", stage=stage,
                    hint=f"free space on the filesystem of {path.parent}; nothing "
                         "half-written was kept, and the step is retried") from None


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None if there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _add_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Add columns a newer version needs to a state file an older one wrote (SCHEMA's
    CREATE TABLE IF NOT EXISTS leaves an existing table as it was)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, decl in columns.items():
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, tuple(params))

    def executemany(self, sql: str, params: Any) -> None:
        self._conn.executemany(sql, params)


class SqliteStateStore(StateStore):
    """State in one SQLite file (the embedded default)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.where = str(path)
        #: this process made the file: none was there when it opened the state
        self.created = not path.exists()
        with disk_full_as(StateUnavailable, path, "state"):
            self._conn = open_sqlite(path)
            self._file = _identity(path)
            with self._lock:
                self._conn.executescript(SCHEMA)
                for table, columns in ADDED_COLUMNS.items():
                    _add_columns(self._conn, table, columns)
            # reads on a connection of their own: in WAL mode a reader never waits for a
            # writer, but sharing the writer's connection made every read (a poll asks for
            # its checkpoint several times) queue behind whichever commit was fsyncing
            self._reader = open_sqlite(path)
        self._read_lock = threading.Lock()
        self._writing = threading.local()

    def close(self) -> None:
        self._conn.close()
        self._reader.close()

    def replaced(self) -> str | None:
        """Why the file this store reads is no longer the one at its path (deleted,
        moved, or replaced by another), else None. The open connections go on reading
        and writing the file they opened (an unlinked one until they close), so a status
        server kept showing the old readings as current, and a pipeline's progress went
        where no later process finds it."""
        now = _identity(self.path)
        if now == self._file:
            return None
        what = "deleted or moved" if now is None else "replaced by another file"
        return (f"the state file {self.path} was {what} after this process opened it: "
                "what it shows (and records) is not in that file; restart it")

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        with self._lock, disk_full_as(StateUnavailable, self.path, "state"):
            self._conn.execute("BEGIN IMMEDIATE")
            self._writing.active = True
            try:
                yield _SqliteTx(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # not after SQLite rolled back itself (full)
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._writing.active = False

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if getattr(self._writing, "active", False):  # inside this thread's transaction:
            with self._lock:  # read what it wrote
                return self._conn.execute(sql, params).fetchall()
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def now(self) -> float:
        return time.time()  # one host: every writer reads the same clock

    def _now(self, c: Tx) -> float:
        return time.time()  # one host: every holder reads the same clock

    def _lease_end(self, seconds: float) -> tuple[str, tuple[Any, ...]]:
        return "?", (time.time() + seconds,)

    @contextmanager
    def _light_tx(self) -> Iterator[Tx]:
        """A transaction committed without an fsync of its own (synchronous=NORMAL for it
        alone; StateStore._light_tx says which writes may). Still atomic, and safe when
        the process is killed; a power failure loses only a tail of the commits (the
        write-ahead log's frames carry cumulative checksums, so recovery keeps a prefix
        of them), and the next FULL commit (a manifest entry, a load's marks) fsyncs the
        same log, which makes every light commit before it durable too."""
        with self._lock:  # no other transaction of this connection meanwhile
            self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._tx() as c:
                    yield c
            finally:
                self._conn.execute("PRAGMA synchronous=FULL")

    def _take_seq(self) -> int:
        """A light commit (`_light_tx`): a number needs to be durable only once something
        durable carries it, and the only such thing is the manifest entry of the batch
        read under it (record_landed, a FULL commit), whose fsync of the write-ahead log
        makes this earlier commit durable too. A power loss before that loses the number
        and the read alike, so the number taken again after it is still above every
        number in use. It was one of the four fsyncs of every page a poll lands (session
        12's trace: 9 ms mean, 32 ms p95, on the poll's own path)."""
        with self._light_tx() as c:
            return int(c.execute("INSERT INTO sequence VALUES ('extract', 1) ON "
                                 "CONFLICT(name) DO UPDATE SET value = value + 1 "
                                 "RETURNING value").fetchone()[0])

    def current_seq(self) -> int:
        rows = self._query("SELECT value FROM sequence WHERE name = 'extract'")
        return int(rows[0][0]) if rows else 0

    def raise_seq(self, above: int) -> None:
        """One durable commit: the number it sets must outlive the batches numbered above."""
        with self._tx() as c:
            c.execute("INSERT INTO sequence VALUES ('extract', ?) ON CONFLICT(name) DO UPDATE "
                      "SET value = max(value, excluded.value)", (int(above),))
