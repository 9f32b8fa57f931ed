"""Adversarial review: source column shapes a store declares that the contract reads as
something else, run through steadyflow for real and compared with an independent read.

MariaDB BIT(1) declared bool (the classic MySQL boolean): both drivers hand it over as
bytes (b'\\x01'), so every row went to quarantine as "not a valid bool", and a BIT column
declared int64 likewise. A BIT column read as a number is now selected as its number on
every read path (pymysql pages, connectorx pages, reconcile's pages), and reconcile finds
the loaded table clean.

A DATETIME cursor filled by NOW() on a MariaDB server whose zone is west of UTC: a late
commit was lost under the adaptive lookback (test_a_late_commit_on_a_datetime_cursor...),
and so on PostgreSQL with a `timestamp without time zone` cursor and a database whose
default TimeZone is west of UTC (test_a_late_commit_on_a_naive_timestamp_cursor...).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pymysql
import pytest
from tests.support.own_mariadb import own_mariadb

from steadyflow.config import parse_config
from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def config(tmp: Path, source: dict[str, Any], contract: dict[str, Any],
           **table: Any) -> dict[str, Any]:
    return {"name": "shapes", "contracts": {"c": contract},
            "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "landing")},
            "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"),
                          "schema": "main"},
            "sources": [{"name": "s", **source, "resilience": {"retries": 0},
                         "tables": [{"name": "t", "contract": "c", "page_size": 2,
                                     **table}]}]}


def run(raw: dict[str, Any]) -> RunSummary:
    with Pipeline(parse_config(raw)) as p:
        return p.run_once(raise_on_error=False)


def warehouse(tmp: Path, columns: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return con.sql(f"SELECT {columns} FROM main.t ORDER BY 1").fetchall()


def mysql(dsn: str, *statements: str) -> list[tuple[Any, ...]]:
    parts = urlsplit(dsn)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                           password="", database=parts.path.lstrip("/"), autocommit=True)
    with closing(conn), conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
        return list(cur.fetchall())


def test_mariadb_bit_read_as_bool_and_int(tmp_path: Path, mysql_dsn: str) -> None:
    """BIT(1) declared bool and BIT(8) declared int64, NULL and both values; the first load
    reads pages in key order by connectorx, the rows written after it by pymysql."""
    mysql(mysql_dsn,
          "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL, b bit(1), n bit(8), "
          "INDEX t_v (v, id))",
          "INSERT INTO t VALUES (1, 1, b'1', b'101'), (2, 2, b'0', b'0'), "
          "(3, 3, NULL, NULL), (4, 4, b'1', b'11111111'), (5, 5, b'0', b'1')")
    contract = {"primary_key": ["id"], "cursor": "v",
                "columns": {"id": {"type": "int64", "nullable": False},
                            "v": {"type": "int64", "nullable": False},
                            "b": {"type": "bool"}, "n": {"type": "int64"}}}
    raw = config(tmp_path, {"kind": "mysql", "dsn": mysql_dsn}, contract)
    first = run(raw)
    assert first.ok and first.quarantined_rows == 0, first
    mysql(mysql_dsn, "INSERT INTO t VALUES (6, 6, b'1', b'10'), (7, 7, NULL, b'0')",
          "UPDATE t SET v = 8, b = b'0' WHERE id = 1")
    again = run(raw)
    assert again.ok and again.quarantined_rows == 0, again
    # the independent read: the bits as numbers, through the driver
    source = [(i, None if b is None else bool(b), n)
              for i, b, n in mysql(mysql_dsn, "SELECT id, b + 0, n + 0 FROM t ORDER BY id")]
    assert warehouse(tmp_path, "id, b, n") == source
    assert [r[1] for r in source] == [False, False, None, True, False, True, None]
    with Pipeline(parse_config(raw)) as p:
        (report,) = reconcile(p, ["s.t"], Options())
    assert report.error is None and report.differences == 0, report.to_dict()
    assert report.quarantined == 0 and report.rows_compared == 7, report.to_dict()


@pytest.fixture
def west_mariadb(tmp_path: Path) -> Iterator[str]:
    """A MariaDB server of this test's own whose default zone is 5 h west of UTC (the
    shared server's global time_zone is every other test's too); yields its URL."""
    with own_mariadb(tmp_path, "--default-time-zone=-05:00") as dsn:
        yield dsn


def test_a_late_commit_on_a_datetime_cursor_west_of_utc(tmp_path: Path,
                                                        west_mariadb: str) -> None:
    """A DATETIME cursor filled by NOW() holds the server zone's wall time (here UTC-5),
    which steadyflow reads as UTC: 5 h before the adaptive lookback's bound, a UTC
    instant. A transaction open while a poll passed its row and committed afterwards had
    that row behind the checkpoint, and the next poll started after the checkpoint: row
    100 was never loaded, every run ok (reconcile: missing 1). The bound now allows for
    the server zone's offset on a DATETIME cursor."""
    mysql(west_mariadb,
          "CREATE TABLE t (id bigint PRIMARY KEY, v int, ts datetime(6) NOT NULL "
          "DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6), INDEX t_ts (ts, id))",
          "INSERT INTO t (id, v) VALUES (1, 1), (2, 2), (3, 3)")
    contract = {"primary_key": ["id"], "cursor": "ts",
                "columns": {"id": {"type": "int64", "nullable": False},
                            "v": {"type": "int64"},
                            "ts": {"type": "timestamp", "nullable": False}}}
    raw = config(tmp_path, {"kind": "mysql", "dsn": west_mariadb}, contract)
    assert run(raw).ok
    parts = urlsplit(west_mariadb)
    late = pymysql.connect(host=parts.hostname, port=parts.port, user="root", password="",
                           database="shapes", autocommit=False)
    with closing(late), late.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t (id, v) VALUES (100, 100)")
        time.sleep(1.2)
        mysql(west_mariadb, "INSERT INTO t (id, v) VALUES (4, 4)",
              "UPDATE t SET v = 12 WHERE id = 2")
        time.sleep(1.2)
        assert run(raw).ok  # passes row 4 and 2 while row 100 is not committed yet
        late.commit()
    assert run(raw).ok
    source = mysql(west_mariadb, "SELECT id, v FROM t ORDER BY id")
    assert warehouse(tmp_path, "id, v") == [tuple(r) for r in source]
    assert [r[0] for r in source] == [1, 2, 3, 4, 100]


