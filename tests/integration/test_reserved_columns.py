"""Source columns named like steadyflow's own warehouse columns (`_steadyflow_seq`, the load
sequence; `_steadyflow_invalid`) or two differing only in case ("Key" and "key", one column
to DuckDB). Such a contract was accepted and every batch then failed at load ('column
"_steadyflow_seq" specified more than once', 'Column with name ... already exists'),
landed but never loaded; the config now refuses it naming the column, and
`schema_drift: add` refuses to add such a source column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from steadyflow.config import parse_config
from steadyflow.errors import ConfigError
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def raw(tmp: Path, dsn: str, columns: dict[str, Any], drift: str = "ignore"
        ) -> dict[str, Any]:
    return {
        "name": "rc", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": ["k"], "cursor": "k", "columns": {
            "k": {"type": "int64", "nullable": False}, **columns}}},
        "sources": [{"name": "s", "kind": "postgres", "dsn": dsn,
                     "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "schema_drift": drift}]}]}


@pytest.mark.parametrize(("columns", "said"), [
    ({"_steadyflow_seq": {"type": "int64"}}, "'_steadyflow_seq': names starting with"),
    ({"_STEADYFLOW_invalid": {"type": "string"}}, "'_STEADYFLOW_invalid': names starting"),
    ({"v": {"type": "int64"}, "V": {"type": "int64"}}, "'v' and 'V' differ only in case"),
])
def test_a_contract_column_the_warehouse_cannot_hold_is_refused(
        tmp_path: Path, columns: dict[str, Any], said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        parse_config(raw(tmp_path, "dbname=x", columns))


def test_schema_drift_add_refuses_a_reserved_source_column(tmp_path: Path,
                                                           pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k int PRIMARY KEY, _steadyflow_seq int)")
        conn.execute("INSERT INTO t VALUES (1, 5)")
    with Pipeline(parse_config(raw(tmp_path, pg_dsn, {}, drift="add"))) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.failed_tables == ["s.t"], summary
    assert "'_steadyflow_seq' cannot be added to the warehouse" in summary.errors[0]
