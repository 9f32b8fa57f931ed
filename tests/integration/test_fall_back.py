"""Adversarial review: a naive cursor filled by now() across a real daylight-saving fall-back.

The PostgreSQL database's TimeZone is a POSIX rule whose summer time ends seconds after the
test starts, so the server's wall clock really steps back an hour: a `timestamp without
time zone` stamped by now() after it sorts an hour before the rows stamped just before it.
A fixed window of 2 s stepped back from the summer checkpoint and never reached them: every
row of the repeated hour was lost, every run ok (the adaptive bound already allowed for it:
docs/architecture.md). Source read through psycopg, warehouse through duckdb.
"""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import psycopg
import pytest
import yaml

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AHEAD = 8  # seconds from the test's start to the fall-back


def fall_back_rule(at: datetime) -> str:
    """A POSIX zone 5 h west of UTC in winter, 4 h in summer, whose summer ends at `at`
    (UTC) and began at the start of the year (Jn counts days without February 29)."""
    local = at - timedelta(hours=4)
    day = local.timetuple().tm_yday
    if calendar.isleap(local.year) and local.month > 2:
        day -= 1
    return f"XST5XDT,J1/0,J{day}/{local:%H:%M:%S}"


def test_a_fixed_window_reads_the_rows_of_the_repeated_hour(pg_dsn: str,
                                                             tmp_path: Path) -> None:
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=AHEAD)
    database = pg_dsn.rsplit("/", 1)[1]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {database} SET timezone TO '{fall_back_rule(end)}'")
        admin.execute("CREATE TABLE t (k int PRIMARY KEY, v int NOT NULL, "
                      "u timestamp NOT NULL DEFAULT now())")
        admin.execute("CREATE INDEX t_u ON t (u, k)")

    def write(k: int) -> datetime:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the database's zone
            row = conn.execute("INSERT INTO t (k, v) VALUES (%s, %s) RETURNING u",
                               [k, k]).fetchone()
        assert row is not None
        return row[0]

    config = {"name": "fallback", "state_dir": str(tmp_path / "state"),
              "landing": {"path": str(tmp_path / "landing")},
              "warehouse": {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"),
                            "schema": "main"},
              "contracts": {"c": {"primary_key": ["k"], "cursor": "u", "columns": {
                  "k": {"type": "int64", "nullable": False},
                  "v": {"type": "int64", "nullable": False},
                  "u": {"type": "timestamp", "nullable": False}}}},
              "sources": [{"name": "s", "kind": "postgres", "dsn": pg_dsn,
                           "tables": [{"name": "t", "contract": "c",
                                       "lookback_mode": "fixed", "lookback": "2s"}]}]}
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(path) as p:
        summer = write(1)
        assert p.run_once(raise_on_error=False).ok
        while datetime.now(UTC) < end + timedelta(seconds=0.5):
            time.sleep(0.1)
        winter = write(2)
        assert winter < summer  # the wall clock stepped back
        assert p.run_once(raise_on_error=False).ok
        write(3)
        assert p.run_once(raise_on_error=False).ok
    with psycopg.connect(pg_dsn) as conn:
        truth = dict(conn.execute("SELECT k, v FROM t").fetchall())
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        loaded = dict(con.sql("SELECT k, v FROM main.t").fetchall())
    assert loaded == truth == {1: 1, 2: 2, 3: 3}
