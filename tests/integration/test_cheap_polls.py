"""A poll that finds nothing costs one round trip on an open connection: no new connection,
no catalog query, no state write for the poll itself. Counted on the wire (tests/support/
wirecount.py), never timed.

PostgreSQL: one simple-query message carries the open-transaction observation and the
position probe (the adaptive lookback's order, see docs/architecture.md). MariaDB: the
observation runs in a transaction of its own that proves the innodb_trx list fresh
(extract/innodb_trx.py: begin, read, commit), then the probe: four statements (one with
`lookback_mode: fixed`); polls of a process within 0.25 s share an observation, so the idle
polls here are spaced past that. A list another session keeps from refreshing (other tests'
MariaDB polls, on a busy server) is read once more in a transaction of its own: the
observations are told apart from the probe by their text. Through the
proxy ADBC cannot identify its socket, so PostgreSQL pages take the psycopg path; an idle
poll reads no page either way.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pymysql
import pytest
from tests.conftest import write_pipeline
from tests.support.wirecount import WireCounter

from steadyflow.extract import innodb_trx
from steadyflow.run.extract import POLL_RECORD_EVERY
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

IDLE_POLLS = 3


def seed(kind: str, dsn: str) -> None:
    ddl = ("CREATE TABLE sales (store_id bigint NOT NULL, sale_id bigint NOT NULL, sku text "
           "NOT NULL, qty bigint, unit_price numeric(12,2), currency text, sold_at {t} NULL, "
           "updated_at {t} NOT NULL, PRIMARY KEY (store_id, sale_id))")
    index = "CREATE INDEX sales_cursor ON sales (updated_at, store_id, sale_id)"
    if kind == "postgres":
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(ddl.format(t="timestamptz"))
            conn.execute(index)
            conn.execute("INSERT INTO sales SELECT 1, i, 'SKU', 1, 1.25, 'EUR', NULL, "
                         "timestamptz '2024-01-01' + i * interval '1 s' "
                         "FROM generate_series(1, 100) i")
        return
    conn = pymysql.connect(host="127.0.0.1", user="root", password="",
                           database=dsn.rsplit("/", 1)[1], autocommit=True)
    with conn, conn.cursor() as cur:
        cur.execute(ddl.format(t="datetime(6)"))
        cur.execute(index)
        cur.execute("INSERT INTO sales SELECT 1, seq, 'SKU', 1, 1.25, 'EUR', NULL, "
                    "TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_100")


def lease_generation(p: Pipeline) -> int:
    rows = p.state._query("SELECT generation FROM extract_leases WHERE source = 'store' "
                          "AND tbl = 'sales'")
    return int(rows[0][0])


OBSERVATION = "SELECT /* steadyflow:"  # extract/innodb_trx.py's read, by its marker
FRAMING = ("START TRANSACTION WITH CONSISTENT SNAPSHOT", "COMMIT")


def mariadb_observations(issued: list[str]) -> list[str]:
    """The statements left once whole innodb_trx observations (begin, read, commit) are
    taken out; each idle poll makes one, or two where the list was not fresh."""
    reads = sum(s.startswith(OBSERVATION) for s in issued)
    assert IDLE_POLLS <= reads <= 2 * IDLE_POLLS, issued
    assert sum(s in FRAMING for s in issued) == 2 * reads, issued
    return [s for s in issued if not s.startswith(OBSERVATION) and s not in FRAMING]


@pytest.mark.parametrize(("kind", "mode", "per_poll"), [
    ("postgres", "auto", 1), ("mysql", "auto", 1), ("mysql", "fixed", 1)])
def test_an_idle_poll_is_one_probe_on_an_open_connection(
        request: pytest.FixtureRequest, tmp_path: Path, kind: str, mode: str,
        per_poll: int) -> None:
    dsn = request.getfixturevalue("pg_dsn" if kind == "postgres" else "mysql_dsn")
    seed(kind, dsn)
    counter = WireCounter(5432 if kind == "postgres" else 3306, kind)
    via = dsn.replace(":5432/", f":{counter.port}/").replace(":3306/", f":{counter.port}/")
    config = write_pipeline(tmp_path, [{
        "name": "store", "kind": kind, "dsn": via,
        "tables": [{"name": "sales", "contract": "sales", "lookback_mode": mode}]}])
    try:
        with Pipeline.from_yaml(config) as p:
            assert p.run_once().extracted_rows == 100
            assert p.run_once().extracted_rows == 0  # the first poll after the load
            connections, mark = counter.connections, len(counter.statements)
            polled_at = p.state.polls()[("store", "sales")][1]
            generation = lease_generation(p)
            for _ in range(IDLE_POLLS):
                time.sleep(innodb_trx.SHARE_SECONDS + 0.05)
                idle = p.run_once()
                assert idle.ok and idle.extracted_rows == 0
            assert counter.connections == connections  # no new connection
            issued = counter.statements[mark:]
            if kind == "mysql" and mode == "auto":
                issued = mariadb_observations(issued)
            assert len(issued) == IDLE_POLLS * per_poll, issued  # no catalog query
            # no lease taken and released (two state commits per poll): every acquisition
            # takes the next generation
            assert lease_generation(p) == generation
            # the idle polls' time is in this process's metrics, written to the state store
            # at most every POLL_RECORD_EVERY (a slow machine may cross one such boundary)
            written = p.state.polls()[("store", "sales")][1]
            assert written == polled_at or written - polled_at >= POLL_RECORD_EVERY
    finally:
        counter.close()


def test_an_idle_postgres_table_gives_its_page_connection_back(
        pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages come through ADBC, probes through psycopg: a busy table holds both; once its
    pages stop for ADBC_IDLE (0 here) the next poll closes the ADBC one."""
    from steadyflow.extract import pg_arrow

    seed("postgres", pg_dsn)
    config = write_pipeline(tmp_path, [{
        "name": "store", "kind": "postgres", "dsn": pg_dsn,
        "tables": [{"name": "sales", "contract": "sales"}]}])
    database = pg_dsn.rsplit("/", 1)[1]

    def sessions() -> int:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                               "AND pid <> pg_backend_pid()", [database]).fetchone()
        return int(row[0]) if row else 0

    with Pipeline.from_yaml(config) as p:
        assert p.run_once().extracted_rows == 100
        assert sessions() == 2  # psycopg (probes) and ADBC (pages)
        assert p.run_once().extracted_rows == 0
        assert sessions() == 2  # pages read just now: kept
        monkeypatch.setattr(pg_arrow, "ADBC_IDLE", 0.0)  # as if a minute went by
        assert p.run_once().extracted_rows == 0
        assert sessions() == 1  # idle: the probes' connection only
