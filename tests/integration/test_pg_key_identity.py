"""A contract primary_key that does not identify a source row. Rows sharing it were merged
into one warehouse row (newer cursor wins), every other lost while every run said ok. The
probe refuses it, naming table, key and the fix: a unique index on some of the key's
columns proves it; without one the rows are looked at, and the table is refused once
rows share the key (a warning until then)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration.test_key_identity import loaded, run

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


ROWS = ("INSERT INTO t VALUES (1, 1, '2024-01-01', 1), (1, 2, '2024-01-02', 2), "
        "(2, 1, '2024-01-03', 3)")


@pytest.mark.parametrize("shape", ["primary key (k, n)", "no unique index", "a view"])
def test_a_key_rows_share_is_refused_naming_it(tmp_path: Path, pg_dsn: str,
                                               shape: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        table = "base" if shape == "a view" else "t"
        pk = ", PRIMARY KEY (k, n)" if shape.startswith("primary") else ""
        conn.execute(f"CREATE TABLE {table} (k int NOT NULL, n int NOT NULL, "
                     f"c timestamptz NOT NULL, v int{pk})")
        if shape == "a view":
            conn.execute("CREATE VIEW t AS SELECT * FROM base")
        conn.execute(ROWS.replace("INTO t", f"INTO {table}"))
    summary = run(tmp_path, "postgres", pg_dsn, ["k"])
    assert summary.failed_tables == ["s.t"], summary
    [error] = summary.errors
    assert "primary_key (k) does not identify a row: 2 rows have k = 1" in error, error
    assert ("(k, n) as the contract's primary_key" in error) == shape.startswith("primary")
    assert "add a UNIQUE index on (k) to t" in error
    fixed = run(tmp_path / "fixed", "postgres", pg_dsn, ["k", "n"])
    assert fixed.ok, fixed.errors
    assert loaded(tmp_path / "fixed") == [(1, 1, 1), (1, 2, 2), (2, 1, 3)]


def test_a_key_narrower_than_the_primary_key_warns_until_rows_share_it(
        tmp_path: Path, pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """A partitioned table's primary key must hold the partition key, so a narrower
    contract key may well be unique: it loads with a warning, and the first look after
    two rows share it refuses the table."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k int, n int, c timestamptz NOT NULL, v int, "
                     "PRIMARY KEY (k, n))")
        conn.execute("INSERT INTO t VALUES (1, 1, '2024-01-01', 1)")
    assert run(tmp_path, "postgres", pg_dsn, ["k"]).ok
    assert "narrower than its primary key (k, n)" in caplog.text
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (1, 2, '2024-01-02', 2)")
    summary = run(tmp_path, "postgres", pg_dsn, ["k"])
    assert summary.failed_tables == ["s.t"], summary
    assert "2 rows have k = 1" in summary.errors[0]
    assert "the table's own primary key (k, n)" in summary.errors[0]


@pytest.mark.parametrize("index", ["UNIQUE (k)", "PRIMARY KEY (k)"])
def test_a_unique_index_within_the_key_proves_it(tmp_path: Path, pg_dsn: str,
                                                 index: str) -> None:
    """(k) unique makes (k, n) unique too; an index INCLUDE-ing n or a partial one
    would not prove (k, n)'s narrower forms, but (k) itself is enough here."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE t (k int NOT NULL, n int, c timestamptz NOT NULL, "
                     f"v int, {index})")
        conn.execute("INSERT INTO t VALUES (1, 1, '2024-01-01', 1), (2, 1, '2024-01-02', 2)")
    for key in (["k"], ["k", "n"]):
        summary = run(tmp_path / "-".join(key), "postgres", pg_dsn, key)
        assert summary.ok, summary.errors
        assert loaded(tmp_path / "-".join(key)) == [(1, 1, 1), (2, 1, 2)]


def test_an_index_including_the_key_or_partial_proves_nothing(tmp_path: Path,
                                                              pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k int NOT NULL, n int NOT NULL, "
                     "c timestamptz NOT NULL, v int)")
        conn.execute("CREATE UNIQUE INDEX ON t (n) INCLUDE (k)")
        conn.execute("CREATE UNIQUE INDEX ON t (k) WHERE v > 100")
        conn.execute("INSERT INTO t VALUES (1, 1, '2024-01-01', 1), (1, 2, '2024-01-02', 2)")
    summary = run(tmp_path, "postgres", pg_dsn, ["k"])
    assert summary.failed_tables == ["s.t"], summary


def test_an_invalid_unique_index_proves_nothing(tmp_path: Path, pg_dsn: str) -> None:
    """CREATE UNIQUE INDEX CONCURRENTLY that fails on rows sharing the key leaves the
    index behind, INVALID (pg_index.indisvalid false) until dropped: it proves nothing of
    the rows already there, the very ones that made it fail. Taken as proof, the rows
    sharing k = 1 were merged into one warehouse row (1 of 3 lost, every run ok)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k int NOT NULL, n int NOT NULL, "
                     "c timestamptz NOT NULL, v int)")
        conn.execute(ROWS)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY t_k ON t (k)")
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                            "'t_k'::regclass").fetchall() == [(False,)]
    summary = run(tmp_path, "postgres", pg_dsn, ["k"])
    assert summary.failed_tables == ["s.t"], summary
    assert "2 rows have k = 1" in summary.errors[0], summary.errors


