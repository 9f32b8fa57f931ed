"""The bench's other sources: MariaDB and SQLite → DuckDB, run by bench/run.py.

    make bench BENCH_ARGS="--sources mariadb,sqlite"   # only these (RESULTS.md section updated)

Each source gets the same `sales` table as PostgreSQL (1,000,000 rows by default; MariaDB:
DATETIME(6) times, DECIMAL(12,2) price; SQLite: text times 'YYYY-MM-DD HH:MM:SS.ffffff',
REAL price: connectorx, and so dlt, fails on a NUMERIC column mixing integer and real
storage) and these cases, each in its own process, interleaved run by run:
  - steadyflow full load (`steadyflow run`, all guarantees on), dlt sql_table with the
    connectorx and pyarrow backends into DuckDB;
  - the limit: the C client draining the table (`mariadb --quick`, `sqlite3`), and
    connectorx's (and for SQLite adbc-driver-sqlite's) bare read into Arrow;
  - incremental after a 1% update: steadyflow's next run against dlt's incremental merge
    (both as commands, after their full/initial loads), and the same in one process that
    stays up (`run --follow` / a dlt loop);
  - steadyflow's peak RSS from the main table to 4× its rows (`--scale`), MariaDB only.
Every loaded warehouse is checked against the source (count, sum qty, sum price).
"""

from __future__ import annotations

import shlex
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cases as children
import yaml

COLUMNS = children.COLUMNS


@dataclass
class Kit:
    """What bench/run.py lends this module (its process runner, checks and report rows)."""

    py: str
    here: Path
    work: Path
    runs: int
    record: Any  # (key, what, rows, Sample) -> None
    run_child: Any
    check: Any
    duck_totals: Any
    steadyflow_cmd: Any
    profile: Any
    record_cycles: Any  # (cases, key, what, Sample) -> None
    cases: dict[str, Any]
    profiles: dict[str, str]


# --- datasets --------------------------------------------------------------------------------
def generate_mariadb(url: str, table: str, rows: int) -> float:
    """The bench's sales table in MariaDB (`url` names the database), from its SEQUENCE
    engine (seconds)."""
    started = time.perf_counter()
    base, db = url.rsplit("/", 1)
    conn = children.mariadb_connect(base + "/")
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
            cur.execute(f"USE {db}")
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(
                f"CREATE TABLE {table} (sale_id bigint PRIMARY KEY, store_id int NOT NULL, "
                "sku varchar(16) NOT NULL, qty int NOT NULL, unit_price decimal(12,2) NOT NULL, "
                "currency varchar(3) NOT NULL, sold_at datetime(6) NOT NULL, "
                "updated_at datetime(6) NOT NULL, INDEX (updated_at, sale_id)) "
                "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
            cur.execute(
                f"INSERT INTO {table} SELECT seq, 1 + seq % 500, "
                "CONCAT('SKU-', LPAD((seq * 7919) % 100000, 6, '0')), 1 + seq % 9, "
                "((seq * 31) % 100000) / 100, ELT(1 + seq % 3, 'USD', 'EUR', 'GBP'), "
                "TIMESTAMP'2025-01-01 00:00:00' + INTERVAL seq * 15 SECOND, "
                "TIMESTAMP'2025-01-01 00:00:00' + INTERVAL seq * 15 SECOND "
                "+ INTERVAL seq % 3600 SECOND + INTERVAL seq % 997 MICROSECOND "
                f"FROM seq_1_to_{int(rows)}")
            cur.execute(f"ANALYZE TABLE {table}")
            cur.fetchall()
    finally:
        conn.close()
    return time.perf_counter() - started


def generate_sqlite(path: Path, table: str, rows: int) -> float:
    """The bench's sales table in a SQLite file, by a recursive CTE (seconds)."""
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(
            f"CREATE TABLE {table} (sale_id INTEGER PRIMARY KEY, store_id INTEGER NOT NULL, "
            "sku TEXT NOT NULL, qty INTEGER NOT NULL, unit_price REAL NOT NULL, "
            "currency TEXT NOT NULL, sold_at TEXT NOT NULL, updated_at TEXT NOT NULL)")
        conn.execute(
            f"INSERT INTO {table} WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
            f"FROM g WHERE x < {int(rows)}) SELECT x, 1 + x % 500, "
            "'SKU-' || substr('000000' || ((x * 7919) % 100000), -6), 1 + x % 9, "
            "((x * 31) % 100000) / 100.0, "
            "CASE x % 3 WHEN 0 THEN 'USD' WHEN 1 THEN 'EUR' ELSE 'GBP' END, "
            "strftime('%Y-%m-%d %H:%M:%S', 1735689600 + x * 15, 'unixepoch') || '.000000', "
            "strftime('%Y-%m-%d %H:%M:%S', 1735689600 + x * 15 + x % 3600, 'unixepoch') "
            "|| '.' || substr('000000' || (x % 997), -6) FROM g")
        conn.execute(f"CREATE INDEX {table}_updated ON {table} (updated_at, sale_id)")
        conn.commit()
    finally:
        conn.close()
    return time.perf_counter() - started


def mariadb_totals(url: str, table: str) -> tuple[int, int, str]:
    conn = children.mariadb_connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*), sum(qty), CAST(sum(unit_price) AS CHAR) FROM {table}")
            row = cur.fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1]), str(row[2])


