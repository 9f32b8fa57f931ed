"""`steadyflow demo`: the whole story on one machine in under two minutes.

Store databases take live sales (inserts, updates, late commits, malformed rows) while a
pipeline process loads them into DuckDB; the process is SIGKILLed part-way and restarted;
at the end, every source row is compared with the warehouse and the verdict printed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from steadyflow.config import load_config
from steadyflow.demo.stores import StoreWriter, create_stores
from steadyflow.merge.duckdb import quote
from steadyflow.observe.web import start_server
from steadyflow.reconcile.compare import Comparison, compare_target
from steadyflow.state import SqliteStateStore, StateStore

console = Console(stderr=True)

SALES_CONTRACT: dict[str, Any] = {
    "primary_key": ["store_id", "sale_id"],
    "cursor": "updated_at",
    "columns": {
        "store_id": {"type": "int64", "nullable": False},
        "sale_id": {"type": "int64", "nullable": False},
        "sku": {"type": "string", "nullable": False},
        "qty": {"type": "int64", "min": 1},
        "unit_price": {"type": "decimal(12,2)", "min": 0},
        "currency": {"type": "string", "allowed": ["USD", "EUR", "GBP"]},
        "sold_at": {"type": "timestamp"},
        "updated_at": {"type": "timestamp", "nullable": False},
    },
}


def write_config(directory: Path, stores: list[Path]) -> Path:
    config = {
        "name": "demo-sales",
        "state_dir": "state",
        "landing": {"path": "landing"},
        "buffer": {"kind": "sqlite", "capacity": 32},
        "warehouse": {"kind": "duckdb", "path": "warehouse.duckdb", "schema": "main"},
        "run": {"interval": "1s", "max_parallel_sources": 4},
        "contracts": {"sales": SALES_CONTRACT},
        "sources": [
            {"name": p.stem, "kind": "sqlite", "path": str(p.relative_to(directory)),
             "tables": [{"name": "sales", "contract": "sales", "lookback": "15s",
                         "page_size": 20_000,
                         # which warehouse rows are this store's, for reconciliation
                         "warehouse_filter": {"store_id": number}}]}
            for number, p in enumerate(stores, start=1)
        ],
    }
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _spawn(config: Path, log: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "steadyflow", "--log-level", "warning", "run", "-c", str(config),
         "--follow", "--serve", f"127.0.0.1:{metrics_port}"],
        stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loaded_batches(state: StateStore) -> int:
    return sum(1 for b in state.batches(limit=100_000) if b["status"] == "loaded")


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def run_demo(directory: Path, stores: int = 4, rows_per_store: int = 50_000,
             as_json: bool = False, follow_seconds: float = 8.0) -> int:
    if directory.exists() and (directory / "pipeline.yml").exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]steadyflow demo[/bold] in {directory}/")
    paths = create_stores(directory / "stores", stores, rows_per_store)
    config_path = write_config(directory, paths)
    console.print(f"  {stores} store databases, {stores * rows_per_store:,} sales rows; "
                  f"config {config_path}")
    state = SqliteStateStore(directory / "state" / "state.db")
    log = directory / "pipeline.log"
    started = time.monotonic()
    page_url, stop_page = start_server(config_path, "127.0.0.1", 0)
    metrics_port = _free_port()
    console.print(f"  status page {page_url}  ·  live metrics "
                  f"http://127.0.0.1:{metrics_port}/metrics (while the pipeline runs)")
    writer = StoreWriter(paths, rate_per_second=400).start()
    try:
        first = _spawn(config_path, log, metrics_port)
        _wait(lambda: _loaded_batches(state) >= 3, 60)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        console.print(f"  SIGKILLed pipeline pid {first.pid} after "
                      f"{_loaded_batches(state)} batches; restarting it")
        second = _spawn(config_path, log, metrics_port)
        console.print(f"  live: {cli_command()} status -c {config_path}")
        time.sleep(follow_seconds)
    finally:
        writer.stop()
    counts = writer.counts()
    second.send_signal(signal.SIGTERM)
    if second.wait(timeout=60) not in (0, 1, -signal.SIGTERM):
        console.print(f"  [yellow]pipeline exited with {second.returncode}[/yellow]")
    console.print(f"  writers stopped: {counts['inserted']:,} inserts, {counts['updated']:,} "
                  f"updates, {counts['late_commits']} late commits; final catch-up run")
    final = subprocess.run(
        [sys.executable, "-m", "steadyflow", "run", "-c", str(config_path), "--json"],
        capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if final.returncode not in (0, 1):
        console.print(final.stderr)
        return 2
    stop_page()
    comparison = verify(config_path)
    reconciled = reconcile_all(config_path)
    loaded = sum(h.rows_changed for h in state.health())  # re-reads excluded
    runs = [r for r in state.runs(1000) if r["ended_at"] and r["rows"]]
    busy = sum(r["ended_at"] - r["started_at"] for r in runs)
    state.close()
    return report(comparison, reconciled, loaded, elapsed, busy, config_path, as_json)


def cli_command() -> str:
    """How the operator's shell runs this steadyflow: `steadyflow` if that is on PATH and is
    this install, else this environment's script (`.venv/bin/steadyflow`), else
    `python -m steadyflow` with this interpreter. A bare `steadyflow` from a venv that is
    not activated is "command not found", the first thing a new user would have tried."""
    script = Path(sys.executable).parent / "steadyflow"
    found = shutil.which("steadyflow")
    if found and script.exists() and Path(found).resolve() == script.resolve():
        return "steadyflow"
    if script.exists():
        return _short(script)
    return f"{_short(Path(sys.executable))} -m steadyflow"


def _short(path: Path) -> str:
    """A path relative to the working directory when it is below it (what a user types)."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def verify(config_path: Path) -> Comparison:
    import duckdb

    config = load_config(config_path)
    total = Comparison()
    con = duckdb.connect(str(config.resolve(config.warehouse.path or "")), read_only=True)
    try:
        for target in sorted({ref.target for _, _, ref in config.tables()}):
            rows = con.sql(f"SELECT * FROM {quote(config.warehouse.schema_)}.{quote(target)}"
                           ).to_arrow_table()
            total.add(compare_target(config, target, rows))
    finally:
        con.close()
    return total


