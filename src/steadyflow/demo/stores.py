"""The demo's store databases: one SQLite file per store, written to while the pipeline runs.

Why SQLite files: the demo needs many independent "stores" with a real SQL engine, real
transactions and real lock contention, and no server to install. WAL mode lets the pipeline's
reader process scan a store while this module's writer commits to it.

The data is built to break naive pipelines, on purpose:
- updated_at ties (basket rows share a commit time; others are rounded to ms or s), so a
  ``updated_at > last_seen`` cursor without a sale_id tiebreak loses rows;
- late commits (an updated_at seconds older than rows already committed), as a long store
  transaction produces, so a cursor without a lookback window loses rows;
- a few malformed rows (see MALFORMED_RULES), which must be quarantined, not stop the batch.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # fixed width, UTC, no zone: text order == time order
CURRENCIES = ("USD", "EUR", "GBP")
COLUMNS = ("store_id", "sale_id", "sku", "qty", "unit_price", "currency", "sold_at", "updated_at")
SCHEMA = (
    "CREATE TABLE sales (store_id INTEGER NOT NULL, sale_id INTEGER NOT NULL, sku TEXT,"
    " qty INTEGER, unit_price TEXT, currency TEXT, sold_at TEXT, updated_at TEXT NOT NULL,"
    " PRIMARY KEY (store_id, sale_id))",
    "CREATE INDEX sales_cursor ON sales(updated_at, store_id, sale_id)",
)
_INSERT = f"INSERT INTO sales ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_UPDATE = ("UPDATE sales SET qty = ?, unit_price = ?, updated_at = ?"
           " WHERE store_id = ? AND sale_id = ?")
_MAX_ID = "SELECT COALESCE(MAX(sale_id), 0) FROM sales WHERE store_id = ?"
_WINDOW_US = 2 * 3600 * 1_000_000  # seeded history covers the last two hours

# kind -> (column, planted value, SQL predicate that finds it). The predicates let the demo and
# tests count what the validator should quarantine without re-implementing the contract.
MALFORMED_RULES: dict[str, tuple[str, Any, str]] = {
    "sku_null": ("sku", None, "sku IS NULL"),
    "qty_not_positive": ("qty", "0 or below", "typeof(qty) = 'integer' AND qty <= 0"),
    "qty_not_numeric": ("qty", "abc", "qty = 'abc'"),
    "currency_unknown": ("currency", "XXX", "currency = 'XXX'"),
    "price_negative": ("unit_price", "-5.00", "unit_price = '-5.00'"),
    "price_not_numeric": ("unit_price", "n/a", "unit_price = 'n/a'"),
}


def format_ts(dt: datetime) -> str:
    """The one timestamp spelling the stores use; anything else would break text ordering."""
    return dt.astimezone(UTC).strftime(TS_FORMAT)


def _price(rng: random.Random) -> str:
    cents = rng.randint(50, 99_999)  # 0.50 .. 999.99, built as text so no float rounding
    return f"{cents // 100}.{cents % 100:02d}"


def _row(rng: random.Random, store_id: int, sale_id: int, sold_at: str, updated_at: str,
         malformed: str | None = None) -> tuple[Any, ...]:
    row: list[Any] = [store_id, sale_id, f"SKU-{rng.randrange(100_000):05d}", rng.randint(1, 20),
                      _price(rng), rng.choice(CURRENCIES), sold_at, updated_at]
    if malformed is not None:
        column, value, _ = MALFORMED_RULES[malformed]
        row[COLUMNS.index(column)] = -(sale_id % 3) if malformed == "qty_not_positive" else value
    return tuple(row)


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """Take the write lock up front: a deferred BEGIN that upgrades later can fail with BUSY."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    """Autocommit mode, so every transaction is an explicit, short BEGIN IMMEDIATE ... COMMIT."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable enough for a demo, fast
    return db


def _history(rng: random.Random, rows: int, start: datetime) -> list[tuple[str, str]]:
    """(sold_at, updated_at) per sale_id: sold_at ascends with sale_id, as in a real till.

    ~15% of rows join the previous row's basket (same commit, same timestamps) and ~30% are
    rounded to whole ms or s, so a cursor value is often shared by several rows.
    """
    sold = sorted(rng.randrange(_WINDOW_US) for _ in range(rows))
    out_us: list[tuple[int, int]] = []
    for s in sold:
        roll = rng.random()
        if out_us and roll < 0.15:
            out_us.append(out_us[-1])
            continue
        u = rng.randint(s, _WINDOW_US - 1) if rng.random() < 0.2 else s  # later edited
        if roll < 0.30:
            u -= u % 1_000_000
        elif roll < 0.45:
            u -= u % 1_000
        out_us.append((min(s, u), u))
    seconds: dict[int, str] = {}  # strftime per row dominated creation time; once per second

    def stamp(us: int) -> str:
        sec, frac = divmod(us, 1_000_000)
        if sec not in seconds:
            seconds[sec] = (start + timedelta(seconds=sec)).strftime("%Y-%m-%d %H:%M:%S")
        return f"{seconds[sec]}.{frac:06d}"

    return [(stamp(s), stamp(u)) for s, u in out_us]


