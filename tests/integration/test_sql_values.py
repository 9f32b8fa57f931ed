"""DB-API sources (SQLite, MariaDB): one unreadable value costs one row, never the table;
MariaDB keyset pages lose nothing whatever the cursor type, key type, collation or page size.
"""

from __future__ import annotations

import decimal
import math
import random
import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pyarrow.parquet as pq
import pymysql
import pytest
from tests.conftest import write_pipeline

from steadyflow.config import SourceConfig
from steadyflow.errors import SchemaError
from steadyflow.extract.sql import SqlSource
from steadyflow.model import INVALID, Column, Contract, Watermark, step_back
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AT = datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)


# --- SQLite: invalid UTF-8, numbers in a time column ----------------------------------------
def sqlite_table(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, seen_at DATETIME, "
                     "updated_at TEXT NOT NULL)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", [
            (1, "ok", "2024-01-01T12:00:00+02:00", "2024-01-01 10:00:01"),
            (3, "ok", 1_704_103_200, "2024-01-01 10:00:03"),  # an epoch in a timestamp
            (4, "ok", 1_704_103_200.5, "2024-01-01 10:00:04"),
            (5, "fine", "2024-01-01 10:00:00.5Z", "2024-01-01 10:00:05"),
        ])
        # text that is not UTF-8: sqlite3 raised "Could not decode to UTF-8" for the table
        conn.execute("INSERT INTO t VALUES (2, CAST(X'61FF62' AS TEXT), NULL, "
                     "'2024-01-01 10:00:02')")
        conn.commit()


def test_sqlite_unreadable_values_cost_one_row_each(tmp_path: Path) -> None:
    sqlite_table(tmp_path / "s.db")
    contract = Contract(columns=(Column("id", "int64"), Column("v", "string"),
                                 Column("seen_at", "timestamp"), Column("updated_at",
                                                                        "timestamp")),
                        primary_key=("id",), cursor="updated_at")
    db = SqlSource(SourceConfig(name="s", kind="sqlite", path=str(tmp_path / "s.db"),
                                tables=[{"name": "t", "contract": "c"}]))
    db.probe("t", contract)
    pages = list(db.pages("t", contract, None, None, 2))
    rows = [r for page, _ in pages for r in page.to_pylist()]
    db.close()
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["v"] for r in rows] == ["ok", None, "ok", "ok", "fine"]
    assert [r["seen_at"] for r in rows] == [AT, None, None, None,
                                            AT.replace(microsecond=500_000)]
    assert [r.get(INVALID) for r in rows] == [
        None, "v: invalid UTF-8: 'a\\xffb'",
        "seen_at: the number 1704103200 is not a timestamp (an epoch? declare the column "
        "int64 or float64, or store times as text or a time type)",
        "seen_at: the number 1704103200.5 is not a timestamp (an epoch? declare the column "
        "int64 or float64, or store times as text or a time type)", None]

    # end to end: the other rows load, the three are quarantined with their reason
    contracts = {"c": {"primary_key": ["id"], "cursor": "updated_at", "columns": {
        "id": {"type": "int64", "nullable": False}, "v": {"type": "string"},
        "seen_at": {"type": "timestamp"}, "updated_at": {"type": "timestamp"}}}}
    wh = tmp_path / "wh.duckdb"
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "sqlite",
                                        "path": str(tmp_path / "s.db"),
                                        "tables": [{"name": "t", "contract": "c"}]}],
                            {"kind": "duckdb", "path": str(wh), "schema": "main"},
                            contracts=contracts)
    with Pipeline.from_yaml(config) as p:
        summary = p.run_once()
    assert summary.errors == []
    assert summary.quarantined_rows == 3
    with duckdb.connect(str(wh), read_only=True) as con:
        assert sorted(con.sql("SELECT id, v FROM main.t").fetchall()) == [(1, "ok"),
                                                                          (5, "fine")]


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_sqlite_unreadable_text_in_the_last_row_costs_that_row(tmp_path: Path,
                                                               initial_load: str) -> None:
    """Each poll reads the table's last row whole (its columns tell the poll of schema
    drift), and sqlite3 could not decode that row's text: one value that is not UTF-8 in
    the last row failed the table on every run ('Could not decode to UTF-8 column'),
    nothing loaded. Now it costs its row, as it does anywhere else in the table."""
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, at TEXT NOT NULL)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                         [(i, "ok", f"2024-01-01 10:00:0{i}") for i in (1, 2, 3)])
        conn.execute("INSERT INTO t VALUES (4, CAST(X'61FF62' AS TEXT), "
                     "'2024-01-01 10:00:04')")
        conn.commit()
    contracts = {"c": {"primary_key": ["id"], "cursor": "at", "columns": {
        "id": {"type": "int64", "nullable": False}, "v": {"type": "string"},
        "at": {"type": "timestamp", "nullable": False}}}}
    wh = tmp_path / "wh.duckdb"
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "sqlite",
                                        "path": str(tmp_path / "s.db"),
                                        "tables": [{"name": "t", "contract": "c",
                                                    "initial_load": initial_load}]}],
                            {"kind": "duckdb", "path": str(wh), "schema": "main"},
                            contracts=contracts)
    with Pipeline.from_yaml(config) as p:
        summary = p.run_once(raise_on_error=False)
        parked = p.state.quarantined()
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 1
    assert [set(item["reasons"]) for item in parked] == [{"v: invalid UTF-8: 'a\\xffb'"}]
    with duckdb.connect(str(wh), read_only=True) as con:
        assert con.sql("SELECT id, v FROM main.t ORDER BY id").fetchall() == [
            (1, "ok"), (2, "ok"), (3, "ok")]


