"""CPU per small batch, in process: one `run_once` over T tables of R rows at page size P.

    bench/.venv/bin/python bench/batch_cost.py --mode pg --rows 60000 --page 250 --tables 2
    PYTHONPATH=<other src> bench/.venv/bin/python bench/batch_cost.py ...   # A/B, same sitting

pg: PostgreSQL state + JetStream buffer + PostgreSQL warehouse (a fresh database and stream
per run); embedded: SQLite state and buffer, local landing, DuckDB. The sources are
PostgreSQL tables in database sfbatch_src (kept between runs of the same size). Prints this
process's CPU over `run_once` per loaded batch, psycopg's waits per batch (one per statement
or COPY exchange: about the round trips to the state and warehouse) and, for pg, the CPU of
the state's and warehouse's PostgreSQL backends per batch (read from /proc: run it on the
database's host). The machine is shared: alternate the two sides and compare medians.
pg mode also prints the messages this process sent to NATS per batch (publishes, acks,
pull and API requests: each one the server handles) and the nats-server's CPU per batch
(from /proc; the server is shared, so other users' work counts in it too).
`--count` sends the state's and warehouse's connections through a counting proxy in a
process of its own (tests/support/wirecount.py) and prints the PostgreSQL round trips per
batch as the server sees them (ReadyForQuery messages; psycopg's waits are not round
trips in a pipeline or a multi-statement query); its CPU figures are then not comparable.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import yaml

PG = "host=127.0.0.1 port=5432 user=postgres"
SRC = "sfbatch_src"
COLUMNS = {
    "store_id": {"type": "int32", "nullable": False},
    "sale_id": {"type": "int64", "nullable": False},
    "sku": {"type": "string", "nullable": False},
    "qty": {"type": "int32", "nullable": False},
    "unit_price": {"type": "decimal(10,2)", "nullable": False},
    "updated_at": {"type": "timestamp", "nullable": False},
}


def admin():
    return psycopg.connect(f"{PG} dbname=postgres", autocommit=True)


def make_source(rows: int, tables: int) -> None:
    with admin() as c:
        have = {r[0] for r in c.execute("SELECT datname FROM pg_database")}
        if SRC not in have:
            c.execute(f"CREATE DATABASE {SRC}")
    with psycopg.connect(f"{PG} dbname={SRC}") as c:
        for t in range(tables):
            name = f"sales_{t}"
            try:
                if c.execute(f"SELECT count(*) FROM {name}").fetchone() == (rows,):
                    continue
            except psycopg.errors.UndefinedTable:
                c.rollback()
            c.execute(f"DROP TABLE IF EXISTS {name}")
            c.execute(f"CREATE TABLE {name} (sale_id bigint PRIMARY KEY, store_id int NOT NULL, "
                      "sku text NOT NULL, qty int NOT NULL, unit_price numeric(10,2) NOT NULL, "
                      "updated_at timestamptz NOT NULL)")
            c.execute(f"INSERT INTO {name} SELECT g, %s, 'SKU-' || (g %% 977), 1 + g %% 9, "
                      "(g %% 10000) / 100.0, now() - interval '1 day' + g * interval '1 ms' "
                      "FROM generate_series(1, %s) g", (t, rows))
            c.execute(f"CREATE INDEX ON {name} (updated_at, sale_id)")
            c.commit()


def drop_stream(name: str) -> None:
    import nats

    async def drop() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            await nc.jetstream().delete_stream(name)
        except Exception:
            pass
        finally:
            await nc.close()

    asyncio.run(drop())


COUNTER = """
import sys
from tests.support.wirecount import WireCounter
counter = WireCounter(5432, "postgres")
print(counter.port, flush=True)
for _ in sys.stdin:
    print(counter.round_trips, flush=True)
"""


def round_trips(counter: subprocess.Popen[str] | None) -> int:
    """The counting proxy's round trips so far (0 without one)."""
    if counter is None:
        return 0
    assert counter.stdin is not None and counter.stdout is not None
    counter.stdin.write("\n")
    counter.stdin.flush()
    return int(counter.stdout.readline())


