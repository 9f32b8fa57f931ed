"""One scenario, every SQL source kind, both warehouses: the warehouse ends equal to the source.

The data is built to break naive extraction:
- a group of TIE_ROWS rows sharing one cursor value, larger than PAGE_SIZE, so a page boundary
  falls inside the tie (a `cursor > last` predicate would skip the rest of the group);
- a run of rows whose cursors differ by one microsecond, crossing page boundaries (a cursor
  truncated to ms or s would re-read or skip them, and run 1 would not extract exactly N rows);
- many small tie groups, and rows inserted in shuffled order (physical order != cursor order).

Run 1 loads everything; then rows are updated (one of them to exactly checkpoint + 1 µs, one
new row gets the checkpoint's own cursor value with a larger key) and new rows are inserted;
run 2 (lookback 0) must extract exactly the changed rows; run 3 must extract nothing. The
warehouse is then compared with the source row for row, twice: with steadyflow's own
`compare_target` and with an independent comparison written here from the drivers up.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pymysql
import pytest
from tests.conftest import write_pipeline

from steadyflow.config import load_config
from steadyflow.reconcile.compare import compare_target
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SOURCE, TABLE = "store", "sales"
PAGE_SIZE = 100
N_INITIAL = 3_000
TIE_ROWS = 250  # > PAGE_SIZE: the first tie group spans three pages
MICRO_ROWS = 1_000  # cursors BASE+1s, +1 µs, +2 µs, ...
BASE = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS = ("store_id", "sale_id", "sku", "qty", "unit_price", "currency", "sold_at",
           "updated_at")
US = timedelta(microseconds=1)

Row = tuple[Any, ...]  # in COLUMNS order; timestamps as aware UTC datetimes


# --- data -----------------------------------------------------------------------------------
def make_row(rng: random.Random, store_id: int, sale_id: int, updated_at: datetime) -> Row:
    sold_at = None if sale_id % 17 == 0 else updated_at - timedelta(
        seconds=rng.randrange(3600), microseconds=rng.randrange(1_000_000))
    price = Decimal(rng.randint(1, 9_999_999)) / 100
    return (store_id, sale_id, f"SKU-{rng.randrange(100_000):05d}", rng.randint(1, 20),
            price, rng.choice(["USD", "EUR", "GBP"]), sold_at, updated_at)


def initial_rows() -> list[Row]:
    rng = random.Random(20240501)
    rows = []
    for i in range(N_INITIAL):
        store_id, sale_id = 1 + i % 3, 1000 + i
        if i < TIE_ROWS:
            cursor = BASE
        elif i < TIE_ROWS + MICRO_ROWS:
            cursor = BASE + timedelta(seconds=1) + (i - TIE_ROWS) * US
        else:
            cursor = BASE + timedelta(seconds=2, milliseconds=(i - TIE_ROWS - MICRO_ROWS) // 7)
        rows.append(make_row(rng, store_id, sale_id, cursor))
    rng.shuffle(rows)
    return rows


# --- sources: the same table on three engines -------------------------------------------------
@dataclass
class SourceDb:
    """Create, change and read back the source table through its own driver."""

    config: dict[str, Any]
    execute: Callable[[str, list[Row] | None], list[tuple[Any, ...]]]
    create_sql: list[str]
    placeholder: str
    to_db: Callable[[Any], Any]

    def create(self, rows: list[Row]) -> None:
        for stmt in self.create_sql:
            self.execute(stmt, None)
        self.insert(rows)

    def insert(self, rows: list[Row]) -> None:
        marks = ", ".join([self.placeholder] * len(COLUMNS))
        self.execute(f"INSERT INTO sales ({', '.join(COLUMNS)}) VALUES ({marks})",
                     [tuple(self.to_db(v) for v in r) for r in rows])

    def update(self, key: tuple[int, int], qty: int, updated_at: datetime) -> None:
        p = self.placeholder
        self.execute(f"UPDATE sales SET qty = {p}, updated_at = {p} "
                     f"WHERE store_id = {p} AND sale_id = {p}",
                     [(qty, self.to_db(updated_at), key[0], key[1])])

    def rows(self) -> list[Row]:
        return self.execute(f"SELECT {', '.join(COLUMNS)} FROM sales", None)


def _pg_source(dsn: str) -> SourceDb:
    def execute(sql: str, params: list[Row] | None) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn, autocommit=True, options="-c TimeZone=UTC") as conn, \
                conn.cursor() as cur:
            if params is None:
                cur.execute(sql)
            else:
                cur.executemany(sql, params)
            return cur.fetchall() if cur.description else []

    return SourceDb(
        config={"kind": "postgres", "dsn": dsn},
        execute=execute,
        create_sql=[
            "CREATE TABLE sales (store_id bigint NOT NULL, sale_id bigint NOT NULL, "
            "sku text NOT NULL, qty bigint, unit_price numeric(12,2), currency text, "
            "sold_at timestamptz, updated_at timestamptz NOT NULL, "
            "PRIMARY KEY (store_id, sale_id))",
            "CREATE INDEX sales_cursor ON sales (updated_at, store_id, sale_id)"],
        placeholder="%s", to_db=lambda v: v)


def _mysql_source(dsn: str) -> SourceDb:
    database = dsn.rsplit("/", 1)[1]

    def execute(sql: str, params: list[Row] | None) -> list[tuple[Any, ...]]:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                               database=database, autocommit=True)
        try:
            with conn.cursor() as cur:
                if params is None:
                    cur.execute(sql)
                else:
                    cur.executemany(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def to_db(value: Any) -> Any:  # DATETIME(6) holds naive UTC
        return value.astimezone(UTC).replace(tzinfo=None) if isinstance(value, datetime) \
            else value

    return SourceDb(
        config={"kind": "mysql", "dsn": dsn},
        execute=execute,
        create_sql=[
            "CREATE TABLE sales (store_id BIGINT NOT NULL, sale_id BIGINT NOT NULL, "
            "sku VARCHAR(32) NOT NULL, qty BIGINT, unit_price DECIMAL(12,2), "
            "currency VARCHAR(3), sold_at DATETIME(6) NULL, updated_at DATETIME(6) NOT NULL, "
            "PRIMARY KEY (store_id, sale_id), KEY sales_cursor (updated_at, store_id, sale_id))"],
        placeholder="%s", to_db=to_db)


def _sqlite_source(path: Path) -> SourceDb:
    def execute(sql: str, params: list[Row] | None) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            if params is None:
                return conn.execute(sql).fetchall()
            conn.execute("BEGIN")
            conn.executemany(sql, params)
            conn.execute("COMMIT")
            return []

    def to_db(value: Any) -> Any:  # the stores' convention: fixed-width UTC text
        if isinstance(value, datetime):
            return value.astimezone(UTC).strftime(TS_FORMAT)
        return str(value) if isinstance(value, Decimal) else value

    return SourceDb(
        config={"kind": "sqlite", "path": str(path)},
        execute=execute,
        create_sql=[
            "CREATE TABLE sales (store_id INTEGER NOT NULL, sale_id INTEGER NOT NULL, "
            "sku TEXT NOT NULL, qty INTEGER, unit_price TEXT, currency TEXT, sold_at TEXT, "
            "updated_at TEXT NOT NULL, PRIMARY KEY (store_id, sale_id))",
            "CREATE INDEX sales_cursor ON sales (updated_at, store_id, sale_id)"],
        placeholder="?", to_db=to_db)


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SourceDb]:
    if request.param == "postgres":
        yield _pg_source(request.getfixturevalue("pg_dsn"))
    elif request.param == "mysql":
        yield _mysql_source(request.getfixturevalue("mysql_dsn"))
    else:
        yield _sqlite_source(tmp_path / "store.db")


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "duckdb":
        return {"kind": "duckdb", "path": str(tmp_path / "warehouse.duckdb"), "schema": "main"}
    # the same database as a PostgreSQL source, in its own schema
    return {"kind": "postgres", "dsn": request.getfixturevalue("pg_dsn"), "schema": "wh"}


# --- normalisation: one spelling for every engine's values -------------------------------------
def _us(value: Any) -> int | None:
    """Microseconds since the epoch; naive values and SQLite text are UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.strptime(value, TS_FORMAT)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // US