def sqlite_totals(path: Path, table: str) -> tuple[int, int, str]:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(f"SELECT count(*), sum(qty), printf('%.2f', sum(unit_price)) "
                           f"FROM {table}").fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1]), str(row[2])


def sf_config(directory: Path, source: dict[str, Any], table: str, contract: dict[str, Any],
              page_size: int | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "bench",
        "warehouse": {"kind": "duckdb", "path": "warehouse.duckdb", "schema": "main"},
        "contracts": {"sales": contract},
        "sources": [{
            "name": "store", **source,
            "resilience": {"statement_timeout": "60s"},
            "tables": [{"name": table, "target": "sales", "contract": "sales",
                        "lookback": "2m", **({"page_size": page_size} if page_size else {})}],
        }],
    }
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- one source ------------------------------------------------------------------------------
@dataclass
class Source:
    """How the shared cases reach one source kind."""

    key: str  # case-name prefix: "my", "sq"
    label: str  # "MariaDB", "SQLite"
    sf_source: dict[str, Any]  # steadyflow's source entry (kind + dsn/path)
    dlt_dsn: str  # SQLAlchemy URL for dlt
    touch_dsn: str  # for cases.touch_one_percent
    drain: list[str]  # the C client's drain (argv for sh -c)
    bare: list[tuple[str, str, str]]  # (case key, what, cases.py case) bare Arrow reads
    bare_dsn: str
    totals: Any  # (table) -> (count, sum qty, sum price)


