"""A number with a fraction in a column the contract reads as an integer (a MariaDB
DECIMAL(10,2) or DOUBLE read as int64, a SQLite REAL in an INTEGER column): Arrow
truncated it (1.50 → 1, -0.99 → 0, 99999999.99 → 99999999), and the warehouse held the
wrong number, every run ok, nothing quarantined. Each such row is quarantined now, with
the reason; a whole number (3.00) loads as itself. PostgreSQL quarantined them already."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.support.sql_exec import execute

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VALUES = ["1.5", "2.01", "-1.5", "3", "-0.99", "99999999.99", "NULL"]


def run(tmp: Path, kind: str, at: str, page_size: int, initial_load: str) -> RunSummary:
    location = {"path": at} if kind == "sqlite" else {"dsn": at}
    raw: dict[str, Any] = {
        "name": "fractions", "state_dir": str(tmp / "state"),
        "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": ["k"], "cursor": "c", "columns": {
            "k": {"type": "int64", "nullable": False},
            "c": {"type": "int64", "nullable": False}, "v": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": kind, **location, "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "page_size": page_size,
                                 "initial_load": initial_load}]}]}
    with Pipeline(parse_config(raw)) as p:
        return p.run_once(raise_on_error=False)


@pytest.mark.parametrize(("kind", "declared"), [("mysql", "DECIMAL(10,2)"),
                                                ("mysql", "DOUBLE"), ("sqlite", "INTEGER")])
@pytest.mark.parametrize(("page_size", "initial_load"), [(1, "cursor"), (1000, "key")])
def test_a_fraction_read_as_an_integer_costs_its_row(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str, declared: str,
        page_size: int, initial_load: str) -> None:
    at = (request.getfixturevalue("mysql_dsn") if kind == "mysql"
          else str(tmp_path / "s.db"))
    rows = ", ".join(f"({i}, {i}, {v})" for i, v in enumerate(VALUES))
    execute(kind, at, f"CREATE TABLE t (k INT NOT NULL PRIMARY KEY, c INT NOT NULL, "
                      f"v {declared})", "CREATE INDEX i ON t (c, k)",
            f"INSERT INTO t VALUES {rows}")
    summary = run(tmp_path, kind, at, page_size, initial_load)
    assert summary.ok, summary.errors
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        loaded = sorted(con.sql("SELECT k, v FROM main.t").fetchall())
    source = execute(kind, at, "SELECT k, v FROM t")
    whole = sorted((k, None if v is None else int(v)) for k, v in source
                   if v is None or Decimal(str(v)) == int(v))
    assert loaded == whole == [(3, 3), (6, None)]
    assert summary.quarantined_rows == 5
