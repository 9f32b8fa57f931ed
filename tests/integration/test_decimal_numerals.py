"""Text read as a decimal is a number only where it is a numeral as SQL engines read one.

Python's Decimal, which reads a page whose text Arrow's cast refuses, also reads '1_000'
(1000), any Unicode digit ('٣' 3, fullwidth '１' 1) and Unicode blanks: such a value loaded
as that number, every run ok, where MariaDB's own cast reads '1_000' as 1, SQLite's as 1,
and PostgreSQL and DuckDB refuse it. The oracle is PostgreSQL's numeric input (psycopg),
the sources read through sqlite3 and pymysql, the warehouses through duckdb and psycopg.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import write_pipeline

from steadyflow.extract.arrow_values import rows_to_arrow
from steadyflow.model import Column, Contract
from steadyflow.run.pipeline import Pipeline
from steadyflow.validate.rules import validate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TEXTS = ["1_000", "٣", "１", "\xa05", "12.5", " 7 ", "+5", ".5", "5.", "1e2", "-0", "1 000"]
CONTRACT = {"primary_key": ["id"], "cursor": "at", "columns": {
    "id": {"type": "int64", "nullable": False}, "v": {"type": "decimal(12,3)"},
    "at": {"type": "timestamp", "nullable": False}}}
WIDE = Decimal(10) ** 9


def postgres_reads(pg: psycopg.Connection[Any], text: str) -> Decimal | None:
    """`text` as PostgreSQL's numeric input reads it, if it fits decimal(12,3) exactly."""
    try:
        with pg.transaction():
            [(value,)] = pg.execute("SELECT %s::numeric", (text,)).fetchall()
    except psycopg.errors.DataError:
        return None
    if not value.is_finite() or value != value.quantize(Decimal("0.001")) or abs(value) >= WIDE:
        return None
    return Decimal(value)


def check(loaded: dict[int, Any], texts: list[str], pg: psycopg.Connection[Any]) -> None:
    want = {i: postgres_reads(pg, t) for i, t in enumerate(texts)}
    assert {i: loaded.get(i) for i in want} == want, texts


def oracle(loaded: dict[int, Any], texts: list[str], pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        check(loaded, texts, pg)


def pipeline(tmp: Path, source: dict[str, Any], warehouse: dict[str, Any]) -> None:
    config = write_pipeline(tmp, [{**source, "resilience": {"retries": 0}, "tables": [
        {"name": "t", "contract": "c", "page_size": 100}]}], warehouse,
        contracts={"c": CONTRACT}, landing={"path": str(tmp / "landing")})
    with Pipeline.from_yaml(config) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 5  # '1_000', '٣', '１', NBSP 5, '1 000'


def test_sqlite_text_that_is_no_numeral_costs_its_row(tmp_path: Path, pg_dsn: str) -> None:
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, at TEXT NOT NULL)")
        conn.executemany("INSERT INTO t VALUES (?, ?, '2024-01-01 00:00:00')",
                         list(enumerate(TEXTS)))
        conn.commit()
        texts = [v for (v,) in conn.execute("SELECT v FROM t ORDER BY id")]
    pipeline(tmp_path, {"name": "s", "kind": "sqlite", "path": str(tmp_path / "s.db")},
             {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"), "schema": "main"})
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        loaded = dict(con.sql("SELECT id, v FROM main.t").fetchall())
    oracle(loaded, texts, pg_dsn)


def test_mariadb_text_that_is_no_numeral_costs_its_row(tmp_path: Path, mysql_dsn: str,
                                                       pg_dsn: str) -> None:
    parts = urlsplit(mysql_dsn)
    with closing(pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                                 password="", database=parts.path.lstrip("/"),
                                 autocommit=True, charset="utf8mb4")) as conn, \
            conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20), at DATETIME NOT NULL, "
                    "KEY c (at, id))")
        cur.executemany("INSERT INTO t VALUES (%s, %s, '2024-01-01')", list(enumerate(TEXTS)))
        cur.execute("SELECT v FROM t ORDER BY id")
        texts = [v for (v,) in cur.fetchall()]
    pipeline(tmp_path, {"name": "m", "kind": "mysql", "dsn": mysql_dsn},
             {"kind": "postgres", "dsn": pg_dsn, "schema": "public"})
    with psycopg.connect(pg_dsn) as pg:
        loaded = dict(pg.execute("SELECT id, v FROM public.t").fetchall())
    oracle(loaded, texts, pg_dsn)


NUMERAL_PARTS = st.sampled_from(["0", "1", "9", "_", ".", "e", "E", "+", "-", " ", "\t",
                                 "\xa0", "\u2003", "٣", "１", "۵", "߁", ",", "x"])


@pytest.fixture
def pg(pg_dsn: str) -> Any:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.lists(NUMERAL_PARTS, min_size=1, max_size=8).map("".join),
                      min_size=1, max_size=6))
def test_a_page_of_text_reads_as_postgresql_reads_it(texts: list[str],
                                                     pg: psycopg.Connection[Any]) -> None:
    """A page of text values as decimal(12,3), extracted and validated: each row loads as
    PostgreSQL's reading of its text or is quarantined, whichever cast (Arrow's, or
    Decimal's for a page Arrow refuses) read the page. (The connection only reads: one
    serves every example.)"""
    contract = Contract(columns=(Column("id", "int64"), Column("v", "decimal(12,3)")),
                        primary_key=("id",), cursor="id")
    verdict = validate(rows_to_arrow(list(enumerate(texts)), contract), contract)
    check(dict(zip(verdict.good["id"].to_pylist(), verdict.good["v"].to_pylist(),
                   strict=True)), texts, pg)
