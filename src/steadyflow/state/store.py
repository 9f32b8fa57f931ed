"""The state store's contract and its portable SQL: checkpoints, landing manifest, run
history, per-table health, the quarantine index, the extraction sequence and the per-table
extraction leases.

One class holds every query, written in the SQL that SQLite and PostgreSQL both speak
(`?` placeholders, ON CONFLICT upserts, RETURNING); the adapters (state/sqlite.py, embedded;
state/postgres.py, shared by workers on many hosts) supply the connection, the transaction,
the clock leases are measured by, the row lock and the sequence. One body of SQL means the
two adapters cannot drift apart, and one contract suite (tests/contract/
test_state_contract.py) runs against both. Every state change is a single transaction, and
repeating one is a no-op (ON CONFLICT DO NOTHING / upserts), which is what makes a crash
between two steps harmless.

Extraction leases fence extractors: one holder per table at a time, and a generation that
grows on every acquisition. The steps that make an extractor's work durable (recording a
landed batch, moving the checkpoint or the initial load's key position) check the
generation in their own transaction and raise ExtractionFenced if the lease was taken
over, so an extractor that stalled past its lease can never record, advance or win.

Among workers (`lease_affinity` > 0, set by run/worker.py), a table stays with the process
that last took or released its lease (its owner) while that process keeps polling it:
another worker's try_lease within `lease_affinity` seconds of that is refused as if the
lease were held, unless the owner looks after at least two tables more than the one asking
(counting the tables each took or released within `lease_affinity`), so a worker that joins
takes its share, and one that stops polling (dead, stalled, or too busy to come back within
`lease_affinity`) loses its tables to the others. A partitioned first load has none: every
worker takes its key ranges (run/backfill.py), and whichever finishes last ends it. Nor has
a table whose last error is newer than its last load: its owner may be the one host that
cannot reach the store, so any worker may try it until one loads it again.
Without the affinity every worker polled every table: N workers opened N connections to
each store and probed each one N times as often, to find what its owner had just read. The
affinity decides only who asks; the lease and its generation still fence whoever holds it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from steadyflow.errors import ExtractionFenced, LoadCut
from steadyflow.model import BatchRef, Watermark
from steadyflow.secrets import scrub

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
  source TEXT NOT NULL, tbl TEXT NOT NULL, watermark TEXT NOT NULL, updated_at REAL NOT NULL,
  PRIMARY KEY (source, tbl));
CREATE TABLE IF NOT EXISTS backfills (
  source TEXT NOT NULL, tbl TEXT NOT NULL, high TEXT NOT NULL, after TEXT,
  started_at REAL NOT NULL, PRIMARY KEY (source, tbl));
CREATE TABLE IF NOT EXISTS backfill_chunks (
  source TEXT NOT NULL, tbl TEXT NOT NULL, chunk INTEGER NOT NULL, low TEXT, high TEXT NOT NULL,
  after TEXT, status TEXT NOT NULL, holder TEXT, expires_at REAL NOT NULL,
  generation INTEGER NOT NULL, rows INTEGER NOT NULL, since TEXT, done_at REAL,
  PRIMARY KEY (source, tbl, chunk));
CREATE TABLE IF NOT EXISTS manifest (
  batch_id TEXT PRIMARY KEY, source TEXT NOT NULL, tbl TEXT NOT NULL, ref TEXT NOT NULL,
  rows INTEGER NOT NULL, landed_at REAL NOT NULL, status TEXT NOT NULL DEFAULT 'landed',
  loaded_at REAL, good_rows INTEGER, quarantined_rows INTEGER, error TEXT);
CREATE INDEX IF NOT EXISTS manifest_status ON manifest(status, landed_at);
CREATE TABLE IF NOT EXISTS runs (
  run_id INTEGER PRIMARY KEY AUTOINCREMENT, command TEXT NOT NULL, started_at REAL NOT NULL,
  ended_at REAL, outcome TEXT, batches INTEGER, rows INTEGER, error TEXT);
CREATE TABLE IF NOT EXISTS table_health (
  source TEXT NOT NULL, tbl TEXT NOT NULL, newest_cursor TEXT, newest_cursor_epoch REAL,
  last_success REAL, last_error TEXT, last_error_at REAL, rows_loaded INTEGER DEFAULT 0,
  rows_quarantined INTEGER DEFAULT 0, page_size INTEGER, breaker TEXT,
  rows_changed INTEGER DEFAULT 0,
  PRIMARY KEY (source, tbl));
CREATE TABLE IF NOT EXISTS quarantine (
  batch_id TEXT PRIMARY KEY, source TEXT NOT NULL, tbl TEXT NOT NULL, path TEXT NOT NULL,
  rows INTEGER NOT NULL, reasons TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open',
  created_at REAL NOT NULL, replayed_at REAL, replayed_rows INTEGER);
CREATE TABLE IF NOT EXISTS parked_rows (
  source TEXT NOT NULL, tbl TEXT NOT NULL, row_hash TEXT NOT NULL, batch_id TEXT NOT NULL,
  PRIMARY KEY (source, tbl, row_hash));
CREATE TABLE IF NOT EXISTS extract_leases (
  source TEXT NOT NULL, tbl TEXT NOT NULL, holder TEXT, expires_at REAL NOT NULL,
  generation INTEGER NOT NULL, PRIMARY KEY (source, tbl));
CREATE TABLE IF NOT EXISTS extract_owners (
  source TEXT NOT NULL, tbl TEXT NOT NULL, owner TEXT NOT NULL, released_at REAL NOT NULL,
  PRIMARY KEY (source, tbl));
CREATE TABLE IF NOT EXISTS sequence (
  name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reconcile_runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, tbl TEXT NOT NULL, at REAL NOT NULL,
  buckets INTEGER, rows_compared INTEGER, missing INTEGER, extra INTEGER, mismatched INTEGER,
  repaired INTEGER, detail TEXT);
CREATE TABLE IF NOT EXISTS reconcile_buckets (
  source TEXT NOT NULL, tbl TEXT NOT NULL, bucket INTEGER NOT NULL, lo TEXT, hi TEXT,
  since TEXT, rows INTEGER NOT NULL, checksum TEXT NOT NULL, verified_at REAL NOT NULL,
  PRIMARY KEY (source, tbl, bucket));
CREATE TABLE IF NOT EXISTS workers (
  worker_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started_at REAL NOT NULL,
  heartbeat_at REAL NOT NULL, heartbeat_every REAL NOT NULL, units TEXT NOT NULL,
  status TEXT NOT NULL, stopped_at REAL, stats TEXT);
CREATE TABLE IF NOT EXISTS source_polls (
  source TEXT NOT NULL, tbl TEXT NOT NULL, high TEXT, high_epoch REAL, polled_at REAL NOT NULL,
  PRIMARY KEY (source, tbl));
"""

# Columns added after a table's first version, by table: each adapter adds those a state
# written by an older version lacks (SQLite: ALTER TABLE ADD COLUMN; PostgreSQL: ADD
# COLUMN IF NOT EXISTS). Work stealing (run/steal.py): `backfills.upto`, the bound a
# one-piece first load reads to (NULL: the table's end), and `since`, its pages' re-read
# start (JSON, {} for none; NULL: begun by an older version, not cut); `cuts` on the lease rows, how
# often a stealer cut the bound of the reader holding it (fenced: LoadLease, ChunkLease).
ADDED_COLUMNS: dict[str, dict[str, str]] = {
    "table_health": {"rows_changed": "INTEGER DEFAULT 0"},
    "backfills": {"upto": "TEXT", "since": "TEXT"},
    "extract_leases": {"cuts": "INTEGER NOT NULL DEFAULT 0"},
    "backfill_chunks": {"cuts": "INTEGER NOT NULL DEFAULT 0"},
}


class Rows(Protocol):
    """What an executed statement gives back (a DB-API cursor)."""

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """A statement runner inside one state transaction; `?` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None: ...


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process(holder: str) -> str:
    """"host:pid" of a lease holder "host:pid:token" (its process; the token is per hold)."""
    return holder.rsplit(":", 1)[0] if holder.count(":") >= 2 else holder


def holder_alive(holder: str) -> bool:
    """False only for a holder ("host:pid:token") on this host whose process is gone: its
    lease is taken over at once instead of after it expires (as a SIGKILLed run's)."""
    host, pid, _ = (holder.split(":") + ["", ""])[:3]
    return not (host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)))


@dataclass(frozen=True, slots=True)
class Lease:
    """One acquisition of a table's extraction lease; `generation` fences it."""

    source: str
    table: str
    holder: str
    generation: int
    seconds: float


