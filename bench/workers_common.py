"""What bench/scale.py and bench/backfill.py share: the sales contract and the pipeline config
they write, a fresh warehouse database and JetStream stream per run, spawning and stopping
`steadyflow worker` processes, waiting on the warehouse, and the CPU each process used.

CPU is read from /proc (utime + stime of a process; a process's reaped children are in its
cutime + cstime): the machine's two cores are shared with other work, so a wall time alone
says little, and what used the CPU (the workers, PostgreSQL, NATS, the bench's proxy) says
what bounds a run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import yaml

PG = "host=127.0.0.1 port=5432 user=postgres"
TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")

SALES_COLUMNS = {
    "store_id": {"type": "int32", "nullable": False},
    "sale_id": {"type": "int64", "nullable": False},
    "sku": {"type": "string", "nullable": False},
    "qty": {"type": "int32", "nullable": False},
    "unit_price": {"type": "decimal(10,2)", "nullable": False},
    "updated_at": {"type": "timestamp", "nullable": False},
}


def admin() -> psycopg.Connection[Any]:
    return psycopg.connect(f"{PG} dbname=postgres", autocommit=True)


def write_config(work: Path, name: str, wh: str, stream: str, primary_key: list[str],
                 sources: list[dict[str, Any]], run: dict[str, Any]) -> Path:
    """pipeline.yml for workers sharing PostgreSQL state and warehouse (database `wh`) and
    one JetStream stream; every source's tables use the `sales` contract."""
    config = {
        "name": name,
        "state": {"kind": "postgres", "dsn": wh, "schema": "sf_state"},
        "buffer": {"kind": "jetstream", "stream": stream, "capacity": 64, "lease": "60s"},
        "warehouse": {"kind": "postgres", "dsn": wh, "schema": "wh"},
        "landing": {"path": str(work / "landing")},
        "run": run,
        "contracts": {"sales": {"primary_key": primary_key, "cursor": "updated_at",
                                "columns": SALES_COLUMNS}},
        "sources": sources,
    }
    path = work / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def drop_stream(name: str) -> None:
    import nats

    async def drop() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            await nc.jetstream().delete_stream(name)
        except Exception:  # noqa: BLE001 - never created: nothing to drop
            pass
        finally:
            await nc.close()

    asyncio.run(drop())


def new_run(prefix: str) -> tuple[str, str, str]:
    """A fresh warehouse database (it holds the state schema too) and a stream name:
    (database name, its DSN, stream name)."""
    token = uuid.uuid4().hex[:8]
    wh_name = f"{prefix}_wh_{token}"
    with admin() as conn:
        conn.execute(f"CREATE DATABASE {wh_name}")
    return wh_name, f"postgresql://postgres@127.0.0.1:5432/{wh_name}", f"{prefix}_{token}"


def end_run(wh_name: str, stream: str) -> None:
    with admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {wh_name} WITH (FORCE)")
    drop_stream(stream)


def wait_until(check: Callable[[], tuple[bool, T]], timeout: float, what: str,
               every: float = 0.2) -> T:
    """Call `check` every `every` seconds until it says done; returns its last value.
    SystemExit naming `what` (and the last value) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, value = check()
        if done:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not done after {timeout:g}s (last: {value})")
        time.sleep(every)


def registered_workers(wh: str) -> int:
    """Workers with a heartbeat row (a worker writes it once its pipeline is open)."""
    try:
        with psycopg.connect(wh) as c:
            row = c.execute("SELECT count(*) FROM sf_state.workers").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return 0


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (with its reaped children's); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / TICKS


def pids_of(exe_name: str) -> list[int]:
    """Every process whose command name is `exe_name` (e.g. postgres, nats-server)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == exe_name:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def machine_busy() -> float:
    """CPU seconds the machine has been busy (all cores; all but idle and iowait)."""
    jiffies = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(jiffies) - jiffies[3] - jiffies[4]) / TICKS


class CpuWatch:
    """CPU used between `start` and `stop` by: PostgreSQL backends serving databases whose
    name starts with `prefix` (this bench's stores, state and warehouse), all other
    PostgreSQL processes, NATS, and the whole machine. Backends come and go: `sample` (call
    it often) keeps each one's last reading, so one that exits loses only its last interval.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.first: dict[int, float] = {}  # pid -> CPU at start (0 for a newer process)
        self.last: dict[int, float] = {}
        self.ours: set[int] = set()

    def start(self) -> None:
        self.first, self.last, self.ours = {}, {}, set()
        self.machine = machine_busy()
        self.nats = sum(cpu_seconds(p) for p in pids_of("nats-server"))
        self.sample(first=True)

    def sample(self, first: bool = False) -> None:
        for pid in pids_of("postgres"):
            cpu = cpu_seconds(pid)
            if pid not in self.first:
                self.first[pid] = cpu if first else 0.0
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    title = ""
                # "postgres: 15/main: <user> <database> <client> <state>"
                words = title.replace("\0", " ").split()
                if len(words) > 3 and words[3].startswith(self.prefix):
                    self.ours.add(pid)
            if cpu:
                self.last[pid] = cpu

    def stop(self) -> dict[str, float]:
        self.sample()
        used = {pid: self.last.get(pid, 0.0) - start for pid, start in self.first.items()}
        return {"pg_ours": round(sum(v for p, v in used.items() if p in self.ours), 1),
                "pg_other": round(sum(v for p, v in used.items() if p not in self.ours), 1),
                "nats": round(sum(cpu_seconds(p) for p in pids_of("nats-server"))
                              - self.nats, 1),
                "machine": round(machine_busy() - self.machine, 1)}


class Workers:
    """`n` `steadyflow worker` processes on one config, logs in `work`; `stop` ends them
    (SIGTERM, then SIGKILL after a minute) and returns each one's CPU seconds."""

    def __init__(self, n: int, config: Path, work: Path, env: dict[str, str] | None = None,
                 log_level: str | None = None) -> None:
        steadyflow = str(Path(sys.executable).parent / "steadyflow")
        args = [steadyflow] + (["--log-level", log_level] if log_level else [])
        self.procs = []
        for i in range(n):
            log = (work / f"worker{i}.log").open("w")
            self.procs.append(subprocess.Popen(
                [*args, "worker", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu(self) -> list[float]:
        return [round(cpu_seconds(p.pid), 2) for p in self.procs]

    def stop(self) -> list[float]:
        used = self.cpu()
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return used
