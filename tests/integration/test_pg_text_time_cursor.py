"""A PostgreSQL text column as a timestamp (or date) cursor. Pages compare its text, and
text order is time order only while every value is spelled alike: a row stamped
'2024-01-01 09:30:00+00:00' after one stamped '2024-01-01 10:00:00+01:00' (09:00 UTC)
sorts before the checkpoint and was never read (lost, every run ok). The probe refuses
it naming table, column and the fix; declared string, the cursor is ordered as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def run(tmp: Path, dsn: str, cursor_type: str) -> RunSummary:
    raw: dict[str, Any] = {
        "name": "tt", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": ["k"], "cursor": "c", "columns": {
            "k": {"type": "int64", "nullable": False},
            "c": {"type": cursor_type, "nullable": False}}}},
        "sources": [{"name": "s", "kind": "postgres", "dsn": dsn,
                     "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "lookback": 0}]}]}
    with Pipeline(parse_config(raw)) as p:
        return p.run_once(raise_on_error=False)


@pytest.mark.parametrize(("declared", "cursor_type"), [
    ("text", "timestamp"), ("varchar(40)", "timestamp"), ("char(10)", "date"),
    ("ext.citext", "timestamp")])
def test_a_text_column_is_refused_as_a_time_cursor(tmp_path: Path, pg_dsn: str,
                                                   declared: str, cursor_type: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA ext")  # an extension's type outside the search_path
        conn.execute("CREATE EXTENSION citext SCHEMA ext")
        conn.execute(f"CREATE TABLE t (k int PRIMARY KEY, c {declared} NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, '2024-01-01'), (2, '2024-01-02')")
    summary = run(tmp_path, pg_dsn, cursor_type)
    assert summary.failed_tables == ["s.t"], summary
    [error] = summary.errors
    assert f"cursor column c ({cursor_type}) is declared " in error, error
    assert "ALTER TABLE t ALTER COLUMN c TYPE timestamptz" in error
    assert run(tmp_path / "string", pg_dsn, "string").ok
