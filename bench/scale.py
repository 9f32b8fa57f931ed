"""Does throughput scale with workers? 20 remote-looking stores, 1, 2 and 4 `steadyflow worker`
processes, one run.

    bench/.venv/bin/python bench/scale.py                 # 20 stores x 25,000 rows
    bench/.venv/bin/python bench/scale.py --rows 5000     # quicker

Each store is a PostgreSQL database on this machine behind its own TCP proxy that delays
every chunk by 10 ms each way (20 ms per round trip, what a store across a WAN looks like;
tests/support/faultproxy.py, run in a child process so its CPU is not the bench's). For each
worker count the pipeline starts empty (fresh warehouse database, state schema and JetStream
stream) and the workers are spawned together. Two clocks, both reported:
- start-up: from the spawn until every worker has its heartbeat row (imports, config, state,
  buffer and warehouse opened; it registers itself and starts working at once);
- load: from then until the warehouse holds every source row (counted by the bench through
  psycopg, not by steadyflow). Rows/s = the rows not yet in the warehouse when the last
  worker was ready / the load time; the ratios to one worker are of these rows/s. The wall
  time from the spawn is reported beside it.
Each count runs `--repeat` times (the machine is shared: best of N), and the report gives
per run the CPU seconds of the workers (start-up and load), the proxies, PostgreSQL and
NATS, the machine's busy CPU over the load, and when the tables finished (the tail).

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
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from workers_common import (  # noqa: E402 - bench/ is not a package
    PG,
    CpuWatch,
    Workers,
    admin,
    cpu_seconds,
    end_run,
    new_run,
    registered_workers,
    wait_until,
    write_config,
)

STORES = 20
RTT = 0.020


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


def proxies_main(kind: str) -> None:
    """Child process: one delaying proxy per store; prints their ports, then waits.
    `delay` (bench/delay_proxy.py): one event loop, one callback per chunk; `fault`:
    tests/support/faultproxy.py, one loop and thread per proxy (what the bench used first,
    kept to compare the proxies' CPU)."""
    if kind == "fault":
        sys.path.insert(0, str(ROOT))
        from tests.support.faultproxy import FaultProxy

        started = []
        for _ in range(STORES):
            proxy = FaultProxy("127.0.0.1", 5432).start()
            proxy.set_latency(RTT / 2)
            started.append(proxy)
        print(json.dumps([p.port for p in started]), flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        return

    import asyncio

    import delay_proxy

    async def run() -> None:
        servers = await delay_proxy.serve(STORES, RTT / 2, ("127.0.0.1", 5432))
        print(json.dumps([delay_proxy.port_of(s) for s in servers]), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: print(
            json.dumps(list(delay_proxy.accepted.values())), flush=True))
        await stop.wait()

    asyncio.run(run())


def config(work: Path, ports: list[int], names: list[str], wh: str, stream: str,
           args: Any) -> Path:
    sources = [{"name": f"store{i:02d}", "kind": "postgres",
                "dsn": f"postgresql://postgres@127.0.0.1:{port}/{name}",
                "tables": [{"name": "sales", "contract": "sales", "target": f"sales_{i:02d}",
                            "page_size": args.page}]}
               for i, (port, name) in enumerate(zip(ports, names, strict=True))]
    return write_config(work, "scale", wh, stream, ["sale_id"], sources,
                        {"interval": args.interval, "max_parallel_sources": args.parallel})


class Counter:
    """Rows in each warehouse table, asked every 0.2 s during a load on one connection
    kept open, and no longer for a table once it holds every row of its store (a full
    load only adds rows). A new connection and a count of every table per look cost
    ~70 ms of the two cores' CPU (measured, mostly PostgreSQL's: a backend's fork and
    authentication, counting up to 500,000 rows), ~15% of the machine taken from what
    it measures, and more from the CPU-bound 4 workers than from the latency-bound one."""

    def __init__(self, wh: str, rows: int) -> None:
        self.wh, self.rows = wh, rows
        self.conn: psycopg.Connection[Any] | None = None
        self.complete: dict[str, int] = {}

    def counts(self) -> dict[str, int]:
        """Rows per table (none yet: {})."""
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.wh, autocommit=True)
            c = self.conn
            tables = [r[0] for r in c.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'wh' "
                "AND table_name LIKE 'sales_%'")]
            out = dict(self.complete)
            for t in tables:
                if t not in out:
                    out[t] = int(c.execute(f"SELECT count(*) FROM wh.{t}").fetchone()[0])  # type: ignore[index]
                    if out[t] >= self.rows:
                        self.complete[t] = out[t]
            return out
        except psycopg.Error:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return dict(self.complete)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def one(workers: int, ports: list[int], names: list[str], args: Any,
        work_root: Path, proxy: subprocess.Popen[str]) -> dict[str, Any]:
    total = args.rows * STORES
    wh_name, wh, stream = new_run("sfscale")
    work = work_root / f"w{workers}"
    work.mkdir(parents=True, exist_ok=True)
    cfg = config(work, ports, names, wh, stream, args)
    spawned = time.monotonic()
    procs = Workers(workers, cfg, work, log_level=args.log_level)
    finished: dict[str, float] = {}  # table -> seconds after ready when it was complete
    try:
        wait_until(lambda: ((n := registered_workers(wh)) >= workers, n), args.timeout,
                   f"{workers} workers registered", every=0.05)
        ready = time.monotonic()
        counter = Counter(wh, args.rows)
        at_ready = sum(counter.counts().values())
        startup_cpu = procs.cpu()
        watch, proxy_cpu = CpuWatch("sfscale"), cpu_seconds(proxy.pid)
        dialled = connections(proxy)
        watch.start()

        def progress() -> tuple[bool, int]:
            watch.sample()
            counts = counter.counts()
            now = time.monotonic() - ready
            for t, n in counts.items():
                if n >= args.rows:
                    finished.setdefault(t, now)
            count = sum(counts.values())
            return count >= total, count

        wait_until(progress, args.timeout, f"{workers} workers loading {total:,} rows")
        done = time.monotonic()
        counter.close()
        services = watch.stop()
        proxy_cpu = cpu_seconds(proxy.pid) - proxy_cpu
        dialled = [b - a for a, b in zip(dialled, connections(proxy), strict=True)]
    finally:
        used = procs.stop()
        end_run(wh_name, stream)
    ends = sorted(finished.values())
    return {"workers": workers, "startup_seconds": round(ready - spawned, 2),
            "rows_at_ready": at_ready, "load_seconds": round(done - ready, 2),
            "wall_seconds": round(done - spawned, 2),
            "rows_per_second": (total - at_ready) / (done - ready),
            "worker_cpu_startup": startup_cpu,
            "worker_cpu_load": [round(u - s, 1) for u, s in zip(used, startup_cpu,
                                                                  strict=True)],
            "proxy_cpu": round(proxy_cpu, 1), "store_connections": dialled,
            **{f"{k}_cpu": v for k, v in services.items()},
            "tables_done_at": [round(x, 1) for x in ends]}


