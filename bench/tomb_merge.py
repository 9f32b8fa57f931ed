"""Wall time of one 2,000-row batch's load (merge + ledger, one transaction), in process.

    PYTHONPATH=src bench/.venv/bin/python bench/tomb_merge.py --engine duckdb
    PYTHONPATH=<main's src> bench/.venv/bin/python bench/tomb_merge.py --engine pg   # A/B
    ... --tombs 100   # the target holds tombstones: a repair deleted 100 keys first
    PYTHONPATH=src bench/.venv/bin/python bench/tomb_merge.py --engine pg --probe

A target of --base rows (loaded in batches first) takes --batches batches of new keys
(ascending: PostgreSQL's direct COPY, DuckDB's plain INSERT) and as many of existing keys
(random updates: the staged merge / DELETE + INSERT), alternating; prints the median and
p90 of each kind, wall and this process's CPU (DuckDB's work included, not PostgreSQL's
server). For the cost of tombstones on the common path (docs/deletes.md):
alternate the two sources in one sitting and compare medians (the machine is shared).
`--probe` (pg): the statement each batch's load begins with, the ledger INSERT, timed
alone as main runs it and with the tombstone question folded in, interleaved (what a
whole-batch A/B cannot resolve on a busy machine).
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa

from steadyflow.merge.duckdb import DuckdbWarehouse
from steadyflow.merge.postgres import PostgresWarehouse
from steadyflow.model import BatchRef, Column, Contract, TableRef

PG = "postgresql://postgres@127.0.0.1:5432"
CONTRACT = Contract(columns=(
    Column("sale_id", "int64", nullable=False), Column("sku", "string"),
    Column("qty", "int32"), Column("unit_price", "decimal(10,2)"),
    Column("updated_at", "timestamp", nullable=False)),
    primary_key=("sale_id",), cursor="updated_at")
REF = TableRef("src", "sales", "sales")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rows(keys: list[int], seq: int) -> pa.Table:
    return pa.table({
        "sale_id": pa.array(keys, pa.int64()),
        "sku": pa.array([f"sku-{k % 977}-{seq}" for k in keys], pa.string()),
        "qty": pa.array([k % 13 for k in keys], pa.int32()),
        "unit_price": pa.array([Decimal(k % 10000) / 100 for k in keys], pa.decimal128(10, 2)),
        "updated_at": pa.array([T0 + timedelta(seconds=seq) for _ in keys],
                               pa.timestamp("us", tz="UTC")),
    })


def batch(seq: int, n: int, kind: str = "extract") -> BatchRef:
    return BatchRef(f"b{seq}-{uuid.uuid4().hex[:8]}", "src", "sales", "p", n, 0, "c", None,
                    None, 0.0, kind=kind, seq=seq)


def run(load: Callable[..., Any], args: argparse.Namespace) -> dict[str, list[float]]:
    seq = 0
    for start in range(0, args.base, args.rows):  # the target
        seq += 1
        load(REF, CONTRACT, batch(seq, args.rows), rows(
            list(range(start, min(args.base, start + args.rows))), seq))
    if args.tombs:  # a repair deleted keys: the target holds tombstones
        seq += 1
        gone = pa.table({"sale_id": pa.array(range(0, args.tombs * 7, 7), pa.int64())})
        load(REF, CONTRACT, batch(seq, 0, "repair"), rows([], seq), gone)
    rng = random.Random(7)
    times: dict[str, list[float]] = {"new": [], "update": [], "new cpu": [], "update cpu": []}
    top = args.base
    for _ in range(args.batches):
        for kind in ("new", "update"):
            seq += 1
            if kind == "new":
                keys = list(range(top, top + args.rows))
                top += args.rows
            else:
                keys = sorted(rng.sample(range(top), args.rows))
            data = rows(keys, seq)
            started, cpu = time.perf_counter(), time.process_time()
            load(REF, CONTRACT, batch(seq, args.rows), data)
            times[kind].append(time.perf_counter() - started)
            times[f"{kind} cpu"].append(time.process_time() - cpu)
    return times


def probe(pg: PostgresWarehouse) -> None:
    from steadyflow.merge.plan import plan
    from steadyflow.merge.postgres import quote
    p = plan(CONTRACT, pg.schema, REF.target, "s", "d", quote, "postgres")
    old = p.ledger_insert.replace("now())", "now()) ON CONFLICT DO NOTHING RETURNING batch_id")
    new = f"WITH l AS ({old}) SELECT batch_id, {p.tomb_any} FROM l"
    times: dict[str, list[float]] = {"main": [], "tombstone question": []}
    for i in range(400):
        for name, sql in (("main", old), ("tombstone question", new)):
            with pg.conn.transaction():
                started = time.perf_counter()
                pg.conn.execute(sql.encode(), [f"p{name[0]}{i}", "s", "t", "x", 1, 0, 1]
                                ).fetchone()
                times[name].append(time.perf_counter() - started)
                raise_rollback()
    for name, values in times.items():
        values.sort()
        print(f"pg ledger INSERT, {name}: median {statistics.median(values) * 1000:.3f} ms, "
              f"p90 {values[int(len(values) * 0.9)] * 1000:.3f} ms (n={len(values)})")


def raise_rollback() -> None:
    raise psycopg.Rollback


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=("duckdb", "pg"), default="duckdb")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--base", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--tombs", type=int, default=0)
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args()
    if args.engine == "duckdb":
        with tempfile.TemporaryDirectory() as tmp:
            duck = DuckdbWarehouse(Path(tmp) / "wh.duckdb")
            duck.ensure_table(REF, CONTRACT)
            times = run(duck.load, args)
            duck.close()
    else:
        name = f"sftomb_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}".encode())
        try:
            pg = PostgresWarehouse(f"{PG}/{name}")
            pg.ensure_table(REF, CONTRACT)
            if args.probe:
                probe(pg)
                pg.close()
                return
            times = run(pg.load, args)
            pg.close()
        finally:
            with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())
    for kind, values in times.items():
        values.sort()
        print(f"{args.engine} {kind:10} {args.rows} rows, tombs {args.tombs}: median "
              f"{statistics.median(values) * 1000:.2f} ms, p90 "
              f"{values[int(len(values) * 0.9)] * 1000:.2f} ms (n={len(values)})")


if __name__ == "__main__":
    main()
