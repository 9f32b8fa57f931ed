"""Adversarial review (issue 10): MariaDB tables shaped the way real applications make them."""

from __future__ import annotations

from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pymysql
import pytest
import yaml

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAX = "SET SESSION sql_mode = 'ALLOW_INVALID_DATES'"  # what old applications still run with


def mysql(dsn: str) -> Any:
    parts = urlsplit(dsn)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                           password="", database=parts.path.lstrip("/"), autocommit=True)


def run(tmp: Path, dsn: str, contract: dict[str, Any], page_size: int = 2) -> Any:
    config = {"name": "review", "contracts": {"c": contract},
              "state_dir": str(tmp / "state"),
              "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
              "sources": [{"name": "m", "kind": "mysql", "dsn": dsn,
                           "tables": [{"name": "t", "contract": "c",
                                       "page_size": page_size}]}]}
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(path) as p:
        return p.run_once(raise_on_error=False)


def warehouse(tmp: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows read with duckdb itself; select timestamps as epoch_us(col) (DuckDB's Python
    TIMESTAMPTZ needs pytz): they come back as aware datetimes."""
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        rows = con.sql(sql).fetchall()
    names = [n.strip().lower() for n in sql.split("FROM")[0][6:].split(",")]
    return sorted(tuple(EPOCH + timedelta(microseconds=v) if n.startswith("epoch_us") and
                        v is not None else v for n, v in zip(names, r, strict=True))
                  for r in rows)


def test_zero_dates_in_value_columns_cost_their_row(tmp_path: Path, mysql_dsn: str) -> None:
    """'0000-00-00' and '2024-00-10' (sql_mode permitting) are no date: the row is
    quarantined with a reason, never loaded as NULL or as some other date, never the
    table stopped."""
    with closing(mysql(mysql_dsn)) as conn, conn.cursor() as cur:
        cur.execute(LAX)
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, d DATE, ts DATETIME(6), "
                    "v DATETIME(6) NOT NULL, KEY c (v, id))")
        cur.executemany("INSERT INTO t VALUES (%s, %s, %s, %s)", [
            (1, "2024-01-02", "2024-01-02 03:04:05.5", "2024-05-01 00:00:01"),
            (2, "0000-00-00", "2024-01-02 03:04:05", "2024-05-01 00:00:02"),
            (3, "2024-01-02", "0000-00-00 00:00:00", "2024-05-01 00:00:03"),
            (4, "2024-00-10", None, "2024-05-01 00:00:04"),
            (5, "2024-02-30", None, "2024-05-01 00:00:05"),
            (6, None, None, "2024-05-01 00:00:06")])
    contract = {"primary_key": ["id"], "cursor": "v", "columns": {
        "id": {"type": "int64", "nullable": False}, "d": {"type": "date"},
        "ts": {"type": "timestamp"}, "v": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract)
    assert summary.ok, summary.errors
    rows = warehouse(tmp_path, "SELECT id, d, epoch_us(ts) FROM main.t")
    assert [r[0] for r in rows] == [1, 6], rows
    assert summary.quarantined_rows == 4
    assert rows[0][2] == datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)


def test_zero_date_in_the_cursor(tmp_path: Path, mysql_dsn: str) -> None:
    """A zero date in the cursor column: refused at probe time naming the column, or the
    row quarantined and every other row loaded; never rows silently left behind."""
    with closing(mysql(mysql_dsn)) as conn, conn.cursor() as cur:
        cur.execute(LAX)
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(10), "
                    "v DATETIME NOT NULL, KEY c (v, id))")
        cur.executemany("INSERT INTO t VALUES (%s, %s, %s)", [
            (i, f"n{i}", "0000-00-00 00:00:00" if i in (2, 3) else f"2024-05-01 00:00:0{i}")
            for i in range(1, 8)])
    contract = {"primary_key": ["id"], "cursor": "v", "columns": {
        "id": {"type": "int64", "nullable": False}, "name": {"type": "string"},
        "v": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract)
    # MariaDB answers `v IS NULL` for a zero date in a NOT NULL column, so the probe's
    # NULL-cursor refusal catches it (its text says NULLs: the zero dates it means)
    assert summary.failed_tables == ["m.t"]
    assert "cursor column v (timestamp) holds NULLs" in summary.errors[0], summary.errors


def test_timestamp_column_under_a_session_time_zone(tmp_path: Path, mysql_dsn: str) -> None:
    """TIMESTAMP columns are stored as UTC instants and shown in the session zone; a server
    whose global zone is not UTC must not shift the loaded instants."""
    with closing(mysql(mysql_dsn)) as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+05:30'")
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, at TIMESTAMP(6) NULL, "
                    "v TIMESTAMP(3) NOT NULL, KEY c (v, id))")
        cur.executemany("INSERT INTO t VALUES (%s, %s, %s)", [
            (i, f"2024-03-31 0{i}:30:00.25", f"2024-10-27 0{i}:00:00.{i}") for i in range(1, 6)])
    contract = {"primary_key": ["id"], "cursor": "v", "columns": {
        "id": {"type": "int64", "nullable": False}, "at": {"type": "timestamp"},
        "v": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract, page_size=1)
    assert summary.ok, summary.errors
    rows = warehouse(tmp_path, "SELECT id, epoch_us(\"at\"), epoch_us(v) FROM main.t")
    shift = timedelta(hours=5, minutes=30)
    assert rows == [(i, datetime(2024, 3, 31, i, 30, 0, 250000, tzinfo=UTC) - shift,
                     datetime(2024, 10, 27, i, 0, 0, i * 100000, tzinfo=UTC) - shift
                     ) for i in range(1, 6)]
