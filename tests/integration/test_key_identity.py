"""A contract primary_key that does not identify a MariaDB or SQLite row (PostgreSQL's are in
test_pg_key_identity.py). The probe looked only at PostgreSQL's: on the others rows
sharing the key were merged into one warehouse row, the others lost, every run ok."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.support.sql_exec import execute

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TIME = {"mysql": "DATETIME(6)", "sqlite": "TEXT"}


def where(kind: str, request: pytest.FixtureRequest, tmp: Path) -> str:
    return request.getfixturevalue("mysql_dsn") if kind == "mysql" else str(tmp / "s.db")


def run(tmp: Path, kind: str, at: str, key: list[str]) -> RunSummary:
    """One run of table t (k, n, c, v) keyed by `key`, at `at` (a DSN, or SQLite's path),
    into DuckDB; test_pg_key_identity.py runs it on PostgreSQL."""
    location = {"path": at} if kind == "sqlite" else {"dsn": at}
    raw: dict[str, Any] = {
        "name": "keys", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": key, "cursor": "c", "columns": {
            "k": {"type": "int64", "nullable": False},
            "n": {"type": "int64", "nullable": "n" not in key},
            "c": {"type": "timestamp", "nullable": False}, "v": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": kind, **location, "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "page_size": 2}]}]}
    with Pipeline(parse_config(raw)) as p:
        return p.run_once(raise_on_error=False)


def loaded(tmp: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp / "wh.duckdb")) as con:
        return sorted(con.sql("SELECT k, n, v FROM main.t").fetchall())


ROWS = ("INSERT INTO t VALUES (1, 1, '2024-01-01 00:00:00', 1), "
        "(1, 2, '2024-01-02 00:00:00', 2), (2, 1, '2024-01-03 00:00:00', 3)")


@pytest.mark.parametrize("kind", ["mysql", "sqlite"])
@pytest.mark.parametrize("shape", ["primary key (k, n)", "no unique index"])
def test_a_key_rows_share_is_refused_naming_it(tmp_path: Path, request: pytest.FixtureRequest,
                                               kind: str, shape: str) -> None:
    at = where(kind, request, tmp_path)
    pk = ", PRIMARY KEY (k, n)" if shape.startswith("primary") else ""
    execute(kind, at, f"CREATE TABLE t (k INT NOT NULL, n INT NOT NULL, c {TIME[kind]} NOT NULL, "
                      f"v INT{pk})", ROWS)
    summary = run(tmp_path, kind, at, ["k"])
    assert summary.failed_tables == ["s.t"], summary
    [error] = summary.errors
    assert "primary_key (k) does not identify a row: 2 rows have k = 1" in error, error


@pytest.mark.parametrize("kind", ["mysql", "sqlite"])
@pytest.mark.parametrize("index", ["PRIMARY KEY (k)", "UNIQUE (k, n)", "rowid"])
def test_a_unique_index_within_the_key_proves_it(tmp_path: Path, request: pytest.FixtureRequest,
                                                 caplog: pytest.LogCaptureFixture, kind: str,
                                                 index: str) -> None:
    """A primary key, a unique index and SQLite's INTEGER PRIMARY KEY (the rowid, in no
    index list) prove the key: no look at the rows, no warning."""
    at = where(kind, request, tmp_path)
    k = "k INTEGER PRIMARY KEY" if index == "rowid" else "k INT NOT NULL"
    extra = "" if index == "rowid" else f", {index}"
    execute(kind, at, f"CREATE TABLE t ({k}, n INT NOT NULL, c {TIME[kind]} NOT NULL, "
                      f"v INT{extra})", ROWS.replace("(1, 2,", "(3, 2,"))
    with caplog.at_level(logging.WARNING, logger="steadyflow"):
        summary = run(tmp_path, kind, at, ["k"] if index != "UNIQUE (k, n)" else ["k", "n"])
    assert summary.ok, summary.errors
    assert not [r for r in caplog.records if "unique index" in r.getMessage()]
    assert loaded(tmp_path) == [(1, 1, 1), (2, 1, 3), (3, 2, 2)]