def reconcile_all(config_path: Path) -> dict[str, Any]:
    """The same check the way an operator runs it: bucketed checksums inside each database."""
    from steadyflow.reconcile.runner import Options, reconcile
    from steadyflow.run.pipeline import Pipeline

    with Pipeline.from_yaml(config_path) as pipeline:
        reports = reconcile(pipeline, None, Options())
    totals: dict[str, Any] = {k: sum(getattr(r, k) for r in reports) for k in (
        "buckets", "rows_compared", "missing", "extra", "mismatched", "duplicates")}
    totals["clean"] = all(r.clean for r in reports)
    return totals


def report(c: Comparison, r: dict[str, Any], loaded: int, elapsed: float, busy: float,
           config_path: Path, as_json: bool) -> int:
    """rows/s is rows loaded over the time the pipeline was busy, not the demo's sleeps."""
    summary: dict[str, Any] = {
        "source_rows": c.source_rows, "warehouse_rows": c.warehouse_rows,
        "missing": c.missing, "duplicates": c.duplicates, "mismatched": c.mismatched,
        "extra": c.extra, "quarantined": c.quarantined,
        "rows_loaded": loaded, "seconds": round(elapsed, 1),
        "rows_per_second": round(loaded / busy) if busy else 0,
    }
    out = Console()
    for key, value in summary.items():
        out.print(f"{key:>16}: {value:,}" if isinstance(value, int) else f"{key:>16}: {value}")
    out.print(f"       reconcile: {r['rows_compared']:,} rows in {r['buckets']} buckets, "
              f"missing {r['missing']}, extra {r['extra']}, mismatched {r['mismatched']}, "
              f"duplicates {r['duplicates']}")
    summary["reconcile"] = r
    ok = c.clean and r["clean"]
    out.print("[green]OK: warehouse equals source, row for row[/green]" if ok else
              f"[red]MISMATCH[/red] examples: {c.examples}")
    # the page printed at the start stopped with the demo: say so, and how to see it again
    command = cli_command()
    out.print(f"The demo's status page has stopped. Try:\n  {command} status -c {config_path}"
              f"\n  {command} serve -c {config_path}   (the status page again)",
              soft_wrap=True, highlight=False)
    if as_json:
        print(json.dumps(summary))
    return 0 if ok else 1