def run_source(kit: Kit, src: Source, contract: dict[str, Any], rows: int,
               page_size: int | None, skip: set[str], scale: list[tuple[int, str]]
               ) -> list[tuple[int, Any]]:
    """Every case of one source; returns steadyflow's RSS scaling samples."""
    py, here, work, runs = kit.py, kit.here, kit.work, kit.runs
    k = src.key
    backends = [b for b in ("connectorx", "pyarrow") if b not in skip]
    sf_dirs: list[Path] = []
    for i in range(runs):
        print(f"{src.label} full load, run {i + 1}/{runs}", flush=True)
        kit.record(f"{k}_drain", f"{src.label}: C client drain (read, discard)", rows,
                   kit.run_child(["sh", "-c", " ".join(src.drain) + " > /dev/null"], work,
                                 work / f"{k}_drain_{i}.log"))
        for key, what, case in src.bare:
            kit.record(key, what, rows, kit.run_child(
                [py, str(here / "cases.py"), case, "--dsn", src.bare_dsn, "--table", "sales"],
                work, work / f"{key}_{i}.log"))
        d = work / f"{k}_sf_full_{i}"
        cfg = sf_config(d, src.sf_source, "sales", contract, page_size)
        kit.record(f"{k}_sf_full", f"steadyflow run ({src.label} → DuckDB)", rows,
                   kit.run_child(kit.steadyflow_cmd(cfg), d, d / "run.log"))
        sf_dirs.append(d)
        if "dlt" not in skip:
            for backend in backends:
                dd = work / f"{k}_dlt_{backend}_{i}"
                kit.record(f"{k}_dlt_{backend}",
                           f"{src.label}: dlt sql_table backend={backend} → duckdb", rows,
                           kit.run_child([py, str(here / "cases.py"), "dlt", "--dsn",
                                          src.dlt_dsn, "--table", "sales", "--backend",
                                          backend, "--duckdb", str(dd / "dlt.duckdb"),
                                          "--pipelines-dir", str(dd / "pipelines")],
                                         dd, dd / "run.log"))
    want = src.totals("sales")
    kit.check(f"{src.label} steadyflow full load",
              kit.duck_totals(sf_dirs[-1] / "warehouse.duckdb", "main.sales"), want)
    if "dlt" not in skip:
        for backend in backends:
            kit.check(f"{src.label} dlt {backend} full load", kit.duck_totals(
                work / f"{k}_dlt_{backend}_{runs - 1}" / "dlt.duckdb", "bench.sales"), want)
    if "profile" not in skip:
        d = work / f"{k}_sf_profile_full"
        print(f"profiling one steadyflow {src.label} full load (py-spy)", flush=True)
        kit.profiles[f"{k}_full"] = kit.profile(kit.steadyflow_cmd(sf_config(
            d, src.sf_source, "sales", contract, page_size)), d, work / f"{k}_profile_full")

    if "incremental" not in skip:
        _incremental(kit, src, skip, sf_dirs[-1])

    scaling = []
    if "scale" not in skip:
        for n, table in scale:
            d = work / f"{k}_sf_scale_{n}"
            print(f"{src.label} RSS scaling: {n:,} rows", flush=True)
            s = kit.run_child(kit.steadyflow_cmd(sf_config(d, src.sf_source, table, contract,
                                                           page_size)), d, d / "run.log")
            print(f"  {n:>10,} rows {s.seconds:7.2f} s  {s.rss_mib:6.0f} MiB", flush=True)
            kit.check(f"{src.label} steadyflow {n:,} rows",
                      kit.duck_totals(d / "warehouse.duckdb", "main.sales"), src.totals(table))
            scaling.append((n, s))
    return scaling


