"""Where a full load's wall time goes: a timeline of one `steadyflow run` per run.

    bench/.venv/bin/python bench/timeline.py --config bench/work/run/my_sf_full_0/pipeline.yml \\
        [--src src] [--runs 3] [--work /tmp/timeline] [--events]

Each run copies the config into a fresh directory (so it is a first load into an empty
warehouse: the config's relative paths must be its warehouse, state and landing), runs
`steadyflow run --json` with bench/timeline_trace on PYTHONPATH (its sitecustomize wraps
the full-load path's steps) and `--src` first (e.g. an exported copy of another commit's
src, to compare), and prints: the serial phases from spawn to exit (start-up before
run_once, the warehouse open, the extraction's start, the first page, the loader's first
transaction, what is left after the extraction ends, the warehouse's close), how busy the
loader was from its first transaction on, each thread's CPU, and with --events every step.
Session 13 (bench/NOTES.md) read the critical path of the MariaDB and PostgreSQL full
loads from it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEADYFLOW = Path(sys.executable).parent / "steadyflow"  # the bench venv's, as run.py

Event = tuple[str, str, float, float, float]  # name, thread, start, end, CPU


def read(path: Path) -> list[Event]:
    events = []
    for line in path.read_text().splitlines():
        name, thread, start, end, cpu = line.split("\t")
        events.append((name, thread, float(start), float(end), float(cpu)))
    return sorted(events, key=lambda e: e[2])


def summary(events: list[Event]) -> list[str]:
    def spans(name: str) -> list[Event]:
        return [e for e in events if e[0] == name]

    def first(name: str) -> Event | None:
        found = spans(name)
        return found[0] if found else None

    run, extract = first("Pipeline.run_once"), first("Pipeline.extract")
    opened, close = first("Pipeline._open_warehouse"), first("DuckdbWarehouse.close")
    reads, loads = spans("TableExtractor._read_page"), spans("DuckdbWarehouse._load_group_once")
    process = first("process")
    if not (run and extract and reads and loads and process):
        return ["  (the trace lacks a step: not a full load by this code?)"]
    loaded_from = loads[0][2]
    busy = sum(e[3] - e[2] for e in loads)
    parts = sum(e[4] for e in spans("DuckdbWarehouse._load_parts"))
    lines = [
        f"  spawn -> run_once {run[2]:.3f} s (imports, config, pipeline)",
        f"  warehouse open {opened[3] - opened[2]:.3f} s" if opened else "",
        f"  run_once -> extraction starts {extract[2] - run[2]:.3f} s; "
        f"-> first page read {reads[0][2] - extract[2]:.3f} s (connect, probe, position)",
        f"  first page read {reads[0][3] - reads[0][2]:.3f} s; its load begins at "
        f"{loaded_from:.3f} s ({loaded_from - reads[0][2]:.3f} s after its read began)",
        f"  loader busy {busy:.3f} s of {run[3] - loaded_from:.3f} s from then "
        f"({100 * busy / max(run[3] - loaded_from, 1e-9):.0f}%); {len(loads)} transactions, "
        f"CPU {sum(e[4] for e in loads):.3f} s (statements {parts:.3f}, commits "
        f"{sum(e[4] for e in loads) - parts:.3f})",
        f"  extraction ends {extract[3]:.3f} s; run_once ends {run[3] - extract[3]:.3f} s later",
        f"  warehouse close {close[3] - close[2]:.3f} s (CPU {close[4]:.3f})" if close else "",
        f"  exit at {process[3]:.3f} s, process CPU {process[4]:.3f} s",
    ]
    cpu: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for name, thread, *_, used in events:
        if name == "thread":
            kind = thread.rstrip("0123456789").rstrip("_-")
            cpu[kind] += used
            count[kind] += 1
    lines.append("  thread CPU: " + ", ".join(
        f"{kind} {used:.3f}" + (f" ({count[kind]} threads)" if count[kind] > 1 else "")
        for kind, used in sorted(cpu.items(), key=lambda kv: -kv[1])))
    collections = [e for e in events if e[0].startswith("gc")]
    if collections:
        lines.append(f"  garbage collections over 5 ms: {len(collections)}, "
                     f"CPU {sum(e[4] for e in collections):.3f} s")
    return [line for line in lines if line]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True, help="a full load's pipeline.yml")
    ap.add_argument("--src", type=Path, default=HERE.parent / "src",
                    help="steadyflow's src to run (default: this checkout's)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "timeline")
    ap.add_argument("--events", action="store_true", help="also print every step")
    args = ap.parse_args()
    for i in range(args.runs):
        d = args.work / f"run_{i}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        shutil.copy(args.config, d / "pipeline.yml")
        trace = d / "timeline.tsv"
        started = time.time()
        env = {**os.environ, "SF_TIMELINE": str(trace), "SF_T0": repr(started),
               "PYTHONPATH": f"{HERE / 'timeline_trace'}:{args.src.resolve()}"}
        with open(d / "run.log", "w") as log:
            subprocess.run([str(STEADYFLOW), "run", "-c", "pipeline.yml", "--json"], cwd=d,
                           env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        wall = time.time() - started
        events = read(trace)
        print(f"run {i}: {wall:.2f} s wall, load average {os.getloadavg()[0]:.1f}")
        print("\n".join(summary(events)))
        if args.events:
            for name, thread, start, end, cpu in events:
                print(f"    {start:7.3f} {end:7.3f} {end - start:6.3f} cpu {cpu:6.3f} "
                      f"{thread[:16]:16s} {name}")


if __name__ == "__main__":
    main()