def test_a_primary_key_does_not_cover_inheriting_tables(tmp_path: Path, pg_dsn: str) -> None:
    """SELECT from a parent reads its INHERITS children, which its primary key does not
    cover: a key in both was merged into one warehouse row."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k int PRIMARY KEY, n int, c timestamptz NOT NULL, "
                     "v int)")
        conn.execute("CREATE TABLE t_2023 () INHERITS (t)")
        conn.execute("INSERT INTO t VALUES (1, 1, '2024-01-01', 1)")
        conn.execute("INSERT INTO t_2023 VALUES (1, 2, '2023-01-01', 2)")
    summary = run(tmp_path, "postgres", pg_dsn, ["k"])
    assert summary.failed_tables == ["s.t"], summary
    assert "2 rows have k = 1" in summary.errors[0]


def test_a_look_for_shared_keys_that_times_out_stops_no_table(
        tmp_path: Path, pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """Without a unique index the rows are looked at (GROUP BY over the table); on a table
    too big for statement_timeout that look must warn, not fail every run."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k int NOT NULL, n int, c timestamptz NOT NULL, v int)")
        conn.execute("CREATE INDEX ON t (c, k)")
        # 10 ms a row whatever the machine: the look (every row: 2 s) outlasts the 1 s
        # statement_timeout, a page (index order on c, a few rows) does not (a count
        # over generate_series took ~1 s for the look, so it passed on a quiet machine)
        conn.execute("CREATE FUNCTION slow(int) RETURNS int LANGUAGE sql IMMUTABLE AS "
                     "'SELECT $1 + 0 * length(pg_sleep(0.01)::text)'")
        conn.execute("CREATE VIEW big AS SELECT slow(k) AS k, n, c, v FROM t")
        conn.execute("INSERT INTO t SELECT g, g, '2024-01-01'::timestamptz "
                     "+ g * interval '1 second', g FROM generate_series(1, 200) g")
    raw: dict[str, Any] = {
        "name": "keys", "state_dir": str(tmp_path / "state"),
        "landing": {"path": str(tmp_path / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"),
                      "schema": "main"},
        "contracts": {"c": {"primary_key": ["k"], "cursor": "c", "columns": {
            "k": {"type": "int64", "nullable": False}, "n": {"type": "int64"},
            "c": {"type": "timestamp", "nullable": False}, "v": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": "postgres", "dsn": pg_dsn,
                     "resilience": {"retries": 0, "statement_timeout": "1s"},
                     "tables": [{"name": "big", "contract": "c", "page_size": 2}]}]}
    with Pipeline(parse_config(raw)) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.ok, summary.errors
    assert "looking for rows that share it took longer than statement_timeout" in caplog.text


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_a_key_column_holding_nulls_is_refused_naming_it(tmp_path: Path, pg_dsn: str,
                                                         initial_load: str) -> None:
    """UNIQUE (k, n) over a nullable n proves no key (it admits (1, NULL) twice), and
    PostgreSQL sorts NULL last: after a page ending on (c, 1, 2) the next compared
    (c, k, n) > (c, 1, 2), which is NULL for (c, 1, NULL), so that row was never read,
    nor quarantined, every run ok (two of three such rows lost, key or cursor order).
    A key column the catalog lets hold NULLs is looked at and refused while it holds any."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k int NOT NULL, n int, c timestamptz NOT NULL, v int, "
                     "UNIQUE (k, n))")
        conn.execute("INSERT INTO t VALUES (1, 2, '2024-01-01', 1), (1, NULL, '2024-01-01', 2), "
                     "(1, NULL, '2024-01-01', 3), (2, 1, '2024-01-01', 4)")
    raw_run = run(tmp_path, "postgres", pg_dsn, ["k", "n"]) if initial_load == "key" else None
    if raw_run is None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # read by cursor: no key index
            conn.execute("ALTER TABLE t DROP CONSTRAINT t_k_n_key")
            conn.execute("CREATE UNIQUE INDEX t_k_n ON t (k, n)")
        raw_run = run(tmp_path, "postgres", pg_dsn, ["k", "n"])
    assert raw_run.failed_tables == ["s.t"], raw_run
    [error] = raw_run.errors
    assert "key column n" in error and "NULL" in error, error
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the fix the hint names
        conn.execute("UPDATE t SET n = v + 10 WHERE n IS NULL")
        conn.execute("ALTER TABLE t ALTER COLUMN n SET NOT NULL")
    assert run(tmp_path, "postgres", pg_dsn, ["k", "n"]).ok
    assert loaded(tmp_path) == [(1, 2, 1), (1, 12, 2), (1, 13, 3), (2, 1, 4)]