REALS = [0.1, 0.1 + 0.2, 1e-7, 1e20, 0.125, 59.97, 123456.78, -0.0, 1e-29, float("inf"),
         3.9879967643648127e+30, 6.562445566143069e-29, -3.325030160162887e+52,
         1.2345678901234567e+25, 99999999.99, 1e8]


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_sqlite_reals_in_a_decimal_column_load_exactly_or_cost_their_row(
        tmp_path: Path, initial_load: str) -> None:
    """A REAL (and a number's text) in a decimal column is read by its shortest text, which
    float() gives back exactly: it loads as that decimal, or its row is quarantined with a
    reason naming column and value. Arrow's text-to-decimal cast returned garbage with no
    error where rescaling passed 128 bits (3.9879967643648127e+30 as decimal(38,10) loaded
    as 6693071389832677478517093048.3119259648, a 31-digit text likewise) and 0 for a tiny
    value (6.562445566143069e-29 as decimal(38,37) loaded as 0E-37), every run ok."""
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a REAL, b REAL, c REAL, t TEXT, "
                     "at TEXT NOT NULL)")
        rows = [(i * 3 + j, *[v if k == j else None for k in range(3)], None,
                 f"2024-01-01 10:00:{i:02d}") for i, v in enumerate(REALS) for j in range(3)]
        rows.append((1000, None, None, None, "3987996764364812700000000000000",
                     "2024-01-01 11:00:00"))
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.commit()
    types = {"a": "decimal(10,2)", "b": "decimal(38,10)", "c": "decimal(38,37)",
             "t": "decimal(38,10)"}
    contracts = {"c": {"primary_key": ["id"], "cursor": "at", "columns": {
        "id": {"type": "int64", "nullable": False},
        **{name: {"type": kind} for name, kind in types.items()},
        "at": {"type": "timestamp", "nullable": False}}}}
    wh = tmp_path / "wh.duckdb"
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "sqlite",
                                        "path": str(tmp_path / "s.db"),
                                        "tables": [{"name": "t", "contract": "c",
                                                    "page_size": 7,
                                                    "initial_load": initial_load}]}],
                            {"kind": "duckdb", "path": str(wh), "schema": "main"},
                            contracts=contracts, landing={"path": str(tmp_path / "landing")})
    with Pipeline.from_yaml(config) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.ok, summary.errors
    # the oracle: the source through sqlite3, the warehouse through duckdb, parked rows
    # through pyarrow; each value's decimal is its shortest text, exactly, or none
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        source = {r[0]: r[1:] for r in conn.execute("SELECT id, a, b, c, t FROM t")}
    with duckdb.connect(str(wh), read_only=True) as con:
        loaded = {r[0]: r[1:] for r in con.sql("SELECT id, a, b, c, t FROM main.t").fetchall()}
    parked = {int(r["id"]): r["_reason"] for f in (tmp_path / "landing").rglob("*.parquet")
              if "_quarantine" in f.parts for r in pq.read_table(f).to_pylist()}
    assert set(loaded) | set(parked) == set(source) and not set(loaded) & set(parked)
    exact = decimal.Context(prec=200)
    for key, values in source.items():
        for name, value in zip(types, values, strict=True):
            if value is None:
                continue
            precision, scale = (int(n) for n in types[name][8:-1].split(","))
            text = repr(value) if isinstance(value, float) else value
            want = Decimal(text) if math.isfinite(float(text)) else None
            fits = want is not None and want == want.quantize(
                Decimal(1).scaleb(-scale), context=exact) and (
                    want == 0 or want.adjusted() < precision - scale)
            if fits:
                assert key in loaded, (name, text, parked.get(key))
                got = loaded[key][list(types).index(name)]
                assert got == want and (name == "t" or float(got) == value), (name, text, got)
            else:
                assert key in parked, (name, text, loaded.get(key))
                if isinstance(value, float):
                    assert parked[key].startswith(f"{name}: ") and text in parked[key]
    assert len(parked) >= 20