def connections(proxy: subprocess.Popen[str]) -> list[int]:
    """Connections each delay proxy accepted so far ([] from the fault proxies)."""
    if "fault" in list(proxy.args):  # type: ignore[arg-type]
        return []
    assert proxy.stdout is not None
    proxy.send_signal(signal.SIGUSR1)
    return list(json.loads(proxy.stdout.readline()))


def python() -> str:
    """This interpreter, relative to the repository when inside it (the workers are the
    `steadyflow` beside it)."""
    exe = Path(sys.executable)
    return str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)


def ours(r: dict[str, Any]) -> float:
    """CPU seconds of this bench's processes over the load: workers, proxies, its
    PostgreSQL backends, NATS (all of NATS: nothing else on this host uses it much)."""
    return (sum(r["worker_cpu_load"]) + r["proxy_cpu"] + r["pg_ours_cpu"]
            + r["nats_cpu"])


def stores(dialled: list[int]) -> str:
    """Connections to the stores: total (fewest / most at one store)."""
    return f"{sum(dialled)} ({min(dialled)} / {max(dialled)})" if dialled else "-"


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda r: r["rows_per_second"])


def report(results: dict[int, list[dict[str, Any]]], args: Any,
           load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    total = args.rows * STORES
    counts = sorted(results)
    base = best(results[counts[0]])["rows_per_second"]
    lines = [
        "# Throughput with 1, 2 and 4 workers (I/O-bound scaling)", "",
        f"Generated by `{python()} bench/scale.py --rows {args.rows} --repeat "
        f"{args.repeat} --interval {args.interval:g} --proxy {args.proxy}` on "
        f"{os.cpu_count()} CPUs shared with other work (load average "
        f"{load[0][0]:.1f} / {load[0][1]:.1f} / {load[0][2]:.1f} before, "
        f"{load[1][0]:.1f} / {load[1][1]:.1f} / {load[1][2]:.1f} after). {STORES} PostgreSQL "
        f"stores x {args.rows:,} rows ({total:,} rows), each behind a proxy adding "
        f"{RTT * 1000:.0f} ms per round trip; PostgreSQL state and warehouse, JetStream "
        f"buffer; each worker extracts {args.parallel} tables at a time, pages of "
        f"{args.page:,} rows, run.interval {args.interval:g} s; full load from empty; "
        f"{args.proxy} proxies.", "",
        "Start-up: spawn until every worker's heartbeat row is there. Load: from then until "
        "every row is counted in the warehouse; rows/s = rows still to load at ready / load "
        f"time. Best of {args.repeat} runs per count (by rows/s); every run is listed below.",
        "", "| workers | start-up s | load s | rows/s | vs 1 worker | wall s (spawn to done) "
        "| wall vs 1 worker |", "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_wall = best(results[counts[0]])["wall_seconds"]
    for n in counts:
        r = best(results[n])
        lines.append(f"| {n} | {r['startup_seconds']:.1f} | {r['load_seconds']:.1f} | "
                     f"{r['rows_per_second']:,.0f} | {r['rows_per_second'] / base:.2f}x | "
                     f"{r['wall_seconds']:.1f} | {base_wall / r['wall_seconds']:.2f}x |")
    lines += ["", "Every run (CPU seconds; machine = busy CPU of both cores during the load, "
              "everything on the host included):", "",
              "| workers | rows/s | load s | rows at ready | workers' CPU start-up | workers' "
              "CPU load | proxies | PostgreSQL (this bench's databases / rest) | NATS | "
              "machine | this bench (its share of the busy CPU) | tables done at s (first / "
              "half / last) | store connections (fewest / most at one store) |",
              "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for n in counts:
        for r in results[n]:
            ends = r["tables_done_at"]
            lines.append(
                f"| {n} | {r['rows_per_second']:,.0f} | {r['load_seconds']:.1f} | "
                f"{r['rows_at_ready']:,} | {sum(r['worker_cpu_startup']):.1f} | "
                f"{' + '.join(f'{x:.1f}' for x in r['worker_cpu_load'])} | "
                f"{r['proxy_cpu']:.1f} | {r['pg_ours_cpu']:.1f} / {r['pg_other_cpu']:.1f} | "
                f"{r['nats_cpu']:.1f} | "
                f"{r['machine_cpu']:.1f} of {2 * r['load_seconds']:.1f} | "
                f"{ours(r):.1f} ({ours(r) / max(r['machine_cpu'], 0.1):.0%}) | "
                f"{ends[0]:.1f} / {ends[len(ends) // 2]:.1f} / {ends[-1]:.1f} | "
                f"{stores(r['store_connections'])} |")
    lines += ["", "This machine has 2 cores: more workers help while they wait on the "
              "stores' round trips, and stop helping once extraction, landing and merging "
              "use both cores; the ratios are I/O-bound scaling, not CPU scaling.", "",
              "Who had the CPU during each count's best run (the load only):", ""]
    for n in counts:
        r = best(results[n])
        mine, busy = ours(r), r["machine_cpu"]
        lines.append(
            f"- {n} worker(s): the machine was busy {busy:.1f} of {2 * r['load_seconds']:.1f} "
            f"CPU-seconds; this bench's processes used {mine:.1f} of them, everything else on "
            f"the host {max(0.0, busy - mine):.1f}. This bench's CPU alone on both cores "
            f"takes at least {mine / 2:.1f} s (its load took {r['load_seconds']:.1f} s).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25_000, help="rows per store")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count")
    parser.add_argument("--parallel", type=int, default=2,
                        help="run.max_parallel_sources of each worker")
    parser.add_argument("--page", type=int, default=2_000, help="page_size")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="run.interval (steadyflow's default): an idle table's longest "
                             "pause between polls in follow mode")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default=str(HERE / "SCALE.md"))
    parser.add_argument("--proxy", choices=("delay", "fault"), default="delay",
                        help="delay: bench/delay_proxy.py (default); fault: "
                             "tests/support/faultproxy.py")
    parser.add_argument("--log-level", default=None,
                        help="the workers' --log-level (info: each table's and range's "
                             "start and end, in bench/work/scale/w<N>/worker<i>.log)")
    parser.add_argument("--proxies", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxies:
        return proxies_main(args.proxy)
    names = make_stores(args.rows)
    proxy = subprocess.Popen([sys.executable, __file__, "--proxies", "--proxy", args.proxy],
                             stdout=subprocess.PIPE, text=True)
    assert proxy.stdout is not None
    ports = json.loads(proxy.stdout.readline())
    load_before = os.getloadavg()
    counts = [int(x) for x in args.workers.split(",")]
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    try:
        for _ in range(args.repeat):  # interleaved: a busy minute hits every count alike
            for n in counts:
                results[n].append(one(n, ports, names, args, HERE / "work" / "scale",
                                      proxy))
                print(json.dumps(results[n][-1]), flush=True)
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(10)
    text = report(results, args, (load_before, os.getloadavg()))
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