def create_stores(directory: Path, stores: int, rows_per_store: int, seed: int = 7) -> list[Path]:
    """(Re)create ``store_001.db`` ... in ``directory``; values depend only on ``seed``.

    Timestamps are relative to now so the pipeline's first run sees a realistic recent backlog.
    About 0.1% of rows (at least one of each MALFORMED_RULES kind) are malformed, at
    seeded positions, so a demo run can predict its quarantine.
    """
    directory.mkdir(parents=True, exist_ok=True)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(microseconds=_WINDOW_US)
    kinds = list(MALFORMED_RULES)
    paths: list[Path] = []
    for store_id in range(1, stores + 1):
        path = directory / f"store_{store_id:03d}.db"
        for leftover in (path, path.with_name(path.name + "-wal"),
                         path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
        rng = random.Random(f"{seed}:{store_id}")
        bad_ids = rng.sample(range(1, rows_per_store + 1),
                             min(rows_per_store, max(len(kinds), rows_per_store // 1000)))
        bad = {sale_id: kinds[i % len(kinds)] for i, sale_id in enumerate(bad_ids)}
        rows = [_row(rng, store_id, sale_id, sold_at, updated_at, bad.get(sale_id))
                for sale_id, (sold_at, updated_at)
                in enumerate(_history(rng, rows_per_store, start), 1)]
        with closing(_connect(path)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN")
            db.execute(SCHEMA[0])
            db.executemany(_INSERT, rows)
            db.execute(SCHEMA[1])  # indexing after the load is faster than during it
            db.execute("COMMIT")
        paths.append(path)
    return paths


def _total(paths: Iterable[Path], sql: str) -> int:
    total = 0
    for path in paths:
        with closing(sqlite3.connect(path, timeout=30)) as db:
            total += db.execute(sql).fetchone()[0]
    return total


def count_rows(paths: Iterable[Path]) -> int:
    """Total rows across stores: what the warehouse must hold once the pipeline catches up."""
    return _total(paths, "SELECT COUNT(*) FROM sales")


def count_malformed(paths: Sequence[Path]) -> dict[str, int]:
    """Rows currently matching each MALFORMED_RULES kind (updates can repair qty and price)."""
    return {kind: _total(paths, f"SELECT COUNT(*) FROM sales WHERE {predicate}")
            for kind, (_, _, predicate) in MALFORMED_RULES.items()}


@dataclass(frozen=True, slots=True)
class LateCommit:
    """Evidence that a late commit really was late: newest updated_at already in the store."""

    path: Path
    sale_id: int
    updated_at: str
    newest_before: str


class StoreWriter:
    """Background writer imitating busy tills: inserts, updates, late commits, rare bad rows.

    Counters: ``inserted`` and ``updated`` count every row written, late and malformed ones
    included; ``late_commits`` and ``malformed`` are subsets of those. Each transaction writes a
    handful of rows at most, so the single SQLite write lock is held for about a millisecond.
    Assumes it is the only writer of these stores (sale_ids are read fresh per transaction).
    """

    LATE_EVERY_S = 2.0
    MAX_ROWS_PER_TX = 10

    def __init__(self, paths: Sequence[Path], rate_per_second: float = 500,
                 update_ratio: float = 0.3, seed: int = 11, *,
                 malformed_ratio: float = 0.001) -> None:
        if not paths or rate_per_second <= 0 or not 0 <= update_ratio <= 1:
            raise ValueError("need stores, a positive rate and 0 <= update_ratio <= 1")
        self.paths = list(paths)
        self.rate, self.update_ratio = rate_per_second, update_ratio
        self.malformed_ratio = malformed_ratio
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("inserted", "updated", "late_commits", "malformed"), 0)
        self._bad_kinds = dict.fromkeys(MALFORMED_RULES, 0)
        self._late: deque[LateCommit] = deque(maxlen=100)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def inserted(self) -> int:
        return self.counts()["inserted"]

    @property
    def updated(self) -> int:
        return self.counts()["updated"]

    @property
    def late_commits(self) -> int:
        return self.counts()["late_commits"]

    @property
    def malformed(self) -> int:
        return self.counts()["malformed"]

    def counts(self) -> dict[str, int]:
        """One consistent snapshot, for progress lines that must add up."""
        with self._lock:
            return dict(self._counts)

    @property
    def malformed_by_kind(self) -> dict[str, int]:
        with self._lock:
            return dict(self._bad_kinds)

    @property
    def late(self) -> list[LateCommit]:
        """The most recent late commits (up to 100), oldest first."""
        with self._lock:
            return list(self._late)

    def start(self) -> StoreWriter:
        if self._thread is not None:
            raise RuntimeError("StoreWriter already started")
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and join; re-raises whatever killed the writer so a demo cannot pass silently."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        dbs: list[sqlite3.Connection] = []
        try:
            for path in self.paths:
                dbs.append(_connect(path))  # appended one by one so finally closes them all
            ids = [self._store_id(db, p) for db, p in zip(dbs, self.paths, strict=True)]
            began = next_late = time.monotonic()
            next_late += self.LATE_EVERY_S
            done = 0
            while not self._stop.is_set():
                now = time.monotonic()
                due = int((now - began) * self.rate) - done
                burst = max(1, int(self.rate))  # after a stall (lock held elsewhere) don't
                if due > burst:  # replay the whole backlog: at most one second's worth
                    done, due = done + due - burst, burst
                if due <= 0:
                    self._stop.wait(min(0.01, 1 / self.rate))
                    continue
                i = self._rng.randrange(len(dbs))
                n = min(due, self.MAX_ROWS_PER_TX)
                self._write(dbs[i], ids[i], n)
                done += n
                if now >= next_late:  # same store: it just got fresh rows, so this one is late
                    self._late_commit(dbs[i], ids[i], self.paths[i])
                    next_late = now + self.LATE_EVERY_S
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            for db in dbs:
                db.close()

    @staticmethod
    def _store_id(db: sqlite3.Connection, path: Path) -> int:
        found = db.execute("SELECT MIN(store_id) FROM sales").fetchone()[0]
        return int(found if found is not None else path.stem.rsplit("_", 1)[-1])

    def _write(self, db: sqlite3.Connection, store_id: int, n: int) -> None:
        rng, counts, bad = self._rng, {"inserted": 0, "updated": 0}, []
        with _immediate(db):
            max_id = db.execute(_MAX_ID, (store_id,)).fetchone()[0]
            for _ in range(n):
                ts = format_ts(datetime.now(UTC))
                if max_id and rng.random() < self.update_ratio:
                    counts["updated"] += db.execute(_UPDATE, (
                        rng.randint(1, 20), _price(rng), ts, store_id, rng.randint(1, max_id)
                    )).rowcount
                    continue
                kind = rng.choice(list(MALFORMED_RULES)) \
                    if rng.random() < self.malformed_ratio else None
                bad += [kind] if kind else []
                max_id += 1
                db.execute(_INSERT, _row(rng, store_id, max_id, ts, ts, kind))
                counts["inserted"] += 1
        self._add(counts | {"malformed": len(bad)}, bad)

    def _late_commit(self, db: sqlite3.Connection, store_id: int, path: Path) -> None:
        """Commit a row stamped 3-8 s ago, after newer rows are already visible to readers."""
        rng = self._rng
        ts = format_ts(datetime.now(UTC) - timedelta(seconds=rng.uniform(3, 8)))
        with _immediate(db):
            newest = db.execute("SELECT MAX(updated_at) FROM sales").fetchone()[0] or ""
            max_id = db.execute(_MAX_ID, (store_id,)).fetchone()[0]
            insert = not max_id or rng.random() < 0.5
            sale_id = max_id + 1 if insert else rng.randint(1, max_id)
            if insert:
                db.execute(_INSERT, _row(rng, store_id, sale_id, ts, ts))
            else:
                db.execute(_UPDATE, (rng.randint(1, 20), _price(rng), ts, store_id, sale_id))
        self._add({"inserted" if insert else "updated": 1, "late_commits": 1}, [],
                  LateCommit(path, sale_id, ts, newest))

    def _add(self, deltas: dict[str, int], bad: list[str], late: LateCommit | None = None) -> None:
        with self._lock:
            if late is not None:
                self._late.append(late)
            for name, delta in deltas.items():
                self._counts[name] += delta
            for kind in bad:
                self._bad_kinds[kind] += 1
