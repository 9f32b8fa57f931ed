"""TPC-H-shaped source tables, live writers and the oracle's reading of both sides, for
tests/faults/test_chaos_tables.py and the many-worker tests (tests/support/workers.py).

Three related tables per source database, with the shapes the demo never has: a composite
key (lineitem), fixed-width CHAR columns that the database pads, json/jsonb documents,
exact decimals, and a cursor that late-committing transactions stamp older than rows
already committed. The writers only insert and update (deletes are not mirrored by default),
so the source at the end is the complete truth the warehouse must equal.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pymysql

from tests.support.table_oracle import Shape

PRIORITIES = ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"]
SHIPMODES = ["AIR", "MAIL", "SHIP", "TRUCK", "RAIL", "REG AIR", "FOB"]
SEGMENTS = ["AUTOMOBILE", "BUILDING", "FURNITURE", "HOUSEHOLD", "MACHINERY"]
FLAGS = ["A", "N", "R"]
# CHAR columns: the source pads them; their canonical value is the text without the pad
CHAR_COLUMNS = {"o_orderpriority", "l_returnflag", "l_shipmode", "c_mktsegment"}
JSON_COLUMNS = {"o_tags", "c_attrs"}
TABLES = ("customer", "orders", "lineitem")
KEYS = {"customer": ("c_custkey",), "orders": ("o_orderkey",),
        "lineitem": ("l_orderkey", "l_linenumber")}

_TS = {"type": "timestamp", "nullable": False}
_MONEY = {"type": "decimal(15,2)", "nullable": False}
CONTRACTS: dict[str, dict[str, Any]] = {
    "customer": {"primary_key": ["c_custkey"], "cursor": "updated_at", "columns": {
        "c_custkey": {"type": "int64", "nullable": False},
        "c_name": {"type": "string", "nullable": False},
        "c_mktsegment": {"type": "string", "nullable": False, "allowed": SEGMENTS},
        "c_acctbal": _MONEY,
        "c_attrs": {"type": "string"},
        "updated_at": _TS}},
    "orders": {"primary_key": ["o_orderkey"], "cursor": "updated_at", "columns": {
        "o_orderkey": {"type": "int64", "nullable": False},
        "o_custkey": {"type": "int64", "nullable": False},
        "o_orderpriority": {"type": "string", "nullable": False, "allowed": PRIORITIES},
        "o_totalprice": _MONEY,
        "o_comment": {"type": "string"},
        "o_tags": {"type": "string"},
        "updated_at": _TS}},
    "lineitem": {"primary_key": ["l_orderkey", "l_linenumber"], "cursor": "updated_at",
                 "columns": {
        "l_orderkey": {"type": "int64", "nullable": False},
        "l_linenumber": {"type": "int64", "nullable": False},
        "l_quantity": _MONEY,
        "l_extendedprice": _MONEY,
        "l_returnflag": {"type": "string", "nullable": False, "allowed": FLAGS},
        "l_shipmode": {"type": "string", "nullable": False, "allowed": SHIPMODES},
        "l_comment": {"type": "string"},
        "updated_at": _TS}},
}
COLUMNS = {t: tuple(c["columns"]) for t, c in CONTRACTS.items()}

_PG_DDL = [
    "CREATE TABLE customer (c_custkey bigint PRIMARY KEY, c_name varchar(25) NOT NULL, "
    "c_mktsegment char(10) NOT NULL, c_acctbal numeric(15,2) NOT NULL, c_attrs jsonb, "
    "updated_at timestamptz NOT NULL)",
    "CREATE TABLE orders (o_orderkey bigint PRIMARY KEY, o_custkey bigint NOT NULL, "
    "o_orderpriority char(15) NOT NULL, o_totalprice numeric(15,2) NOT NULL, "
    "o_comment varchar(79), o_tags json, updated_at timestamptz NOT NULL)",
    "CREATE TABLE lineitem (l_orderkey bigint NOT NULL, l_linenumber integer NOT NULL, "
    "l_quantity numeric(15,2) NOT NULL, l_extendedprice numeric(15,2) NOT NULL, "
    "l_returnflag char(1) NOT NULL, l_shipmode char(10) NOT NULL, l_comment varchar(44), "
    "updated_at timestamptz NOT NULL, PRIMARY KEY (l_orderkey, l_linenumber))",
]
_MY_DDL = [
    "CREATE TABLE customer (c_custkey bigint PRIMARY KEY, c_name varchar(25) NOT NULL, "
    "c_mktsegment char(10) NOT NULL, c_acctbal decimal(15,2) NOT NULL, c_attrs JSON, "
    "updated_at datetime(6) NOT NULL) CHARACTER SET utf8mb4",
    "CREATE TABLE orders (o_orderkey bigint PRIMARY KEY, o_custkey bigint NOT NULL, "
    "o_orderpriority char(15) NOT NULL, o_totalprice decimal(15,2) NOT NULL, "
    "o_comment varchar(79), o_tags JSON, updated_at datetime(6) NOT NULL) "
    "CHARACTER SET utf8mb4",
    "CREATE TABLE lineitem (l_orderkey bigint NOT NULL, l_linenumber int NOT NULL, "
    "l_quantity decimal(15,2) NOT NULL, l_extendedprice decimal(15,2) NOT NULL, "
    "l_returnflag char(1) NOT NULL, l_shipmode char(10) NOT NULL, l_comment varchar(44), "
    "updated_at datetime(6) NOT NULL, PRIMARY KEY (l_orderkey, l_linenumber)) "
    "CHARACTER SET utf8mb4",
]
_INDEXES = [
    "CREATE INDEX customer_cursor ON customer (updated_at, c_custkey)",
    "CREATE INDEX orders_cursor ON orders (updated_at, o_orderkey)",
    "CREATE INDEX orders_cust ON orders (o_custkey)",
    "CREATE INDEX lineitem_cursor ON lineitem (updated_at, l_orderkey, l_linenumber)",
]


# --- connecting ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SourceDb:
    """One source database: how to connect and the SQL spellings that differ by engine."""

    kind: str  # "postgres" | "mysql"
    dsn: str

    @property
    def now(self) -> str:
        """The database's current UTC instant, advancing within a transaction."""
        return "clock_timestamp()" if self.kind == "postgres" else "UTC_TIMESTAMP(6)"

    def connect(self, autocommit: bool = False) -> Any:
        if self.kind == "postgres":
            return psycopg.connect(self.dsn, autocommit=autocommit,
                                   options="-c TimeZone=UTC")
        url = urlsplit(self.dsn)
        conn = pymysql.connect(host=url.hostname or "127.0.0.1", port=url.port or 3306,
                               user=url.username or "root", password=url.password or "",
                               database=url.path.lstrip("/"), autocommit=autocommit,
                               charset="utf8mb4")
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
        return conn


