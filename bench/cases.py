"""The bench's child processes: each case runs alone in its own process so that its wall
time and peak RSS (ru_maxrss, read by bench/run.py with wait4) are its own.

    python bench/cases.py drain   --dsn DSN --table T
    python bench/cases.py pgcopy  --dsn DSN --dst DSN --table T
    python bench/cases.py dlt     --dsn DSN --table T --backend connectorx|pyarrow
                                  --duckdb PATH --pipelines-dir DIR [--incremental]
    python bench/cases.py sf_warm  --dsn DSN --table T --config PIPELINE.yml --cycles N --first K
    python bench/cases.py dlt_warm --dsn DSN --table T --duckdb PATH --pipelines-dir DIR
                                   --cycles N --first K
    python bench/cases.py changed_drain --dsn DSN --table T --cycles N --first K
    python bench/cases.py cx_read --dsn mysql://...|sqlite:///... --table T
    python bench/cases.py adbc_sqlite_read --dsn sqlite:///PATH --table T

The *_warm cases are the long-running process a near-real-time user keeps (`steadyflow run
--follow`, or a dlt pipeline run in a loop): one process, caught up first (not timed), then
N cycles of "update 1% of the rows, time one incremental run" in the same process.

steadyflow itself is run through its CLI (`steadyflow run -c pipeline.yml`), as users run it.
Each case prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

COLUMNS = "sale_id, store_id, sku, qty, unit_price, currency, sold_at, updated_at"
DDL = ("(sale_id bigint PRIMARY KEY, store_id int NOT NULL, sku text NOT NULL, qty int NOT NULL,"
       " unit_price numeric(12,2) NOT NULL, currency text NOT NULL, sold_at timestamptz NOT NULL,"
       " updated_at timestamptz NOT NULL)")


def touch_one_percent(dsn: str, table: str, run: int) -> int:
    """Update 1% of the rows (a different 1% for each `run`): new qty, and a new updated_at
    spread over the hour after the newest one, as updates arriving between two runs would
    be (so steadyflow's 2-minute lookback re-reads ~1/30 of the previous run's rows).
    `dsn` is a PostgreSQL DSN, a `mysql://` URL (MariaDB) or a `sqlite:///` path."""
    if dsn.startswith(("mysql://", "mysql+pymysql://")):
        return _touch_mariadb(dsn, table, run)
    if dsn.startswith("sqlite:///"):
        return _touch_sqlite(dsn.removeprefix("sqlite:///"), table, run)
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            f"UPDATE {table} SET qty = qty % 9 + 1, updated_at = "
            f"(SELECT max(updated_at) FROM {table}) + interval '1 second' "
            "+ (sale_id / 100 % 3600) * interval '1 second' "
            f"WHERE sale_id % 100 = {int(run) % 100}")
        n = cur.rowcount
        conn.execute(f"VACUUM ANALYZE {table}")
    return n


def mariadb_connect(url: str) -> Any:
    """pymysql connection for a `mysql://user@host:port/db` URL (the bench's MariaDB)."""
    from urllib.parse import unquote, urlsplit

    import pymysql

    parts = urlsplit(url.replace("mysql+pymysql://", "mysql://"))
    return pymysql.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                           user=unquote(parts.username or "root"),
                           password=unquote(parts.password or ""),
                           database=parts.path.lstrip("/") or None, autocommit=True,
                           charset="utf8mb4")


def _touch_mariadb(url: str, table: str, run: int) -> int:
    """touch_one_percent on MariaDB (which cannot read the updated table in a subquery)."""
    conn = mariadb_connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT max(updated_at) FROM {table}")
            newest = cur.fetchone()[0]
            n = cur.execute(
                f"UPDATE {table} SET qty = qty %% 9 + 1, updated_at = %s + INTERVAL 1 SECOND "
                "+ INTERVAL (sale_id DIV 100 %% 3600) SECOND "
                f"WHERE sale_id %% 100 = {int(run) % 100}", [newest])
            cur.execute(f"ANALYZE TABLE {table}")
            cur.fetchall()
    finally:
        conn.close()
    return int(n)


