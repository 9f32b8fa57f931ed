"""Per engine: what one reconcile bucket query costs per row, generic SQL vs declared types.

    bench/.venv/bin/python bench/reconcile_hash.py [--rows 200000]

The same generated `sales` rows in PostgreSQL, MariaDB, SQLite and DuckDB; per engine the
top-level query (1024 buckets of the key: count and sum of row terms, and the source side's
invalid-row flags) as steadyflow issues it, once with the generic encoding and once with
the engine told the columns' declared types (engines.Engine.declare: fewer casts and
guards, PostgreSQL's float8 epoch for timestamps). Both must give the same buckets.

Cost is CPU where it can be read apart from the machine's other load: PostgreSQL's backend
process (/proc, parallel workers off), SQLite and DuckDB in this process (process_time);
MariaDB's threads cannot be told apart, so its figure is wall time. Best of 3.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pymysql

from steadyflow.model import Column, Contract
from steadyflow.reconcile.bisect import Range
from steadyflow.reconcile.encoding import register_sqlite
from steadyflow.reconcile.engines import engine_for
from steadyflow.reconcile.sides import Dim, SqlSide

HERE = Path(__file__).resolve().parent
CONTRACT = Contract(columns=(
    Column("sale_id", "int64", False), Column("store_id", "int32", False),
    Column("sku", "string", False), Column("qty", "int32", min=1),
    Column("unit_price", "decimal(12,2)", min=0),
    Column("currency", "string", allowed=("USD", "EUR", "GBP")),
    Column("sold_at", "timestamp"), Column("updated_at", "timestamp", False)),
    primary_key=("sale_id",), cursor="updated_at")
DDL = {
    "postgres": ("sale_id bigint PRIMARY KEY, store_id int NOT NULL, sku text NOT NULL, qty int, "
                 "unit_price numeric(12,2), currency text, sold_at timestamptz, "
                 "updated_at timestamptz NOT NULL"),
    "mysql": ("sale_id bigint PRIMARY KEY, store_id int NOT NULL, sku varchar(16) NOT NULL, "
              "qty int, unit_price decimal(12,2), currency varchar(3), sold_at datetime(6), "
              "updated_at datetime(6) NOT NULL"),
    "sqlite": ("sale_id INTEGER PRIMARY KEY, store_id INTEGER NOT NULL, sku TEXT NOT NULL, "
               "qty INTEGER, unit_price TEXT, currency TEXT, sold_at TEXT, updated_at TEXT "
               "NOT NULL"),
    "duckdb": ("sale_id BIGINT PRIMARY KEY, store_id INTEGER NOT NULL, sku VARCHAR NOT NULL, "
               "qty INTEGER, unit_price DECIMAL(12,2), currency VARCHAR, sold_at TIMESTAMPTZ, "
               "updated_at TIMESTAMPTZ NOT NULL"),
}
BASE = datetime(2025, 1, 1, tzinfo=UTC)


def rows(n: int) -> list[tuple[Any, ...]]:
    out = []
    for g in range(1, n + 1):
        ts = BASE + timedelta(seconds=15 * g)
        out.append((g, 1 + g % 500, f"SKU-{(g * 7919) % 100000:06d}", 1 + g % 9,
                    Decimal((g * 31) % 100000) / 100, ("USD", "EUR", "GBP")[g % 3], ts,
                    ts + timedelta(seconds=g % 3600, microseconds=g % 997)))
    return out


def measure(kind: str, run: Callable[[str, list[Any]], list[tuple[Any, ...]]],
            cpu: Callable[[], float], declared: dict[str, str], n: int
            ) -> tuple[float, float]:
    """(generic, declared) cost of the source side's top-level query, best of 3 each."""
    results: dict[str, list[float]] = {"generic": [], "declared": []}
    answers = {}
    for _ in range(3):
        for name in results:
            engine = engine_for(kind)
            if name == "declared":
                engine.declare(declared)
            side = SqlSide(engine, engine.q("sales"), CONTRACT, run, [Dim("sale_id")],
                           validity=True)
            rng = Range((), 1, n + 1)
            c0 = cpu()
            answers[name] = side.aggregate(rng, rng.split(1024))
            results[name].append(cpu() - c0)
    assert answers["generic"] == answers["declared"], kind
    return min(results["generic"]), min(results["declared"])