def nats_cpu() -> float:
    """CPU seconds of the nats-server processes on this host so far (0 if none)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(nats-server)" in text:
            f = text.rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("pg", "embedded"), default="pg")
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--page", type=int, default=250)
    ap.add_argument("--tables", type=int, default=2)
    ap.add_argument("--count", action="store_true", help="count round trips (see above)")
    args = ap.parse_args()
    counter = None
    if args.count and args.mode == "pg":
        counter = subprocess.Popen(
            [sys.executable, "-c", COUNTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "PYTHONPATH": "."})
        assert counter.stdin is not None and counter.stdout is not None
        port = int(counter.stdout.readline())
    make_source(args.rows, args.tables)
    token = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="sfbatch_"))
    wh_name = f"sfbatch_wh_{token}"
    stream = f"sfbatch_{token}"
    sources = [{"name": "src", "kind": "postgres",
                "dsn": f"postgresql://postgres@127.0.0.1:5432/{SRC}",
                "tables": [{"name": f"sales_{t}", "contract": "sales", "target": f"sales_{t}",
                            "page_size": args.page} for t in range(args.tables)]}]
    config = {"name": "batchcost", "landing": {"path": str(work / "landing")},
              "run": {"interval": 5, "max_parallel_sources": 2},
              "contracts": {"sales": {"primary_key": ["sale_id"], "cursor": "updated_at",
                                      "columns": COLUMNS}},
              "sources": sources, "state_dir": str(work / "state")}
    if args.mode == "pg":
        with admin() as c:
            c.execute(f"CREATE DATABASE {wh_name}")
        wh = f"postgresql://postgres@127.0.0.1:{port if counter else 5432}/{wh_name}" + (
            "?sslmode=disable&gssencmode=disable" if counter else "")
        config["state"] = {"kind": "postgres", "dsn": wh, "schema": "sf_state"}
        config["buffer"] = {"kind": "jetstream", "stream": stream, "capacity": 64, "lease": "60s"}
        config["warehouse"] = {"kind": "postgres", "dsn": wh, "schema": "wh"}
    else:
        config["warehouse"] = {"kind": "duckdb", "path": str(work / "wh.duckdb")}
    path = work / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    from steadyflow.run.pipeline import Pipeline

    waits = [0]
    orig_wait = psycopg.Connection.wait

    def counted(self, gen, *a, **k):
        waits[0] += 1
        return orig_wait(self, gen, *a, **k)
    psycopg.Connection.wait = counted
    from nats.aio.client import Client

    sent = [0]
    orig_publish = Client.publish

    async def publish(self, *a, **k):
        sent[0] += 1
        return await orig_publish(self, *a, **k)
    Client.publish = publish

    try:
        c0 = time.process_time()
        p = Pipeline.from_yaml(path)
        c1 = time.process_time()
        w0 = time.monotonic()
        waits[0] = sent[0] = 0
        nats0 = nats_cpu()
        trips0 = round_trips(counter)
        s = p.run_once()
        w1 = time.monotonic()
        c2 = time.process_time()
        n_waits, n_sent, nats = waits[0], sent[0], nats_cpu() - nats0
        n_trips = round_trips(counter) - trips0
        backend = 0.0
        if args.mode == "pg":
            with admin() as c:
                pids = [r[0] for r in c.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (wh_name,))]
            tick = os.sysconf("SC_CLK_TCK")
            for pid in pids:
                try:
                    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    backend += (int(f[11]) + int(f[12])) / tick
                except OSError:
                    pass
        p.close()
        batches = s.loaded_batches
        print(f"mode={args.mode} rows={args.rows}x{args.tables} page={args.page} "
              f"batches={batches} open_cpu={c1 - c0:.2f}s run_cpu={c2 - c1:.2f}s "
              f"wall={w1 - w0:.2f}s cpu/batch={(c2 - c1) / max(batches, 1) * 1000:.2f}ms "
              f"loaded_rows={s.loaded_rows} pg_roundtrips/batch={n_waits / max(batches, 1):.1f} "
              f"backend_cpu/batch={backend / max(batches, 1) * 1000:.2f}ms "
              f"nats_msgs/batch={n_sent / max(batches, 1):.1f} "
              f"nats_cpu/batch={nats / max(batches, 1) * 1000:.2f}ms"
              + (f" server_roundtrips/batch={n_trips / max(batches, 1):.1f}" if counter
                 else ""))
    finally:
        if args.mode == "pg":
            with admin() as c:
                c.execute(f"DROP DATABASE IF EXISTS {wh_name} WITH (FORCE)")
            drop_stream(stream)
        shutil.rmtree(work, ignore_errors=True)
        if counter is not None:
            counter.kill()
            counter.wait()


if __name__ == "__main__":
    main()
