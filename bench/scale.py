"""Does throughput scale with workers? 20 remote-looking stores, 1, 2 and 4 `steadyflow worker`
processes, one run.

    bench/.venv/bin/python bench/scale.py                 # 20 stores x 25,000 rows
    bench/.venv/bin/python bench/scale.py --rows 5000     # quicker

Each store is a PostgreSQL database on this machine behind its own TCP proxy that delays
every chunk by 10 ms each way (20 ms per round trip, what a store across a WAN looks like;
tests/support/faultproxy.py, run in a child process so its CPU is not the bench's). For each
worker count the pipeline starts empty (fresh warehouse database, state schema and JetStream
stream), the workers start together, and the time is from their spawn until the warehouse
holds every source row (counted by the bench through psycopg, not by steadyflow). Rows/s
are reported per count with the ratio to one worker.

What it measures: I/O-bound scaling. This machine has 2 cores, so adding workers helps only
while they wait on the network; past that they share the same CPU. The report says so, and
gives the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PG = "host=127.0.0.1 port=5432 user=postgres"
STORES = 20
RTT = 0.020


def admin() -> psycopg.Connection[Any]:
    return psycopg.connect(f"{PG} dbname=postgres", autocommit=True)


def make_stores(rows: int) -> list[str]:
    """sfscale_00..19, each with `rows` rows in sales (kept between runs of the same size)."""
    names = [f"sfscale_{i:02d}" for i in range(STORES)]
    with admin() as conn:
        have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    for i, name in enumerate(names):
        if name in have:
            with psycopg.connect(f"{PG} dbname={name}") as c:
                try:
                    if c.execute("SELECT count(*) FROM sales").fetchone() == (rows,):
                        continue
                except psycopg.errors.UndefinedTable:
                    pass
            with admin() as conn:
                conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        with admin() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        with psycopg.connect(f"{PG} dbname={name}") as c:
            c.execute("CREATE TABLE sales (sale_id bigint PRIMARY KEY, store_id int NOT NULL, "
                      "sku text NOT NULL, qty int NOT NULL, unit_price numeric(10,2) NOT NULL, "
                      "updated_at timestamptz NOT NULL)")
            c.execute("INSERT INTO sales SELECT g, %s, 'SKU-' || (g %% 977), 1 + g %% 9, "
                      "(g %% 10000) / 100.0, now() - interval '1 day' + g * interval '1 ms' "
                      "FROM generate_series(1, %s) g", (i, rows))
            c.execute("CREATE INDEX sales_cursor ON sales (updated_at, sale_id)")
            c.execute("ANALYZE sales")
    return names


def proxies_main() -> None:
    """Child process: one delaying proxy per store; prints their ports, then waits."""
    sys.path.insert(0, str(ROOT))
    from tests.support.faultproxy import FaultProxy

    started = []
    for _ in range(STORES):
        proxy = FaultProxy("127.0.0.1", 5432).start()
        proxy.set_latency(RTT / 2)
        started.append(proxy)
    print(json.dumps([p.port for p in started]), flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def write_config(work: Path, ports: list[int], names: list[str], wh: str, stream: str,
                 parallel: int, page: int) -> Path:
    config = {
        "name": "scale",
        "state": {"kind": "postgres", "dsn": wh, "schema": "sf_state"},
        "buffer": {"kind": "jetstream", "stream": stream, "capacity": 64, "lease": "60s"},
        "warehouse": {"kind": "postgres", "dsn": wh, "schema": "wh"},
        "landing": {"path": str(work / "landing")},
        "run": {"interval": 0.5, "max_parallel_sources": parallel},
        "contracts": {"sales": {"primary_key": ["sale_id"], "cursor": "updated_at", "columns": {
            "sale_id": {"type": "int64", "nullable": False},
            "store_id": {"type": "int32", "nullable": False},
            "sku": {"type": "string", "nullable": False},
            "qty": {"type": "int32", "nullable": False},
            "unit_price": {"type": "decimal(10,2)", "nullable": False},
            "updated_at": {"type": "timestamp", "nullable": False}}}},
        "sources": [{"name": f"store{i:02d}", "kind": "postgres",
                     "dsn": f"postgresql://postgres@127.0.0.1:{port}/{name}",
                     "tables": [{"name": "sales", "contract": "sales",
                                 "target": f"sales_{i:02d}", "page_size": page}]}
                    for i, (port, name) in enumerate(zip(ports, names, strict=True))],
    }
    path = work / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def drop_stream(name: str) -> None:
    import asyncio

    import nats

    async def drop() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            await nc.jetstream().delete_stream(name)
        except Exception:  # noqa: BLE001 - never created: nothing to drop
            pass
        finally:
            await nc.close()

    asyncio.run(drop())


def loaded(wh: str) -> int:
    try:
        with psycopg.connect(wh) as c:
            tables = [r[0] for r in c.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'wh' "
                "AND table_name LIKE 'sales_%'")]
            return sum(c.execute(f"SELECT count(*) FROM wh.{t}").fetchone()[0]  # type: ignore
                       for t in tables)
    except psycopg.Error:
        return 0


def one(workers: int, ports: list[int], names: list[str], total: int, args: Any,
        work_root: Path) -> dict[str, Any]:
    wh_name = f"sfscale_wh_{uuid.uuid4().hex[:8]}"
    stream = f"sfscale_{uuid.uuid4().hex[:8]}"
    with admin() as conn:
        conn.execute(f"CREATE DATABASE {wh_name}")
    wh = f"postgresql://postgres@127.0.0.1:5432/{wh_name}"
    work = work_root / f"w{workers}"
    work.mkdir(parents=True, exist_ok=True)
    cfg = write_config(work, ports, names, wh, stream, args.parallel, args.page)
    steadyflow = str(Path(sys.executable).parent / "steadyflow")
    procs = []
    started = time.monotonic()
    try:
        for i in range(workers):
            log = (work / f"worker{i}.log").open("w")
            procs.append(subprocess.Popen([steadyflow, "worker", "-c", str(cfg)],
                                          stdout=log, stderr=subprocess.STDOUT))
        deadline = started + args.timeout
        while (count := loaded(wh)) < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"{workers} workers: only {count:,} of {total:,} rows "
                                 f"after {args.timeout:g}s; logs in {work}")
            time.sleep(0.2)
        seconds = time.monotonic() - started
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        with admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {wh_name} WITH (FORCE)")
        drop_stream(stream)
    return {"workers": workers, "seconds": seconds, "rows_per_second": total / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25_000, help="rows per store")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--parallel", type=int, default=2,
                        help="run.max_parallel_sources of each worker")
    parser.add_argument("--page", type=int, default=2_000, help="page_size")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default=str(HERE / "SCALE.md"))
    parser.add_argument("--proxies", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxies:
        return proxies_main()
    names = make_stores(args.rows)
    total = args.rows * STORES
    proxy = subprocess.Popen([sys.executable, __file__, "--proxies"], stdout=subprocess.PIPE,
                             text=True)
    assert proxy.stdout is not None
    ports = json.loads(proxy.stdout.readline())
    load_before = os.getloadavg()
    results = []
    try:
        for n in (int(x) for x in args.workers.split(",")):
            results.append(one(n, ports, names, total, args, HERE / "work" / "scale"))
            print(json.dumps(results[-1]), flush=True)
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(10)
    load_after = os.getloadavg()
    base = results[0]["rows_per_second"]
    lines = [
        "# Throughput with 1, 2 and 4 workers (I/O-bound scaling)", "",
        f"Generated by `bench/.venv/bin/python bench/scale.py --rows {args.rows}` "
        f"on {os.cpu_count()} CPUs (load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after). {STORES} PostgreSQL stores x {args.rows:,} rows "
        f"({total:,} rows), each behind a proxy adding {RTT * 1000:.0f} ms per round trip; "
        f"PostgreSQL state and warehouse, JetStream buffer; each worker extracts "
        f"{args.parallel} tables at a time, pages of {args.page:,} rows. Time: from spawning "
        "the workers to every row counted in the warehouse (full load from empty).", "",
        "| workers | seconds | rows/s | vs 1 worker |", "|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['workers']} | {r['seconds']:.1f} | {r['rows_per_second']:,.0f} | "
                     f"{r['rows_per_second'] / base:.2f}x |")
    lines += ["", "This machine has 2 cores: more workers help while they wait on the "
              "stores' round trips, and stop helping once extraction, landing and merging "
              "use both cores; the ratios are I/O-bound scaling, not CPU scaling."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