def _incremental(kit: Kit, src: Source, skip: set[str], sf_inc: Path) -> None:
    """1% of the rows updated, then each tool catches up, as a command and warm."""
    py, here, k = kit.py, kit.here, src.key
    dlt_inc = kit.work / f"{k}_dlt_incremental"
    dlt_cmd = [py, str(here / "cases.py"), "dlt", "--dsn", src.dlt_dsn, "--table", "sales",
               "--backend", "connectorx", "--duckdb", str(dlt_inc / "dlt.duckdb"),
               "--pipelines-dir", str(dlt_inc / "pipelines"), "--incremental"]
    if "dlt" not in skip:
        print(f"{src.label} dlt incremental: initial load (not timed)", flush=True)
        kit.run_child(dlt_cmd, dlt_inc, dlt_inc / "initial.log")
    for i in range(kit.runs):
        changed = children.touch_one_percent(src.touch_dsn, "sales", i + 1)
        print(f"{src.label} incremental, run {i + 1}/{kit.runs}: {changed:,} rows updated",
              flush=True)
        kit.record(f"{k}_sf_incremental", f"{src.label}: steadyflow run after a 1% update",
                   changed, kit.run_child(kit.steadyflow_cmd(sf_inc / "pipeline.yml"), sf_inc,
                                          sf_inc / f"incr_{i}.log"))
        if "dlt" not in skip:
            kit.record(f"{k}_dlt_incremental",
                       f"{src.label}: dlt merge, incremental on updated_at (connectorx)",
                       changed, kit.run_child(dlt_cmd, dlt_inc, dlt_inc / f"incr_{i}.log"))
    kit.check(f"{src.label} steadyflow incremental",
              kit.duck_totals(sf_inc / "warehouse.duckdb", "main.sales"), src.totals("sales"))
    if "dlt" not in skip:
        kit.check(f"{src.label} dlt incremental",
                  kit.duck_totals(dlt_inc / "dlt.duckdb", "bench.sales"), src.totals("sales"))
    warm = kit.run_child([py, str(here / "cases.py"), "sf_warm", "--dsn", src.touch_dsn,
                          "--table", "sales", "--config", str(sf_inc / "pipeline.yml"),
                          "--cycles", str(kit.runs), "--first", "10"], sf_inc,
                         sf_inc / "warm.log")
    kit.record_cycles(kit.cases, f"{k}_sf_warm",
                      f"{src.label}: steadyflow run --follow, one cycle after a 1% update", warm)
    kit.check(f"{src.label} steadyflow warm",
              kit.duck_totals(sf_inc / "warehouse.duckdb", "main.sales"), src.totals("sales"))
    if "dlt" not in skip:
        warm = kit.run_child([py, str(here / "cases.py"), "dlt_warm", "--dsn", src.dlt_dsn,
                              "--table", "sales", "--duckdb", str(dlt_inc / "dlt.duckdb"),
                              "--pipelines-dir", str(dlt_inc / "pipelines"),
                              "--cycles", str(kit.runs), "--first", "20"], dlt_inc,
                             dlt_inc / "warm.log")
        kit.record_cycles(kit.cases, f"{k}_dlt_warm", f"{src.label}: dlt incremental merge "
                          "run again in the same process (connectorx)", warm)
        kit.check(f"{src.label} dlt warm",
                  kit.duck_totals(dlt_inc / "dlt.duckdb", "bench.sales"), src.totals("sales"))
    if "profile" not in skip:
        children.touch_one_percent(src.touch_dsn, "sales", 50)
        print(f"profiling one steadyflow {src.label} incremental run (py-spy)", flush=True)
        kit.profiles[f"{k}_incremental"] = kit.profile(
            kit.steadyflow_cmd(sf_inc / "pipeline.yml"), sf_inc,
            kit.work / f"{k}_profile_incremental")


def mariadb(kit: Kit, url: str, database: str, contract: dict[str, Any], rows: int,
            page_size: int | None, skip: set[str], scale: list[int]) -> list[tuple[int, Any]]:
    """MariaDB → DuckDB; `url` is mysql://user@host:port (no database), the tables are
    made in `database` (dropped at the end)."""
    base = url.rstrip("/")
    db_url = f"{base}/{database}"
    tables = {rows: "sales", **{n: f"sales_{n}" for n in scale if n != rows}}
    for n, table in sorted(tables.items()):
        print(f"generating MariaDB {table}: {n:,} rows", flush=True)
        print(f"  {generate_mariadb(db_url, table, n):.1f} s", flush=True)
    host = base.split("@", 1)[1]
    hostname, _, port = host.partition(":")
    user = base.split("://", 1)[1].split("@", 1)[0].split(":", 1)[0]
    drain = ["mariadb", "--quick", "--batch", "--skip-column-names", "-h", hostname, "-P",
             port or "3306", "-u", user, database, "-e",
             shlex.quote(f"SELECT {COLUMNS} FROM sales")]
    src = Source(
        key="my", label="MariaDB", sf_source={"kind": "mysql", "dsn": db_url},
        dlt_dsn=db_url.replace("mysql://", "mysql+pymysql://"), touch_dsn=db_url,
        drain=drain, bare=[("my_cx_read", "MariaDB: connectorx bare read into Arrow",
                            "cx_read")],
        bare_dsn=db_url, totals=lambda table: mariadb_totals(db_url, table))
    try:
        return run_source(kit, src, contract, rows, page_size, skip,
                          [(n, tables[n]) for n in sorted(scale)])
    finally:
        conn = children.mariadb_connect(base + "/")
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {database}")
        finally:
            conn.close()


