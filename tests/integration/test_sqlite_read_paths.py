"""Every SQLite read path gives the same rows, in keyset order, with the same values.

Paths: ADBC pages (SqliteArrowSource, the extraction path) and sqlite3 pages (SqlSource: its
fallback, and what reconcile and repair construct). SQLite types values, not columns, so
the tables here mix storage classes in one column (the case where ADBC alone would convert
silently), spell times several ways, hold text that is not UTF-8, blobs and NULLs; both
paths must give the same values, the same quarantine reasons and the same watermarks.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from tests.support.read_paths import comparable, contract

from steadyflow.config import SourceConfig
from steadyflow.extract.sql import SqlSource
from steadyflow.extract.sqlite_arrow import SqliteArrowSource
from steadyflow.model import Contract, Watermark
from steadyflow.validate.rules import validate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def config(path: Path) -> SourceConfig:
    return SourceConfig(name="sq", kind="sqlite", path=str(path),
                        tables=[{"name": "t", "contract": "c"}])  # type: ignore[list-item]


class Counting(SqliteArrowSource):
    """Counts the pages ADBC read (not handed to sqlite3): the fast path must be taken."""

    fast = 0

    def page(self, table: str, contract: Contract, after: Watermark | None, since: Any,
             limit: int, where: Any = None, upto: Watermark | None = None
             ) -> tuple[pa.Table, Watermark | None]:
        result = super().page(table, contract, after, since, limit, where, upto)
        Counting.fast += self.read_by == "adbc"
        return result


PATHS = {"adbc": lambda p: Counting(config(p)), "sqlite3": lambda p: SqlSource(config(p))}


def make(path: Path, ddl: str, rows: list[tuple[Any, ...]]) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(ddl)
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO t VALUES ({marks})", rows)
        conn.commit()


def pages(source: SqlSource, c: Contract, size: int) -> list[tuple[pa.Table, Watermark]]:
    try:
        return list(source.pages("t", c, None, None, size))
    finally:
        source.close()


def same_on_both(path: Path, c: Contract, size: int) -> list[tuple[pa.Table, Watermark]]:
    """Both paths page by page: same schema, values and watermark; returns ADBC's pages."""
    Counting.fast = 0
    fast, slow = pages(PATHS["adbc"](path), c, size), pages(PATHS["sqlite3"](path), c, size)
    assert len(fast) == len(slow)
    for (a, ha), (b, hb) in zip(fast, slow, strict=True):
        assert a.schema == b.schema
        assert comparable(a) == comparable(b)
        assert ha == hb
    return fast


# --- 1. one class per column: read by ADBC, values as sqlite3's ---------------------------------
ROWS = [
    (1, "2025-01-01 00:00:15.000000", "2025-01-01", "12.50", 3, 1.5, "ünï 🙂", 1, b"\x00\xff"),
    (2, "2025-01-01T00:00:16Z", "2024-02-29", "-0.01", -7, -0.0, "", 0, b""),
    (3, "2025-01-01 00:00:17", None, None, None, None, None, None, None),
    (4, "2025-01-01T00:00:18.5+02:00", "9999-12-31", "99999999.99", 2**40, 1e-300, "x", 1,
     b"text"),
]
TYPES = contract(("id", "int64"), ("at", "timestamp"), ("day", "date"),
                 ("amount", "decimal(10,2)"), ("n", "int32"), ("ratio", "float64"),
                 ("s", "string"), ("flag", "bool"), ("raw", "string"))
DDL = ("CREATE TABLE t (id INTEGER PRIMARY KEY, at TEXT, day TEXT, amount TEXT, n INTEGER, "
       "ratio REAL, s TEXT, flag INTEGER, raw BLOB)")


