"""A key column the source declares as text, read by the contract as a number. The source
keeps '1' and '01' (or '1.0' and '1.00') apart as two keys; the contract's type made them
one warehouse key, so one row replaced the other: 5 source rows became 2 warehouse rows
(decimal, every source) or 1 (int64), every run ok. Refused at the probe, naming the
column; the same table keyed as string loads every row.

SQLite stores decimals and times as text (it has no such type), so there two spellings of
one value are looked for instead (extract/key_spellings.py): at the probe, and on every
page, since a source object kept between runs does not look at the whole column again."""

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


def config(tmp: Path, kind: str, at: str, ktype: str) -> dict[str, Any]:
    location = {"path": at} if kind == "sqlite" else {"dsn": at}
    return {
        "name": "textkeys", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": ["k"], "cursor": "c", "columns": {
            "k": {"type": ktype, "nullable": False},
            "c": {"type": "int64", "nullable": False}, "v": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": kind, **location, "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "page_size": 2}]}]}


def run(tmp: Path, kind: str, at: str, ktype: str) -> RunSummary:
    with Pipeline(parse_config(config(tmp, kind, at, ktype))) as p:
        return p.run_once(raise_on_error=False)


def table(kind: str, at: str, keys: list[str], declared: str = "VARCHAR(40)") -> None:
    values = ", ".join(f"('{k}', {i}, {i})" for i, k in enumerate(keys))
    execute(kind, at, f"CREATE TABLE t (k {declared} NOT NULL PRIMARY KEY, "
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


# SQLite has no exact decimal nor time type: text is how it stores them, so such a key is
# not refused for being text; two spellings of one value are looked for instead
# (extract/key_spellings.py). (contract type, the keys, a spelling the error names)
SPELLED_TWICE = [
    ("decimal(10,2)", KEYS["decimal(10,2)"], "'01.5'"),
    ("decimal(10,2)", ["1.0", "1.00", "2.5"], "'1.0', '1.00'"),
    ("timestamp", ["2024-01-01T00:00:00", "2024-01-01 00:00:00", "2024-01-02T00:00:00"],
     "'2024-01-01 00:00:00', '2024-01-01T00:00:00'"),
    ("timestamp", ["2024-01-01 00:00:00.5", "2024-01-01 00:00:00.50"], "'2024-01-01 00:00:00.5'"),
    ("timestamp", ["2024-01-01 00:00:00Z", "2024-01-01 00:00:00+00:00"], "zone suffixes"),
    ("timestamp", ["2024-01-01 01:00:00+01:00", "2024-01-01 00:00:00+00:00"], "zone suffixes"),
    ("timestamp", ["2024-01-01 00:00:00+00:00", "2024-01-01 00:00:00+0000"],
     "'2024-01-01 00:00:00+0000'"),
]  # a date has one text only: Arrow reads no other ('2024-01-01 00:00:00' is quarantined)


@pytest.mark.parametrize(("ktype", "keys", "named"), SPELLED_TWICE)
@pytest.mark.parametrize("declared", ["VARCHAR(40)", ""])
def test_sqlite_keys_spelled_two_ways_lose_no_row(tmp_path: Path, ktype: str,
                                                  keys: list[str], named: str,
                                                  declared: str) -> None:
    """A key declared as text, or with no type (no affinity: text stays text), holding two
    spellings of one value: the run loaded fewer warehouse rows than source rows and said
    ok. Refused at the probe, naming the column, a spelling and the fix."""
    at = str(tmp_path / "s.db")
    table("sqlite", at, keys, declared)
    summary = run(tmp_path, "sqlite", at, ktype)
    assert summary.failed_tables == ["s.t"], summary
    [error] = summary.errors
    assert f"key column k ({ktype})" in error and named in error, error
    assert "the table holds both" in error, error  # an actual pair, by a look up
    assert "declare k as string in the contract" in error, error


def test_an_untyped_sqlite_key_of_text_read_as_int64_spelled_two_ways(tmp_path: Path) -> None:
    """'1' and '01' in a column without a type (no affinity: neither becomes a number):
    not refused as a text-declared column is, both were read as 1: one row lost, run ok."""
    at = str(tmp_path / "s.db")
    table("sqlite", at, ["1", "01", "2"], "")
    summary = run(tmp_path, "sqlite", at, "int64")
    assert summary.failed_tables == ["s.t"], summary
    assert "key column k (int64) holds '01', not spelled plainly" in summary.errors[0]


ONE_SPELLING = [
    ("decimal(10,2)", ["1", "1.5", "2.25", "-3", "0"]),  # shortest
    ("decimal(10,2)", ["1.00", "1.50", "2.25", "-3.00"]),  # one fixed scale
    ("timestamp", ["2024-01-01T00:00:00", "2024-01-01T00:00:00.500000",  # isoformat()
                   "2024-01-01T00:00:01.250000", "2024-01-02T00:00:00"]),
    ("timestamp", ["2024-01-01 00:00:00.000Z", "2024-01-01 00:00:00.500Z"]),
    ("date", ["2024-01-01", "2024-01-02"]),
]


@pytest.mark.parametrize(("ktype", "keys"), ONE_SPELLING)
def test_sqlite_keys_in_one_spelling_load_every_row(tmp_path: Path, ktype: str,
                                                    keys: list[str]) -> None:
    """No refusal where each value has one spelling: every source row is a warehouse row."""
    at = str(tmp_path / "s.db")
    table("sqlite", at, keys)
    summary = run(tmp_path, "sqlite", at, ktype)
    assert summary.ok, summary.errors
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert con.sql("SELECT count(*) FROM main.t").fetchall() == [(len(keys),)]


# (contract type, declared type, keys loaded first, a key written afterwards that is
# another spelling of the first: its row replaced the first one's)
LATER = [
    ("decimal(10,2)", "VARCHAR(40)", ["'1.5'", "'2.5'"], "'1.50'",
     "the table holds both '1.5' and '1.50'"),
    ("timestamp", "TEXT", ["'2024-01-01 00:00:00'", "'2024-01-02 00:00:00'"],
     "'2024-01-01T00:00:00'", "the table holds both '2024-01-01 00:00:00' and "
     "'2024-01-01T00:00:00'"),
    ("int64", "", ["1", "2"], "'1'", "holds values stored as integer and text"),
    ("string", "", ["1", "2"], "'1'", "holds values stored as integer and text"),
    ("decimal(10,2)", "", ["1.5", "2.5"], "'1.5'",  # a REAL, then text
     "holds values stored as integer and text"),
]


@pytest.mark.parametrize(("ktype", "declared", "first", "later", "named"), LATER)
def test_a_later_page_spelling_a_loaded_key_again_fails_the_table(
        tmp_path: Path, ktype: str, declared: str, first: list[str], later: str,
        named: str) -> None:
    """The probe's look at the whole column is not repeated at every poll (a source
    object keeps it, as `run --follow` keeps the source between cycles): a row written
    since, in another spelling (or storage class) of a loaded key, was merged into that
    key's warehouse row, the run ok. Each page's keys are checked now: the run fails and
    the warehouse keeps both loaded rows as they were."""
    at = str(tmp_path / "s.db")
    execute("sqlite", at, f"CREATE TABLE t (k {declared} NOT NULL PRIMARY KEY, "
                          "c INTEGER NOT NULL, v INT)", "CREATE INDEX i ON t (c, k)",
            "INSERT INTO t VALUES " + ", ".join(f"({k}, {i}, {i})" for i, k in
                                                enumerate(first)))
    with Pipeline(parse_config(config(tmp_path, "sqlite", at, ktype))) as p:
        assert p.run_once(raise_on_error=False).ok
        execute("sqlite", at, f"INSERT INTO t VALUES ({later}, 10, 10)")
        summary = p.run_once(raise_on_error=False)
    assert summary.failed_tables == ["s.t"], summary
    assert "key column k" in summary.errors[0] and named in summary.errors[0], summary
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert sorted(con.sql("SELECT c, v FROM main.t").fetchall()) == [(0, 0), (1, 1)]


def test_a_later_page_read_by_sqlite3_spelling_a_loaded_key_again_fails_the_table(
        tmp_path: Path) -> None:
    """The same on the page that ADBC leaves to sqlite3 (its key column mixes storage
    classes: 3 and '1'), the path the reconciler's source reads every page by: the '1'
    row was merged into key 1's warehouse row, the run ok, without that page's check."""
    at = str(tmp_path / "s.db")
    execute("sqlite", at, "CREATE TABLE t (k NOT NULL PRIMARY KEY, c INTEGER NOT NULL, v INT)",
            "CREATE INDEX i ON t (c, k)", "INSERT INTO t VALUES (1, 0, 0), (2, 1, 1)")
    with Pipeline(parse_config(config(tmp_path, "sqlite", at, "int64"))) as p:
        assert p.run_once(raise_on_error=False).ok
        execute("sqlite", at, "INSERT INTO t VALUES (3, 10, 10), ('1', 11, 11)")
        summary = p.run_once(raise_on_error=False)
    assert summary.failed_tables == ["s.t"], summary
    assert "key column k holds values stored as integer and text" in summary.errors[0], \
        summary
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert sorted(con.sql("SELECT k, c, v FROM main.t").fetchall()) == [(1, 0, 0),
                                                                           (2, 1, 1)]


def test_a_second_spelling_no_page_reads_is_refused_at_the_next_probe(
        tmp_path: Path) -> None:
    """The probe reads the whole key column itself: a row spelling a loaded key again that
    sorts behind the checkpoint (so no page reads it) fails the next run's table, whose
    probe is its only look (the page check sees nothing)."""
    at = str(tmp_path / "s.db")
    table("sqlite", at, ["1.5", "2.5"])
    assert run(tmp_path, "sqlite", at, "decimal(10,2)").ok
    execute("sqlite", at, "INSERT INTO t VALUES ('1.50', -1, -1)")
    summary = run(tmp_path, "sqlite", at, "decimal(10,2)")
    assert summary.failed_tables == ["s.t"], summary
    assert "the table holds both '1.5' and '1.50'" in summary.errors[0], summary


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
