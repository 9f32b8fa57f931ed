"""A small SQLite source table ("items") and a pipeline file around it, for the landing
tests: any landing (a local folder or an S3 bucket), DuckDB warehouse, the oracle's
column kinds (tests/support/oracle.py) so the warehouse is checked without steadyflow."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from tests.support.gen import Col, Table

TABLE = Table("items", [Col("id", "int64", nullable=False), Col("note", "text"),
                        Col("amount", "dec", p=12, s=3), Col("updated_at", "ts", nullable=False)],
              key=["id"], cursor="updated_at")
CONTRACT: dict[str, Any] = {
    "primary_key": ["id"], "cursor": "updated_at",
    "columns": {"id": {"type": "int64", "nullable": False}, "note": {"type": "string"},
                "amount": {"type": "decimal(12,3)", "min": 0},
                "updated_at": {"type": "timestamp", "nullable": False}}}
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def make_source(path: Path, rows: int) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT, amount TEXT, "
                   "updated_at TEXT NOT NULL)")
        db.execute("CREATE INDEX items_cursor ON items (updated_at, id)")
        db.commit()
    add_rows(path, 1, rows)


def add_rows(path: Path, first: int, count: int, amount: str | None = None) -> None:
    """Rows first..first+count-1 (replacing any of those ids), stamped after every row
    before them; `amount` overrides the value (e.g. '-1', which the contract quarantines)."""
    with closing(sqlite3.connect(path)) as db:
        db.executemany("INSERT OR REPLACE INTO items VALUES (?,?,?,?)", [
            (i, f"note {i} ✓", amount or f"{i}.{i % 1000:03d}",
             (BASE + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f"))
            for i in range(first, first + count)])
        db.commit()


def write_config(directory: Path, landing: dict[str, Any], page_size: int = 250,
                 **extra: Any) -> Path:
    config = {
        "name": "items", "state_dir": "state", "landing": landing,
        "warehouse": {"kind": "duckdb", "path": "warehouse.duckdb"},
        "contracts": {"items": CONTRACT},
        "sources": [{"name": "shop", "kind": "sqlite", "path": "shop.db",
                     "tables": [{"name": "items", "contract": "items", "page_size": page_size,
                                 "lookback": "5s"}]}],
        **extra,
    }
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
