"""What a poll that finds nothing costs: 20 tables (12 PostgreSQL + 8 MariaDB, 1,000 rows
each), loaded once, then `--cycles` idle `run_once` cycles. Reports, per idle cycle over all
20 tables: wall time, source queries and new source connections (counted on the wire by
tests/support/wirecount.py, so PostgreSQL pages take the psycopg path; an idle poll reads
no page either way).

    .venv/bin/python bench/idle_polls.py              # this tree
    PYTHONPATH=<old tree>/src .venv/bin/python bench/idle_polls.py   # another one
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pymysql
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import SALES_CONTRACT  # noqa: E402
from tests.support.wirecount import WireCounter  # noqa: E402

DDL = ("CREATE TABLE {name} (store_id bigint NOT NULL, sale_id bigint NOT NULL, sku text NOT "
       "NULL, qty bigint, unit_price numeric(12,2), currency text, sold_at {t} NULL, "
       "updated_at {t} NOT NULL, PRIMARY KEY (store_id, sale_id))")


def seed(pg: str, my: str, db: str) -> None:
    with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    with psycopg.connect(f"{pg}/{db}", autocommit=True) as conn:
        for i in range(12):
            conn.execute(DDL.format(name=f"s{i}", t="timestamptz"))
            conn.execute(f"CREATE INDEX s{i}_c ON s{i} (updated_at, store_id, sale_id)")
            conn.execute(f"INSERT INTO s{i} SELECT {i}, g, 'SKU', 1, 1.25, 'EUR', NULL, "
                         "timestamptz '2024-01-01' + g * interval '1 s' "
                         "FROM generate_series(1, 1000) g")
    conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}`")
        cur.execute(f"USE `{db}`")
        for i in range(12, 20):
            cur.execute(DDL.format(name=f"s{i}", t="datetime(6)"))
            cur.execute(f"CREATE INDEX s{i}_c ON s{i} (updated_at, store_id, sale_id)")
            cur.execute(f"INSERT INTO s{i} SELECT {i}, seq, 'SKU', 1, 1.25, 'EUR', NULL, "
                        "TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND "
                        "FROM seq_1_to_1000")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    from steadyflow.run.pipeline import Pipeline

    db = f"idle_{uuid.uuid4().hex[:8]}"
    seed("postgresql://postgres@127.0.0.1:5432", "", db)
    pg, my = WireCounter(5432, "postgres"), WireCounter(3306, "mysql")
    sources = [{"name": f"s{i}", "kind": "postgres" if i < 12 else "mysql",
                "dsn": (f"postgresql://postgres@127.0.0.1:{pg.port}/{db}" if i < 12
                        else f"mysql://root@127.0.0.1:{my.port}/{db}"),
                "tables": [{"name": f"s{i}", "target": "sales", "contract": "sales",
                            "warehouse_filter": {"store_id": i}}]} for i in range(20)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yml"
        path.write_text(yaml.safe_dump({
            "name": "idle", "contracts": {"sales": SALES_CONTRACT}, "sources": sources,
            "warehouse": {"kind": "duckdb", "path": "wh.duckdb"}}))
        with Pipeline.from_yaml(path) as p:
            assert p.run_once().extracted_rows == 20_000
            p.run_once()  # the first poll after the load
            conns, queries = pg.connections + my.connections, pg.queries + my.queries
            started = time.perf_counter()
            for _ in range(args.cycles):
                assert p.run_once().extracted_rows == 0
            seconds = time.perf_counter() - started
            conns = pg.connections + my.connections - conns
            queries = pg.queries + my.queries - queries
    print(f"idle cycle over 20 tables: {seconds / args.cycles * 1000:.0f} ms, "
          f"{queries / args.cycles:.1f} source queries, {conns / args.cycles:.2f} new "
          f"connections (load average {os.getloadavg()[0]:.2f})")
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    conn2 = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    with conn2, conn2.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{db}`")


if __name__ == "__main__":
    main()