@contextmanager
def cursor(conn: Any) -> Iterator[Any]:
    cur = conn.cursor()
    try:
        yield cur
    finally:
        cur.close()


# --- generated values -----------------------------------------------------------------------
_WORDS = ["quick", "deposits", "sleep", "furiously", "café", "naïve", "Ω-ray", "日本",
          "fjord", "🚢", "pending", "ironic", "it's", 'say "hi"', "back\\slash"]


def _text(rng: random.Random, limit: int) -> str | None:
    """Free text: non-ASCII (incl. 4-byte UTF-8), quotes, and sometimes a trailing space
    that a varchar must keep (only CHAR drops its pad); None now and then."""
    roll = rng.random()
    if roll < 0.08:
        return None
    if roll < 0.12:
        return ""
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 5)))
    if rng.random() < 0.1:
        words += " "
    return words[:limit]


def _money(rng: random.Random, high: int) -> Decimal:
    return Decimal(rng.randint(0, high * 100)) / 100


def _document(rng: random.Random) -> str | None:
    """A json document: nested, unicode, exact decimals, booleans and nulls."""
    if rng.random() < 0.1:
        return None
    doc: dict[str, Any] = {
        "tier": rng.choice(["gold", "silver", "bronze", "ünï"]),
        "score": rng.randint(-1000, 1000),
        "ratio": float(Decimal(rng.randint(0, 10_000)) / 100),
        "flags": [rng.random() < 0.5 for _ in range(rng.randint(0, 3))],
        "nested": {"a": None, "b": rng.choice(_WORDS)},
    }
    return json.dumps(doc, ensure_ascii=rng.random() < 0.5)


def customer_row(rng: random.Random, key: int) -> tuple[Any, ...]:
    return (key, f"Customer#{key:09d}", rng.choice(SEGMENTS), _money(rng, 9_999),
            _document(rng))