def postgres(n: int, data: list[tuple[Any, ...]]) -> tuple[float, float]:
    name = f"sf_hash_{uuid.uuid4().hex[:8]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}",
                             autocommit=True) as conn:
            conn.execute(f"CREATE TABLE sales ({DDL['postgres']})")
            with conn.cursor() as cur, cur.copy("COPY sales FROM STDIN") as copy:
                for r in data:
                    copy.write_row(r)
            conn.execute("VACUUM ANALYZE sales")
            conn.execute("SET max_parallel_workers_per_gather = 0")
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            declared = dict(conn.execute(  # type: ignore[arg-type]
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'sales'::regclass AND attnum > 0").fetchall())

            def backend_cpu() -> float:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

            return measure("postgres", lambda s, p: conn.execute(s, p).fetchall(),
                           backend_cpu, declared, n)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def mariadb(n: int, data: list[tuple[Any, ...]]) -> tuple[float, float]:
    name = f"sf_hash_{uuid.uuid4().hex[:8]}"
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
            cur.execute(f"USE `{name}`")
            cur.execute("SET time_zone = '+00:00'")
            cur.execute(f"CREATE TABLE sales ({DDL['mysql']})")
            plain = [(*r[:6], r[6].replace(tzinfo=None), r[7].replace(tzinfo=None))
                     for r in data]
            for i in range(0, len(plain), 5000):
                cur.executemany("INSERT INTO sales VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                                plain[i:i + 5000])
            cur.execute("SELECT column_name, column_type FROM information_schema.columns "
                        "WHERE table_schema = DATABASE() AND table_name = 'sales'")
            declared = {str(a): str(b) for a, b in cur.fetchall()}

            def run(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
                cur.execute(sql, params)
                return list(cur.fetchall())

            return measure("mysql", run, time.perf_counter, declared, n)
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def sqlite(n: int, data: list[tuple[Any, ...]]) -> tuple[float, float]:
    conn = sqlite3.connect(":memory:")
    register_sqlite(conn)
    conn.execute(f"CREATE TABLE sales ({DDL['sqlite']})")
    conn.executemany("INSERT INTO sales VALUES (?,?,?,?,?,?,?,?)",
                     [(*r[:4], f"{r[4]:.2f}", r[5], r[6].isoformat(), r[7].isoformat())
                      for r in data])
    return measure("sqlite", lambda s, p: conn.execute(s, p).fetchall(), time.process_time,
                   {}, n)


def duck(n: int, data: list[tuple[Any, ...]]) -> tuple[float, float]:
    conn = duckdb.connect()
    conn.execute(f"CREATE TABLE sales ({DDL['duckdb']})")
    table = pa.Table.from_pylist([dict(zip(
        ["sale_id", "store_id", "sku", "qty", "unit_price", "currency", "sold_at",
         "updated_at"], r, strict=True)) for r in data])
    conn.register("src", table)
    conn.execute("INSERT INTO sales SELECT * FROM src")
    return measure("duckdb", lambda s, p: conn.execute(s, p).fetchall(), time.process_time,
                   {}, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--engines", default="postgres,mysql,sqlite,duckdb")
    args = parser.parse_args()
    data = rows(args.rows)
    load = os.getloadavg()[0]
    engines = {"postgres": postgres, "mysql": mariadb, "sqlite": sqlite, "duckdb": duck}
    lines = [f"{args.rows:,} rows, load average {load:.1f} at start; cost of the source "
             "side's top-level query (1024 key buckets), best of 3:", "",
             "| engine | what is timed | generic | declared types | µs/row (declared) |",
             "|---|---|---:|---:|---:|"]
    what = {"postgres": "backend CPU", "mysql": "wall", "sqlite": "process CPU",
            "duckdb": "process CPU (all threads)"}
    for name in args.engines.split(","):
        generic, declared = engines[name](args.rows, data)
        lines.append(f"| {name} | {what[name]} | {generic:.2f} s | {declared:.2f} s | "
                     f"{declared / args.rows * 1e6:.2f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
