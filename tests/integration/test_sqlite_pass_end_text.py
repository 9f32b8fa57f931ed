"""A SQLite text key that is not UTF-8 as the table's greatest (cursor, key): refused naming
the column and the value, then every row loads once it is fixed.

A pass ends at the table's greatest (cursor, key), sent back as a page bound. sqlite3 reads
such text as no str, so the bound could not be sent (nor stored): every run failed with a
TypeError ('Object of type InvalidText is not JSON serializable', 'type InvalidText is not
supported') that named no column and no fix. The source is written and read through
sqlite3, the warehouse through duckdb.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import duckdb
import pytest
from tests.conftest import write_pipeline

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CONTRACT = {"primary_key": ["k"], "cursor": "at", "columns": {
    "k": {"type": "string", "nullable": False}, "at": {"type": "timestamp", "nullable": False},
    "n": {"type": "int64"}}}


@pytest.mark.parametrize("initial_load", ["cursor", "key"])
def test_a_last_key_that_is_no_text_is_refused_naming_it(tmp_path: Path,
                                                         initial_load: str) -> None:
    db = tmp_path / "s.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (k TEXT NOT NULL PRIMARY KEY, at TEXT NOT NULL, n INTEGER)")
        conn.execute("CREATE INDEX c ON t (at, k)")
        conn.execute("INSERT INTO t VALUES ('a', '2024-01-01 00:00:00', 1), "
                     "('b', '2024-01-02 00:00:00', 2), "
                     "(CAST(X'FF61' AS TEXT), '2024-01-02 00:00:00', 3)")
        conn.commit()
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "sqlite", "path": str(db),
                                        "resilience": {"retries": 0}, "tables": [
                                            {"name": "t", "contract": "c", "page_size": 2,
                                             "initial_load": initial_load}]}],
                            {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"),
                             "schema": "main"}, contracts={"c": CONTRACT},
                            state_dir=str(tmp_path / "state"),
                            landing={"path": str(tmp_path / "landing")})
    with Pipeline.from_yaml(config) as p:
        refused = p.run_once(raise_on_error=False)
    assert refused.failed_tables == ["s.t"], refused
    assert any("has k that is not UTF-8 text" in e and "\\xffa" in e
               for e in refused.errors), refused.errors
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE t SET k = 'c' WHERE n = 3")
        conn.commit()
        want = sorted(conn.execute("SELECT k, n FROM t").fetchall())
    with Pipeline.from_yaml(config) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.ok, summary.errors
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert sorted(con.sql("SELECT k, n FROM main.t").fetchall()) == want