def order_row(rng: random.Random, key: int, customers: int) -> tuple[Any, ...]:
    return (key, rng.randint(1, customers), rng.choice(PRIORITIES), _money(rng, 500_000),
            _text(rng, 79), _document(rng))


def line_row(rng: random.Random, order: int, line: int) -> tuple[Any, ...]:
    return (order, line, Decimal(rng.randint(1, 50)), _money(rng, 100_000),
            rng.choice(FLAGS), rng.choice(SHIPMODES), _text(rng, 44))


def _insert(db: SourceDb, table: str, stamp: str) -> str:
    cols = COLUMNS[table]
    values = ", ".join(["%s"] * (len(cols) - 1))
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({values}, {stamp})"


# --- setup ---------------------------------------------------------------------------------
def create_tables(db: SourceDb, customers: int, orders: int, seed: int) -> int:
    """Create and seed the three tables; returns the next free order key."""
    rng = random.Random(seed)
    conn = db.connect()
    try:
        with cursor(conn) as cur:
            for ddl in (_PG_DDL if db.kind == "postgres" else _MY_DDL) + _INDEXES:
                cur.execute(ddl)
            # seeded rows have cursors spread over the past hour, so the first run has a
            # backlog to page through while the writers add newer rows
            stamp = (f"{db.now} - interval '1 hour' + %s * interval '1 millisecond'"
                     if db.kind == "postgres"
                     else f"{db.now} - interval 1 hour + interval %s * 1000 microsecond")
            cur.executemany(_insert(db, "customer", stamp),
                            [(*customer_row(rng, k), k) for k in range(1, customers + 1)])
            cur.executemany(_insert(db, "orders", stamp),
                            [(*order_row(rng, k, customers), k) for k in range(1, orders + 1)])
            cur.executemany(_insert(db, "lineitem", stamp),
                            [(*line_row(rng, k, n), k * 7 + n)
                             for k in range(1, orders + 1) for n in range(1, rng.randint(2, 7))])
        conn.commit()
    finally:
        conn.close()
    return orders + 1