def as_time(cursor: Any) -> datetime:
    """A checkpoint's cursor as an instant (a SQLite checkpoint holds the stored text)."""
    if isinstance(cursor, str):
        return datetime.strptime(cursor, TS_FORMAT).replace(tzinfo=UTC)
    assert isinstance(cursor, datetime)
    return cursor


def normalise(row: tuple[Any, ...]) -> tuple[Any, ...]:
    store_id, sale_id, sku, qty, price, currency, sold_at, updated_at = row
    return (int(store_id), int(sale_id), sku, None if qty is None else int(qty),
            None if price is None else Decimal(str(price)).quantize(Decimal("0.01")),
            currency, _us(sold_at), _us(updated_at))


def checksum(rows: dict[tuple[int, int], tuple[Any, ...]]) -> str:
    digest = hashlib.sha256()
    for key in sorted(rows):
        digest.update(repr(rows[key]).encode())
    return digest.hexdigest()


def warehouse_tables(wh: dict[str, Any]) -> tuple[pa.Table, pa.Table]:
    """(sales, ledger) read with the warehouse's own driver, not steadyflow's adapter."""
    schema = wh["schema"]
    cols = ", ".join(COLUMNS)
    if wh["kind"] == "duckdb":
        with duckdb.connect(wh["path"], read_only=True) as con:
            sales = con.sql(f"SELECT {cols} FROM {schema}.sales").to_arrow_table()
            ledger = con.sql(
                f"SELECT batch_id, rows FROM {schema}._steadyflow_ledger").to_arrow_table()
        return sales, ledger
    with psycopg.connect(wh["dsn"], options="-c TimeZone=UTC") as conn:
        def fetch(sql: str) -> pa.Table:
            cur = conn.execute(sql)
            names = [d.name for d in cur.description or []]
            data = cur.fetchall()
            return pa.table({n: [r[i] for r in data] for i, n in enumerate(names)})

        sales = fetch(f"SELECT {cols} FROM {schema}.sales")
        if sales.num_rows:
            # keep the contract's timestamp type so compare_target compares like with like
            for name in ("sold_at", "updated_at"):
                i = sales.schema.get_field_index(name)
                sales = sales.set_column(i, name, sales[name].cast(pa.timestamp("us", "UTC")))
        ledger = fetch(f"SELECT batch_id, rows FROM {schema}._steadyflow_ledger")
    return sales, ledger


