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
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("pg", "embedded"), default="pg")
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--page", type=int, default=250)
    ap.add_argument("--tables", type=int, default=2)
    args = ap.parse_args()
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
        wh = f"postgresql://postgres@127.0.0.1:5432/{wh_name}"
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

    try:
        c0 = time.process_time()
        p = Pipeline.from_yaml(path)
        c1 = time.process_time()
        w0 = time.monotonic()
        waits[0] = 0
        s = p.run_once()
        w1 = time.monotonic()
        c2 = time.process_time()
        n_waits = waits[0]
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
              f"backend_cpu/batch={backend / max(batches, 1) * 1000:.2f}ms")
    finally:
        if args.mode == "pg":
            with admin() as c:
                c.execute(f"DROP DATABASE IF EXISTS {wh_name} WITH (FORCE)")
            drop_stream(stream)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