# --- live writers --------------------------------------------------------------------------
@dataclass
class Writers:
    """Writer threads on one source database, until `stop()`.

    - `busy`: small transactions that insert orders with their lineitems and update rows
      of every table, stamped with the database clock at the statement;
    - `late`: transactions that take their stamp when they begin, sleep 1-3 s while the
      busy writer commits newer rows, then commit: their cursor is older than rows
      already committed (and maybe already extracted), the case `lookback` exists for.
    """

    db: SourceDb
    customers: int
    next_order: int
    seed: int
    # the pause after each transaction, per writer: (min, max) seconds
    pauses: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"busy": (0.01, 0.05), "late": (0.1, 0.4)})
    commits: dict[str, int] = field(default_factory=lambda: {"busy": 0, "late": 0})
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Writers:
        for name, body in (("busy", self._busy), ("late", self._late)):
            pause = self.pauses[name]
            rng = random.Random(f"{self.seed}-{name}")
            thread = threading.Thread(target=self._loop, args=(name, body, rng, pause),
                                      name=f"writer-{self.db.kind}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        if self.errors:
            raise AssertionError(f"{self.db.kind} writer failed: {self.errors[0]!r}")

    def _loop(self, name: str, body: Callable[[Any, random.Random], None],
              rng: random.Random, pause: tuple[float, float]) -> None:
        try:
            conn = self.db.connect()
            try:
                while not self._stop.is_set():
                    try:
                        body(conn, rng)
                        conn.commit()
                        self.commits[name] += 1
                    except (psycopg.errors.DeadlockDetected, pymysql.OperationalError) as exc:
                        # two writers crossing on the same rows: the database chose this one
                        # to roll back; nothing of it committed, so the source stays the truth
                        if isinstance(exc, pymysql.OperationalError) and exc.args[0] != 1213:
                            raise
                        conn.rollback()
                        self.commits["deadlocks"] = self.commits.get("deadlocks", 0) + 1
                    time.sleep(rng.uniform(*pause))
            finally:
                conn.close()
        except Exception as exc:  # surfaced by stop(): a writer bug must fail the test
            self.errors.append(exc)

    def _order_key(self) -> int:
        with self._lock:
            key = self.next_order
            self.next_order += 1
            return key

    def _existing_order(self, rng: random.Random) -> int:
        with self._lock:
            return rng.randint(1, self.next_order - 1)

    def _busy(self, conn: Any, rng: random.Random) -> None:
        self._write(conn, rng, self.db.now, rng.randint(1, 3))

    def _late(self, conn: Any, rng: random.Random) -> None:
        """Stamp first, commit 1-3 s later (other writers commit newer stamps meanwhile)."""
        with cursor(conn) as cur:
            cur.execute(f"SELECT {self.db.now}")
            stamp = cur.fetchone()[0]
        self._write(conn, rng, "%s", rng.randint(1, 2), stamp=stamp)
        time.sleep(rng.uniform(1.0, 3.0))

    def _write(self, conn: Any, rng: random.Random, stamp_sql: str, ops: int,
               stamp: Any = None) -> None:
        extra = () if stamp is None else (stamp,)
        with cursor(conn) as cur:
            for _ in range(ops):
                roll = rng.random()
                if roll < 0.3:  # a new order with its lines
                    key = self._order_key()
                    cur.execute(_insert(self.db, "orders", stamp_sql),
                                (*order_row(rng, key, self.customers), *extra))
                    cur.executemany(_insert(self.db, "lineitem", stamp_sql),
                                    [(*line_row(rng, key, n), *extra)
                                     for n in range(1, rng.randint(2, 7))])
                elif roll < 0.55:
                    cur.execute(f"UPDATE orders SET o_orderpriority = %s, o_totalprice = %s, "
                                f"o_comment = %s, o_tags = %s, updated_at = {stamp_sql} "
                                f"WHERE o_orderkey = %s",
                                (rng.choice(PRIORITIES), _money(rng, 500_000),
                                 _text(rng, 79), _document(rng), *extra,
                                 self._existing_order(rng)))
                elif roll < 0.8:
                    cur.execute(f"UPDATE lineitem SET l_shipmode = %s, l_extendedprice = %s, "
                                f"l_returnflag = %s, l_comment = %s, updated_at = {stamp_sql} "
                                f"WHERE l_orderkey = %s AND l_linenumber = %s",
                                (rng.choice(SHIPMODES), _money(rng, 100_000), rng.choice(FLAGS),
                                 _text(rng, 44), *extra, self._existing_order(rng),
                                 rng.randint(1, 3)))
                else:
                    cur.execute(f"UPDATE customer SET c_mktsegment = %s, c_acctbal = %s, "
                                f"c_attrs = %s, updated_at = {stamp_sql} WHERE c_custkey = %s",
                                (rng.choice(SEGMENTS), _money(rng, 9_999), _document(rng),
                                 *extra, rng.randint(1, self.customers)))


# --- the oracle's reading ------------------------------------------------------------------
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def shape(table: str) -> Shape:
    cols = COLUMNS[table]
    return Shape(cols, KEYS[table], frozenset(CHAR_COLUMNS & set(cols)),
                 frozenset(JSON_COLUMNS & set(cols)))


def source_rows(db: SourceDb, table: str) -> list[tuple[Any, ...]]:
    conn = db.connect(autocommit=True)
    try:
        with cursor(conn) as cur:
            cur.execute(f"SELECT {', '.join(COLUMNS[table])} FROM {table}")
            return list(cur.fetchall())
    finally:
        conn.close()


def warehouse_rows(warehouse: dict[str, Any], target: str, table: str
                   ) -> list[tuple[Any, ...]]:
    if warehouse["kind"] == "duckdb":
        # timestamps as epoch microseconds: DuckDB's own conversion to datetime needs pytz
        cols = [f"epoch_us({c})" if c == "updated_at" else c for c in COLUMNS[table]]
        at = COLUMNS[table].index("updated_at")
        with duckdb.connect(warehouse["path"], read_only=True) as con:
            rows = con.execute(f"SELECT {', '.join(cols)} FROM main.{target}").fetchall()
        return [(*r[:at], None if r[at] is None else EPOCH + timedelta(microseconds=r[at]),
                 *r[at + 1:]) for r in rows]
    sql = f"SELECT {', '.join(COLUMNS[table])} FROM {warehouse['schema']}.{target}"
    with psycopg.connect(warehouse["dsn"], options="-c TimeZone=UTC") as conn:
        return conn.execute(sql).fetchall()