def test_one_class_per_column_is_read_by_adbc_with_sqlite3s_values(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    make(path, DDL, ROWS)
    fast = same_on_both(path, TYPES, 3)
    assert Counting.fast == 2  # both pages by ADBC
    rows = [r for p, _ in fast for r in p.to_pylist()]
    assert str(rows[1]["at"]) == "2025-01-01 00:00:16+00:00"
    assert str(rows[3]["at"]) == "2024-12-31 22:00:18.500000+00:00"  # +02:00 → UTC
    assert rows[3]["n"] == str(2**40)  # does not fit int32: the page's column is text
    assert rows[0]["raw"] is None and rows[3]["raw"] == "text"  # blob, not UTF-8: a reason


def test_a_page_mixing_classes_is_read_by_sqlite3(tmp_path: Path) -> None:
    """An integer after text (ADBC: '5'), an integer after reals (ADBC: 3.0), a number in a
    time column: each such page is read by sqlite3, the others by ADBC."""
    path = tmp_path / "s.db"
    rows: list[tuple[Any, ...]] = [(i, f"2025-01-01 00:00:{i:02d}", f"v{i}", 1.5, "x")
                                   for i in range(1, 13)]
    rows[4] = (5, 1735689605, "v5", 1.5, "x")  # a number in the time column
    rows[6] = (7, "2025-01-01 00:00:07", 5, 1.5, "x")  # an integer in a text column
    rows[9] = (10, "2025-01-01 00:00:10", "v10", 3, "x")  # an integer among reals
    make(path, "CREATE TABLE t (id INTEGER PRIMARY KEY, at, s, r, x BLOB)", rows)
    c = contract(("id", "int64"), ("at", "timestamp"), ("s", "string"), ("r", "string"),
                 ("x", "string"))
    fast = same_on_both(path, c, 3)
    assert Counting.fast == 2  # rows 1-3 and the empty last page; 4-6, 7-9, 10-12 mix
    good = [i for p, _ in fast for i in validate(p, c).good["id"].to_pylist()]
    assert good == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]  # 5: a number is not a time


def test_text_that_is_not_utf8_costs_its_row_on_both_paths(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    make(path, "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)", [(1, "ok"), (2, "fine")])
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("INSERT INTO t VALUES (3, CAST(X'ff61' AS TEXT))")
        conn.commit()
    c = contract(("id", "int64"), ("s", "string"))
    fast = same_on_both(path, c, 10)
    verdict = validate(fast[0][0], c)
    assert verdict.good["id"].to_pylist() == [1, 2]


@pytest.mark.parametrize("size", [1, 2, 5])
def test_text_keys_and_time_cursors_page_identically(tmp_path: Path, size: int) -> None:
    """Keyset values bound back exactly (text keys with quotes, NUL-free unicode; a text
    time cursor with ties), every row once."""
    path = tmp_path / "s.db"
    keys = ["a'b", "a\\b", "A", "ä", "", "🙂", "a b", "Z", "a", "b"]
    rows = [(k, f"2025-01-01 00:00:0{i % 3}.000000", i) for i, k in enumerate(keys)]
    make(path, "CREATE TABLE t (k TEXT PRIMARY KEY, at TEXT NOT NULL, n INTEGER)", rows)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE INDEX t_at ON t (at, k)")
    c = contract(("k", "string"), ("at", "timestamp"), ("n", "int64"), key=("k",),
                 cursor="at")
    fast = same_on_both(path, c, size)
    assert Counting.fast == len(fast) + 1  # every page by ADBC, the empty last one too
    got = [int(n) for p, _ in fast for n in p["n"].to_pylist() if n is not None]
    assert sorted(got) == list(range(len(keys)))


def test_a_kept_source_sees_writes_made_between_its_pages(tmp_path: Path) -> None:
    """`run --follow` keeps the source (and its ADBC connection) between cycles: each page
    must read the database as it is now, not the snapshot of the first query (ADBC's
    DB-API default holds a read transaction open: the bench's warm cycles missed rows)."""
    path = tmp_path / "s.db"
    make(path, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)", [(1, 1), (2, 2)])
    c = contract(("id", "int64"), ("v", "int64"))
    source = Counting(config(path))
    try:
        first, high = source.page("t", c, None, None, 10)
        assert first["v"].to_pylist() == [1, 2] and source.read_by == "adbc"
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("INSERT INTO t VALUES (3, 3)")
            conn.execute("UPDATE t SET v = 20 WHERE id = 2")
            conn.commit()
        again, _ = source.page("t", c, None, None, 10)
        after, _ = source.page("t", c, high, None, 10)
    finally:
        source.close()
    assert again["v"].to_pylist() == [1, 20, 3] and source.read_by == "adbc"
    assert after["id"].to_pylist() == [3]