def _touch_sqlite(path: str, table: str, run: int) -> int:
    """touch_one_percent on SQLite: times are text 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        newest = conn.execute(f"SELECT max(updated_at) FROM {table}").fetchone()[0]
        cur = conn.execute(
            f"UPDATE {table} SET qty = qty % 9 + 1, updated_at = strftime('%Y-%m-%d %H:%M:%S', "
            "?, '+1 seconds', '+' || (sale_id / 100 % 3600) || ' seconds') || '.000000' "
            f"WHERE sale_id % 100 = {int(run) % 100}", [newest[:19]])
        conn.commit()
        return int(cur.rowcount)
    finally:
        conn.close()


def cx_read(args: argparse.Namespace) -> dict[str, object]:
    """connectorx's bare read of the table into Arrow (one query, nothing written)."""
    import connectorx

    table = connectorx.read_sql(args.dsn, f"SELECT {COLUMNS} FROM {args.table}",
                                return_type="arrow")
    return {"rows": table.num_rows}


def adbc_sqlite_read(args: argparse.Namespace) -> dict[str, object]:
    """adbc-driver-sqlite's bare read of the table into Arrow (one query, nothing written)."""
    from adbc_driver_sqlite import dbapi

    with dbapi.connect(args.dsn.removeprefix("sqlite:///")) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {COLUMNS} FROM {args.table}")
        table = cur.fetch_arrow_table()
    return {"rows": table.num_rows}


def _warm_cycles(args: argparse.Namespace, one_run: Any) -> dict[str, object]:
    one_run()  # catch up: not timed
    cycles = []
    for i in range(args.cycles):
        changed = touch_one_percent(args.dsn, args.table, args.first + i)
        started = time.perf_counter()
        one_run()
        cycles.append({"rows": changed, "seconds": round(time.perf_counter() - started, 4)})
    return {"cycles": cycles}


def sf_warm(args: argparse.Namespace) -> dict[str, object]:
    """steadyflow's follow mode: the same Pipeline runs `run_once` cycle after cycle, as
    `steadyflow run --follow` does (connections and the warehouse stay open)."""
    from steadyflow.run.pipeline import Pipeline

    with Pipeline.from_yaml(args.config) as pipeline:
        def one_run() -> None:
            summary = pipeline.run_once()
            if summary.errors:
                raise SystemExit(f"steadyflow cycle failed: {summary.errors}")

        return _warm_cycles(args, one_run)


def dlt_warm(args: argparse.Namespace) -> dict[str, object]:
    """dlt's incremental merge run again and again by one Python process."""
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    import dlt
    from dlt.sources.sql_database import sql_table

    pipeline = dlt.pipeline(pipeline_name="bench_connectorx",
                            destination=dlt.destinations.duckdb(args.duckdb),
                            dataset_name="bench", pipelines_dir=args.pipelines_dir)

    def one_run() -> None:
        resource = sql_table(credentials=args.dsn, table=args.table, backend="connectorx",
                             incremental=dlt.sources.incremental("updated_at"))
        pipeline.run(resource, write_disposition="merge",
                     primary_key="sale_id").raise_on_failed_jobs()

    return _warm_cycles(args, one_run)


def changed_drain(args: argparse.Namespace) -> dict[str, object]:
    """The floor of any incremental run: after each 1% update, the source's own query for
    the changed rows (in the (updated_at, sale_id) order incremental pages use) drained by
    binary COPY on a connection already open, nothing decoded or written."""
    import psycopg

    cycles = []
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        for i in range(args.cycles):
            since = conn.execute(f"SELECT max(updated_at) FROM {args.table}").fetchone()[0]
            changed = touch_one_percent(args.dsn, args.table, args.first + i)
            started = time.perf_counter()
            with conn.cursor().copy(
                    f"COPY (SELECT {COLUMNS} FROM {args.table} WHERE updated_at > "
                    f"'{since.isoformat()}'::timestamptz ORDER BY updated_at, sale_id) "
                    "TO STDOUT (FORMAT binary)") as copy:
                for _ in copy:
                    pass
            cycles.append({"rows": changed, "seconds": round(time.perf_counter() - started, 4)})
    return {"cycles": cycles}


