"""PostgreSQL text keys compared by a collation that is not bytewise: a case-insensitive
(nondeterministic) ICU collation and citext. Keyset pages follow the database's order, the
warehouse compares bytes; every row must arrive once, and reconcile must find and repair a
row lost from the warehouse. Reconcile failed on the nondeterministic collation
("nondeterministic collations are not supported for substring searches": its canonical
text of a string column called replace() on the column's own collation)."""

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

KEYS = ["a", "B", "c", "Ä", "ä1", "b ", "a ", "ß", "ss1", "Z", "1", "é", "x|~y"]


def pipeline(tmp: Path, dsn: str) -> dict[str, Any]:
    return {
        "name": "coll", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": ["k"], "cursor": "c", "columns": {
            "k": {"type": "string", "nullable": False},
            "c": {"type": "timestamp", "nullable": False}, "v": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": "postgres", "dsn": dsn,
                     "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "page_size": 2,
                                 "min_page_size": 1, "lookback": 0}]}]}


def warehouse(tmp: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp / "wh.duckdb")) as con:
        return sorted(con.sql("SELECT k, v FROM main.t").fetchall())


@pytest.mark.parametrize("declared", ["text COLLATE ci", "citext"])
def test_case_insensitive_text_keys_arrive_and_reconcile(tmp_path: Path, pg_dsn: str,
                                                         declared: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citext")
        conn.execute("CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', "
                     "deterministic = false)")
        conn.execute(f"CREATE TABLE t (k {declared} PRIMARY KEY, c timestamptz NOT NULL, "
                     "v int)")
        conn.execute("CREATE INDEX ON t (c, k)")
        for i, k in enumerate(KEYS):  # three rows share each cursor value
            conn.execute("INSERT INTO t VALUES (%s, '2024-01-01'::timestamptz "
                         "+ %s * interval '1 us', %s)", (k, i % 3, i))
    raw = pipeline(tmp_path, pg_dsn)
    with Pipeline(parse_config(raw)) as p:
        assert p.run_once(raise_on_error=False).ok
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE t SET c = now(), v = v + 100 WHERE v % 2 = 0")
        source = sorted(conn.execute("SELECT k::text, v FROM t").fetchall())
    with Pipeline(parse_config(raw)) as p:
        assert p.run_once(raise_on_error=False).ok
    assert warehouse(tmp_path) == source
    for by, lost in (("key", "ß"), ("cursor", "x|~y")):
        with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
            con.execute("DELETE FROM main.t WHERE k = ?", [lost])
        with Pipeline(parse_config(raw)) as p:
            [report] = reconcile(p, options=Options(by=by, repair=True))
        assert report.error is None, report.error
        assert (report.missing, report.differences) == (1, 1), report.to_dict()
        assert warehouse(tmp_path) == source


def test_a_unique_index_in_another_collation_proves_no_key(tmp_path: Path,
                                                          pg_dsn: str) -> None:
    """A case-insensitive (nondeterministic) key column made unique by an index in the C
    collation holds 'a' and 'A'; pages order and compare the column by its own collation,
    which ties them, so a page ending on 'a' continued with `k > 'a'` and never read 'A'
    (2 of 5 rows lost, every run ok). Such an index proves nothing; the rows are looked
    at, and the key is refused, naming it."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', "
                     "deterministic = false)")
        conn.execute("CREATE TABLE t (k text COLLATE ci NOT NULL, c timestamptz NOT NULL, "
                     "v int)")
        conn.execute('CREATE UNIQUE INDEX t_k ON t (k COLLATE "C")')
        conn.execute("CREATE INDEX ON t (c, k)")
        conn.execute("INSERT INTO t VALUES ('a', '2024-01-01', 1), ('A', '2024-01-01', 2), "
                     "('b', '2024-01-01', 3), ('B', '2024-01-01', 4), ('c', '2024-01-02', 5)")
    with Pipeline(parse_config(pipeline(tmp_path, pg_dsn))) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.failed_tables == ["s.t"], (summary, warehouse(tmp_path))
    assert "primary_key (k) does not identify a row" in summary.errors[0], summary.errors