def test_the_zone_allowance_covers_a_fall_back_ahead_on_mariadb(tmp_path: Path) -> None:
    """A DATETIME cursor filled by NOW() on a server in America/New_York (its zone SYSTEM,
    the host's: the common setup, no time zone tables needed): a bound taken at 00:30 EDT
    allowed for the summer offset (4 h) only and lay at wall time 00:30; the next poll
    resumed from it, and rows NOW() stamped after 01:00 EDT came back to 01:00 EST, 00:30
    and later in the repeated hour, sorted before it and were never read (once a year,
    every run ok). The allowance now takes the westmost offset of now and two hours
    ahead, as PostgreSQL's does. (UTC_TIMESTAMP() is the server's; each instant takes its
    place.)"""
    from steadyflow.config import SourceConfig
    from steadyflow.extract.dialects import MysqlDialect

    west = {"2024-11-03 04:30:00": 5,  # 00:30 EDT, 1.5 h before the fall-back
            "2024-07-01 12:00:00": 4,  # summer
            "2024-11-03 07:00:00": 5,  # after the fall-back
            "2024-03-10 06:30:00": 5}  # 01:30 EST, before the spring-forward
    seen = {}
    with own_mariadb(tmp_path, env={"TZ": "America/New_York"}) as dsn:
        assert mysql(dsn, "SELECT @@global.time_zone") == [("SYSTEM",)]
        dialect = MysqlDialect(SourceConfig(
            name="m", kind="mysql", dsn=dsn,
            tables=[{"name": "t", "contract": "c"}]))  # type: ignore[list-item]
        for at in west:
            sql = (dialect.open_since_sql or "").format(nonce="zone").replace(
                "UTC_TIMESTAMP(6)", f"TIMESTAMP'{at}'").replace("UTC_TIMESTAMP()",
                                                                f"TIMESTAMP'{at}'")
            [row] = mysql(dsn, sql)
            seen[at] = dialect.open_since(row[:-1], naive=True).margin
    assert seen == {at: MysqlDialect.open_margin + timedelta(hours=h)
                    for at, h in west.items()}


@pytest.mark.parametrize(("zone", "declared"), [("America/New_York", "timestamp"),
                                               ("UTC", "timestamp"),
                                               ("America/New_York", "stamp")])
def test_a_late_commit_on_a_naive_timestamp_cursor_west_of_utc(tmp_path: Path, pg_dsn: str,
                                                               zone: str, declared: str
                                                               ) -> None:
    """PostgreSQL's twin of the DATETIME case: a `timestamp without time zone` filled by
    now() holds the wall time of the writer's TimeZone, here the database's default
    (ALTER DATABASE ... SET timezone), which steadyflow, reading in UTC, takes as UTC: 4-5
    h before the adaptive lookback's bound. A transaction open while a poll passed its
    row and committed afterwards was never read (row 100 lost, every run ok). The bound
    now allows for the westmost default zone of the database's sessions. `stamp`: a
    domain over timestamp, which the catalog names as the domain (the allowance was
    skipped, the row lost) until the declared type saw through domains."""
    import psycopg

    name = urlsplit(pg_dsn).path.lstrip("/")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{name}\" SET timezone = '{zone}'")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a session in that zone
        conn.execute("CREATE DOMAIN stamp AS timestamp")
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v int, "
                     f"ts {declared} NOT NULL DEFAULT now())")
        conn.execute("CREATE INDEX t_ts ON t (ts, id)")
        conn.execute("INSERT INTO t (id, v) VALUES (1, 1), (2, 2), (3, 3)")
    contract = {"primary_key": ["id"], "cursor": "ts",
                "columns": {"id": {"type": "int64", "nullable": False},
                            "v": {"type": "int64"},
                            "ts": {"type": "timestamp", "nullable": False}}}
    raw = config(tmp_path, {"kind": "postgres", "dsn": pg_dsn}, contract)
    assert run(raw).ok
    with psycopg.connect(pg_dsn) as late:
        late.execute("INSERT INTO t (id, v) VALUES (100, 100)")  # open, stamped now()
        time.sleep(1.2)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO t (id, v) VALUES (4, 4)")
            conn.execute("UPDATE t SET v = 12, ts = now() WHERE id = 2")
        time.sleep(1.2)
        assert run(raw).ok  # passes rows 4 and 2 while row 100 is not committed yet
        late.commit()
    assert run(raw).ok
    with psycopg.connect(pg_dsn) as conn:
        source = conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    assert warehouse(tmp_path, "id, v") == source
    assert [r[0] for r in source] == [1, 2, 3, 4, 100]
