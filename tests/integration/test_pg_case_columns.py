"""A PostgreSQL source table with two columns differing only in case ("Amount" beside the
contract's `amount`). The probe folded every name to compare the source's columns with the
contract's, so "Amount" counted as read: its values were never extracted and no policy
heard of it, every run ok even with `schema_drift: stop`. It is now drift like any column
the contract does not name: stop stops naming it, add refuses it (the warehouse cannot
hold both), ignore warns; `amount`'s own values load either way (read through duckdb)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def run(tmp: Path, dsn: str, drift: str) -> Any:
    config = parse_config({
        "name": "cc", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": ["k"], "cursor": "k", "columns": {
            "k": {"type": "int64", "nullable": False}, "amount": {"type": "decimal(10,2)"}}}},
        "sources": [{"name": "s", "kind": "postgres", "dsn": dsn, "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "schema_drift": drift}]}]})
    with Pipeline(config) as p:
        return p.run_once(raise_on_error=False)


@pytest.fixture
def source(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute('CREATE TABLE t (k int PRIMARY KEY, amount numeric(10,2), '
                     '"Amount" numeric(10,2))')
        conn.execute("INSERT INTO t VALUES (1, 12.50, 99.00), (2, 3.25, 7.00)")
    return pg_dsn


@pytest.mark.parametrize(("drift", "said"), [
    ("stop", "the source has column(s) Amount that the contract does not name"),
    ("add", "'Amount' cannot be added to the warehouse (schema_drift: add): it differs "
            "from column 'amount' only in case"),
])
def test_a_column_differing_only_in_case_is_drift(tmp_path: Path, source: str, drift: str,
                                                  said: str) -> None:
    summary = run(tmp_path, source, drift)
    assert summary.failed_tables == ["s.t"], summary
    assert said in summary.errors[0], summary.errors


def test_ignored_it_warns_and_amount_loads(tmp_path: Path, source: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    summary = run(tmp_path, source, "ignore")
    assert summary.ok, summary.errors
    assert "source column(s) Amount are not in the contract" in caplog.text
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert con.sql("SELECT k, amount FROM main.t ORDER BY k").fetchall() == [
            (1, Decimal("12.50")), (2, Decimal("3.25"))]