def drain(args: argparse.Namespace) -> dict[str, object]:
    """The extraction limit: the server's binary COPY of the table, read and dropped."""
    import psycopg

    nbytes = 0
    with psycopg.connect(args.dsn) as conn, conn.cursor().copy(
            f"COPY (SELECT {COLUMNS} FROM {args.table}) TO STDOUT (FORMAT binary)") as copy:
        for block in copy:
            nbytes += len(block)
    return {"bytes": nbytes}


def pgcopy(args: argparse.Namespace) -> dict[str, object]:
    """PG → PG baseline: binary COPY out of one database streamed into COPY in of another,
    into a table with the same primary key steadyflow's target has, in one transaction."""
    import psycopg

    nbytes = 0
    with psycopg.connect(args.dsn) as src, psycopg.connect(args.dst) as dst:
        dst.execute("DROP TABLE IF EXISTS bench_copy")
        dst.execute(f"CREATE TABLE bench_copy {DDL}")
        with src.cursor().copy(
                f"COPY (SELECT {COLUMNS} FROM {args.table}) TO STDOUT (FORMAT binary)") as out, \
                dst.cursor().copy(f"COPY bench_copy ({COLUMNS}) FROM STDIN (FORMAT binary)") as inp:
            for block in out:
                nbytes += len(block)
                inp.write(block)
        dst.commit()
        rows = dst.execute("SELECT count(*) FROM bench_copy").fetchone()
    return {"bytes": nbytes, "rows": rows[0] if rows else 0}


def run_dlt(args: argparse.Namespace) -> dict[str, object]:
    """dlt's sql_table into its duckdb destination, as its docs show it."""
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    import dlt
    from dlt.sources.sql_database import sql_table

    kwargs: dict[str, object] = {"credentials": args.dsn, "table": args.table,
                                 "backend": args.backend}
    if args.incremental:
        kwargs["incremental"] = dlt.sources.incremental("updated_at")
    resource = sql_table(**kwargs)  # type: ignore[arg-type]
    pipeline = dlt.pipeline(pipeline_name=f"bench_{args.backend}",
                            destination=dlt.destinations.duckdb(args.duckdb),
                            dataset_name="bench", pipelines_dir=args.pipelines_dir)
    if args.incremental:
        info = pipeline.run(resource, write_disposition="merge", primary_key="sale_id")
    else:
        info = pipeline.run(resource)
    info.raise_on_failed_jobs()
    counts = pipeline.last_trace.last_normalize_info.row_counts  # type: ignore[union-attr]
    return {"rows": int(counts.get(args.table, 0))}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=["drain", "pgcopy", "dlt", "sf_warm", "dlt_warm",
                                         "changed_drain", "cx_read", "adbc_sqlite_read"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--dst")
    parser.add_argument("--table", default="sales")
    parser.add_argument("--backend", default="connectorx")
    parser.add_argument("--duckdb")
    parser.add_argument("--pipelines-dir")
    parser.add_argument("--incremental", action="store_true")
    parser.add_argument("--config")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--first", type=int, default=10)
    args = parser.parse_args()
    started = time.perf_counter()
    result = {"drain": drain, "pgcopy": pgcopy, "dlt": run_dlt, "sf_warm": sf_warm,
              "dlt_warm": dlt_warm, "changed_drain": changed_drain, "cx_read": cx_read,
              "adbc_sqlite_read": adbc_sqlite_read}[args.case](args)
    result["seconds_in_process"] = round(time.perf_counter() - started, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
