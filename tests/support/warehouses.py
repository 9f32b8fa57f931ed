"""Both warehouses behind one name for the tests that load them directly (no pipeline):
`where` is a PostgreSQL DSN or a DuckDB file path, and each is read back through its own
driver, outside steadyflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import psycopg

from steadyflow.merge.duckdb import DuckdbWarehouse
from steadyflow.merge.postgres import PostgresWarehouse

Warehouse = PostgresWarehouse | DuckdbWarehouse


def open_warehouse(where: str) -> Warehouse:
    if where.startswith("postgresql://"):
        return PostgresWarehouse(where)
    return DuckdbWarehouse(Path(where))


def query(where: str, sql: str) -> list[tuple[Any, ...]]:
    """`sql`'s rows, read by psycopg or duckdb itself ({schema} in it: the default schema)."""
    postgres = where.startswith("postgresql://")
    sql = sql.replace("{schema}", "public" if postgres else "main")
    if postgres:
        with psycopg.connect(where) as conn:
            return conn.execute(sql.encode()).fetchall()
    with duckdb.connect(where, read_only=True) as conn:
        return conn.execute(sql).fetchall()