@dataclass(frozen=True, slots=True)
class ChunkLease(Lease):
    """One acquisition of a backfill chunk's lease (run/backfill.py). It fences like the
    table's lease (`_fence` checks the chunk's generation), and carries what its holder
    reads: keys after `low` (exclusive; None = from the first key) up to `high` (included),
    resuming after `after`, the last key an earlier holder landed. `since` is the cursor
    pass's re-read start noted when the load was planned (encoded), kept in every page's
    meta as a cursor pass's pages keep theirs."""

    chunk: int = 0
    low: Watermark | None = None
    high: Watermark | None = None
    after: Watermark | None = None
    since: str | None = None
    cuts: int = 0  # the chunk's cuts when `high` was read: a later cut fences (LoadCut)


@dataclass(frozen=True, slots=True)
class LoadLease(Lease):
    """The table's lease while its one-piece first load pages up to `upto` (None: the
    table's end), as it stood after `cuts` cuts (run/steal.py). The load's writes are
    fenced by it: by the lease's generation as any, and by the cut count on the same
    row, so once a stealer cut the bound, no page read against the old one is recorded
    and the load's position does not move (LoadCut). Renewals use the plain lease."""

    cuts: int = 0
    upto: Watermark | None = None


@dataclass(frozen=True, slots=True)
class Reader:
    """A first load's reader a stealer may cut (StateStore.first_loads): the one-piece
    reader (`chunk` None) or a key range's, its last recorded key `after` (None: none
    yet, from `low`), its bound `high` (None: the table's end) after `cuts` cuts."""

    source: str
    table: str
    chunk: int | None
    low: Watermark | None
    after: Watermark | None
    high: Watermark | None
    cuts: int
    holder: str
    at: str | None = None  # `after` as recorded (compared as recorded by the cut)


@dataclass(frozen=True, slots=True)
class BackfillChunk:
    """One key range of a partitioned initial load, as recorded (for status and tests)."""

    chunk: int
    low: Watermark | None
    high: Watermark
    after: Watermark | None
    status: str  # 'pending' (maybe held now: see holder, expires_at) or 'done'
    holder: str | None  # of a done chunk: who read it
    expires_at: float
    generation: int
    rows: int


@dataclass(frozen=True, slots=True)
class LoadedBatch:
    """One batch of a committed load group, for StateStore.record_loaded. `status`:
    'loaded', or 'duplicate' when the ledger had it already: then the counts are those its
    ledger row kept (`changed_rows` None: it kept none), added only by the transaction
    that marks its manifest entry first."""

    batch: BatchRef
    status: str
    good_rows: int
    quarantined_rows: int
    changed_rows: int | None
    newest_cursor: str | None = None
    newest_epoch: float | None = None


@dataclass(frozen=True, slots=True)
class TableHealth:
    source: str
    table: str
    newest_cursor: str | None
    newest_cursor_epoch: float | None
    last_success: float | None
    last_error: str | None
    last_error_at: float | None
    rows_loaded: int  # rows that went to the merge: changed + re-read (see rows_reread)
    rows_quarantined: int
    page_size: int | None
    breaker: str | None
    rows_changed: int = 0  # inserted or updated in the warehouse (counted by its merge)

    @property
    def rows_reread(self) -> int:
        """Rows read again without effect: lookback windows, redelivered pages."""
        return max(0, self.rows_loaded - self.rows_changed)


