"""The demo stores must carry the hazards the pipeline claims to survive: cursor ties, late
commits and malformed rows. If the generator quietly stopped producing them, every
exactly-once test built on the demo would pass for the wrong reason."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest

from steadyflow.demo.stores import (
    CURRENCIES,
    MALFORMED_RULES,
    TS_FORMAT,
    StoreWriter,
    count_malformed,
    count_rows,
    create_stores,
)

ROWS = 3_000


def _query(path: Path, sql: str, *args: object) -> list[tuple]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql, args).fetchall()


@pytest.fixture
def stores(tmp_path: Path) -> list[Path]:
    return create_stores(tmp_path, stores=2, rows_per_store=ROWS)


def test_files_schema_and_row_counts(stores: list[Path], tmp_path: Path) -> None:
    assert [p.name for p in stores] == ["store_001.db", "store_002.db"]
    assert count_rows(stores) == 2 * ROWS
    for store_id, path in enumerate(stores, 1):
        assert _query(path, "PRAGMA journal_mode") == [("wal",)]
        cols = [(r[1], r[2], r[3], r[5]) for r in _query(path, "PRAGMA table_info(sales)")]
        assert cols == [("store_id", "INTEGER", 1, 1), ("sale_id", "INTEGER", 1, 2),
                        ("sku", "TEXT", 0, 0), ("qty", "INTEGER", 0, 0),
                        ("unit_price", "TEXT", 0, 0), ("currency", "TEXT", 0, 0),
                        ("sold_at", "TEXT", 0, 0), ("updated_at", "TEXT", 1, 0)]
        index = [r[2] for r in _query(path, "PRAGMA index_info(sales_cursor)")]
        assert index == ["updated_at", "store_id", "sale_id"]
        assert _query(path, "SELECT MIN(sale_id), MAX(sale_id), COUNT(DISTINCT store_id),"
                            " MIN(store_id) FROM sales") == [(1, ROWS, 1, store_id)]
    # Recreating replaces, never appends; the same seed gives the same values.
    before = _query(stores[0], "SELECT sku, qty, unit_price, currency FROM sales ORDER BY 1, 2")
    create_stores(tmp_path, stores=2, rows_per_store=ROWS)
    assert count_rows(stores) == 2 * ROWS
    assert _query(stores[0], "SELECT sku, qty, unit_price, currency FROM sales"
                             " ORDER BY 1, 2") == before


def test_values_are_well_formed_except_planted_rows(stores: list[Path]) -> None:
    bad = " OR ".join(f"({predicate})" for _, _, predicate in MALFORMED_RULES.values())
    for path in stores:
        good = _query(path, f"SELECT sku, qty, unit_price, currency FROM sales WHERE NOT ({bad})")
        assert len(good) > ROWS * 0.99
        for sku, qty, price, currency in good:
            assert sku.startswith("SKU-") and len(sku) == 9 and sku[4:].isdigit()
            assert isinstance(qty, int) and 1 <= qty <= 20
            assert 0.5 <= float(price) <= 999.99 and len(price.split(".")[1]) == 2
            assert currency in CURRENCIES


def test_timestamps_parse_order_as_text_and_tie(stores: list[Path]) -> None:
    for path in stores:
        rows = _query(path, "SELECT sold_at, updated_at FROM sales ORDER BY updated_at")
        parsed = [datetime.strptime(u, TS_FORMAT) for _, u in rows]
        assert parsed == sorted(parsed)  # text order == time order
        sold = [datetime.strptime(s, TS_FORMAT) for s, _ in rows]
        assert all(s <= u for s, u in zip(sold, parsed, strict=True))
        assert (parsed[-1] - parsed[0]).total_seconds() > 3600  # spread over ~2 hours
        ties = _query(path, "SELECT COUNT(*) FROM (SELECT updated_at FROM sales"
                            " GROUP BY updated_at HAVING COUNT(*) > 1)")[0][0]
        assert ties >= 10


def test_malformed_rows_are_planted_of_every_kind(stores: list[Path]) -> None:
    for path in stores:
        per_store = count_malformed([path])
        assert all(n >= 1 for n in per_store.values()), per_store
        assert sum(per_store.values()) >= 5
    assert count_malformed(stores) == count_malformed(stores)  # deterministic, stable
    qty = _query(stores[0], "SELECT qty FROM sales WHERE typeof(qty) = 'integer' AND qty <= 0")
    assert qty and all(q <= 0 for (q,) in qty)


def test_writer_counters_match_database(stores: list[Path]) -> None:
    initial = count_rows(stores)
    newest_initial = max(_query(p, "SELECT MAX(updated_at) FROM sales")[0][0] for p in stores)
    malformed_before = count_malformed(stores)
    writer = StoreWriter(stores, rate_per_second=400, seed=3, malformed_ratio=0.05)
    writer.LATE_EVERY_S = 0.4  # several late commits within the short test window
    writer.start()
    deadline, reads, worst_lock_wait = time.monotonic() + 1.2, 0, 0.0
    with closing(sqlite3.connect(stores[0], timeout=1, isolation_level=None)) as other:
        while time.monotonic() < deadline:  # a reader and a would-be writer are never starved
            reads += other.execute("SELECT COUNT(*) FROM sales").fetchone()[0] > 0
            asked = time.monotonic()
            other.execute("BEGIN IMMEDIATE")
            worst_lock_wait = max(worst_lock_wait, time.monotonic() - asked)
            other.execute("ROLLBACK")
            time.sleep(0.05)
    writer.stop()
    assert reads > 5 and worst_lock_wait < 0.5
    assert writer.inserted > 100 and writer.updated > 30
    assert writer.late_commits >= 2 and writer.malformed >= 1
    assert count_rows(stores) == initial + writer.inserted
    touched = sum(_query(p, "SELECT COUNT(*) FROM sales WHERE updated_at > ?",
                         newest_initial)[0][0] for p in stores)
    # Late commits may land at or before the old maximum; re-updated rows count once.
    assert writer.inserted + writer.updated - writer.late_commits - 50 < touched
    assert touched <= writer.inserted + writer.updated
    after, by_kind = count_malformed(stores), writer.malformed_by_kind
    assert sum(by_kind.values()) == writer.malformed
    for kind in ("sku_null", "currency_unknown"):  # updates only rewrite qty and price
        assert after[kind] - malformed_before[kind] == by_kind[kind]


def test_late_commit_is_older_than_rows_committed_before_it(stores: list[Path]) -> None:
    writer = StoreWriter(stores, rate_per_second=300, seed=5)
    writer.LATE_EVERY_S = 0.1
    writer.start()
    time.sleep(0.25)
    writer.stop()
    assert writer.late and len(writer.late) == writer.late_commits
    for late in writer.late:
        assert late.updated_at < late.newest_before
        lag = (datetime.strptime(late.newest_before, TS_FORMAT)
               - datetime.strptime(late.updated_at, TS_FORMAT)).total_seconds()
        assert 2.5 < lag < 9
        assert _query(late.path, "SELECT COUNT(*) FROM sales WHERE sale_id = ?",
                      late.sale_id) == [(1,)]


def test_stop_surfaces_writer_failure(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "store_001.db"
    writer = StoreWriter([missing]).start()  # the thread fails on connect, before any sleep
    with pytest.raises(sqlite3.Error):
        writer.stop()
