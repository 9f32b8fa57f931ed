"""PostgreSQL ENUM keys and cursors: ORDER BY sorts an ENUM by its declaration (members
added later included), not by its text. Keyset pages must compare the checkpoint as the
ENUM (an untyped literal or parameter takes the column's type), so no row sorting after it
in declaration order but before it as text is skipped. Reconcile refused such a table
even with `lookback: 0` ("lookback cannot step back the text cursor value 'p'... set
lookback: 0"): a zero lookback now leaves any cursor as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from steadyflow.config import parse_config
from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def pipeline(tmp: Path, dsn: str, initial_load: str) -> dict[str, Any]:
    return {
        "name": "enums", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": ["k", "n"], "cursor": "c", "columns": {
            "k": {"type": "string", "nullable": False},
            "n": {"type": "int64", "nullable": False},
            "c": {"type": "string", "nullable": False}, "v": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": "postgres", "dsn": dsn,
                     "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "page_size": 1,
                                 "min_page_size": 1, "lookback": 0,
                                 "initial_load": initial_load}]}]}


def run(raw: dict[str, Any]) -> None:
    with Pipeline(parse_config(raw)) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.ok, summary.errors


def ends(tmp: Path, dsn: str) -> tuple[list[Any], list[Any]]:
    with psycopg.connect(dsn) as conn:
        source = sorted(conn.execute("SELECT k::text, n, c::text, v FROM t").fetchall())
    with duckdb.connect(str(tmp / "wh.duckdb")) as con:
        return source, sorted(con.sql("SELECT k, n, c, v FROM main.t").fetchall())


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_enum_keys_and_cursors_page_in_declaration_order(tmp_path: Path, pg_dsn: str,
                                                         initial_load: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TYPE e AS ENUM ('z', 'm', 'a', 'b')")
        conn.execute("CREATE TYPE st AS ENUM ('r', 'q', 'p')")
        conn.execute("CREATE TABLE t (k e, n int, c st NOT NULL, v int, PRIMARY KEY (k, n))")
        conn.execute("CREATE INDEX ON t (c, k, n)")
        conn.execute("INSERT INTO t VALUES ('z', 1, 'r', 1), ('m', 1, 'r', 2), "
                     "('a', 1, 'q', 3), ('b', 1, 'q', 4), ('z', 2, 'q', 5)")
    raw = pipeline(tmp_path, pg_dsn, initial_load)
    run(raw)
    source, warehouse = ends(tmp_path, pg_dsn)
    assert warehouse == source
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TYPE st ADD VALUE 'o' BEFORE 'r'")
        conn.execute("ALTER TYPE e ADD VALUE 'c' AFTER 'z'")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE t SET c = 'p', v = 10 WHERE k = 'z' AND n = 1")
        conn.execute("INSERT INTO t VALUES ('c', 1, 'p', 6), ('b', 2, 'p', 7)")
    run(raw)
    source, warehouse = ends(tmp_path, pg_dsn)
    assert warehouse == source and len(source) == 7
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM t WHERE k = 'a'")
    with Pipeline(parse_config(raw)) as p:
        [report] = reconcile(p, options=Options(by="key"))
    assert report.error is None, report.error
    assert (report.extra, report.differences) == (1, 1), report.to_dict()
