"""A warehouse column that would convert a batch's values is refused (text, bool).

A target keeps the types it was created with. A column `schema_drift: add` added as
int64 (the source declared integer) that the source then changed to text, or a contract
column changed from int64 to string, was loaded into the old BIGINT column, and both
warehouses converted the text without a word: '007' was stored as 7 and ' 12' as 12, every
run ok (reconcile compares the configured contract's columns only), while text that is no
number ('abc') failed its whole batch on every delivery. The table is now refused, naming
the column and the ALTER that makes it text; after it, every value loads as its text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from tests.support.sql_exec import execute

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _run(tmp: Path, dsn: str, warehouse: dict[str, Any]) -> RunSummary:
    raw: dict[str, Any] = {
        "name": "drift", "state_dir": str(tmp / "state"),
        "landing": {"path": str(tmp / "landing")}, "warehouse": warehouse,
        "contracts": {"c": {"primary_key": ["id"], "cursor": "up", "columns": {
            "id": {"type": "int64", "nullable": False},
            "up": {"type": "int64", "nullable": False}}}},
        "sources": [{"name": "s", "kind": "postgres", "dsn": dsn, "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "schema_drift": "add"}]}]}
    with Pipeline(parse_config(raw)) as p:
        return p.run_once(raise_on_error=False)


def _loaded(kind: str, where: str, sql: str) -> list[tuple[Any, ...]]:
    if kind == "postgres":
        with psycopg.connect(where, autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []
    with duckdb.connect(where) as conn:
        return conn.sql(sql).fetchall() if sql.startswith("SELECT") else [conn.execute(sql)]


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_text_added_over_a_number_column_is_refused_until_the_column_is_text(
        tmp_path: Path, pg_dsn: str, request: pytest.FixtureRequest, kind: str) -> None:
    where = (request.getfixturevalue("pg_warehouse_dsn") if kind == "postgres"
             else str(tmp_path / "wh.duckdb"))
    warehouse = ({"kind": "postgres", "dsn": where, "schema": "public"} if kind == "postgres"
                 else {"kind": "duckdb", "path": where, "schema": "main"})
    execute("postgres", pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, up int NOT NULL, x int)",
            "CREATE INDEX ON t (up, id)", "INSERT INTO t VALUES (1, 1, 5)")
    assert _run(tmp_path, pg_dsn, warehouse).ok  # x added as int64: a BIGINT column
    execute("postgres", pg_dsn, "ALTER TABLE t ALTER COLUMN x TYPE text",
            "INSERT INTO t VALUES (2, 2, '007'), (3, 3, ' 12')")
    refused = _run(tmp_path, pg_dsn, warehouse)
    assert not refused.ok
    assert any("column x is" in e and "ALTER TABLE" in e and "TYPE" in e
               for e in refused.errors), refused.errors
    assert _loaded(kind, where, "SELECT id, x FROM t ORDER BY id") == [(1, 5)]
    _loaded(kind, where, "ALTER TABLE t ALTER COLUMN x TYPE "
                         + ("text" if kind == "postgres" else "VARCHAR"))
    assert _run(tmp_path, pg_dsn, warehouse).ok
    source = execute("postgres", pg_dsn, "SELECT id, x FROM t ORDER BY id")
    assert source == [(1, "5"), (2, "007"), (3, " 12")]
    assert _loaded(kind, where, "SELECT id, x FROM t WHERE id > 1 ORDER BY id") == source[1:]


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_number_added_over_a_boolean_column_is_refused_until_the_column_is_a_number(
        tmp_path: Path, pg_dsn: str, request: pytest.FixtureRequest, kind: str) -> None:
    """A source boolean (added as bool) changed to integer: DuckDB stored 2 and -1 as true
    (run ok), PostgreSQL failed the batch on every delivery ('invalid input syntax for type
    boolean'), naming no column."""
    where = (request.getfixturevalue("pg_warehouse_dsn") if kind == "postgres"
             else str(tmp_path / "wh.duckdb"))
    warehouse = ({"kind": "postgres", "dsn": where, "schema": "public"} if kind == "postgres"
                 else {"kind": "duckdb", "path": where, "schema": "main"})
    execute("postgres", pg_dsn,
            "CREATE TABLE t (id int PRIMARY KEY, up int NOT NULL, x boolean)",
            "CREATE INDEX ON t (up, id)", "INSERT INTO t VALUES (1, 1, true)")
    assert _run(tmp_path, pg_dsn, warehouse).ok
    execute("postgres", pg_dsn, "ALTER TABLE t ALTER COLUMN x TYPE integer USING x::int",
            "INSERT INTO t VALUES (2, 2, 2), (3, 3, -1), (4, 4, 0)")
    refused = _run(tmp_path, pg_dsn, warehouse)
    assert not refused.ok
    assert any("column x is" in e and "ALTER TABLE" in e for e in refused.errors), \
        refused.errors
    _loaded(kind, where, "ALTER TABLE t ALTER COLUMN x TYPE BIGINT"
            + (" USING x::int" if kind == "postgres" else ""))
    assert _run(tmp_path, pg_dsn, warehouse).ok
    source = execute("postgres", pg_dsn, "SELECT id, x FROM t ORDER BY id")
    assert _loaded(kind, where, "SELECT id, x FROM t ORDER BY id") == source == [
        (1, 1), (2, 2), (3, -1), (4, 0)]
