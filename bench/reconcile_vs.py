"""steadyflow reconcile against reladiff 0.6.0, side by side, on one generated table.

    make bench-reconcile                           # 2M rows, 3 runs, + the 10M incremental
    make bench-reconcile RECONCILE_ARGS="--rows 200000 --runs 1 --incremental-rows 0"

Each tool runs in its own process (wall time from spawn to exit, peak RSS from wait4), runs
interleaved, best of --runs. Source: PostgreSQL database `sfrb_src`, table `sales` (the bench's
2M-row table: sale_id bigint PK, index (updated_at, sale_id)); warehouses: a DuckDB file and
the PostgreSQL database `sfrb_wh`, both loaded by `steadyflow run` (not timed).

Scenarios, per warehouse kind:
  unchanged   full `steadyflow reconcile` vs `reladiff -a hashdiff` on every column;
              also steadyflow's repeat with --incremental (what run.reconcile_every does)
  damaged     50 warehouse rows deleted, 50 changed, 10 added: both tools must name exactly
              those 110 keys; then `steadyflow reconcile --repair`, then a clean reconcile
Incremental (--incremental-rows, DuckDB warehouse; reconcile_every 1h, reconcile_reverify
2d): a full reconcile, then 1% of the rows changed and loaded, then the scheduled
(incremental) reconcile, timed; then one cold warehouse row damaged: found within
run.reconcile_reverify / run.reconcile_every runs (48).
Writes bench/RECONCILE.md (or --out). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import yaml

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
DB = {"src": "sfrb_src", "wh": "sfrb_wh"}  # --dbs
COLS = ["sale_id", "store_id", "sku", "qty", "unit_price", "currency", "sold_at", "updated_at"]
CONTRACT = {
    "primary_key": ["sale_id"], "cursor": "updated_at",
    "columns": {
        "sale_id": {"type": "int64", "nullable": False},
        "store_id": {"type": "int32", "nullable": False},
        "sku": {"type": "string", "nullable": False},
        "qty": {"type": "int32", "min": 1},
        "unit_price": {"type": "decimal(12,2)", "min": 0},
        "currency": {"type": "string", "allowed": ["USD", "EUR", "GBP"]},
        "sold_at": {"type": "timestamp"},
        "updated_at": {"type": "timestamp", "nullable": False},
    },
}


@dataclass
class Sample:
    seconds: float
    rss_mib: float
    out: str


@dataclass
class Case:
    name: str
    samples: list[Sample] = field(default_factory=list)
    note: str = ""

    @property
    def best(self) -> Sample:
        return min(self.samples, key=lambda s: s.seconds)

    @property
    def rss(self) -> float:
        return max(s.rss_mib for s in self.samples)


def run_child(cmd: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> Sample:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "COLUMNS": "10000"})
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        raise SystemExit(f"{' '.join(cmd)} exited {code}:\n{out[-3000:]}")
    return Sample(seconds, usage.ru_maxrss / 1024, out)


# --- data --------------------------------------------------------------------------------
def generate(table: str, rows: int) -> None:
    """The bench's sales table (bench/run.py's generator), made in the server."""
    with psycopg.connect(f"{PG}/{DB['src']}", autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(
            f"CREATE TABLE {table} (sale_id bigint PRIMARY KEY, store_id int NOT NULL, "
            "sku text NOT NULL, qty int NOT NULL, unit_price numeric(12,2) NOT NULL, "
            "currency text NOT NULL, sold_at timestamptz NOT NULL, "
            "updated_at timestamptz NOT NULL)")
        conn.execute(
            f"INSERT INTO {table} SELECT g, 1 + (g % 500), "
            "'SKU-' || lpad(((g * 7919) % 100000)::text, 6, '0'), 1 + (g % 9), "
            "(((g * 31) % 100000) / 100.0)::numeric(12,2), (ARRAY['USD','EUR','GBP'])[1 + g % 3], "
            "t.ts, t.ts + (g % 3600) * interval '1 second' "
            "+ (g % 997) * interval '1 microsecond' "
            f"FROM generate_series(1::bigint, {int(rows)}) g, LATERAL "
            "(SELECT timestamptz '2025-01-01 00:00:00+00' + g * interval '15 second') t(ts)")
        conn.execute(f"CREATE INDEX ON {table} (updated_at, sale_id)")
        conn.execute(f"VACUUM ANALYZE {table}")


def fresh_databases() -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        for db in (DB["src"], DB["wh"]):
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{db}"')


def pipeline_dir(work: Path, name: str, table: str, kind: str, every: str = "1h",
                 reverify: str = "1d") -> Path:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    warehouse: dict[str, Any] = (
        {"kind": "duckdb", "path": str(d / "warehouse.duckdb"), "schema": "main",
         "memory_limit": "1GB"}  # the 1% catch-up of 10M rows needs more than the default
        if kind == "duckdb" else
        {"kind": "postgres", "dsn": f"{PG}/{DB['wh']}", "schema": f"wh_{name}"})
    (d / "pipeline.yml").write_text(yaml.safe_dump({
        "name": f"rb_{name}", "state_dir": str(d / "state"),
        "contracts": {"sales": CONTRACT}, "warehouse": warehouse,
        "run": {"reconcile_every": every, "reconcile_reverify": reverify},
        "sources": [{"name": "pg", "kind": "postgres", "dsn": f"{PG}/{DB['src']}",
                     "resilience": {"statement_timeout": "600s"},
                     # fixed: an adaptive lookback would re-read from the oldest open
                     # transaction of a server other work shares
                     "tables": [{"name": table, "contract": "sales", "target": "sales",
                                 "mirror_deletes": True, "page_size": 100_000,
                                 "lookback": "2m", "lookback_mode": "fixed"}]}],
    }, sort_keys=False))
    return d


def warehouse_sql(d: Path, kind: str, sql: str, params: list[Any] | None = None) -> None:
    if kind == "duckdb":
        con = duckdb.connect(str(d / "warehouse.duckdb"))
        try:
            con.execute(sql.replace("%s", "?").replace("{t}", "main.sales"), params or [])
        finally:
            con.close()
    else:
        with psycopg.connect(f"{PG}/{DB['wh']}", autocommit=True) as conn:
            conn.execute(sql.replace("{t}", f"wh_{d.name}.sales"), params or [])


# --- the tools ---------------------------------------------------------------------------
def steadyflow(d: Path, *args: str, ok: tuple[int, ...] = (0,)) -> Sample:
    return run_child([str(BIN / "steadyflow"), *args, "-c", str(d / "pipeline.yml")], d, ok)


def reladiff(d: Path, kind: str, table: str) -> Sample:
    wh = (f"duckdb://{d / 'warehouse.duckdb'}", "main.sales") if kind == "duckdb" else (
        f"{PG}/{DB['wh']}", f"wh_{d.name}.sales")
    cols = [a for c in COLS[1:] for a in ("-c", c)]
    return run_child([str(BIN / "reladiff"), f"{PG}/{DB['src']}", table, *wh, "-a", "hashdiff",
                      "-k", "sale_id", *cols, "--json"], d)


def reladiff_keys(out: str) -> dict[str, set[int]]:
    """Its --json lines ([sign, [key, ...]]), which its console may wrap."""
    minus: set[int] = set()
    plus: set[int] = set()
    text, decoder, at = out.replace("\n", " "), json.JSONDecoder(), 0
    while (at := text.find('["', at)) >= 0:
        (sign, row), at = decoder.raw_decode(text, at)
        (minus if sign == "-" else plus).add(int(row[0]))
    return {"missing": minus - plus, "extra": plus - minus, "mismatched": minus & plus}


def steadyflow_keys(out: str) -> dict[str, set[int]]:
    data = json.loads(out[out.index("{"):])
    (t,) = data["tables"]
    return {k: {int(v[0]) for v in t["examples"].get(k, [])}
            for k in ("missing", "extra", "mismatched")}


def damage(d: Path, kind: str, rows: int) -> dict[str, set[int]]:
    """50 rows deleted, 50 changed (qty), 10 added, spread over the table."""
    step = rows // 111
    keys = [1 + step * i for i in range(110)]
    gone, changed = keys[:50], keys[50:100]
    added = [rows + 1000 + i for i in range(10)]
    cols = ", ".join(COLS)
    warehouse_sql(d, kind, f"DELETE FROM {{t}} WHERE sale_id IN ({','.join(map(str, gone))})")
    warehouse_sql(d, kind, "UPDATE {t} SET qty = qty + 100 WHERE sale_id IN "
                  f"({','.join(map(str, changed))})")
    warehouse_sql(d, kind, f"INSERT INTO {{t}} ({cols}) SELECT sale_id + {rows + 1000} - "
                  f"{keys[100]}, {', '.join(COLS[1:])} FROM {{t}} WHERE sale_id BETWEEN "
                  f"{keys[100]} AND {keys[100] + 9}")
    return {"missing": set(gone), "mismatched": set(changed), "extra": set(added)}


# --- scenarios ---------------------------------------------------------------------------
def settle(d: Path, kind: str) -> None:
    """After the load, what a PostgreSQL server does on its own (autovacuum, off on the bench
    machine): the warehouse table's statistics. Without them the planner takes the 2M-row
    table for 2k rows, never scans it in parallel, and plans every full-table query of both
    tools as an index scan."""
    if kind == "postgres":
        with psycopg.connect(f"{PG}/{DB['wh']}", autocommit=True) as conn:
            conn.execute(f"VACUUM ANALYZE wh_{d.name}.sales")


def side_by_side(work: Path, kind: str, rows: int, runs: int, cases: list[Case]) -> None:
    d = pipeline_dir(work, kind, "sales", kind)
    started = time.perf_counter()
    steadyflow(d, "run")
    settle(d, kind)
    print(f"[{kind}] warehouse loaded by steadyflow run in {time.perf_counter() - started:.0f} s",
          flush=True)
    sf, rd = Case(f"{kind}: unchanged, steadyflow"), Case(f"{kind}: unchanged, reladiff")
    inc = Case(f"{kind}: unchanged, steadyflow --incremental (repeat)")
    for _ in range(runs):
        sf.samples.append(steadyflow(d, "reconcile", "--json"))
        rd.samples.append(reladiff(d, kind, "sales"))
        inc.samples.append(steadyflow(d, "reconcile", "--incremental", "--json"))
        print(f"[{kind}] unchanged: sf {sf.samples[-1].seconds:.2f}s  reladiff "
              f"{rd.samples[-1].seconds:.2f}s  sf incremental {inc.samples[-1].seconds:.2f}s",
              flush=True)
    for s in sf.samples + inc.samples:
        assert all(not v for v in steadyflow_keys(s.out).values()), s.out[-2000:]
    for s in rd.samples:
        assert all(not v for v in reladiff_keys(s.out).values()), s.out[-2000:]
    cases += [sf, rd, inc]

    want = damage(d, kind, rows)
    sfd, rdd = Case(f"{kind}: 110 damaged, steadyflow"), Case(f"{kind}: 110 damaged, reladiff")
    for _ in range(runs):
        sfd.samples.append(steadyflow(d, "reconcile", "--json", "--examples", "1000", ok=(1,)))
        rdd.samples.append(reladiff(d, kind, "sales"))
        print(f"[{kind}] damaged: sf {sfd.samples[-1].seconds:.2f}s  reladiff "
              f"{rdd.samples[-1].seconds:.2f}s", flush=True)
    for s in sfd.samples:
        assert steadyflow_keys(s.out) == want, (steadyflow_keys(s.out), want)
    for s in rdd.samples:
        assert reladiff_keys(s.out) == want, (reladiff_keys(s.out), want)
    sfd.note = rdd.note = "exactly the 110 keys (50 missing, 10 extra, 50 mismatched)"
    fix = steadyflow(d, "reconcile", "--repair", "--json")
    after = steadyflow(d, "reconcile", "--json")
    assert all(not v for v in steadyflow_keys(after.out).values())
    repaired = json.loads(fix.out[fix.out.index("{"):])["tables"][0]["repair"]
    cases += [sfd, rdd, Case(f"{kind}: repair, then a clean reconcile", [fix, after],
                             note=f"repair {fix.seconds:.1f} s ({repaired['upserted']} upserted"
                             f", {repaired['deleted']} deleted); then clean")]


def incremental(work: Path, rows: int, cases: list[Case], reverify_hours: int = 48) -> None:
    table = f"sales_{rows}"
    started = time.perf_counter()
    generate(table, rows)
    d = pipeline_dir(work, "inc", table, "duckdb", every="1h", reverify=f"{reverify_hours}h")
    steadyflow(d, "run")
    print(f"[incremental] {rows:,} rows made and loaded in {time.perf_counter() - started:.0f} s",
          flush=True)
    full = steadyflow(d, "reconcile", "--json")
    with psycopg.connect(f"{PG}/{DB['src']}", autocommit=True) as conn:
        # changed rows move forward: past every cursor (the table's times run into 2029)
        conn.execute(f"UPDATE {table} SET qty = qty + 1, updated_at = m.top + sale_id * "
                     f"interval '1 microsecond' FROM (SELECT max(updated_at) AS top FROM "
                     f"{table}) m WHERE sale_id % 100 = 7")
    steadyflow(d, "run")
    inc = steadyflow(d, "reconcile", "--incremental", "--json")
    report = json.loads(inc.out[inc.out.index("{"):])["tables"][0]
    whole = json.loads(full.out[full.out.index("{"):])["tables"][0]
    # the comparison's own seconds (the report's): what a scheduled reconcile costs inside
    # `run --follow`, which pays no process start-up, imports or connections
    cases.append(Case(f"{rows:,} rows: full reconcile", [full],
                      note=f"comparison {whole['seconds']:.2f} s"))
    cases.append(Case(f"{rows:,} rows: incremental after 1% changed", [inc],
                      note=f"{inc.seconds / full.seconds:.1%} of the full as processes, "
                      f"comparison {report['seconds']:.2f} s = "
                      f"{report['seconds'] / whole['seconds']:.1%} of the full one's; "
                      f"{report['rows_compared']:,} rows compared"))
    cold = rows // 3
    warehouse_sql(d, "duckdb", "UPDATE {t} SET qty = qty + 50 WHERE sale_id = %s", [cold])
    period = reverify_hours  # runs in one reconcile_reverify, at reconcile_every 1h
    for n in range(1, period + 1):
        s = steadyflow(d, "reconcile", "--incremental", "--json", ok=(0, 1))
        if cold in steadyflow_keys(s.out)["mismatched"]:
            cases.append(Case(f"{rows:,} rows: damaged cold row", [s],
                              note=f"found by incremental run {n} of at most {period}"))
            break
    else:
        raise SystemExit(f"the damaged cold row {cold} was not found in {period} runs")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--incremental-rows", type=int, default=10_000_000)
    parser.add_argument("--kinds", default="duckdb,postgres")
    parser.add_argument("--out", type=Path, default=HERE / "RECONCILE.md")
    parser.add_argument("--dbs", default=f"{DB['src']},{DB['wh']}",
                        help="source and warehouse database names (dropped and recreated)")
    parser.add_argument("--work", type=Path, help="scratch folder (default bench/work/...)")
    args = parser.parse_args(argv)
    DB["src"], DB["wh"] = args.dbs.split(",")
    work = args.work or HERE / "work" / f"reconcile-{DB['src']}"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    load = [os.getloadavg()[0]]
    # steadyflow is installed editable: its modules would be compiled again by every process
    # (PYTHONDONTWRITEBYTECODE on the bench machine), while reladiff's, installed by pip,
    # were compiled once at install; compiled once here, as a pip install would
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "src")],
                   check=True)
    fresh_databases()
    kinds = [k for k in args.kinds.split(",") if k]
    cases: list[Case] = []
    if kinds:
        started = time.perf_counter()
        generate("sales", args.rows)
        print(f"{args.rows:,} rows generated in {time.perf_counter() - started:.0f} s",
              flush=True)
    for kind in kinds:
        side_by_side(work, kind, args.rows, args.runs, cases)
    if args.incremental_rows:
        incremental(work, args.incremental_rows, cases)
    load.append(os.getloadavg()[0])
    write(args, cases, load)


def write(args: argparse.Namespace, cases: list[Case], load: list[float]) -> None:
    with psycopg.connect(f"{PG}/postgres") as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    by = {c.name: c for c in cases}
    lines = [
        "# Reconcile: steadyflow against reladiff 0.6.0",
        "",
        f"Generated by `bench/reconcile_vs.py --rows {args.rows} --runs {args.runs} "
        f"--incremental-rows {args.incremental_rows}` (`make bench-reconcile`) on "
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs shared with other "
        f"work (load average {load[0]:.1f} before, {load[-1]:.1f} after), Python "
        f"{platform.python_version()}, PostgreSQL {version}, duckdb {duckdb.__version__}. "
        "Whole-process wall time (interpreter start-up and imports included), best of "
        f"{args.runs}, interleaved; peak RSS of the process (max over runs).",
        "",
        "| case | best | peak RSS | note |",
        "|---|---:|---:|---|",
    ]
    for c in cases:
        lines.append(f"| {c.name} | {c.best.seconds:.2f} s | {c.rss:.0f} MiB | {c.note} |")
    lines += ["", "Ratios (reladiff ÷ steadyflow; ≥ 2× unchanged and ≥ 1.5× damaged wanted):", ""]
    for kind in [k for k in args.kinds.split(",") if k]:
        for what in ("unchanged", "110 damaged"):
            sf, rd = by.get(f"{kind}: {what}, steadyflow"), by.get(f"{kind}: {what}, reladiff")
            if sf and rd:
                lines.append(f"- {kind}, {what}: {rd.best.seconds / sf.best.seconds:.2f}× "
                             f"(RSS {sf.rss:.0f} vs {rd.rss:.0f} MiB)")
        inc = by.get(f"{kind}: unchanged, steadyflow --incremental (repeat)")
        rd = by.get(f"{kind}: unchanged, reladiff")
        if inc and rd:
            lines.append(f"- {kind}, unchanged, steadyflow's repeat (incremental) reconcile: "
                         f"{rd.best.seconds / inc.best.seconds:.2f}×")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
