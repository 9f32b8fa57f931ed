"""A MariaDB zero date costs its own row only, whatever else its page holds.

A DATETIME read as a `date` loads its midnights as their dates (a time of day costs its
row). pymysql hands a zero date ('0000-00-00', '2024-00-10' under a relaxed sql_mode) over
as text, so a page holding one landed the whole column as text, and the midnights' text
('2024-01-02 00:00:00') was no date validation reads: every midnight of that page was
quarantined beside the zero date, every run ok, while a smaller page loaded them. The
source is read through pymysql, the warehouses through duckdb and psycopg.
"""

from __future__ import annotations

from contextlib import closing
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pymysql
import pytest
from tests.conftest import write_pipeline

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STORED = ["2024-01-02 00:00:00", "0000-00-00 00:00:00", "2024-01-03 00:00:00",
          "2024-00-10 00:00:00", "2024-01-04 10:30:00", "2024-02-30 00:00:00",
          "1000-01-01 00:00:00", None]
CONTRACT = {"primary_key": ["id"], "cursor": "at", "columns": {
    "id": {"type": "int64", "nullable": False}, "d": {"type": "date"},
    "at": {"type": "timestamp", "nullable": False}}}


def source_rows(dsn: str) -> dict[int, Any]:
    parts = urlsplit(dsn)
    with closing(pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                                 password="", database=parts.path.lstrip("/"),
                                 autocommit=True)) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, d DATETIME, at DATETIME NOT NULL, "
                    "KEY c (at, id))")
        cur.executemany("INSERT INTO t VALUES (%s, %s, '2024-05-01')", list(enumerate(STORED)))
        cur.execute("SELECT id, d FROM t")
        return dict(cur.fetchall())


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"])
@pytest.mark.parametrize("page_size", [1, 100])
def test_midnights_load_beside_zero_dates(tmp_path: Path, mysql_dsn: str,
                                          request: pytest.FixtureRequest, warehouse: str,
                                          page_size: int) -> None:
    stored = source_rows(mysql_dsn)
    if warehouse == "postgres":
        wh: dict[str, Any] = {"kind": "postgres", "dsn": request.getfixturevalue("pg_dsn"),
                              "schema": "public"}
    else:
        wh = {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"), "schema": "main"}
    config = write_pipeline(tmp_path, [{"name": "m", "kind": "mysql", "dsn": mysql_dsn,
                                        "resilience": {"retries": 0}, "tables": [
                                            {"name": "t", "contract": "c",
                                             "page_size": page_size}]}],
                            wh, contracts={"c": CONTRACT}, state_dir=str(tmp_path / "state"),
                            landing={"path": str(tmp_path / "landing")})
    with Pipeline.from_yaml(config) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.ok, summary.errors
    if warehouse == "postgres":
        with psycopg.connect(wh["dsn"]) as conn:
            loaded = dict(conn.execute("SELECT id, d FROM public.t").fetchall())
    else:
        with duckdb.connect(wh["path"], read_only=True) as con:
            loaded = dict(con.sql("SELECT id, d FROM main.t").fetchall())
    # the oracle: a datetime at midnight is its date, NULL is NULL; anything else (a zero
    # date pymysql gives as text, a time of day) is no date: its row is quarantined
    want: dict[int, date | None] = {
        i: v.date() if isinstance(v, datetime) else None for i, v in stored.items()
        if v is None or isinstance(v, datetime) and v == datetime.combine(v.date(),
                                                                          datetime.min.time())}
    assert loaded == want
    assert summary.quarantined_rows == len(stored) - len(want) == 4
