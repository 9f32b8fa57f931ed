"""A column the warehouse table holds that the batch no longer brings: removed from the
contract, or (`schema_drift: add`) dropped at the source. The merge replaces whole rows,
so every row changed afterwards lost its value there (NULL) while every run said ok and
reconcile, comparing the contract's columns, saw nothing. Now the load (and reconcile)
stops that table, naming the column and both fixes; no row is changed meanwhile, and
once the column is dropped from the warehouse table (or put back) the batches load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from steadyflow.config import parse_config
from steadyflow.reconcile.options import Options
from steadyflow.reconcile.runner import reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def config(tmp: Path, dsn: str, columns: list[str], drift: str,
           warehouse: dict[str, Any]) -> dict[str, Any]:
    types = {"id": {"type": "int64", "nullable": False},
             "ts": {"type": "int64", "nullable": False},
             "a": {"type": "string"}, "b": {"type": "string"}}
    return {
        "name": "drop", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": warehouse,
        "contracts": {"c": {"primary_key": ["id"], "cursor": "ts",
                            "columns": {n: types[n] for n in columns}}},
        "sources": [{"name": "s", "kind": "postgres", "dsn": dsn,
                     "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "schema_drift": drift,
                                 "lookback": 0}]}]}


def run(raw: dict[str, Any]) -> list[str]:
    with Pipeline(parse_config(raw)) as p:
        return p.run_once(raise_on_error=False).errors


def warehouse_b(raw: dict[str, Any], dsn: str) -> dict[int, Any]:
    """id → b as the warehouse holds it, read through its own driver."""
    w = raw["warehouse"]
    if w["kind"] == "duckdb":
        with duckdb.connect(w["path"]) as con:
            return dict(con.sql("SELECT id, b FROM main.t").fetchall())
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id, b FROM wh.t").fetchall())  # type: ignore[arg-type]


def alter(raw: dict[str, Any], dsn: str, change: str) -> None:
    w = raw["warehouse"]
    if w["kind"] == "duckdb":
        with duckdb.connect(w["path"]) as con:
            con.execute(f"ALTER TABLE main.t {change}")
    else:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE wh.t {change}".encode())


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"])
@pytest.mark.parametrize("how", ["contract shrinks", "added column dropped at the source"])
def test_a_column_the_batches_no_longer_bring_stops_the_table(
        tmp_path: Path, pg_dsn: str, warehouse: str, how: str) -> None:
    wh = ({"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"), "schema": "main"}
          if warehouse == "duckdb" else {"kind": "postgres", "dsn": pg_dsn, "schema": "wh"})
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, ts int NOT NULL, a text, b text)")
        conn.execute("CREATE INDEX ON t (ts, id)")
        conn.execute("INSERT INTO t SELECT g, g, 'a' || g, 'b' || g "
                     "FROM generate_series(1, 4) g")
    adds = how.startswith("added")
    raw = config(tmp_path, pg_dsn, ["id", "ts", "a"] if adds else ["id", "ts", "a", "b"],
                 "add" if adds else "ignore", wh)
    assert run(raw) == []
    assert warehouse_b(raw, pg_dsn) == {i: f"b{i}" for i in range(1, 5)}
    # the warehouse's own column, filled on every insert: not the contract's business
    alter(raw, pg_dsn, "ADD COLUMN note text DEFAULT 'mine'")

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        if adds:
            conn.execute("ALTER TABLE t DROP COLUMN b")
        conn.execute("UPDATE t SET ts = 10, a = 'changed' WHERE id = 2")
    if not adds:
        raw = config(tmp_path, pg_dsn, ["id", "ts", "a"], "ignore", wh)
    [error] = run(raw)
    assert "holds column(s) b that" in error and "DROP COLUMN" in error, error
    assert warehouse_b(raw, pg_dsn) == {i: f"b{i}" for i in range(1, 5)}  # nothing lost
    with Pipeline(parse_config(raw)) as p:
        [report] = reconcile(p, options=Options(by="key"))
    assert report.error is not None and "holds column(s) b" in report.error

    alter(raw, pg_dsn, "DROP COLUMN b")  # the operator's decision: the column goes
    assert run(raw) == []
    w = raw["warehouse"]
    if w["kind"] == "duckdb":
        with duckdb.connect(w["path"]) as con:
            rows = sorted(con.sql("SELECT id, ts, a FROM main.t").fetchall())
    else:
        with psycopg.connect(pg_dsn) as conn:
            rows = sorted(conn.execute("SELECT id, ts, a FROM wh.t").fetchall())
    with psycopg.connect(pg_dsn) as conn:
        assert rows == sorted(conn.execute("SELECT id, ts, a FROM t").fetchall())