# --- MariaDB: cursor types, key types, collation, page sizes 1..5 ---------------------------
def mysql(dsn: str) -> Any:
    parts = urlsplit(dsn)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                           password="", database=parts.path.lstrip("/"), autocommit=True)


# keys unique under utf8mb4_general_ci (so 'b' and 'B', 'c' and 'c ' cannot both exist),
# whose collation order differs from Python's: 'a' < 'B' < 'b1' < 'C ' < 'c1'
TEXT_KEYS = ["a", "B", "b1", "C ", "c1", "D", "e x", "E1", "f", "ö", "Z"]
CURSORS: dict[str, tuple[str, list[Any]]] = {
    # (column type, cursor values: ties across page boundaries)
    "datetime0": ("DATETIME", [AT + timedelta(seconds=i // 4) for i in range(11)]),
    "datetime6": ("DATETIME(6)", [AT + timedelta(microseconds=i // 3) for i in range(11)]),
    "date": ("DATE", [date(2024, 1, 1) + timedelta(days=i // 5) for i in range(11)]),
}
KEYS: dict[str, tuple[str, list[Any]]] = {
    "decimal": ("DECIMAL(12,2)", [Decimal(i) / 4 for i in range(11)]),
    "varchar": ("VARCHAR(20) COLLATE utf8mb4_general_ci", TEXT_KEYS),
}


@pytest.mark.parametrize("cursor", list(CURSORS))
@pytest.mark.parametrize("key", list(KEYS))
def test_mariadb_pages_lose_nothing(cursor: str, key: str, mysql_dsn: str) -> None:
    ctype, cursors = CURSORS[cursor]
    ktype, keys = KEYS[key]
    rows = list(zip(keys, cursors, strict=True))
    random.Random(5).shuffle(rows)
    with closing(mysql(mysql_dsn)) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE t (k {ktype} NOT NULL PRIMARY KEY, c {ctype} NOT NULL, "
                    "KEY t_cursor (c, k)) DEFAULT CHARSET utf8mb4")
        cur.executemany("INSERT INTO t VALUES (%s, %s)",
                        [(k, c.replace(tzinfo=None) if isinstance(c, datetime) else c)
                         for k, c in rows])
        cur.execute("SELECT k FROM t ORDER BY c, k")
        order = [r[0] for r in cur.fetchall()]  # the server's own (cursor, key) order
    contract = Contract(columns=(
        Column("k", "decimal(12,2)" if key == "decimal" else "string", nullable=False),
        Column("c", "date" if cursor == "date" else "timestamp", nullable=False)),
        primary_key=("k",), cursor="c")
    db = SqlSource(SourceConfig(name="m", kind="mysql", dsn=mysql_dsn,
                                tables=[{"name": "t", "contract": "c"}]))
    try:
        db.probe("t", contract)
        for page_size in range(1, 6):
            got: list[Any] = []
            high: Watermark | None = None
            for rows_, mark in db.pages("t", contract, None, None, page_size):
                got += rows_["k"].to_pylist()
                high = mark
                assert len(got) <= len(keys), "extraction does not end"
            assert got == order, page_size  # each row once, in the server's order
            assert high is not None and Watermark.from_json(high.to_json()) == high
            assert list(db.pages("t", contract, high, None, page_size)) == []
            # lookback steps back in the cursor's own type (dates: whole days)
            since = step_back(high.cursor, 1)
            back = [k for page, _ in db.pages("t", contract, None, since, page_size)
                    for k in page["k"].to_pylist()]
            assert back == [k for k, c in zip(order, sorted(cursors), strict=True)
                            if c >= since]
    finally:
        db.close()


def test_mariadb_refuses_null_and_epoch_cursors(mysql_dsn: str) -> None:
    with closing(mysql(mysql_dsn)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE n (id INT PRIMARY KEY, c DATETIME(6) NULL)")
        cur.execute("INSERT INTO n VALUES (1, '2024-01-01 10:00:00'), (2, NULL)")
        cur.execute("CREATE TABLE e (id INT PRIMARY KEY, c BIGINT NOT NULL)")
        cur.execute("INSERT INTO e VALUES (1, 1704103200)")
    contract = Contract(columns=(Column("id", "int64"), Column("c", "timestamp")),
                        primary_key=("id",), cursor="c")
    db = SqlSource(SourceConfig(name="m", kind="mysql", dsn=mysql_dsn,
                                tables=[{"name": "n", "contract": "c"}]))
    try:
        with pytest.raises(SchemaError, match="holds NULLs") as null:
            db.probe("n", contract)
        assert null.value.table == "n" and "NOT NULL" in (null.value.hint or "")
        with pytest.raises(SchemaError, match="declared bigint") as epoch:
            db.probe("e", contract)
        assert epoch.value.table == "e" and "int64" in (epoch.value.hint or "")
    finally:
        db.close()


def test_mariadb_binary_text_is_decoded_or_refused_per_row(mysql_dsn: str) -> None:
    """A VARBINARY/BLOB column under a string contract: its bytes are UTF-8 text or that
    row's value is invalid (str(b'...') was stored as "b'...'")."""
    with closing(mysql(mysql_dsn)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE b (id INT PRIMARY KEY, v VARBINARY(10), "
                    "c DATETIME(6) NOT NULL)")
        cur.execute("INSERT INTO b VALUES (1, 'caf\xe9', '2024-01-01'), "
                    "(2, X'61FF', '2024-01-02')")
    contract = Contract(columns=(Column("id", "int64"), Column("v", "string"),
                                 Column("c", "timestamp")), primary_key=("id",), cursor="c")
    db = SqlSource(SourceConfig(name="m", kind="mysql", dsn=mysql_dsn,
                                tables=[{"name": "b", "contract": "c"}]))
    try:
        page, _ = db.page("b", contract, None, None, 10)
    finally:
        db.close()
    assert page["v"].to_pylist() == ["café", None]
    assert page[INVALID].to_pylist() == [None, "v: invalid UTF-8: 'a\\xff'"]


WIDE = ["3987996764364812700000000000000", "123.45", "-123456789012345678901234567.5",
        "0.000000000000000000000000000010", "-12345678901234567890", "0"]


@pytest.mark.parametrize(("kind", "declared"), [("mysql", "DECIMAL(65,30)"),
                                                ("mysql", "DECIMAL(40,0)"),
                                                ("postgres", "numeric")])
def test_a_wide_source_decimal_loads_exactly_or_costs_its_row(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str, declared: str) -> None:
    """A source DECIMAL wider than the contract's decimal(38,10) is read as the database's
    text. Arrow's cast of it returned garbage with no error where rescaling passed 128 bits
    (3987996764364812700000000000000 loaded as 6693071389832677478517093048.3119259648 from
    MariaDB DECIMAL(40,0) and PostgreSQL numeric, every run ok), and refused a value that
    fits when its text had more than 38 digits (MariaDB's DECIMAL(65,30) spells
    -123456789012345678901234567.5 with 29 trailing zeros: quarantined)."""
    dsn = request.getfixturevalue("mysql_dsn" if kind == "mysql" else "pg_dsn")
    rows = [(i, v) for i, v in enumerate(WIDE) if declared != "DECIMAL(40,0)" or "." not in v]
    if kind == "mysql":
        with closing(mysql(dsn)) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE t (id INT PRIMARY KEY, v {declared})")
            cur.executemany("INSERT INTO t VALUES (%s, %s)", rows)
            cur.execute("SELECT id, v FROM t")
            source = dict(cur.fetchall())
    else:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE t (id int PRIMARY KEY, v {declared})")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO t VALUES (%s, %s::numeric)", rows)
            source = dict(conn.execute("SELECT id, v FROM t").fetchall())
    contracts = {"c": {"primary_key": ["id"], "cursor": "id", "columns": {
        "id": {"type": "int64", "nullable": False}, "v": {"type": "decimal(38,10)"}}}}
    wh = tmp_path / "wh.duckdb"
    config = write_pipeline(tmp_path, [{"name": "s", "kind": kind, "dsn": dsn,
                                        "tables": [{"name": "t", "contract": "c"}]}],
                            {"kind": "duckdb", "path": str(wh), "schema": "main"},
                            contracts=contracts, landing={"path": str(tmp_path / "landing")},
                            state_dir=str(tmp_path / "state"))
    with Pipeline.from_yaml(config) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.ok, summary.errors
    with duckdb.connect(str(wh), read_only=True) as con:
        loaded = dict(con.sql("SELECT id, v FROM main.t").fetchall())
    exact = decimal.Context(prec=200)
    fits = {key for key, value in source.items()
            if value == value.quantize(Decimal("1E-10"), context=exact)
            and (value == 0 or value.adjusted() < 28)}
    assert fits == {1, 2, 4, 5} & set(source)
    assert loaded == {key: source[key] for key in fits}
    assert summary.quarantined_rows == len(source) - len(fits)
