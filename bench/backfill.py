"""A partitioned first load of one large table by 1, 2 and 4 `steadyflow worker` processes.

    .venv/bin/python bench/backfill.py                     # 2,000,000 rows, ranges of 125,000
    .venv/bin/python bench/backfill.py --rows 200000 --chunk-rows 25000   # quicker

One PostgreSQL source table `sales` keyed (store_id, sale_id) with only four store_ids (a
key whose first column has four values: a min/max split of that column would give one
range; the key walk gives equal ones), kept between runs of the same size. For each worker
count the pipeline starts empty (fresh warehouse database holding the state schema, fresh
JetStream stream, fresh landing folder), the workers start together, and the clock runs from
their spawn until the warehouse holds every source row and the table's checkpoint is set
(counted by the bench through psycopg, not by steadyflow). It reports, per count: the wall
time, when the last range was read, each range's rows and reader, each worker's share, and
a digest of the warehouse's business columns, which must equal the source's and be the same
for every count.

The machine has 2 cores shared with other work: the workers share them (extraction,
landing, merging into the warehouse on the same host), so more workers cannot be faster by
more than the CPU they were waiting for. The report gives the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workers_common import (  # noqa: E402 - bench/ is not a package
    CpuWatch,
    Workers,
    admin,
    end_run,
    new_run,
    registered_workers,
    wait_until,
    write_config,
)

SOURCE_DB = "sfbackfill_src"
COLUMNS = "store_id, sale_id, sku, qty, unit_price, updated_at"
# an order-independent digest of a table's business columns (count, sum of 60-bit hashes)
DIGEST = (f"SELECT count(*), coalesce(sum(('x' || substr(md5(ROW({COLUMNS})::text), 1, 15))"
          "::bit(60)::bigint), 0) FROM {table}")


def make_source(rows: int) -> str:
    """The source database (kept while it has `rows` rows); returns its DSN."""
    dsn = f"postgresql://postgres@127.0.0.1:5432/{SOURCE_DB}"
    with admin() as conn:
        have = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (SOURCE_DB,)).fetchone()
    if have:
        with psycopg.connect(dsn) as c:
            try:
                if c.execute("SELECT count(*) FROM sales").fetchone() == (rows,):
                    return dsn
            except psycopg.errors.UndefinedTable:
                pass
        with admin() as conn:
            conn.execute(f"DROP DATABASE {SOURCE_DB} WITH (FORCE)")
    with admin() as conn:
        conn.execute(f"CREATE DATABASE {SOURCE_DB}")
    with psycopg.connect(dsn) as c:
        c.execute("CREATE TABLE sales (store_id int NOT NULL, sale_id bigint NOT NULL, "
                  "sku text NOT NULL, qty int NOT NULL, unit_price numeric(10,2) NOT NULL, "
                  "updated_at timestamptz NOT NULL, PRIMARY KEY (store_id, sale_id))")
        c.execute("INSERT INTO sales SELECT 1 + g %% 4, g, 'SKU-' || (g %% 977), 1 + g %% 9, "
                  "(g %% 10000) / 100.0, timestamptz '2026-01-01 00:00:00+00' "
                  "+ ((g::bigint * 7919) %% %s) * interval '1 ms' FROM generate_series(1, %s) g",
                  (rows, rows))
        c.execute("CREATE INDEX sales_cursor ON sales (updated_at, store_id, sale_id)")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("VACUUM ANALYZE sales")  # index-only scans for the key walk
    return dsn


def progress(wh: str) -> tuple[int, bool, list[tuple[Any, ...]]]:
    """(warehouse rows, checkpoint set, ranges as (chunk, rows, status, holder, done_at))."""
    try:
        with psycopg.connect(wh) as c:
            count = c.execute("SELECT count(*) FROM wh.sales").fetchone()[0]  # type: ignore
            done = c.execute(
                "SELECT count(*) FROM sf_state.checkpoints").fetchone()[0]  # type: ignore
            chunks = c.execute("SELECT chunk, rows, status, holder, done_at FROM "
                               "sf_state.backfill_chunks ORDER BY chunk").fetchall()
            return int(count), bool(done), chunks
    except psycopg.Error:
        return 0, False, []


def one(workers: int, source: str, total: int, args: Any, work_root: Path
        ) -> dict[str, Any]:
    wh_name, wh, stream = new_run("sfbackfill")
    work = work_root / f"w{workers}"
    work.mkdir(parents=True, exist_ok=True)
    sources = [{"name": "store", "kind": "postgres", "dsn": source,
                "tables": [{"name": "sales", "contract": "sales", "target": "sales",
                            "page_size": args.page}]}]
    cfg = write_config(work, "backfill", wh, stream, ["store_id", "sale_id"], sources,
                       {"interval": 0.5})
    started = time.time()
    procs = Workers(workers, cfg, work, env={"STEADYFLOW_BACKFILL_CHUNK_ROWS":
                                             str(args.chunk_rows)}, log_level="info")
    ranges_read: float | None = None
    chunks: list[tuple[Any, ...]] = []
    try:
        wait_until(lambda: ((n := registered_workers(wh)) >= workers, n), args.timeout,
                   f"{workers} workers registered", every=0.05)
        ready = time.time()
        startup_cpu = procs.cpu()
        watch = CpuWatch("sfbackfill")
        watch.start()

        def check() -> tuple[bool, int]:
            nonlocal ranges_read, chunks
            watch.sample()
            count, done, chunks = progress(wh)
            if ranges_read is None and chunks and all(c[2] == "done" for c in chunks):
                ranges_read = max(float(c[4]) for c in chunks) - started
            return count >= total and done, count

        wait_until(check, args.timeout, f"{workers} workers loading {total:,} rows")
        seconds = time.time() - started
        services = watch.stop()
        with psycopg.connect(wh) as c:
            digest = c.execute(DIGEST.format(table="wh.sales")).fetchone()
    finally:
        used = procs.stop()
        end_run(wh_name, stream)
    pids = {str(pid): i for i, pid in enumerate(procs.pids)}
    shares: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    ranges = []
    for chunk, rows, _, holder, _ in chunks:
        reader = pids.get(str(holder).split(":")[1], -1)
        shares[reader][0] += 1
        shares[reader][1] += int(rows)
        ranges.append({"chunk": int(chunk), "rows": int(rows), "worker": reader})
    return {"workers": workers, "seconds": round(seconds, 1),
            "startup_seconds": round(ready - started, 1),
            "ranges_read_seconds": round(ranges_read or 0.0, 1),
            "worker_cpu": [round(u - s, 1) for u, s in zip(used, startup_cpu, strict=True)],
            "pg_ours_cpu": services["pg_ours"],
            "machine_cpu": services["machine"],
            "digest": [int(x) for x in digest or ()],
            "ranges": ranges, "shares": {w: {"ranges": s[0], "rows": s[1]}
                                         for w, s in sorted(shares.items())}}


def report(results: list[dict[str, Any]], source_digest: list[int], args: Any,
           load: tuple[float, float]) -> str:
    first = results[0]
    sizes = [r["rows"] for r in first["ranges"]]
    same = all(r["digest"] == source_digest for r in results)
    lines = [
        "# A partitioned first load by 1, 2 and 4 workers", "",
        f"Generated by `.venv/bin/python bench/backfill.py --rows {args.rows} --chunk-rows "
        f"{args.chunk_rows}` on {os.cpu_count()} CPUs shared with other work (load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after). One PostgreSQL table of {args.rows:,} "
        "rows keyed (store_id, sale_id), four store_ids; PostgreSQL state and warehouse on "
        f"the same server, JetStream buffer, local landing; pages of {args.page:,} rows; "
        "one reader thread per worker (max_concurrent_queries 1). Time: from spawning the "
        "workers to every row in the warehouse and the checkpoint set; start-up (spawn until "
        "every worker's heartbeat row is there) is part of it and given beside it. CPU "
        "seconds from then on: the workers', and PostgreSQL's for this bench's databases "
        "(source, state, warehouse); machine = busy CPU of both cores, all work on the host "
        "included.", "",
        f"Split: {len(sizes)} ranges, rows per range min {min(sizes):,} / max "
        f"{max(sizes):,} (planned at {args.chunk_rows:,}).", "",
        "| workers | wall s | start-up s | last range read at s | ranges (rows) per worker "
        "| workers' CPU | PostgreSQL CPU | machine CPU | warehouse = source |",
        "|---:|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for r in results:
        shares = ", ".join(f"w{w}: {s['ranges']} ({s['rows']:,})"
                           for w, s in r["shares"].items())
        lines.append(f"| {r['workers']} | {r['seconds']:.1f} | {r['startup_seconds']:.1f} | "
                     f"{r['ranges_read_seconds']:.1f} | {shares} | "
                     f"{' + '.join(f'{x:.1f}' for x in r['worker_cpu'])} | "
                     f"{r['pg_ours_cpu']:.1f} | {r['machine_cpu']:.1f} of "
                     f"{2 * (r['seconds'] - r['startup_seconds']):.1f} | "
                     f"{'yes' if r['digest'] == source_digest else 'NO'} |")
    lines += ["", f"Warehouse digest (count, sum of 60-bit md5 prefixes of the business "
              f"columns): {source_digest}, {'the same for every count' if same else 'DIFFERS'}.",
              "", "The machine has 2 cores: the workers, the source, the warehouse's "
              "merges and the buffer share them, so the wall time falls only as far as one "
              "worker left CPU idle (waiting on the source or the warehouse)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--chunk-rows", type=int, default=125_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--page", type=int, default=50_000, help="page_size")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=str(HERE / "BACKFILL.md"))
    args = parser.parse_args()
    source = make_source(args.rows)
    with psycopg.connect(source) as c:
        source_digest = [int(x) for x in c.execute(DIGEST.format(table="sales")).fetchone()
                         or ()]
    load_before = os.getloadavg()[0]
    results = []
    for n in (int(x) for x in args.workers.split(",")):
        results.append(one(n, source, args.rows, args, HERE / "work" / "backfill"))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "ranges"}), flush=True)
    text = report(results, source_digest, args, (load_before, os.getloadavg()[0]))
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