def by_key(rows: list[tuple[Any, ...]]) -> dict[tuple[int, int], tuple[Any, ...]]:
    out: dict[tuple[int, int], tuple[Any, ...]] = {}
    for row in rows:
        n = normalise(row)
        assert (n[0], n[1]) not in out, f"duplicate key {(n[0], n[1])}"
        out[(n[0], n[1])] = n
    return out


def run(config: Path) -> tuple[RunSummary, Any]:
    with Pipeline.from_yaml(config) as p:
        summary = p.run_once()
        mark = p.state.checkpoint(SOURCE, TABLE)
    assert summary.errors == []
    assert summary.duplicates_skipped == 0
    assert summary.quarantined_rows == 0
    return summary, mark


# --- the scenario -------------------------------------------------------------------------------
def test_source_to_warehouse_row_for_row(source: SourceDb, warehouse: dict[str, Any],
                                         tmp_path: Path) -> None:
    rows = initial_rows()
    source.create(rows)
    config = write_pipeline(
        tmp_path, [{"name": SOURCE, **source.config,
                    "tables": [{"name": TABLE, "contract": "sales", "lookback": 0,
                                "page_size": PAGE_SIZE, "min_page_size": PAGE_SIZE}]}],
        warehouse)

    # run 1: everything, each row exactly once although ties and µs runs cross page boundaries
    first, mark = run(config)
    assert first.extracted_rows == N_INITIAL  # a re-read or skipped tie row shows up here
    assert first.extracted_batches == -(-N_INITIAL // PAGE_SIZE)
    assert first.loaded_rows == N_INITIAL
    newest = max(rows, key=lambda r: (r[7], r[0], r[1]))
    # full precision: the checkpoint is the last row's exact cursor and key, to the µs (on
    # SQLite the stored text itself: only that compares with its own row exactly)
    assert as_time(mark.cursor) == newest[7]
    assert mark.key == (newest[0], newest[1])

    # changes: updates (one to checkpoint + 1 µs), a new row on the checkpoint's own cursor
    # value with a larger key, a new tie group larger than a page, and a new µs run
    rng = random.Random(7)
    cp = as_time(mark.cursor)
    precision_key = min((r[0], r[1]) for r in rows if r[7] == BASE)
    source.update(precision_key, 99, cp + US)
    updated = {precision_key}
    for j, r in enumerate(rng.sample([r for r in rows if (r[0], r[1]) != precision_key], 39)):
        source.update((r[0], r[1]), 50 + j % 7, cp + timedelta(milliseconds=1) + j * US)
        updated.add((r[0], r[1]))
    new_rows = [make_row(rng, 9, 1, cp)]  # ties the checkpoint cursor, key sorts after it
    new_rows += [make_row(rng, 1 + i % 3, 10_000 + i, cp + timedelta(seconds=2))
                 for i in range(150)]
    new_rows += [make_row(rng, 1 + i % 3, 20_000 + i, cp + timedelta(seconds=3) + i * US)
                 for i in range(100)]
    rng.shuffle(new_rows)
    source.insert(new_rows)
    changed = len(updated) + len(new_rows)

    # run 2 resumes from the checkpoint: exactly the changed rows, nothing re-read
    second, mark2 = run(config)
    assert second.extracted_rows == changed  # 291, against 3 251 rows in the table
    assert second.loaded_rows == changed
    assert as_time(mark2.cursor) == cp + timedelta(seconds=3) + 99 * US

    # run 3, nothing changed, lookback 0: nothing extracted, nothing loaded, and it returns
    third, mark3 = run(config)
    assert (third.extracted_rows, third.extracted_batches, third.loaded_batches) == (0, 0, 0)
    assert mark3 == mark2

    # steadyflow's own row-by-row comparison
    sales, ledger = warehouse_tables(warehouse)
    cmp = compare_target(load_config(config), TABLE, sales)
    assert cmp.clean, cmp
    assert cmp.source_rows == cmp.expected_rows == cmp.warehouse_rows == N_INITIAL + 251
    assert cmp.quarantined == 0

    # an independent comparison: source through its driver, warehouse through its driver
    src = by_key(source.rows())
    wh = by_key([tuple(r[c] for c in COLUMNS) for r in sales.to_pylist()])
    assert len(wh) == sales.num_rows  # zero duplicate keys in the warehouse
    assert len(src) == len(wh) == N_INITIAL + len(new_rows)
    assert src.keys() == wh.keys()
    differing = [k for k in src if src[k] != wh[k]]
    assert differing == [], [(src[k], wh[k]) for k in differing[:3]]
    assert checksum(src) == checksum(wh)
    # the updates really are there (not just equal because nothing changed)
    assert wh[precision_key][3] == 99 and wh[precision_key][7] == _us(cp + US)
    assert all(wh[k][7] > _us(cp) for k in updated)

    # the ledger: each batch exactly once, every batch the manifest says loaded, and its row
    # counts add up to what was extracted (3 000 + 291)
    with Pipeline.from_yaml(config) as p:
        manifest = p.state.batches(limit=1_000_000)
    ledger_ids = ledger["batch_id"].to_pylist()
    assert len(ledger_ids) == len(set(ledger_ids))
    assert sorted(ledger_ids) == sorted(b["batch_id"] for b in manifest)
    assert {b["status"] for b in manifest} == {"loaded"}
    assert len(ledger_ids) == first.extracted_batches + second.extracted_batches
    assert sum(ledger["rows"].to_pylist()) == N_INITIAL + changed
