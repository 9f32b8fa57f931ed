"""CPU of an unchanged PG -> DuckDB reconcile's two bucket queries, and of one alternative
(bench/NOTES.md, session 15).

    PYTHONPATH=src bench/.venv/bin/python bench/reconcile_cpu.py POSTGRES_DSN DUCKDB_FILE \
        [--runs 5] [--chunk 16]

The source database and the DuckDB file that reconcile_vs.py loads (`generate()`, then
`steadyflow run`). Each side's top-level query as this src builds it (1024 key buckets,
source validity flags, PostgreSQL told its declared types, sorts off); PostgreSQL's backend
CPU from /proc (parallel workers off: the same CPU, session 14), DuckDB's calling thread at
`threads` 1, interleaved, median and best of --runs. Compared:

  duckdb term   the row term read from md5_number (this src) against the hex form
                (md5 printed, 15 digits parsed back: the previous src); equal buckets asserted
  ordered md5   one md5 per bucket over its rows' canonical texts in key order instead of
                one md5 and a hex -> bigint per row and a sum: PostgreSQL one index range
                scan per bucket (LATERAL), DuckDB an ordered string_agg per bucket, --chunk
                buckets per statement (memory_limit 32MB, the warehouse's default); equal
                digests asserted. Not wired into reconcile: see NOTES.md for why
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reconcile_hash import CONTRACT  # noqa: E402

from steadyflow.reconcile.bisect import Range  # noqa: E402
from steadyflow.reconcile.engines import engine_for  # noqa: E402
from steadyflow.reconcile.sides import Dim, SqlSide  # noqa: E402

Run = Callable[[str, list[Any]], list[tuple[Any, ...]]]


def side(kind: str, run: Run, declared: dict[str, str], validity: bool) -> SqlSide:
    engine = engine_for(kind).declare(declared)
    table = engine.q("sales") if kind == "postgres" else "main.sales"
    return SqlSide(engine, table, CONTRACT, run, [Dim("sale_id")], validity=validity)


def ordered_pg(s: SqlSide, lo: int, width: int, buckets: int) -> tuple[str, list[Any]]:
    e = s.engine
    text = e.row_text(s._cols)  # noqa: SLF001 - the bench reads the side's own pieces
    inv, params = s._invalid  # noqa: SLF001
    return (f"SELECT g.i, s.n, s.h FROM generate_series(0, {buckets - 1}) g(i), LATERAL ("
            f"SELECT count(*) AS n, md5(string_agg({text}, '~R' ORDER BY sale_id)) AS h "
            f"FROM sales WHERE sale_id >= {lo} + g.i * {width} AND sale_id < {lo} + "
            f"(g.i + 1) * {width} AND ({inv}) = 0) s WHERE s.n > 0", list(params))


def ordered_duck(s: SqlSide, lo: int, width: int, first: int, last: int) -> str:
    text = s.engine.row_text(s._cols)  # noqa: SLF001
    return (f"SELECT (sale_id - {lo}) // {width} AS b, count(*) AS n, md5(string_agg({text}, "
            f"'~R' ORDER BY sale_id)) AS h FROM main.sales WHERE sale_id >= "
            f"{lo + first * width} AND sale_id < {lo + last * width} GROUP BY b")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("duckdb_file")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=16, help="buckets per DuckDB statement")
    args = parser.parse_args()
    pg = psycopg.connect(args.dsn, autocommit=True)
    for setting in ("jit = off", "enable_sort = off", "max_parallel_workers_per_gather = 0"):
        pg.execute(f"SET {setting}")
    pid = pg.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    declared = dict(pg.execute(  # type: ignore[arg-type]
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'sales'::regclass AND attnum > 0 AND NOT attisdropped").fetchall())
    duck = duckdb.connect(args.duckdb_file, read_only=True,
                          config={"threads": 1, "memory_limit": "32MB"})

    def pg_cpu() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pg_run(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return list(pg.execute(sql, params).fetchall())

    def duck_run(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return duck.execute(sql, params).fetchall()

    src = side("postgres", pg_run, declared, validity=True)
    wh = side("duckdb", duck_run, {}, validity=False)
    lo, hi = (int(v) for v in pg.execute("SELECT min(sale_id), max(sale_id) + 1 FROM sales"
                                         ).fetchone())  # type: ignore[union-attr]
    rng = Range((), lo, hi)
    width = rng.split(1024)
    buckets = -(-(hi - lo) // width)
    src_sql = src._aggregate_sql(rng, width)  # noqa: SLF001
    wh_sql, wh_params = wh._aggregate_sql(rng, width)  # noqa: SLF001
    e = wh.engine
    hex_term = e.key_term(wh._cols)  # noqa: SLF001 - the previous src's row term
    hex_sql = wh_sql.replace(e.term_parts("h")[0], "h").replace(
        e.row_term(wh._cols), hex_term)  # noqa: SLF001
    assert hex_sql != wh_sql and "md5_number" not in hex_sql
    cases: dict[str, tuple[Callable[[], Any], Callable[[], float]]] = {
        "postgres, as sent": (lambda: sorted(pg_run(*src_sql)), pg_cpu),
        "duckdb, md5_number term": (lambda: sorted(duck_run(wh_sql, wh_params)),
                                    time.thread_time),
        "duckdb, hex term": (lambda: sorted(duck_run(hex_sql, wh_params)), time.thread_time),
        "postgres, ordered md5": (lambda: sorted(pg_run(*ordered_pg(src, lo, width, buckets))),
                                  pg_cpu),
        "duckdb, ordered md5": (lambda: sorted(
            r for a in range(0, buckets, args.chunk)
            for r in duck_run(ordered_duck(wh, lo, width, a, a + args.chunk), [])),
            time.thread_time),
    }
    answers = {name: run() for name, (run, _) in cases.items()}
    assert (answers["duckdb, md5_number term"] == answers["duckdb, hex term"]
            == answers["postgres, as sent"]), "bucket sums differ"
    assert answers["postgres, ordered md5"] == answers["duckdb, ordered md5"], "digests differ"
    print(f"equal: sums of {len(answers['duckdb, hex term'])} buckets (both terms, both sides)"
          f"; ordered digests of {len(answers['postgres, ordered md5'])} buckets", flush=True)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, (run, cpu) in cases.items():
            c0 = cpu()
            run()
            times[name].append(cpu() - c0)
        print("  ".join(f"{n} {t[-1]:.2f}" for n, t in times.items()),
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\nCPU-s, median / best of {args.runs} (DuckDB peak RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB):")
    for name, t in times.items():
        print(f"  {name}: {statistics.median(t):.2f} / {min(t):.2f}")


if __name__ == "__main__":
    main()
