"""Reconcile on wide tables (hundreds of columns): a row's hash is one expression over every
column, and engines bound an expression's depth or a function's argument count."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from steadyflow.config import parse_config
from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def pipeline(tmp: Path, source: dict[str, Any], width: int) -> dict[str, Any]:
    columns = {f"c{i}": {"type": "int64"} for i in range(width)}
    return {"name": "wide", "state_dir": str(tmp / "state"),
            "landing": {"path": str(tmp / "landing")},
            "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
            "contracts": {"c": {"primary_key": ["k"], "cursor": "at", "columns": {
                "k": {"type": "int64", "nullable": False},
                "at": {"type": "timestamp", "nullable": False}, **columns}}},
            "sources": [{**source, "name": "s", "resilience": {"retries": 0},
                         "tables": [{"name": "t", "contract": "c"}]}]}


def load_and_reconcile(tmp: Path, raw: dict[str, Any], width: int) -> None:
    """Load, reconcile (equal), change one warehouse value far right, reconcile again."""
    with Pipeline(parse_config(raw)) as p:
        assert p.run_once(raise_on_error=False).ok
    with Pipeline(parse_config(raw)) as p:
        (report,) = reconcile(p, ["t"], Options())
    assert report.error is None and report.differences == 0, report.to_dict()
    with duckdb.connect(str(tmp / "wh.duckdb")) as con:
        con.execute(f"UPDATE main.t SET c{width - 1} = 7 WHERE k = 2")
    with Pipeline(parse_config(raw)) as p:
        (report,) = reconcile(p, ["t"], Options())
    assert report.error is None and report.mismatched == 1, report.to_dict()


def test_a_table_of_600_columns_reconciles_against_duckdb(tmp_path: Path, pg_dsn: str) -> None:
    """DuckDB's row text was a chain of `||`, one level of nesting per column and
    separator: past about 500 columns reconcile failed ('Max expression depth limit of
    1000 exceeded') and compared nothing. A flat concat() has one level whatever the width."""
    width = 600
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE t (k int PRIMARY KEY, at timestamptz NOT NULL, "
                     f"{', '.join(f'c{i} int' for i in range(width))})".encode())
        conn.execute(f"INSERT INTO t (k, at, c0, c{width - 1}) SELECT g, '2024-01-01'::"
                     "timestamptz + g * interval '1 s', g, -g FROM generate_series(1, 4) g"
                     .encode())
    load_and_reconcile(tmp_path, pipeline(tmp_path, {"kind": "postgres", "dsn": pg_dsn},
                                          width), width)


def test_a_table_of_200_columns_reconciles_from_sqlite(tmp_path: Path) -> None:
    width = 200
    db = tmp_path / "s.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(f"CREATE TABLE t (k INTEGER PRIMARY KEY, at TEXT NOT NULL, "
                     f"{', '.join(f'c{i} INTEGER' for i in range(width))})")
        conn.executemany(f"INSERT INTO t (k, at, c0, c{width - 1}) VALUES (?, ?, ?, ?)",
                         [(g, f"2024-01-0{g} 00:00:00", g, -g) for g in range(1, 5)])
        conn.commit()
    load_and_reconcile(tmp_path, pipeline(tmp_path, {"kind": "sqlite", "path": str(db)},
                                          width), width)