class StateStore(ABC):
    """Checkpoints, manifest and history. Thread-safe; one instance per process.

    Adapters implement the five hooks below; every other method is shared SQL.
    """

    #: appended to a SELECT that must lock the rows it reads until the transaction ends
    #: (PostgreSQL: FOR UPDATE; SQLite's BEGIN IMMEDIATE already serialises writers)
    _lock_rows = ""
    #: where this state lives, for messages (a path or a DSN without its password)
    where: str = ""
    #: seconds a table's lease stays with the process that last released it (0: off; see
    #: the module docstring; run/worker.py sets it)
    lease_affinity: float = 0.0

    def __init__(self) -> None:
        self._lock = threading.RLock()

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Tx]:
        """One write transaction (serialised against every other writer of the state)."""

    @abstractmethod
    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read outside any transaction."""

    def _light_tx(self) -> AbstractContextManager[Tx]:
        """A write transaction whose durability may wait for the next durable commit: for
        writes that, lost to a power failure with every commit after them, only roll the
        state back to an earlier consistent point where nothing outside the state file
        depends on them (a checkpoint's move: its page is re-read; a poll's record; a
        lease: every holder on the host died with it; a run's history row). The embedded
        store commits them without an fsync of their own (SqliteStateStore); a server
        commits as usual."""
        return self._tx()

    def now(self) -> float:
        """The state's clock (epoch seconds), by which a poll's, a load's, an error's and a
        manifest entry's times are stamped and must be aged (`status`). Workers on hosts
        whose clocks disagree stamped them with their own: one 20 min behind showed its
        busy tables 'stalled', one ahead would show a table that stopped as fresh."""
        with self._tx() as c:
            return self._now(c)

    @abstractmethod
    def _now(self, c: Tx) -> float:
        """Epoch seconds that every holder of a lease agrees on: the local clock for one
        host, the database's clock when hosts share the state (their clocks may differ)."""

    @abstractmethod
    def _lease_end(self, seconds: float) -> tuple[str, tuple[Any, ...]]:
        """A lease's new end, `seconds` after `_now`, as an SQL expression and its
        parameters: written by the statement that checks the lease (`_fence`), so the
        renewal costs no round trip of its own."""

    def next_seq(self) -> int:
        """The next extraction sequence number: strictly increasing, never reused, and
        independent of any clock (a host clock that jumps back must not reorder rows).
        The first one this instance hands out is above the floor `floor_seq_by` set."""
        if self._seq_floor is not None:
            self.floor_seq()
        return self._take_seq()

    # set by floor_seq_by; a class default, so an adapter's __init__ need not know of it
    _seq_floor: Callable[[int], int | None] | None = None
    _floor_lock = threading.Lock()

    def floor_seq_by(self, highest_above: Callable[[int], int | None]) -> None:
        """Have `floor_seq` (at the latest, the first `next_seq`) raise the sequence above
        `highest_above(current)`, the highest number the warehouse holds above the state's
        current one (None: none). A state store lost, or restored from an older backup,
        beside a kept warehouse counts from a number below the warehouse rows', and the
        merge keeps the row of the higher number: every later read of a row lost to the
        warehouse's older version, every run ok (docs/architecture.md)."""
        self._floor_lock = threading.Lock()
        self._seq_floor = highest_above

    def floor_seq(self) -> None:
        """Raise the sequence above the floor set by `floor_seq_by`, once per instance:
        the warehouse asked for numbers above the state's current one (none, unless the
        state fell behind it), then `raise_seq`. Until it succeeds (a warehouse that
        cannot be reached raises here) no number is handed out."""
        with self._floor_lock:
            highest_above = self._seq_floor
            if highest_above is None:
                return
            current = self.current_seq()
            highest = highest_above(current)
            if highest is not None and highest > current:
                self.raise_seq(highest)
            self._seq_floor = None

    @abstractmethod
    def _take_seq(self) -> int:
        """`next_seq` without its floor: the adapter's sequence."""

    @abstractmethod
    def current_seq(self) -> int:
        """The number `next_seq` handed out last (across every instance), 0 before any:
        read only, so that the common case (the state ahead of the warehouse) writes
        nothing."""

    @abstractmethod
    def raise_seq(self, above: int) -> None:
        """Make every later `next_seq` larger than `above`, never smaller than it would
        have been. `above` is a number the warehouse already holds: a state store restored
        from an older backup, or made anew beside a kept warehouse, counts again from 1,
        and the merge keeps the row of the higher number, so a repair batch numbered below
        the warehouse row it replaces changed nothing (reconcile/repair.py)."""

    # --- checkpoints -------------------------------------------------------------
    def checkpoint(self, source: str, table: str) -> Watermark | None:
        rows = self._query(
            "SELECT watermark FROM checkpoints WHERE source=? AND tbl=?", (source, table)
        )
        return Watermark.from_json(rows[0][0]) if rows else None

    def checkpoint_written(self, source: str, table: str) -> float | None:
        """When the checkpoint was last written (epoch s, the state's clock), None when
        there is none: a page landed after it stands past the checkpoint's poll
        (run/extract.py: TableExtractor._previous_start)."""
        rows = self._query("SELECT updated_at FROM checkpoints WHERE source=? AND tbl=?",
                           (source, table))
        return float(rows[0][0]) if rows else None

    def advance_checkpoint(self, source: str, table: str, mark: Watermark,
                           lease: Lease | None = None) -> None:
        """Set the checkpoint to `mark`, the high of the page just published.

        No comparison with the stored position: the source's order (a collation, a type
        Python orders differently) is the only right one and is not known here. One
        extractor per table (the lease, checked here) publishing its pages in order is what
        keeps the checkpoint moving forward; a lookback re-read may set it back within the
        window it re-reads, which costs a re-read, never a row.

        A light commit (`_light_tx`): the page's manifest entry, committed durably before
        it, is what must survive; a move lost to a power failure re-reads that page (its
        batch id is in the manifest, so it is not landed again), never skips a row.
        """
        self._fenced_write(lease, *self._advance_sql(source, table, mark), durable=False)

    def _advance_sql(self, source: str, table: str, mark: Watermark
                     ) -> tuple[str, tuple[Any, ...]]:
        # updated_at by the state's clock, as the manifest's landed_at it is compared with
        # (TableExtractor._previous_start): two workers' clocks would order them wrongly
        stamp, at = self._lease_end(0.0)
        return ("INSERT INTO checkpoints VALUES (?,?,?,"
                f"{stamp}) ON CONFLICT(source, tbl) DO UPDATE "
                "SET watermark=excluded.watermark, updated_at=excluded.updated_at",
                (source, table, mark.to_json(), *at))

    def _advance(self, c: Tx, source: str, table: str, mark: Watermark) -> None:
        c.execute(*self._advance_sql(source, table, mark))

    def reset_checkpoint(self, source: str, table: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM checkpoints WHERE source=? AND tbl=?", (source, table))
            c.execute("DELETE FROM backfills WHERE source=? AND tbl=?", (source, table))
            c.execute("DELETE FROM backfill_chunks WHERE source=? AND tbl=?", (source, table))

    # --- the initial load in key order (run/extract.py: TableExtractor.backfill) -------
    def backfill(self, source: str, table: str) -> tuple[Watermark, Watermark | None] | None:
        """A started initial load: (the cursor position it ends at, the last key landed)."""
        rows = self._query("SELECT high, after FROM backfills WHERE source=? AND tbl=?",
                           (source, table))
        if not rows:
            return None
        high, after = rows[0]
        return Watermark.from_json(high), Watermark.from_json(after) if after else None

    def start_backfill(self, source: str, table: str, high: Watermark,
                       lease: Lease | None = None, since: str | None = None) -> None:
        """Note a one-piece first load's end `high`; `since` is its pages' re-read start
        (JSON: `{"since": ...}` or {}), which a stealer's range carries (run/steal.py)."""
        with self._tx() as c:
            self._fence(c, lease)
            c.execute("INSERT INTO backfills(source, tbl, high, after, started_at, since) "
                      "VALUES (?,?,?,NULL,?,?) ON CONFLICT DO NOTHING",
                      (source, table, high.to_json(), time.time(), since))

    def advance_backfill(self, source: str, table: str, after: Watermark,
                         lease: Lease | None = None) -> None:
        self._fenced_write(lease, "UPDATE backfills SET after=? WHERE source=? AND tbl=?",
                           (after.to_json(), source, table))

    def finish_backfill(self, source: str, table: str, lease: Lease | None = None) -> bool:
        """The whole table is landed: from here the checkpoint is the cursor position taken
        when the initial load began, so incremental runs re-read what changed during it.

        A partitioned load finishes only when every chunk is done, checked in this same
        transaction (False, and nothing changes, while one is not): a checkpoint set
        earlier would let the cursor pass start while a chunk still has rows to read, and
        a chunk's unchanged rows (cursor before the noted position) would never be read."""
        with self._tx() as c:
            self._fence(c, lease)
            row = c.execute("SELECT high FROM backfills WHERE source=? AND tbl=?",
                            (source, table)).fetchone()
            if row is None:
                return False
            left = c.execute("SELECT count(*) FROM backfill_chunks WHERE source=? AND tbl=? "
                             "AND status<>'done'", (source, table)).fetchone()
            if int(left[0]):
                return False
            self._advance(c, source, table, Watermark.from_json(row[0]))
            c.execute("DELETE FROM backfills WHERE source=? AND tbl=?", (source, table))
            return True  # the chunks stay as the load's history (who read what, how many)

    # --- a partitioned initial load (run/backfill.py): key-range chunks, each leased -----
    def plan_backfill(self, source: str, table: str, high: Watermark,
                      bounds: Sequence[tuple[Watermark | None, Watermark]],
                      since: str | None = None, lease: Lease | None = None) -> bool:
        """Split the table's initial load into key ranges `bounds` [(low exclusive, high
        included), ...], in one transaction with its noted cursor position `high` (a
        position noted earlier by `start_backfill` is kept). False, and nothing changes,
        when the load is split already or has landed a page in one piece."""
        with self._tx() as c:
            self._fence(c, lease)
            c.execute("INSERT INTO backfills(source, tbl, high, after, started_at) "
                      "VALUES (?,?,?,NULL,?) ON CONFLICT DO NOTHING",
                      (source, table, high.to_json(), time.time()))
            row = c.execute("SELECT after FROM backfills WHERE source=? AND tbl=?",
                            (source, table)).fetchone()
            if row[0] is not None or c.execute(
                    "SELECT 1 FROM backfill_chunks WHERE source=? AND tbl=?",
                    (source, table)).fetchone() is not None:
                return False
            # split: no stealer cuts it as a one-piece load (first_loads), only its ranges
            c.execute("UPDATE backfills SET since=NULL WHERE source=? AND tbl=?",
                      (source, table))
            c.executemany(
                "INSERT INTO backfill_chunks(source, tbl, chunk, low, high, status, "
                "expires_at, generation, rows, since) VALUES (?,?,?,?,?,'pending',0,0,0,?)",
                [(source, table, n, low.to_json() if low is not None else None,
                  top.to_json(), since) for n, (low, top) in enumerate(bounds)])
            return True

    def backfill_chunks(self, source: str, table: str) -> list[BackfillChunk]:
        rows = self._query("SELECT chunk, low, high, after, status, holder, expires_at, "
                           "generation, rows FROM backfill_chunks WHERE source=? AND tbl=? "
                           "ORDER BY chunk", (source, table))
        return [BackfillChunk(int(r[0]), _mark(r[1]), Watermark.from_json(r[2]), _mark(r[3]),
                              r[4], r[5], float(r[6]), int(r[7]), int(r[8])) for r in rows]

    def claim_chunk(self, source: str, table: str, holder: str, seconds: float
                    ) -> ChunkLease | None:
        """Lease the first chunk not done that nobody live holds (free, expired, or held by
        a dead process on this host); None when there is none. Each acquisition gets the
        chunk's next generation, which fences every earlier holder of that chunk."""
        with self._tx() as c:
            rows = c.execute("SELECT chunk, holder, expires_at, generation, low, high, after, "
                             "since, cuts FROM backfill_chunks WHERE source=? AND tbl=? AND "
                             f"status='pending' ORDER BY chunk{self._lock_rows}",
                             (source, table)).fetchall()
            now = self._now(c)
            for chunk, held, expires, gen, low, top, after, since, cuts in rows:
                if held and held != holder and expires > now and holder_alive(held):
                    continue
                c.execute("UPDATE backfill_chunks SET holder=?, expires_at=?, generation=? "
                          "WHERE source=? AND tbl=? AND chunk=?",
                          (holder, now + seconds, int(gen) + 1, source, table, chunk))
                return ChunkLease(source, table, holder, int(gen) + 1, seconds, int(chunk),
                                  _mark(low), Watermark.from_json(top), _mark(after), since,
                                  int(cuts))
        return None

    def advance_chunk(self, lease: ChunkLease, after: Watermark, rows: int) -> None:
        """A page of the chunk is published: its last key and its rows (fenced)."""
        with self._tx() as c:
            self._fence(c, lease)
            c.execute("UPDATE backfill_chunks SET after=?, rows=rows+? WHERE source=? AND "
                      "tbl=? AND chunk=?",
                      (after.to_json(), rows, lease.source, lease.table, lease.chunk))

    def finish_chunk(self, lease: ChunkLease) -> None:
        """Every key of the chunk is landed (fenced): it is never read again. Its holder
        stays as who read it."""
        with self._tx() as c:
            self._fence(c, lease)
            c.execute("UPDATE backfill_chunks SET status='done', expires_at=0, done_at=? "
                      "WHERE source=? AND tbl=? AND chunk=?",
                      (self._now(c), lease.source, lease.table, lease.chunk))

    # --- work stealing (run/steal.py): a reader's key range cut, its far part a new range -
    def load_bound(self, source: str, table: str
                   ) -> tuple[Watermark | None, Watermark | None, int]:
        """A one-piece first load's (last recorded key, bound, cuts): what its reader
        pages to (None: the table's end), and the cut count its LoadLease is fenced by."""
        rows = self._query("SELECT b.after, b.upto, coalesce(l.cuts, 0) FROM backfills b "
                           "LEFT JOIN extract_leases l ON l.source=b.source AND l.tbl=b.tbl "
                           "WHERE b.source=? AND b.tbl=?", (source, table))
        if not rows:
            return None, None, 0
        after, upto, cuts = rows[0]
        return _mark(after), _mark(upto), int(cuts)

    def chunk_bound(self, lease: ChunkLease) -> ChunkLease:
        """`lease` with its range's bound and cut count as they stand now (after a cut)."""
        row = self._query("SELECT high, cuts, after FROM backfill_chunks WHERE source=? AND "
                          "tbl=? AND chunk=?", (lease.source, lease.table, lease.chunk))[0]
        return replace(lease, high=Watermark.from_json(row[0]), cuts=int(row[1]),
                       after=_mark(row[2]))

    def first_loads(self, source: str | None = None, table: str | None = None
                    ) -> list[Reader]:
        """The readers of first loads in progress that a stealer may cut: a one-piece
        load's (its table's lease held, its re-read start recorded) and each held key
        range's, held by a live holder now (by the lease clock). A read."""
        now = self.now()
        where, params = _filters(**{"b.source": source, "b.tbl": table})
        one = self._query(
            "SELECT b.source, b.tbl, b.after, b.upto, l.cuts, l.holder FROM backfills b "
            "JOIN extract_leases l ON l.source=b.source AND l.tbl=b.tbl"
            f"{where}{' AND' if where else ' WHERE'} b.since IS NOT NULL AND "
            "l.holder IS NOT NULL AND l.expires_at > ?", (*params, now))
        where, params = _filters(**{"k.source": source, "k.tbl": table})
        ranges = self._query(
            "SELECT k.source, k.tbl, k.chunk, k.low, k.after, k.high, k.cuts, k.holder FROM "
            f"backfill_chunks k{where}{' AND' if where else ' WHERE'} k.status='pending' "
            "AND k.holder IS NOT NULL AND k.expires_at > ?", (*params, now))
        return [Reader(r[0], r[1], None, None, _mark(r[2]), _mark(r[3]), int(r[4]), r[5],
                       r[2]) for r in one if holder_alive(r[5])] + [
            Reader(r[0], r[1], int(r[2]), _mark(r[3]), _mark(r[4]), Watermark.from_json(r[5]),
                   int(r[6]), r[7], r[4]) for r in ranges if holder_alive(r[7])]

    def cut(self, reader: Reader, mid: Watermark, high: Watermark, holder: str,
            seconds: float) -> ChunkLease | None:
        """Cut `reader`'s bound to `mid` and lease the range (mid, high] to `holder` (a new
        key range of the load, generation 1), in one transaction; None, and nothing
        changes, when the reader's bound was cut since (`cuts`) or it recorded a page
        since (`after`: its page in hand might already hold keys past `mid`).

        The cut bumps the count on the reader's own lease row, the row its fence updates,
        so the two serialise (PostgreSQL re-checks the fence's WHERE on the row it waited
        for): a page the reader read against the old bound is refused (LoadCut) and it
        reads on from its last recorded key. `high` is the reader's bound as `reader` saw
        it, or for a reader bounded by the table's end, the last key read after the load
        noted its end (keys past it were added since: the cursor pass reads them)."""
        src, tbl = reader.source, reader.table
        try:
            with self._tx() as c:
                if reader.chunk is None:
                    bumped = c.execute(
                        "UPDATE extract_leases SET cuts=cuts+1 WHERE source=? AND tbl=? AND "
                        "holder=? AND cuts=? RETURNING cuts",
                        (src, tbl, reader.holder, reader.cuts)).fetchone()
                    row = c.execute("SELECT after, since FROM backfills WHERE source=? AND "
                                    f"tbl=?{self._lock_rows}", (src, tbl)).fetchone()
                    if bumped is None or row is None or row[1] is None or \
                            row[0] != reader.at:
                        raise _Moved
                    c.execute("UPDATE backfills SET upto=? WHERE source=? AND tbl=?",
                              (mid.to_json(), src, tbl))
                    since = json.loads(row[1]).get("since")
                    since = None if since is None else json.dumps(since)
                else:
                    row = c.execute(
                        "UPDATE backfill_chunks SET cuts=cuts+1, high=? WHERE source=? AND "
                        "tbl=? AND chunk=? AND status='pending' AND holder=? AND cuts=? "
                        "RETURNING after, since", (mid.to_json(), src, tbl, reader.chunk,
                                                   reader.holder, reader.cuts)).fetchone()
                    if row is None or row[0] != reader.at:
                        raise _Moved
                    since = row[1]
                    # cuts of one load take their range's number one at a time: two cuts of
                    # two ranges (each locking only its own) both read the same max(chunk)
                    # and the later INSERT failed (PostgreSQL: a unique violation out of
                    # `cut`, which ended its stealer's slot). After the reader's row, as
                    # the readers' own writes lock them (no lock-order inversion)
                    c.execute(f"SELECT 1 FROM backfills WHERE source=? AND tbl=?"
                              f"{self._lock_rows}", (src, tbl)).fetchone()
                chunk = int(c.execute("SELECT coalesce(max(chunk), -1) + 1 FROM "
                                      "backfill_chunks WHERE source=? AND tbl=?",
                                      (src, tbl)).fetchone()[0])
                now = self._now(c)
                c.execute("INSERT INTO backfill_chunks(source, tbl, chunk, low, high, status, "
                          "holder, expires_at, generation, rows, since) VALUES "
                          "(?,?,?,?,?,'pending',?,?,1,0,?)",
                          (src, tbl, chunk, mid.to_json(), high.to_json(), holder,
                           now + seconds, since))
                return ChunkLease(src, tbl, holder, 1, seconds, chunk, mid, high, None, since)
        except _Moved:
            return None

    # --- extraction leases ------------------------------------------------------------
    def try_lease(self, source: str, table: str, holder: str, seconds: float) -> Lease | None:
        """Take the table's extraction lease if it is free, expired, or held by a dead
        process on this host; None while another live holder has it. Every acquisition
        gets the next generation, which fences out all earlier ones. A light commit
        (`_light_tx`): what is recorded under the lease commits durably after it."""
        with self._light_tx() as c:
            # the row exists before it is locked, so two first acquisitions cannot both
            # insert generation 1: the second waits on the first's row lock
            c.execute("INSERT INTO extract_leases(source, tbl, holder, expires_at, generation) "
                      "VALUES (?,?,NULL,0,0) ON CONFLICT DO NOTHING",
                      (source, table))
            row = c.execute("SELECT holder, expires_at, generation FROM extract_leases "
                            f"WHERE source=? AND tbl=?{self._lock_rows}",
                            (source, table)).fetchone()
            now = self._now(c)
            if row[0] and row[0] != holder and row[1] > now and holder_alive(row[0]):
                return None
            if self.lease_affinity > 0 and self._owned_elsewhere(c, source, table, holder, now):
                return None
            generation = int(row[2]) + 1
            c.execute("UPDATE extract_leases SET holder=?, expires_at=?, generation=? "
                      "WHERE source=? AND tbl=?",
                      (holder, now + seconds, generation, source, table))
            if self.lease_affinity > 0:
                self._own(c, source, table, holder, now)
            return Lease(source, table, holder, generation, seconds)

    def _owned_elsewhere(self, c: Tx, source: str, table: str, holder: str, now: float
                         ) -> bool:
        """Whether another live process took or released this table's lease within
        `lease_affinity` seconds and looks after less than two tables more than we do."""
        row = c.execute("SELECT owner, released_at FROM extract_owners WHERE source=? AND "
                        "tbl=?", (source, table)).fetchone()
        me = _process(holder)
        since = now - self.lease_affinity
        if row is None or row[0] == me or row[1] <= since or not holder_alive(row[0]):
            return False
        if c.execute("SELECT 1 FROM backfills b JOIN backfill_chunks k ON k.source=b.source "
                     "AND k.tbl=b.tbl WHERE b.source=? AND b.tbl=? LIMIT 1",
                     (source, table)).fetchone():
            return False  # a partitioned first load: every worker reads ranges, any ends it
        if c.execute("SELECT 1 FROM table_health WHERE source=? AND tbl=? AND last_error_at "
                     "> coalesce(last_success, 0)", (source, table)).fetchone():
            return False  # failing (maybe only where its owner runs): any worker may try it
        owned = dict(c.execute("SELECT owner, count(*) FROM extract_owners WHERE "
                               "released_at > ? AND owner IN (?, ?) GROUP BY owner",
                               (since, row[0], me)).fetchall())
        return int(owned.get(row[0], 0)) - int(owned.get(me, 0)) < 2

    def _own(self, c: Tx, source: str, table: str, holder: str, now: float) -> None:
        """Note the table as looked after by `holder`'s process, as of `now`."""
        c.execute("INSERT INTO extract_owners VALUES (?,?,?,?) ON CONFLICT (source, tbl) "
                  "DO UPDATE SET owner=excluded.owner, released_at=excluded.released_at",
                  (source, table, _process(holder), now))

    def look_after(self, source: str, table: str) -> bool:
        """Among workers (`lease_affinity` > 0): False while another live process looks
        after the table (as try_lease would refuse it), so this one does not poll it at all
        (an idle poll reads the source without taking the lease); else True, noting this
        process as its owner again once a third of `lease_affinity` has passed, so an
        owner whose polls find nothing keeps its tables. Always True without affinity."""
        if self.lease_affinity <= 0:
            return True
        me = f"{socket.gethostname()}:{os.getpid()}"
        with self._tx() as c:
            now = self._now(c)
            if self._owned_elsewhere(c, source, table, f"{me}:poll", now):
                return False
            row = c.execute("SELECT owner, released_at FROM extract_owners WHERE source=? "
                            "AND tbl=?", (source, table)).fetchone()
            if row is None or row[0] != me or now - row[1] > self.lease_affinity / 3:
                self._own(c, source, table, f"{me}:poll", now)
        return True

    def lease_holder(self, source: str, table: str) -> tuple[str | None, float] | None:
        """(holder, expires_at) of the table's lease, for messages."""
        rows = self._query("SELECT holder, expires_at FROM extract_leases WHERE source=? "
                           "AND tbl=?", (source, table))
        return (rows[0][0], rows[0][1]) if rows else None

    def renew_lease(self, lease: Lease) -> None:
        """Extend the lease; ExtractionFenced if it was taken over meanwhile (a cut of
        its bound is not: the holder reads on, to the new bound)."""
        with self._light_tx() as c:
            self._fence(c, lease, cut=False)

    def release_lease(self, lease: Lease) -> None:
        """Free the lease at once (if still ours): the next extractor need not wait."""
        with self._light_tx() as c:
            if isinstance(lease, ChunkLease):
                c.execute("UPDATE backfill_chunks SET holder=NULL, expires_at=0 WHERE "
                          "source=? AND tbl=? AND chunk=? AND holder=? AND generation=?",
                          (lease.source, lease.table, lease.chunk, lease.holder,
                           lease.generation))
                return
            c.execute("UPDATE extract_leases SET holder=NULL, expires_at=0 WHERE source=? "
                      "AND tbl=? AND holder=? AND generation=?",
                      (lease.source, lease.table, lease.holder, lease.generation))
            if self.lease_affinity > 0:  # the table stays ours while we come back for it
                held = c.execute("SELECT holder FROM extract_leases WHERE source=? AND tbl=?",
                                 (lease.source, lease.table)).fetchone()
                if held is None or held[0] is None:  # not taken over meanwhile
                    self._own(c, lease.source, lease.table, lease.holder, self._now(c))

    def _fence(self, c: Tx, lease: Lease | None, cut: bool = True) -> None:
        """Inside a state transaction: raise ExtractionFenced unless `lease` is still the
        current one of its table (or, for a ChunkLease, of its key range of the table's
        partitioned first load), else extend it (every durable step is also a renewal).

        The check and the renewal are one UPDATE whose WHERE names the holder and the
        generation: it locks the row as SELECT ... FOR UPDATE did (a takeover waits for
        this transaction, and this one for a takeover in flight, whose new generation the
        WHERE then no longer matches), and costs one round trip instead of three (lock,
        the state's clock, the renewal), paid twice per landed batch."""
        if lease is None:
            return
        if c.execute(*self._fence_sql(lease, cut)).fetchone() is None:
            raise self._fenced_by(c, lease)

    def _fence_sql(self, lease: Lease, cut: bool = True) -> tuple[str, tuple[Any, ...]]:
        """`_fence`'s check-and-renew: an UPDATE that returns a row only if `lease` is
        still the current one (with `cut`, for a reader of a first load's key range, and
        its bound uncut since: LoadLease, ChunkLease)."""
        table, where, keys = _lease_row(lease)
        end, params = self._lease_end(lease.seconds)
        bound = isinstance(lease, LoadLease | ChunkLease) and cut
        return (f"UPDATE {table} SET expires_at={end} WHERE {where} AND holder=? AND "
                f"generation=?{' AND cuts=?' if bound else ''} RETURNING generation",
                (*params, *keys, lease.holder, lease.generation,
                 *((lease.cuts,) if bound else ())))  # type: ignore[attr-defined]

    @staticmethod
    def _fenced_by(c: Tx, lease: Lease) -> ExtractionFenced:
        """The error for a failed fence, naming who holds the lease now: LoadCut when it
        is still this reader's and only its bound was cut."""
        table, where, keys = _lease_row(lease)
        row = c.execute(f"SELECT holder, generation, cuts FROM {table} WHERE {where}", keys
                        ).fetchone()
        if row is not None and (row[0], int(row[1])) == (lease.holder, lease.generation):
            return LoadCut(f"a stealer cut this reader's key range (cut {row[2]}, it read "
                           f"to cut {getattr(lease, 'cuts', 0)})", stage="extract",
                           source=lease.source, table=lease.table)
        return _fenced(lease, *((row[0], row[1]) if row is not None else (None, 0)))

    def _fenced_write(self, lease: Lease | None, sql: str, params: tuple[Any, ...],
                      durable: bool = True) -> None:
        """One write (an INSERT or UPDATE of a table other than the lease's own) that
        happens only while `lease` is current, renewing it: the fence and the write in
        one transaction (`durable` False: a light one, `_light_tx`). PostgreSQL overrides
        it with one statement (no BEGIN and COMMIT round trips): this runs twice per
        landed page."""
        with self._tx() if durable else self._light_tx() as c:
            self._fence(c, lease)
            c.execute(sql, params)

    def leases(self) -> list[dict[str, Any]]:
        """Every extraction lease held now, of a table (chunk None) or of one key range of
        its partitioned first load: who holds it and until when (by the lease clock).
        A read, outside any write transaction: `status` asked for a SQLite state's write
        lock here, so a loop suspended (SIGSTOP) inside a commit made status wait the
        30 s busy timeout and then say the state could not be read, not naming the loop."""
        now = self.now()
        rows = self._query("SELECT source, tbl, NULL, holder, expires_at, generation FROM "
                           "extract_leases WHERE holder IS NOT NULL AND expires_at > ? "
                           "UNION ALL SELECT source, tbl, chunk, holder, expires_at, "
                           "generation FROM backfill_chunks WHERE status = 'pending' AND "
                           "holder IS NOT NULL AND expires_at > ? ORDER BY 1, 2, 3",
                           (now, now))
        cols = ["source", "table", "chunk", "holder", "expires_at", "generation"]
        return [dict(zip(cols, r, strict=True)) for r in rows]

    # --- workers (steadyflow worker) -----------------------------------------------------
    def register_worker(self, worker_id: str, host: str, pid: int,
                        heartbeat_every: float) -> None:
        with self._tx() as c:
            now = self._now(c)
            c.execute("INSERT INTO workers(worker_id, host, pid, started_at, heartbeat_at, "
                      "heartbeat_every, units, status) VALUES (?,?,?,?,?,?,'[]','running') "
                      "ON CONFLICT(worker_id) DO UPDATE SET heartbeat_at=excluded.heartbeat_at, "
                      "status='running', stopped_at=NULL",
                      (worker_id, host, pid, now, now, heartbeat_every))

    def heartbeat_worker(self, worker_id: str, units: list[str], stats: dict[str, Any],
                         status: str = "running") -> None:
        """The worker is alive now and holds `units` (and says what it did so far)."""
        with self._tx() as c:
            c.execute("UPDATE workers SET heartbeat_at=?, units=?, stats=?, status=? "
                      "WHERE worker_id=?", (self._now(c), json.dumps(units),
                                            json.dumps(stats), status, worker_id))

    def stop_worker(self, worker_id: str, error: str | None = None) -> None:
        """The worker left: 'stopped' when asked to, 'failed' with `error` when its loop
        ended by itself (the error kept in its stats, shown as the worker's `error`)."""
        with self._tx() as c:
            now = self._now(c)
            if error is None:
                c.execute("UPDATE workers SET status='stopped', stopped_at=?, heartbeat_at=?, "
                          "units='[]' WHERE worker_id=?", (now, now, worker_id))
            else:
                c.execute("UPDATE workers SET status='failed', stopped_at=?, heartbeat_at=?, "
                          "units='[]', stats=? WHERE worker_id=?",
                          (now, now, json.dumps({"error": error}), worker_id))

    def workers(self, since: float = 3600.0) -> list[dict[str, Any]]:
        """Workers seen in the last `since` seconds, with their heartbeat's age measured by
        the state's clock (a worker's host clock may differ from the reader's). When none
        was, the last one heard of: workers all killed longer ago than `since` are still a
        pipeline nothing runs ('lost', status failing), not one that never had workers
        (an empty list, status healthy). A read, outside any write transaction (see
        `leases`)."""
        now = self.now()
        rows = self._query("SELECT worker_id, host, pid, started_at, heartbeat_at, "
                           "heartbeat_every, units, status, stopped_at, stats FROM workers "
                           "WHERE heartbeat_at > ? OR heartbeat_at = (SELECT "
                           "max(heartbeat_at) FROM workers) ORDER BY started_at",
                           (now - since,))
        out = []
        for r in rows:
            age = now - r[4]
            status = r[7]
            if status == "running" and age > 3 * r[5]:
                status = "lost"  # no heartbeat for three periods: killed, stopped or cut off
            stats = json.loads(r[9]) if r[9] else {}
            out.append({"worker_id": r[0], "host": r[1], "pid": r[2], "started_at": r[3],
                        "heartbeat_age": age, "units": json.loads(r[6]), "status": status,
                        "stopped_at": r[8], "stats": stats,
                        "error": stats.get("error") if status == "failed" else None})
        return out

    # --- manifest ----------------------------------------------------------------
    def record_landed(self, ref: BatchRef, lease: Lease | None = None) -> None:
        """Add a landed batch to the manifest (the sweeper's truth). With `lease`, only if
        it is still the table's current lease (see _fence). A batch known already keeps its
        entry, unless gc deleted its file ('gone'): landed again (the same page re-read),
        its new file is the one to load and to collect later. The entry's landed_at (what
        `pending_since` ages) is the state's clock; the ref keeps the lander's."""
        stamp, at = self._lease_end(0.0)
        self._fenced_write(
            lease,
            "INSERT INTO manifest(batch_id, source, tbl, ref, rows, landed_at) "
            f"VALUES (?,?,?,?,?,{stamp}) ON CONFLICT(batch_id) DO UPDATE SET "
            "ref=excluded.ref, landed_at=excluded.landed_at, status='landed' WHERE "
            "manifest.status='gone'",
            (ref.batch_id, ref.source, ref.table, ref.to_json(), ref.rows, *at))

    def mark_loaded(
        self, batch_id: str, good_rows: int | None, quarantined_rows: int | None,
        status: str = "loaded",
    ) -> None:
        """Mark a batch loaded without adding its counts to the table's health. No loader
        calls it any more (record_loaded marks and counts in one transaction, the
        sweeper's finds included); kept for the contract tests' setup."""
        with self._tx() as c:
            self._mark_loaded(c, batch_id, good_rows, quarantined_rows, status)

    def _mark_loaded(self, c: Tx, batch_id: str, good_rows: int | None,
                     quarantined_rows: int | None, status: str) -> None:
        # a batch marked loaded stays so: its redelivery (the loader was killed after the
        # mark, before the ack) is a ledger duplicate whose counts would say nothing
        c.execute(
            "UPDATE manifest SET status=?, loaded_at=?, good_rows=?, quarantined_rows=?, "
            "error=NULL WHERE batch_id=? AND (?='loaded' OR status<>'loaded')",
            (status, time.time(), good_rows, quarantined_rows, batch_id, status),
        )

    def record_loaded(self, loaded: Sequence[LoadedBatch]) -> None:
        """A committed group's bookkeeping in ONE transaction: every batch's manifest entry
        marked, the rows of each one loaded (not a ledger duplicate) added to its table's
        health (record_load). One commit per group, not two per batch: a state commit is
        an fsync, and at a few hundred rows per batch those were most of the loader's time.

        Manifest rows are written in (source, table, batch) order, then each table's
        health row once, its batches' counts summed (three statements per table, not per
        batch), in (source, table) order, never the group's: two loaders' groups holding
        batches of the same tables in other orders locked the tables' health rows in
        opposite orders, and PostgreSQL aborted one as a deadlock (its committed group
        reported failed, its counts lost with the redelivery).

        A batch's counts are added by the transaction that moves its manifest entry out of
        'landed', and by no other (the row lock makes a second one find it moved): its
        loader, or, when that loader died after the warehouse commit, the redelivery or
        the sweeper that finds it in the ledger ('duplicate', with the counts its ledger
        row kept). Counting at every 'loaded' would count twice a batch the sweeper marked
        while its loader was between the commit and this step. A duplicate counts only
        if its entry was never marked before (loaded_at NULL): one gc deleted and that
        was landed again ('gone', then 'landed': record_landed) was counted at its first
        load, as was one the manifest does not know."""
        if not loaded:
            return
        with self._tx() as c:
            counted: dict[tuple[str, str], list[LoadedBatch]] = {}
            for b in sorted(loaded, key=lambda b: (b.batch.source, b.batch.table,
                                                   b.batch.batch_id)):
                moved = c.execute(
                    "UPDATE manifest SET status='loaded', loaded_at=?, good_rows=?, "
                    "quarantined_rows=?, error=NULL WHERE batch_id=? AND status='landed' "
                    "AND (?='loaded' OR loaded_at IS NULL) RETURNING batch_id",
                    (time.time(), b.good_rows, b.quarantined_rows, b.batch.batch_id,
                     b.status),
                ).fetchone() is not None
                if not moved:  # marked already (counted by whoever marked it), or unknown
                    known = c.execute("SELECT 1 FROM manifest WHERE batch_id=?",
                                      (b.batch.batch_id,)).fetchone() is not None
                    if known or b.status != "loaded":
                        self._mark_loaded(c, b.batch.batch_id, b.good_rows,
                                          b.quarantined_rows, b.status)
                        continue
                if b.changed_rows is not None:
                    counted.setdefault((b.batch.source, b.batch.table), []).append(b)
            # health after every manifest row: one lock order, manifest then health
            for (source, table), batches in counted.items():
                newest = max((b for b in batches if b.newest_epoch is not None),
                             key=lambda b: b.newest_epoch or 0.0, default=None)
                self._record_load(
                    c, source, table, sum(b.good_rows for b in batches),
                    sum(b.quarantined_rows for b in batches),
                    newest.newest_cursor if newest else None,
                    newest.newest_epoch if newest else None,
                    sum(b.changed_rows or 0 for b in batches))

    def mark_failed(self, batch_id: str, error: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE manifest SET error=? WHERE batch_id=?",
                      (scrub(error)[:2000], batch_id))

    def pending_batches(self) -> list[BatchRef]:
        """Landed batches not yet known to be loaded, oldest first (the sweeper's input)."""
        rows = self._query("SELECT ref FROM manifest WHERE status='landed' ORDER BY landed_at")
        return [BatchRef.from_json(r[0]) for r in rows]

    def pending(self) -> tuple[int, float | None]:
        """(landed batches not yet loaded, how long the oldest of them has waited in
        seconds, or None): the consumer lag as the manifest holds it (one query on the
        manifest_status index). The age is taken by the state's clock in the same query,
        as landed_at was stamped (see now()): aged by the reader's clock, it was off by
        the reader's skew (20 min ahead: a lag of 20 min for a batch landed just now)."""
        stamp, at = self._lease_end(0.0)
        rows = self._query(f"SELECT count(*), {stamp} - min(landed_at) FROM manifest "
                           "WHERE status='landed'", at)
        count, age = rows[0] if rows else (0, None)
        return int(count or 0), max(0.0, float(age)) if age is not None else None

    def pending_since(self) -> dict[tuple[str, str], float]:
        """Per (source, table): when its oldest landed batch not yet loaded landed (epoch
        s). A table whose batch waits long while its polls go on is behind however fresh
        its last poll is (observe/status.py)."""
        rows = self._query("SELECT source, tbl, min(landed_at) FROM manifest "
                           "WHERE status='landed' GROUP BY source, tbl")
        return {(r[0], r[1]): float(r[2]) for r in rows}

    def failed_batch_ids(self) -> set[str]:
        """Landed batches whose last load attempt failed (their error is in the manifest)."""
        return {r[0] for r in self._query(
            "SELECT batch_id FROM manifest WHERE status='landed' AND error IS NOT NULL")}

    def failing_batches(self) -> dict[tuple[str, str], int]:
        """Per (source, table): landed batches whose last load attempt failed. Such a table
        is not making progress, whatever later batches of it loaded."""
        rows = self._query("SELECT source, tbl, count(*) FROM manifest WHERE status='landed' "
                           "AND error IS NOT NULL GROUP BY source, tbl")
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def batches(self, source: str | None = None, table: str | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        where, params = _filters(source=source, tbl=table)
        sql = ("SELECT batch_id, source, tbl, rows, status, landed_at, loaded_at, good_rows, "
               f"quarantined_rows, error, ref FROM manifest{where} ORDER BY landed_at DESC "
               "LIMIT ?")
        cols = ["batch_id", "source", "table", "rows", "status", "landed_at", "loaded_at",
                "good_rows", "quarantined_rows", "error", "ref"]
        return [dict(zip(cols, r, strict=True)) for r in self._query(sql, (*params, limit))]

    def batch(self, batch_id: str) -> BatchRef | None:
        rows = self._query("SELECT ref FROM manifest WHERE batch_id=?", (batch_id,))
        return BatchRef.from_json(rows[0][0]) if rows else None

    def landed_batches(self, source: str | None = None, table: str | None = None,
                       before: float | None = None) -> list[tuple[BatchRef, str]]:
        """Every batch whose landed file is still kept (status not 'gone'), with its
        status, oldest first: what `compact` and `gc` work on (run/compact.py,
        run/retention.py). `before`: only those landed before that time (epoch s)."""
        where, params = _filters(source=source, tbl=table)
        where = f"{where} AND status<>'gone'" if where else " WHERE status<>'gone'"
        args: tuple[Any, ...] = params
        if before is not None:
            where, args = f"{where} AND landed_at<?", (*params, before)
        rows = self._query(f"SELECT ref, status FROM manifest{where} ORDER BY landed_at",
                           args)
        return [(BatchRef.from_json(r[0]), r[1]) for r in rows]

    def relocate(self, refs: Sequence[BatchRef], lease: Lease | None = None) -> None:
        """Point these batches' manifest entries at where compaction moved them, in ONE
        transaction: every batch of a compacted file is moved, or none is. With `lease`
        (the table's compaction lease), only if it is still the current one (see _fence):
        a compactor that stalled past it must not point entries at a file the new holder
        has swept as unreferenced."""
        with self._tx() as c:
            self._fence(c, lease)
            c.executemany("UPDATE manifest SET ref=? WHERE batch_id=?",
                          [(r.to_json(), r.batch_id) for r in refs])

    def mark_gone(self, batch_ids: Sequence[str]) -> None:
        """These loaded batches' files were deleted (landing.retention, `steadyflow gc`);
        their manifest rows stay as history. A batch not loaded is never marked."""
        with self._tx() as c:
            c.executemany("UPDATE manifest SET status='gone' WHERE batch_id=? AND status IN "
                          "('loaded', 'duplicate')", [(b,) for b in batch_ids])

    # --- run history ---------------------------------------------------------------
    def start_run(self, command: str) -> int:
        """A run's row in the history. This and `end_run` are light commits (_light_tx):
        nothing outside the state file refers to a run, and a power failure that loses
        the tail of the history loses it with every commit after it; the run's durable
        steps (a manifest entry, a load's marks) fsync it along, and a row left unended
        is closed by the next loop (close_runs). Each was an fsync on the critical path of
        every run and every cycle (bench/NOTES.md, session 14)."""
        with self._light_tx() as c:
            row = c.execute("INSERT INTO runs(command, started_at) VALUES (?, ?) RETURNING run_id",
                            (command, time.time())).fetchone()
            return int(row[0])

    def end_run(self, run_id: int, outcome: str, batches: int, rows: int,
                error: str | None = None) -> None:
        with self._light_tx() as c:
            c.execute(
                "UPDATE runs SET ended_at=?, outcome=?, batches=?, rows=?, error=? WHERE run_id=?",
                (time.time(), outcome, batches, rows, error and scrub(error), run_id),
            )

    def close_runs(self, outcome: str, since: float, command: str) -> int:
        """End the `command` runs started since `since` (epoch s) and never ended, as
        `outcome`: those of a loop that was killed (cli _hold_loop, under the loop lock,
        so no live loop of this state directory has such a run). Returns how many."""
        with self._tx() as c:
            return len(c.execute(
                "UPDATE runs SET ended_at=?, outcome=?, error=? WHERE ended_at IS NULL AND "
                "command=? AND started_at>=? RETURNING run_id",
                (time.time(), outcome, "the process ended without finishing this run",
                 command, since - 1.0)).fetchall())

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        cols = ["run_id", "command", "started_at", "ended_at", "outcome", "batches", "rows",
                "error"]
        return [dict(zip(cols, r, strict=True)) for r in self._query(
            f"SELECT {', '.join(cols)} FROM runs ORDER BY run_id DESC LIMIT ?", (limit,))]

    def last_successful_run(self) -> float | None:
        # a run that moved data to the warehouse: `run`, its follow rounds, or `load`
        # alone (an `extract` or a `reconcile` that went well loads nothing)
        rows = self._query("SELECT max(ended_at) FROM runs WHERE outcome='ok' "
                           "AND command IN ('run', 'load')")
        return rows[0][0] if rows else None

    # --- table health --------------------------------------------------------------
    def _ensure_health(self, c: Tx, source: str, table: str) -> None:
        c.execute("INSERT INTO table_health(source, tbl) VALUES (?,?) ON CONFLICT DO NOTHING",
                  (source, table))

    def record_load(self, source: str, table: str, rows: int, quarantined: int,
                    newest_cursor: str | None, newest_epoch: float | None,
                    changed: int | None = None) -> None:
        """`rows` went to the merge, `changed` of them changed the warehouse (all of them
        when not told)."""
        with self._tx() as c:
            self._record_load(c, source, table, rows, quarantined, newest_cursor,
                              newest_epoch, changed)

    def _record_load(self, c: Tx, source: str, table: str, rows: int, quarantined: int,
                     newest_cursor: str | None, newest_epoch: float | None,
                     changed: int | None) -> None:
        self._ensure_health(c, source, table)
        stamp, at = self._lease_end(0.0)  # the state's clock: see now()
        c.execute(
            "UPDATE table_health SET rows_loaded=rows_loaded+?, "
            "rows_changed=coalesce(rows_changed, 0)+?, "
            f"rows_quarantined=rows_quarantined+?, last_success={stamp} WHERE source=? AND "
            "tbl=?", (rows, rows if changed is None else changed, quarantined, *at,
                      source, table))
        if newest_epoch is not None:
            c.execute(
                "UPDATE table_health SET newest_cursor=?, newest_cursor_epoch=? "
                "WHERE source=? AND tbl=? AND (newest_cursor_epoch IS NULL OR "
                "newest_cursor_epoch < ?)",
                (newest_cursor, newest_epoch, source, table, newest_epoch))

    def record_error(self, source: str, table: str, error: str) -> None:
        with self._tx() as c:
            self._ensure_health(c, source, table)
            stamp, at = self._lease_end(0.0)  # the state's clock: see now()
            c.execute(
                f"UPDATE table_health SET last_error=?, last_error_at={stamp} WHERE source=? "
                "AND tbl=?", (scrub(error)[:2000], *at, source, table),
            )

    def record_source_state(self, source: str, table: str, page_size: int | None = None,
                            breaker: str | None = None) -> None:
        with self._tx() as c:
            self._ensure_health(c, source, table)
            if page_size is not None:
                c.execute("UPDATE table_health SET page_size=? WHERE source=? AND tbl=?",
                          (page_size, source, table))
            if breaker is not None:
                c.execute("UPDATE table_health SET breaker=? WHERE source=? AND tbl=?",
                          (breaker, source, table))

    def health(self) -> list[TableHealth]:
        rows = self._query(
            "SELECT source, tbl, newest_cursor, newest_cursor_epoch, last_success, last_error, "
            "last_error_at, rows_loaded, rows_quarantined, page_size, breaker, "
            "coalesce(rows_changed, 0) FROM table_health ORDER BY source, tbl"
        )
        return [TableHealth(*r) for r in rows]

    # --- source polls (lag) -----------------------------------------------------------
    def record_poll(self, source: str, table: str, high: Watermark | None,
                    high_epoch: float | None) -> None:
        """A successful poll: the source's high-water mark it saw (for lag) and when.

        It also records the table's breaker closed: the source answered. A process records
        its own breaker's transitions only, so an 'open' left by a worker that died (or
        was scaled away) while its breaker was open stayed in the table's health after
        another worker, whose breaker never left 'closed', read the source again: the
        status said 'source down' (failing) for ever. A light commit (`_light_tx`)."""
        stamp, at = self._lease_end(0.0)  # the state's clock: see now()
        with self._light_tx() as c:
            c.execute(
                f"INSERT INTO source_polls VALUES (?,?,?,?,{stamp}) ON CONFLICT(source, tbl) "
                "DO UPDATE SET high=excluded.high, high_epoch=excluded.high_epoch, "
                "polled_at=excluded.polled_at",
                (source, table, high.to_json() if high else None, high_epoch, *at))
            c.execute("UPDATE table_health SET breaker='closed' WHERE source=? AND tbl=? AND "
                      "breaker IS NOT NULL AND breaker <> 'closed'", (source, table))

    def polls(self) -> dict[tuple[str, str], tuple[float | None, float]]:
        """(source, table) -> (high-water mark as epoch seconds or None, last poll time)."""
        rows = self._query("SELECT source, tbl, high_epoch, polled_at FROM source_polls")
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    # --- quarantine ------------------------------------------------------------------
    def parked_by(self, source: str, table: str, hashes: list[str]) -> dict[str, str]:
        """Which of these bad-row hashes are parked already, and by which batch."""
        found: dict[str, str] = {}
        for i in range(0, len(hashes), 500):
            chunk = hashes[i:i + 500]
            rows = self._query(
                f"SELECT row_hash, batch_id FROM parked_rows WHERE source=? AND tbl=? AND "
                f"row_hash IN ({','.join('?' * len(chunk))})", (source, table, *chunk))
            found.update(dict(rows))
        return found

    def record_quarantine(self, batch_id: str, source: str, table: str, path: str, rows: int,
                          reasons: dict[str, int], hashes: list[str] | None = None,
                          count: bool = False) -> None:
        """Index a quarantine file. `count`: also add its rows to the table's quarantined
        count, in this transaction and only with a new index entry: records refused at
        extraction (run/extract.py) reach no load, whose marks count every other bad row
        (record_loaded)."""
        with self._tx() as c:
            c.executemany("INSERT INTO parked_rows VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                          [(source, table, h, batch_id) for h in hashes or []])
            new = c.execute(
                "INSERT INTO quarantine(batch_id, source, tbl, path, rows, reasons, "
                "created_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING RETURNING batch_id",
                (batch_id, source, table, path, rows, json.dumps(reasons), time.time()),
            ).fetchone() is not None
            if count and new:
                self._ensure_health(c, source, table)
                c.execute("UPDATE table_health SET rows_quarantined=rows_quarantined+? "
                          "WHERE source=? AND tbl=?", (rows, source, table))

    def quarantined(self, status: str | None = "open") -> list[dict[str, Any]]:
        cols = ["batch_id", "source", "table", "path", "rows", "reasons", "status",
                "created_at", "replayed_at", "replayed_rows"]
        where, params = _filters(status=status)
        rows = self._query(
            "SELECT batch_id, source, tbl, path, rows, reasons, status, created_at, replayed_at, "
            f"replayed_rows FROM quarantine{where} ORDER BY created_at", params)
        out = []
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            d["reasons"] = json.loads(d["reasons"])
            out.append(d)
        return out

    def mark_quarantine_replayed(self, batch_id: str, rows: int, still_bad: int) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE quarantine SET status=?, replayed_at=?, replayed_rows=? WHERE batch_id=?",
                ("open" if still_bad else "replayed", time.time(), rows, batch_id),
            )

    def resolve_quarantine(self, batch_ids: list[str]) -> list[str]:
        """Close open quarantine entries without loading their rows (status 'resolved',
        closed at replayed_at): `gc` then treats them as replayed. Returns those closed."""
        closed = []
        with self._tx() as c:
            for batch_id in batch_ids:
                if c.execute("UPDATE quarantine SET status='resolved', replayed_at=? WHERE "
                             "batch_id=? AND status='open' RETURNING batch_id",
                             (time.time(), batch_id)).fetchone() is not None:
                    closed.append(batch_id)
        return closed

    # --- reconciliation ------------------------------------------------------------------
    def record_reconcile(self, source: str, table: str, buckets: int, rows_compared: int,
                         missing: int, extra: int, mismatched: int, repaired: int,
                         detail: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO reconcile_runs(source, tbl, at, buckets, rows_compared, missing, "
                "extra, mismatched, repaired, detail) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (source, table, time.time(), buckets, rows_compared, missing, extra, mismatched,
                 repaired, json.dumps(detail, default=str)),
            )

    def verified_buckets(self, source: str, table: str) -> list[VerifiedBucket]:
        """The table's buckets as its last clean reconcile verified them, by bucket."""
        rows = self._query(
            "SELECT bucket, lo, hi, rows, checksum, verified_at, since FROM reconcile_buckets "
            "WHERE source=? AND tbl=? ORDER BY bucket", (source, table))
        return [VerifiedBucket(int(b), _int(lo), _int(hi), int(n), int(c), float(at),
                               _int(since)) for b, lo, hi, n, c, at, since in rows]

    def save_verified_buckets(self, source: str, table: str, buckets: Sequence[VerifiedBucket],
                              since: int | None, replace: bool = False) -> None:
        """Record buckets verified clean (integers as text: a bound may exceed 64 bits);
        `since` is written on every bucket of the table. `replace`: these are all of the
        table's buckets (a full reconcile), the old ones go. One transaction."""
        with self._tx() as c:
            if replace:
                c.execute("DELETE FROM reconcile_buckets WHERE source=? AND tbl=?",
                          (source, table))
            for b in buckets:
                c.execute(
                    "INSERT INTO reconcile_buckets(source, tbl, bucket, lo, hi, since, rows, "
                    "checksum, verified_at) VALUES (?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (source, tbl, bucket) DO UPDATE SET lo=excluded.lo, "
                    "hi=excluded.hi, rows=excluded.rows, checksum=excluded.checksum, "
                    "verified_at=excluded.verified_at",
                    (source, table, b.bucket, _text(b.lo), _text(b.hi), _text(since), b.rows,
                     str(b.checksum), b.verified_at))
            c.execute("UPDATE reconcile_buckets SET since=? WHERE source=? AND tbl=?",
                      (_text(since), source, table))

    def forget_verified_buckets(self, source: str, table: str) -> None:
        """After a reconcile that was not clean: the next incremental one compares all."""
        with self._tx() as c:
            c.execute("DELETE FROM reconcile_buckets WHERE source=? AND tbl=?", (source, table))

    def last_reconcile(self) -> list[dict[str, Any]]:
        """Each table's last reconcile; `duplicates`: keys twice in the warehouse (from its
        detail; the metrics count them with the extra rows, as the reconcile did)."""
        cols = ["source", "table", "at", "buckets", "rows_compared", "missing", "extra",
                "mismatched", "repaired"]
        rows = self._query(
            "SELECT source, tbl, at, buckets, rows_compared, missing, extra, mismatched, "
            "repaired, detail FROM reconcile_runs r WHERE id = (SELECT max(id) FROM "
            "reconcile_runs r2 WHERE r2.source=r.source AND r2.tbl=r.tbl) ORDER BY source, tbl"
        )
        return [{**dict(zip(cols, r[:-1], strict=True)),
                 "duplicates": int(json.loads(r[-1] or "{}").get("duplicates") or 0)}
                for r in rows]


@dataclass(frozen=True, slots=True)
class VerifiedBucket:
    """One bucket of a table as its last clean reconcile left it (reconcile/incremental.py):
    a range [lo, hi) of its first bucket dimension (None: unbounded), the two sides' row
    count and checksum there, when that was verified, and the table's cursor (as the
    reconcile's integer) from which rows had not been compared yet (`since`, the same on
    every bucket of a table)."""

    bucket: int
    lo: int | None
    hi: int | None
    rows: int
    checksum: int
    verified_at: float
    since: int | None


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)


def _text(value: int | None) -> str | None:
    return None if value is None else str(int(value))


def _mark(text: str | None) -> Watermark | None:
    return Watermark.from_json(text) if text else None


class _Moved(Exception):
    """Inside StateStore.cut: the reader moved since the stealer looked (rolls back)."""


def _filters(**equal: str | None) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause for the given columns that are not None (an untyped NULL parameter,
    as in `? IS NULL OR col = ?`, is an error on PostgreSQL)."""
    used = {k: v for k, v in equal.items() if v is not None}
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{k}=?" for k in used), tuple(used.values())


def _lease_row(lease: Lease) -> tuple[str, str, tuple[Any, ...]]:
    """(table, WHERE with `?`, its parameters) of the row that holds `lease`."""
    if isinstance(lease, ChunkLease):
        return ("backfill_chunks", "source=? AND tbl=? AND chunk=?",
                (lease.source, lease.table, lease.chunk))
    return "extract_leases", "source=? AND tbl=?", (lease.source, lease.table)


def _fenced(lease: Lease, holder: str | None, generation: int) -> ExtractionFenced:
    """The refusal `_fence` raises: who holds the table (or key range) now, and why
    nothing needs repair."""
    now = (f"(generation {lease.generation}; now generation {generation}, held by "
           f"{holder or 'nobody'})")
    if isinstance(lease, ChunkLease):
        return ExtractionFenced(
            f"this reader lost its lease on chunk {lease.chunk} of the initial load {now}: "
            f"another reader took the chunk over after this one stalled past its "
            f"{lease.seconds:g}s lease, so it records and advances nothing",
            stage="extract", source=lease.source, table=lease.table,
            hint="nothing to repair: the new holder reads the chunk from its last "
                 "recorded key")
    return ExtractionFenced(
        f"this extractor lost its extraction lease {now}: another extractor took the "
        f"table over after this one stalled past its {lease.seconds:g}s lease; what it "
        "read is older than the new holder's, so it records and advances nothing",
        stage="extract", source=lease.source, table=lease.table,
        hint="nothing to repair: the new holder extracts the table, and the next run "
             "resumes from its checkpoint; if this process is often paused that long, "
             "look for what stalls it (swap, a stopped terminal, SIGSTOP)")
