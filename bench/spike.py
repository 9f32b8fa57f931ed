"""Freshness under a volume spike: 20 stores (12 PostgreSQL + 8 MariaDB), steady, 10x, steady.

    bench/.venv/bin/python bench/spike.py                      # 3 + 2 + 3 minutes
    bench/.venv/bin/python bench/spike.py --scale 0.25         # 45 + 30 + 45 seconds
    bench/.venv/bin/python bench/spike.py --tool dlt           # dlt in a tight loop instead

Writers (one thread per store, in a child process of their own) insert rows at `--rate`
rows/s over all stores, then 10x that, then `--rate` again; each transaction inserts a
range of sale ids server-side (generate_series / MariaDB's seq_1_to_N), so the writers cost
little client CPU, and the writer notes the time its COMMIT returned. An independent
watcher (this process, psycopg, never steadyflow's code) polls the warehouse every 100 ms
and notes when each id range first became visible. A row's freshness is visible time minus
commit time. Reported per 10 s window: freshness p50/p95, rows committed and rows arriving
per second, the pipeline process's RSS and its queue depth (the most batches waiting in
steadyflow's buffer, its SQLite file read once a second, read-only); overall: p95 in the steady
phase, during the spike, how long after the spike p95 is back under 1 s, rows lost
(committed, never visible) and duplicated (a warehouse key twice: the tables have a
primary key, so counted as count(*) - count(distinct)). The pipeline runs with DEFAULT
settings (PostgreSQL warehouse, `run --follow`, the default interval and lookback) except
where the config below says otherwise. Writes bench/SPIKE.md and bench/spike.png.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import yaml

HERE = Path(__file__).resolve().parent
PG = "host=127.0.0.1 port=5432 user=postgres"
N_PG, N_MY = 12, 8
WINDOW = 10.0


def stores() -> list[tuple[str, str]]:
    return ([("postgres", f"sfspike_pg_{i:02d}") for i in range(N_PG)]
            + [("mysql", f"sfspike_my_{i:02d}") for i in range(N_MY)])


def my_connect(db: str | None = None) -> Any:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                           database=db, autocommit=True)


def reset_stores() -> None:
    """Every store empty, with the sales table and its cursor index."""
    with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as admin:
        for kind, name in stores():
            if kind != "postgres":
                continue
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name}")
            with psycopg.connect(f"{PG} dbname={name}") as c:
                c.execute("CREATE TABLE sales (sale_id bigint PRIMARY KEY, store_id int NOT "
                          "NULL, sku text NOT NULL, qty int NOT NULL, unit_price numeric(10,2) "
                          "NOT NULL, updated_at timestamptz NOT NULL)")
                c.execute("CREATE INDEX sales_cursor ON sales (updated_at, sale_id)")
    conn = my_connect()
    with conn.cursor() as cur:
        for kind, name in stores():
            if kind != "mysql":
                continue
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            cur.execute(f"CREATE DATABASE {name}")
            cur.execute(f"CREATE TABLE {name}.sales (sale_id bigint PRIMARY KEY, store_id int "
                        "NOT NULL, sku varchar(32) NOT NULL, qty int NOT NULL, unit_price "
                        "decimal(10,2) NOT NULL, updated_at datetime(6) NOT NULL, "
                        "KEY sales_cursor (updated_at, sale_id))")
    conn.close()


# --- writers (a child process) -----------------------------------------------------------
def writer_main(phases: list[tuple[float, float]], out: Any) -> None:
    """One thread per store; each commits `rate / 20` rows/s in transactions of ~20 ms.
    Sends (store, first id, last id, commit time) per transaction to `out`."""
    per_store = len(stores())
    stop = threading.Event()
    started = time.time()

    def one(index: int, kind: str, name: str) -> None:
        next_id = 1
        if kind == "postgres":
            conn: Any = psycopg.connect(f"{PG} dbname={name}", autocommit=True)
            sql = ("INSERT INTO sales SELECT g, %s, 'SKU-' || (g %% 97), 1 + g %% 5, "
                   "(g %% 1000) / 10.0, clock_timestamp() "
                   "FROM generate_series(%s::bigint, %s::bigint) g")
        else:
            conn = my_connect(name)
            sql = ("INSERT INTO sales SELECT seq, %s, concat('SKU-', seq %% 97), 1 + seq %% 5, "
                   "(seq %% 1000) / 10.0, utc_timestamp(6) FROM seq_{lo}_to_{hi}")
        tick = 0.02
        owed = 0.0
        try:
            while not stop.is_set():
                now = time.time() - started
                elapsed, rate = 0.0, 0.0
                for length, phase_rate in phases:
                    if now < elapsed + length:
                        rate = phase_rate
                        break
                    elapsed += length
                else:
                    return
                owed += rate / per_store * tick
                n = int(owed)
                if n:
                    owed -= n
                    lo, hi = next_id, next_id + n - 1
                    if kind == "postgres":
                        conn.execute(sql, (index, lo, hi))
                    else:
                        with conn.cursor() as cur:
                            cur.execute(sql.format(lo=lo, hi=hi), (index,))
                    out.put((name, lo, hi, time.time()))
                    next_id = hi + 1
                time.sleep(max(0.0, tick - (time.time() - started - now)))
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i, kind, name), daemon=True)
               for i, (kind, name) in enumerate(stores())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(None)


# --- the pipeline --------------------------------------------------------------------------
def write_config(work: Path, wh: str) -> Path:
    contract = {"primary_key": ["sale_id"], "cursor": "updated_at", "columns": {
        "sale_id": {"type": "int64", "nullable": False},
        "store_id": {"type": "int32", "nullable": False},
        "sku": {"type": "string", "nullable": False},
        "qty": {"type": "int32", "nullable": False},
        "unit_price": {"type": "decimal(10,2)", "nullable": False},
        "updated_at": {"type": "timestamp", "nullable": False}}}
    config = {
        "name": "spike",
        "warehouse": {"kind": "postgres", "dsn": wh, "schema": "wh"},
        "contracts": {"sales": contract},
        "sources": [{
            "name": name, "kind": kind,
            "dsn": (f"postgresql://postgres@127.0.0.1:5432/{name}" if kind == "postgres"
                    else f"mysql://root@127.0.0.1:3306/{name}"),
            "tables": [{"name": "sales", "contract": "sales", "target": name}],
        } for kind, name in stores()],
    }
    path = work / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_steadyflow(work: Path, wh: str) -> subprocess.Popen[bytes]:
    cfg = write_config(work, wh)
    exe = str(Path(sys.executable).parent / "steadyflow")
    log = (work / "steadyflow.log").open("w")
    return subprocess.Popen([exe, "run", "--follow", "-c", str(cfg), "--serve", "127.0.0.1:0"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=work)


def start_dlt(work: Path, wh: str) -> subprocess.Popen[bytes]:
    """dlt's sql_table (connectorx backend) with incremental merge on updated_at, every store
    in one pipeline, run again and again as fast as it goes."""
    # dlt's PostgreSQL credentials refuse a URL without a password; this server trusts
    # loopback connections and ignores it
    wh = wh.replace("://postgres@", "://postgres:unused@")
    script = work / "dlt_loop.py"
    script.write_text(f'''
import dlt
from dlt.sources.sql_database import sql_table
stores = {stores()!r}
pipeline = dlt.pipeline(pipeline_name="spike_dlt", destination=dlt.destinations.postgres(
    "{wh}"), dataset_name="wh", pipelines_dir="{work}/dlt")
while True:
    resources = []
    for kind, name in stores:
        url = (f"postgresql://postgres@127.0.0.1:5432/{{name}}" if kind == "postgres"
               else f"mysql+pymysql://root@127.0.0.1:3306/{{name}}")
        resources.append(sql_table(credentials=url, table="sales", backend="connectorx",
                                   incremental=dlt.sources.incremental("updated_at"),
                                   primary_key="sale_id", write_disposition="merge",
                                   ).with_name(name))
    pipeline.run(resources)
''')
    log = (work / "dlt.log").open("w")
    return subprocess.Popen([sys.executable, str(script)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=work)


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process and its children (dlt runs in one process too)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


# --- the watcher ---------------------------------------------------------------------------
class Watcher:
    """Notes when each committed id range first shows in the warehouse (independent reads)."""

    def __init__(self, wh: str) -> None:
        self.conn = psycopg.connect(wh, autocommit=True)
        self.frontier: dict[str, int] = {name: 0 for _, name in stores()}

    def poll(self) -> dict[str, int]:
        """Per store: the highest id such that every id up to it is visible."""
        for _, name in stores():
            try:
                row = self.conn.execute(f"SELECT count(*), max(sale_id) FROM wh.{name} "
                                        "WHERE sale_id > %s", (self.frontier[name],)).fetchone()
            except psycopg.errors.UndefinedTable:
                continue
            count, top = row if row else (0, None)
            if not count:
                continue
            if top - self.frontier[name] == count:
                self.frontier[name] = top
                continue
            ids = [r[0] for r in self.conn.execute(
                f"SELECT sale_id FROM wh.{name} WHERE sale_id > %s ORDER BY sale_id",
                (self.frontier[name],))]
            for i in ids:
                if i != self.frontier[name] + 1:
                    break
                self.frontier[name] = i
        return self.frontier

    def duplicates(self) -> int:
        total = 0
        for _, name in stores():
            try:
                row = self.conn.execute(f"SELECT count(*) - count(DISTINCT sale_id) FROM "
                                        f"wh.{name}").fetchone()
            except psycopg.errors.UndefinedTable:
                continue
            total += row[0] if row else 0
        return total


def percentile(values: list[tuple[float, int]], q: float) -> float | None:
    """Weighted percentile of (value, weight) pairs."""
    if not values:
        return None
    values = sorted(values)
    total = sum(w for _, w in values)
    seen = 0
    for value, weight in values:
        seen += weight
        if seen >= q * total:
            return value
    return values[-1][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--spike", type=float, default=10.0)
    parser.add_argument("--scale", type=float, default=1.0, help="phase lengths x this")
    parser.add_argument("--tool", choices=["steadyflow", "dlt"], default="steadyflow")
    parser.add_argument("--steady-only", action="store_true",
                        help="only the first steady phase (the side-by-side with dlt)")
    parser.add_argument("--out", default=str(HERE / "SPIKE.md"))
    args = parser.parse_args()
    phases = [(180 * args.scale, args.rate), (120 * args.scale, args.rate * args.spike),
              (180 * args.scale, args.rate)]
    if args.steady_only:
        phases = phases[:1]
    spike_start, spike_end = phases[0][0], phases[0][0] + (phases[1][0] if len(phases) > 1
                                                           else 0)
    work = HERE / "work" / f"spike-{args.tool}"
    work.mkdir(parents=True, exist_ok=True)
    reset_stores()
    wh_name = f"sfspike_wh_{args.tool}"
    with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {wh_name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {wh_name}")
    wh = f"postgresql://postgres@127.0.0.1:5432/{wh_name}"
    subprocess.run(["rm", "-rf", str(work / "state"), str(work / "landing"),
                    str(work / "dlt")], check=True)
    tool = (start_steadyflow if args.tool == "steadyflow" else start_dlt)(work, wh)
    try:
        measure(args, phases, spike_start, spike_end, tool, wh, work / "state" / "buffer.db")
    finally:
        if tool.poll() is None:  # never leave the pipeline running behind a failed bench
            tool.send_signal(signal.SIGTERM)
            try:
                tool.wait(60)
            except subprocess.TimeoutExpired:
                tool.kill()


def queue_depth(buffer: Path) -> int | None:
    """Batches in steadyflow's buffer (landed, not yet loaded and acked), read from its
    SQLite file read-only, not through steadyflow's code; None where there is none (dlt)
    or it cannot be read at this moment."""
    if not buffer.exists():
        return None
    try:
        with sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=0.2) as conn:
            return int(conn.execute("SELECT count(*) FROM queue").fetchone()[0])
    except sqlite3.Error:
        return None


def measure(args: Any, phases: list[tuple[float, float]], spike_start: float,
            spike_end: float, tool: subprocess.Popen[bytes], wh: str, buffer: Path) -> None:
    time.sleep(8)  # started: imports, connections (not counted)
    load_before = os.getloadavg()
    queue: Any = mp.Queue()
    writer = mp.Process(target=writer_main, args=(phases, queue), daemon=True)
    t0 = time.time()
    writer.start()
    watcher = Watcher(wh)
    ranges: dict[str, list[tuple[int, int, float]]] = {name: [] for _, name in stores()}
    fresh: list[tuple[float, float, int]] = []  # (commit time, freshness, rows)
    samples: list[tuple[float, float | None]] = []  # (time, RSS MiB)
    depths: list[tuple[float, int | None]] = []  # (time, batches in the buffer), once a second
    writing = True
    drain_until = None
    while True:
        while True:
            try:
                item = queue.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty
                break
            if item is None:
                writing = False
                drain_until = time.time() + 60
                continue
            name, lo, hi, committed = item
            ranges[name].append((lo, hi, committed))
        now = time.time()
        frontier = watcher.poll()
        for name, pending in ranges.items():
            keep = []
            for lo, hi, committed in pending:
                if hi <= frontier[name]:
                    fresh.append((committed - t0, now - committed, hi - lo + 1))
                else:
                    keep.append((lo, hi, committed))
            ranges[name] = keep
        samples.append((now - t0, rss_mib(tool.pid)))
        if not depths or now - t0 - depths[-1][0] >= 1.0:
            depths.append((now - t0, queue_depth(buffer)))
        if not writing and (not any(ranges.values()) or (drain_until and now > drain_until)):
            break
        time.sleep(0.1)
    lost = sum(hi - lo + 1 for pending in ranges.values() for lo, hi, _ in pending)
    dups = watcher.duplicates()
    tool.send_signal(signal.SIGTERM)
    tool.wait(60)
    load_after = os.getloadavg()
    report(args, phases, spike_start, spike_end, fresh, samples, lost, dups, load_before,
           load_after, depths)


def report(args: Any, phases: list[tuple[float, float]], spike_start: float,
           spike_end: float, fresh: list[tuple[float, float, int]],
           samples: list[tuple[float, float | None]], lost: int, dups: int,
           load_before: tuple[float, ...], load_after: tuple[float, ...],
           depths: list[tuple[float, int | None]]) -> None:
    end = sum(length for length, _ in phases)
    windows = []
    for start in range(0, int(end), int(WINDOW)):
        inside = [(f, n) for c, f, n in fresh if start <= c < start + WINDOW]
        rss = [r for t, r in samples if start <= t < start + WINDOW and r is not None]
        arrived = sum(n for c, f, n in fresh if start <= c + f < start + WINDOW)
        depth = [d for t, d in depths if start <= t < start + WINDOW and d is not None]
        windows.append({"t": start, "p50": percentile(inside, 0.5),
                        "p95": percentile(inside, 0.95),
                        "rows_per_s": sum(n for _, n in inside) / WINDOW,
                        "arrived_per_s": arrived / WINDOW,
                        "rss": max(rss) if rss else None,
                        "queue_max": max(depth) if depth else None})

    def phase_p95(lo: float, hi: float) -> float | None:
        return percentile([(f, n) for c, f, n in fresh if lo <= c < hi], 0.95)

    steady = phase_p95(10, spike_start)
    during = phase_p95(spike_start, spike_end) if spike_end > spike_start else None
    after = phase_p95(spike_end + 10, end) if spike_end > spike_start else None
    recovered = next((w["t"] - spike_end for w in windows
                      if w["t"] >= spike_end and w["p95"] is not None and w["p95"] < 1.0),
                     None) if spike_end > spike_start else None
    rss_before = max((w["rss"] or 0) for w in windows if w["t"] < spike_start) or None
    rss_end = windows[-1]["rss"] if windows else None
    total = sum(n for _, _, n in fresh)
    result = {"tool": args.tool, "rows": total, "lost": lost, "duplicates": dups,
              "steady_p95": steady, "spike_p95": during, "after_p95": after,
              "recovered_after_s": recovered, "rss_before": rss_before, "rss_end": rss_end,
              "load_before": load_before[0], "load_after": load_after[0], "windows": windows}
    out = Path(args.out)
    (out.with_suffix(f".{args.tool}.json")).write_text(json.dumps(result, indent=1))
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"# Freshness under a spike: {args.tool}", "",
             f"`bench/.venv/bin/python bench/spike.py --tool {args.tool} --scale {args.scale}"
             f" --rate {args.rate:g}`; {os.cpu_count()} CPUs, load average "
             f"{load_before[0]:.1f} before, {load_after[0]:.1f} after.", "",
             f"- rows committed and seen: {total:,}; lost: {lost}; duplicated: {dups}",
             f"- freshness p95: steady {fmt(steady)} s, spike {fmt(during)} s, after "
             f"{fmt(after)} s; p95 back under 1 s {fmt(recovered)} s after the spike's end",
             f"- RSS: {fmt(rss_before)} MiB before the spike, {fmt(rss_end)} MiB at the end",
             "", "| t (s) | p50 (s) | p95 (s) | committed rows/s | arrived rows/s | RSS (MiB) "
             "| queue depth (max, batches) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {w['t']} | {fmt(w['p50'])} | {fmt(w['p95'])} | {w['rows_per_s']:,.0f} | "
              f"{w['arrived_per_s']:,.0f} | {fmt(w['rss'])} | "
              f"{'–' if w['queue_max'] is None else w['queue_max']} |" for w in windows]
    out.with_suffix(f".{args.tool}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))
    try:
        plot(out.with_suffix(f".{args.tool}.png"), windows, spike_start, spike_end, args.tool)
    except ImportError:
        print("matplotlib is not installed: no plot")
    print(json.dumps({k: v for k, v in result.items() if k != "windows"}))


def plot(path: Path, windows: list[dict[str, Any]], spike_start: float, spike_end: float,
         tool: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [w["t"] for w in windows]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, [w["p95"] for w in windows], label="p95")
    axes[0].plot(t, [w["p50"] for w in windows], label="p50")
    axes[0].set_ylabel("freshness (s)")
    axes[0].legend()
    axes[1].plot(t, [w["rows_per_s"] for w in windows], label="committed")
    axes[1].plot(t, [w["arrived_per_s"] for w in windows], label="arrived")
    axes[1].set_ylabel("rows/s")
    axes[1].legend()
    axes[2].plot(t, [w["rss"] for w in windows])
    axes[2].set_ylabel("RSS (MiB)")
    axes[3].plot(t, [w["queue_max"] for w in windows])
    axes[3].set_ylabel("queue depth (batches)")
    axes[3].set_xlabel("seconds")
    for ax in axes:
        if spike_end > spike_start:
            ax.axvspan(spike_start, spike_end, alpha=0.15)
    fig.suptitle(f"{tool}: freshness under a 10x spike (per 10 s window)")
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