def sqlite(kit: Kit, contract: dict[str, Any], rows: int, page_size: int | None,
           skip: set[str]) -> None:
    """SQLite → DuckDB on a file in bench/work."""
    path = kit.work / "sqlite" / "store.db"
    print(f"generating SQLite sales: {rows:,} rows", flush=True)
    print(f"  {generate_sqlite(path, 'sales', rows):.1f} s", flush=True)
    uri = f"sqlite:///{path}"
    src = Source(
        key="sq", label="SQLite", sf_source={"kind": "sqlite", "path": str(path)},
        dlt_dsn=uri, touch_dsn=uri,
        drain=["sqlite3", str(path), shlex.quote(f"SELECT {COLUMNS} FROM sales")],
        bare=[("sq_cx_read", "SQLite: connectorx bare read into Arrow", "cx_read"),
              ("sq_adbc_read", "SQLite: adbc-driver-sqlite bare read into Arrow",
               "adbc_sqlite_read")],
        bare_dsn=uri, totals=lambda table: sqlite_totals(path, table))
    run_source(kit, src, contract, rows, page_size, skip | {"scale"}, [])


# --- the report section ---------------------------------------------------------------------
def targets(cases: dict[str, Any], scaling: list[tuple[int, Any]]) -> list[str]:
    """The issue's acceptance rows for MariaDB (and the same ratios, informative, SQLite)."""
    out = []

    def row(name: str, ratio: float, goal: float, text: str) -> None:
        verdict = "met" if ratio >= goal else f"MISSED by {100 * (1 - ratio / goal):.0f}%"
        out.append(f"| {name} | {text} | {verdict} |")

    for k, label in (("my", "MariaDB"), ("sq", "SQLite")):
        sf, cx = cases.get(f"{k}_sf_full"), cases.get(f"{k}_dlt_connectorx")
        if sf and cx:
            r = cx.best / sf.best
            row(f"{label}→DuckDB full ≥ 2× dlt connectorx", r, 2.0,
                f"{r:.2f}× (dlt {cx.best:.2f}s / steadyflow {sf.best:.2f}s)")
        drain = cases.get(f"{k}_drain")
        if sf and drain:
            r = drain.best / sf.best
            row(f"{label}→DuckDB full ≥ 40% of the C-client drain", r, 0.4,
                f"{100 * r:.0f}% (drain {drain.best:.2f}s / steadyflow {sf.best:.2f}s)")
        if sf:
            out.append(f"| {label} full load peak RSS ≤ 300 MiB | {sf.rss:.0f} MiB | "
                       + ("met |" if sf.rss <= 300 else "MISSED |"))
        si, di = cases.get(f"{k}_sf_incremental"), cases.get(f"{k}_dlt_incremental")
        if si and di:
            r = di.best / si.best
            row(f"{label} incremental after 1% update ≥ 4× dlt's incremental merge", r, 4.0,
                f"{r:.2f}× (dlt {di.best:.2f}s / steadyflow {si.best:.2f}s)")
        sw, dw = cases.get(f"{k}_sf_warm"), cases.get(f"{k}_dlt_warm")
        if sw and dw:
            r = dw.best / sw.best
            row(f"{label} incremental, both in a long-running process, ≥ 4×", r, 4.0,
                f"{r:.2f}× (dlt {dw.best:.2f}s / steadyflow {sw.best:.2f}s per cycle)")
    if scaling:
        low, high = scaling[0][1].rss_mib, scaling[-1][1].rss_mib
        peak = max(s.rss_mib for _, s in scaling)
        flat = high <= low * 1.25 + 16
        verdict = "met" if peak <= 300 and flat else (
            f"MISSED: peak {peak:.0f} MiB" + ("" if flat else ", grows with rows"))
        out.append(f"| MariaDB peak RSS ≤ 300 MiB, flat {scaling[0][0]:,}→{scaling[-1][0]:,} "
                   f"rows | {' → '.join(f'{s.rss_mib:.0f}' for _, s in scaling)} MiB | "
                   f"{verdict} |")
    return out
