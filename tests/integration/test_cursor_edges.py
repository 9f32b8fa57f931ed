"""Adversarial review: cursor values a keyset page cannot continue after, in a real store.

A row stamped in the future moved a fixed window's checkpoint past every row written later
with a correct clock (test_a_row_stamped_in_the_future_holds_no_later_row_back).

A number cursor holding NaN or +Infinity (PostgreSQL numeric sorts NaN after every number,
SQLite stores 9e999 as an infinite REAL) cannot be loaded: validation quarantines its row.
But it is the table's greatest cursor, so a page ending on it moved the checkpoint there,
and no row written afterwards could sort after it: every later row was lost while every
run said ok. Such a cursor must be refused before any page is read, naming the column.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml
from tests.conftest import steadyflow

from steadyflow.model import Watermark
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CONTRACT = {"primary_key": ["id"], "cursor": "v",
            "columns": {"id": {"type": "int64", "nullable": False},
                        "v": {"type": "decimal(12,2)", "nullable": False}}}


def run(tmp: Path, source: dict[str, Any], contract: dict[str, Any] = CONTRACT,
        **table: Any) -> RunSummary:
    config = {"name": "edges", "contracts": {"c": contract},
              "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "landing")},
              "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"),
                            "schema": "main"},
              "sources": [{"name": "s", **source, "resilience": {"retries": 0},
                           "tables": [{"name": "t", "contract": "c", "page_size": 2,
                                       **table}]}]}
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(path) as p:
        return p.run_once(raise_on_error=False)


def loaded_ids(tmp: Path) -> list[int]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return sorted(r[0] for r in con.sql("SELECT id FROM main.t").fetchall())


def check(tmp: Path, source: dict[str, Any], write: Any, shown: str) -> None:
    """Rows 1, 2 and a row 3 whose cursor is `shown`: the run refuses the table naming
    the cursor column and the value (without the refusal it loaded 1 and 2, and then
    never row 4, written later with an ordinary cursor); once row 3 gets a real cursor,
    every row arrives."""
    first = run(tmp, source)
    assert "s.t" in first.failed_tables, first
    assert any("cursor column v" in e and shown in e for e in first.errors), first.errors
    write("INSERT INTO t VALUES (4, 30)")
    again = run(tmp, source)
    assert "s.t" in again.failed_tables, again
    write("UPDATE t SET v = 40 WHERE id = 3")
    fixed = run(tmp, source)
    assert fixed.ok, fixed.errors
    assert loaded_ids(tmp) == [1, 2, 3, 4]


@pytest.mark.parametrize("shown", ["NaN", "Infinity"])
def test_postgres_numeric_cursor_past_every_number(tmp_path: Path, pg_dsn: str,
                                                   shown: str) -> None:
    def write(sql: str) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.encode())

    # an unconstrained numeric: numeric(12,2) cannot hold Infinity
    write("CREATE TABLE t (id bigint PRIMARY KEY, v numeric NOT NULL)")
    write("CREATE INDEX t_v ON t (v, id)")
    write(f"INSERT INTO t VALUES (1, 10), (2, 20), (3, '{shown}')")
    check(tmp_path, {"kind": "postgres", "dsn": pg_dsn}, write, shown)


def test_sqlite_infinite_real_cursor(tmp_path: Path) -> None:
    db = tmp_path / "store.db"

    def write(sql: str) -> None:
        with closing(sqlite3.connect(db)) as conn:
            conn.execute(sql)
            conn.commit()

    write("CREATE TABLE t (id INTEGER PRIMARY KEY, v NUMERIC NOT NULL)")
    write("CREATE INDEX t_v ON t (v, id)")
    write("INSERT INTO t VALUES (1, 10), (2, 20), (3, 9e999)")
    check(tmp_path, {"kind": "sqlite", "path": str(db)}, write, "Infinity")


@pytest.mark.parametrize("lookback", [0, 60])
def test_a_row_stamped_in_the_future_holds_no_later_row_back(tmp_path: Path,
                                                             lookback: int) -> None:
    """A fixed window steps back from the checkpoint: a row stamped years ahead (a
    mistyped year, a client clock ahead) moved it past every row written afterwards with
    a correct clock, and they were skipped while every run said ok. Steps back from now
    instead while the checkpoint is ahead of it; the future row is re-read, harmlessly."""
    db = tmp_path / "store.db"
    now = datetime.now(UTC).replace(tzinfo=None)

    def write(sql: str, *params: Any) -> None:
        with closing(sqlite3.connect(db)) as conn:
            conn.execute(sql, params)
            conn.commit()

    def at(seconds: float) -> str:
        return (now + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S.%f")

    write("CREATE TABLE t (id INTEGER PRIMARY KEY, ts TEXT NOT NULL)")
    write("CREATE INDEX t_ts ON t (ts, id)")
    write("INSERT INTO t VALUES (1, ?), (2, ?), (3, '2099-01-01 00:00:00.000000')",
          at(-5), at(0))
    contract = {"primary_key": ["id"], "cursor": "ts",
                "columns": {"id": {"type": "int64", "nullable": False},
                            "ts": {"type": "timestamp", "nullable": False}}}
    source = {"kind": "sqlite", "path": str(db)}
    assert run(tmp_path, source, contract, lookback=lookback).ok
    write("INSERT INTO t VALUES (4, ?)", at(1))
    assert run(tmp_path, source, contract, lookback=lookback).ok
    assert loaded_ids(tmp_path) == [1, 2, 3, 4]


def test_a_checkpoint_left_at_nan_is_refused_with_its_fix(tmp_path: Path) -> None:
    """A checkpoint recorded at NaN before such cursors were refused at the probe stayed
    there: with the source row corrected, the probe passes, but no row sorts after NaN,
    so the table read nothing for ever, every run ok. It is refused, naming the reset."""
    db = tmp_path / "store.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v NUMERIC NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 10), (2, 20)")
        conn.commit()
    source = {"kind": "sqlite", "path": str(db)}
    assert run(tmp_path, source).ok
    with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as state:
        state.execute("UPDATE checkpoints SET watermark = ?",
                      (Watermark(Decimal("NaN"), (3,)).to_json(),))
        state.commit()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("INSERT INTO t VALUES (4, 30)")
        conn.commit()
    refused = run(tmp_path, source)
    assert "s.t" in refused.failed_tables, refused
    assert any("NaN" in e and "steadyflow reset" in e for e in refused.errors), refused.errors
    steadyflow("reset", "-c", str(tmp_path / "pipeline.yml"), "--table", "s.t", check=True)
    assert run(tmp_path, source).ok
    assert loaded_ids(tmp_path) == [1, 2, 4]
