"""Where a full load's CPU goes, stage by stage, on the bench table (run `make bench` first).

    bench/.venv/bin/python bench/stages.py [--dsn postgresql://postgres@127.0.0.1:5432/sfbench_src]
    bench/.venv/bin/python bench/stages.py --read-paths mysql --dsn mysql://root@127.0.0.1:3306/sfbench_src
    bench/.venv/bin/python bench/stages.py --read-paths sqlite --dsn bench/work/sqlite/store.db

Two measurements, each on steadyflow's own components, sequentially (nothing overlaps, so
each number is that stage's alone):

1. The source read in three orders: keyset pages by (updated_at, sale_id), keyset pages by
   the primary key (the initial load), and one sequential scan; CPU of the PostgreSQL
   backend (from /proc/<pid>/stat, so this must run on the database's host) and of the
   client (ADBC decoding), and wall time.
2. Per stage of the pipeline, thread CPU per 2M rows: conform (exact casts), Parquet
   encoding (landing), validation, DuckDB insert + commit.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from adbc_driver_postgresql import dbapi
from run import CONTRACT as BENCH_CONTRACT  # bench/run.py (this directory is on sys.path)

from steadyflow.config import ContractConfig
from steadyflow.extract.pg_arrow import conform
from steadyflow.validate.rules import validate

PAGE = 122_880
COLUMNS = "sale_id, store_id, sku, qty, unit_price::text AS unit_price, currency, sold_at, " \
          "updated_at"
CONTRACT = ContractConfig.model_validate(BENCH_CONTRACT).to_contract()


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def by_cursor(cur: Any, pages: list[pa.Table]) -> None:
    last = None
    while True:
        where = "" if last is None else (
            f"WHERE (updated_at, sale_id) > ('{last[0]}'::timestamptz, {last[1]})")
        cur.execute(f"SELECT {COLUMNS} FROM sales {where} ORDER BY updated_at, sale_id "
                    f"LIMIT {PAGE}")
        page = cur.fetch_arrow_table()
        if page.num_rows == 0:
            return
        pages.append(page)
        row = page.slice(page.num_rows - 1).to_pylist()[0]
        last = (row["updated_at"].isoformat(), row["sale_id"])


def by_key(cur: Any, pages: list[pa.Table]) -> None:
    last = None
    while True:
        where = "" if last is None else f"WHERE sale_id > {last}"
        cur.execute(f"SELECT {COLUMNS} FROM sales {where} ORDER BY sale_id LIMIT {PAGE}")
        page = cur.fetch_arrow_table()
        if page.num_rows == 0:
            return
        pages.append(page)
        last = page.column("sale_id")[-1].as_py()


def one_scan(cur: Any, pages: list[pa.Table]) -> None:
    cur.execute(f"SELECT {COLUMNS} FROM sales")
    pages.extend(pa.Table.from_batches([b]) for b in cur.fetch_record_batch())


def read(dsn: str) -> list[pa.Table]:
    print("| source read | backend CPU s | client CPU s | wall s |\n|---|---:|---:|---:|")
    kept: list[pa.Table] = []
    for name, how in (("keyset pages by (updated_at, sale_id)", by_cursor),
                      ("keyset pages by primary key (initial load)", by_key),
                      ("one sequential scan (no pages)", one_scan)):
        with dbapi.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
            pages: list[pa.Table] = []
            server, client, wall = backend_cpu(pid), time.process_time(), time.perf_counter()
            how(cur, pages)
            print(f"| {name} | {backend_cpu(pid) - server:.2f} | "
                  f"{time.process_time() - client:.2f} | {time.perf_counter() - wall:.2f} |")
            if how is by_key:
                kept = pages
    return kept


def stages(raw_pages: list[pa.Table]) -> None:
    rows = sum(p.num_rows for p in raw_pages)
    spent: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        started = time.thread_time()
        result = fn()
        spent[name] = spent.get(name, 0.0) + time.thread_time() - started
        return result

    good = []
    for raw in raw_pages:
        page = timed("conform (exact casts to the contract types)", lambda r=raw: conform(
            r, CONTRACT))
        timed("Parquet encoding, zstd 1 (landing)", lambda p=page: pq.write_table(
            p, io.BytesIO(), compression="zstd", compression_level=1, use_dictionary=False,
            write_statistics=False))
        good.append(timed("validation", lambda p=page: validate(p, CONTRACT)).good)
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "w.duckdb"),
                             config={"threads": 1, "memory_limit": "32MB"})
        con.register("first", good[0])
        con.execute("CREATE TABLE s AS SELECT * FROM first LIMIT 0")
        con.unregister("first")
        for page in good:
            def insert(p: pa.Table = page) -> None:
                con.execute("BEGIN")
                con.register("page", p)
                con.execute("INSERT INTO s SELECT * FROM page")
                con.unregister("page")
                con.execute("COMMIT")
            timed("DuckDB insert + commit (row groups compressed)", insert)
        con.close()
    print(f"\n| stage | CPU s per {rows:,} rows |\n|---|---:|")
    for name, seconds in spent.items():
        print(f"| {name} | {seconds:.2f} |")


def read_paths(kind: str, where: str) -> None:
    """MariaDB or SQLite: each read path of steadyflow paging the whole bench table in key
    order (122,880-row pages), in a child process each, with the process CPU (all threads,
    connectorx's Rust threads included), wall time and peak RSS."""
    import subprocess
    import sys

    code = (
        "import sys, time, resource\n"
        "from steadyflow.config import ContractConfig, SourceConfig\n"
        "from steadyflow.extract.sql import SqlSource\n"
        "from steadyflow.run.extract import open_source\n"
        "from run import CONTRACT\n"
        "kind, where, path = sys.argv[1:4]\n"
        "c = ContractConfig.model_validate(CONTRACT).to_contract().by_key()\n"
        "loc = {'dsn': where} if kind == 'mysql' else {'path': where}\n"
        "cfg = SourceConfig(name='s', kind=kind, tables=[{'name': 'sales', 'contract': 'c'}],"
        " **loc)\n"
        "src = SqlSource(cfg) if path.startswith('DB-API') else open_source(cfg)\n"
        "t0, c0, n = time.perf_counter(), time.process_time(), 0\n"
        "for rows, _ in src.pages('sales', c, None, None, 122880):\n"
        "    n += rows.num_rows\n"
        "src.close()\n"
        "print(f'| {path} | {n:,} | {time.process_time() - c0:.2f} | "
        "{time.perf_counter() - t0:.2f} | "
        "{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} |')\n")
    fast = "connectorx (extract/mysql_arrow.py)" if kind == "mysql" else \
        "adbc-driver-sqlite (extract/sqlite_arrow.py)"
    slow = "DB-API: pymysql + rows_to_arrow" if kind == "mysql" else \
        "DB-API: sqlite3 + rows_to_arrow"
    print("| path | rows | process CPU s | wall s | peak RSS MiB |\n|---|---:|---:|---:|---:|")
    for path in (fast, slow):
        subprocess.run([sys.executable, "-c", code, kind, where, path], check=True,
                       cwd=Path(__file__).parent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=os.environ.get(
        "BENCH_PG", "postgresql://postgres@127.0.0.1:5432") + "/sfbench_src")
    ap.add_argument("--read-paths", choices=["mysql", "sqlite"],
                    help="compare steadyflow's read paths of a MariaDB (--dsn mysql://...) "
                    "or SQLite (--dsn PATH) source instead")
    args = ap.parse_args()
    if args.read_paths:
        read_paths(args.read_paths, args.dsn)
        return
    pa.set_memory_pool(pa.system_memory_pool())
    stages(read(args.dsn))


if __name__ == "__main__":
    main()
