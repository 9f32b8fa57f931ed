"""A key column the source declares as text, read by the contract as a number. The source
keeps '1' and '01' (or '1.0' and '1.00') apart as two keys; the contract's type made them
one warehouse key, so one row replaced the other: 5 source rows became 2 warehouse rows
(decimal, every source) or 1 (int64), every run ok. Refused at the probe, naming the
column; the same table keyed as string loads every row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.support.sql_exec import execute

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEYS = {"int64": ["1", "01", "+1", "2", "002"],
        "decimal(10,2)": ["1.0", "1.00", "1", "01.5", "1.5"]}


def where(kind: str, request: pytest.FixtureRequest, tmp: Path) -> str:
    if kind == "sqlite":
        return str(tmp / "s.db")
    return str(request.getfixturevalue("mysql_dsn" if kind == "mysql" else "pg_dsn"))


def run(tmp: Path, kind: str, at: str, ktype: str) -> RunSummary:
    location = {"path": at} if kind == "sqlite" else {"dsn": at}
    raw: dict[str, Any] = {
        "name": "textkeys", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": ["k"], "cursor": "c", "columns": {
            "k": {"type": ktype, "nullable": False},
            "c": {"type": "int64", "nullable": False}, "v": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": kind, **location, "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "page_size": 2}]}]}
    with Pipeline(parse_config(raw)) as p:
        return p.run_once(raise_on_error=False)


def table(kind: str, at: str, keys: list[str]) -> None:
    values = ", ".join(f"('{k}', {i}, {i})" for i, k in enumerate(keys))
    execute(kind, at, "CREATE TABLE t (k VARCHAR(20) NOT NULL PRIMARY KEY, "
                      "c INTEGER NOT NULL, v INT)", "CREATE INDEX i ON t (c, k)",
            f"INSERT INTO t VALUES {values}")


@pytest.mark.parametrize(("kind", "ktype"), [
    ("sqlite", "int64"), ("mysql", "int64"), ("postgres", "int64"),
    ("mysql", "decimal(10,2)"), ("postgres", "decimal(10,2)")])
def test_a_text_key_read_as_a_number_is_refused_naming_it(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str, ktype: str) -> None:
    at = where(kind, request, tmp_path)
    table(kind, at, KEYS[ktype])
    summary = run(tmp_path, kind, at, ktype)
    assert summary.failed_tables == ["s.t"], summary
    [error] = summary.errors
    assert f"key column k ({ktype}) is declared" in error, error
    assert "declare k as string in the contract" in error, error


@pytest.mark.xfail(strict=True, reason="SQLite stores exact decimals as text (it has no "
                   "such type), so a TEXT key read as decimal is not refused, and two "
                   "spellings of one value ('1.0', '1.00') are not looked for yet: they "
                   "merge into one warehouse row, the run ok (likewise times: "
                   "'2024-01-01T00:00:00' and '2024-01-01 00:00:00')")
def test_sqlite_decimal_keys_spelled_two_ways_lose_no_row(tmp_path: Path) -> None:
    at = str(tmp_path / "s.db")
    table("sqlite", at, KEYS["decimal(10,2)"])
    summary = run(tmp_path, "sqlite", at, "decimal(10,2)")
    if summary.ok:  # loading is right only if every source row is a warehouse row
        with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
            assert con.sql("SELECT count(*) FROM main.t").fetchone() == (5,)


@pytest.mark.parametrize("kind", ["sqlite", "mysql", "postgres"])
def test_the_same_keys_as_string_load_every_row(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    at = where(kind, request, tmp_path)
    table(kind, at, KEYS["decimal(10,2)"])
    summary = run(tmp_path, kind, at, "string")
    assert summary.ok, summary.errors
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        loaded = sorted(con.sql("SELECT k, v FROM main.t").fetchall())
    assert loaded == sorted(execute(kind, at, "SELECT k, v FROM t"))
    assert len(loaded) == 5
