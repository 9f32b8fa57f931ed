"""`steadyflow worker` processes on separate hosts (network namespaces), under chaos, exactly
once.

Each worker runs in a host of its own (tests/support/netns.py: a network namespace with its
own address on a bridge, and its own hostname) and reaches PostgreSQL and MariaDB through
forwarders on the bridge's address, and NATS at a nats-server of the test's own (JetStream,
its store in tmp_path) listening there; the state is PostgreSQL, the buffer that JetStream,
the warehouse PostgreSQL. Six live store databases (three PostgreSQL, three MariaDB, the
TPC-H-shaped tables of tests/support/chaos_tables.py) take busy and late-committing writes
throughout. Injected, on a schedule (one round in CI, more in the exhaustive variant):
- SIGKILL of a random worker every few seconds (restarted on its host, as a supervisor
  would);
- SIGSTOP of a worker past its extraction lease, then SIGCONT: fenced, it never wins;
- a worker that holds extraction leases cut from PostgreSQL and from NATS by iptables
  inside its host (DROP: silent, like a pulled cable) for longer than the state store's
  network timeout, then restored: while cut off it must notice (StateUnavailable) rather
  than hang, and afterwards it must work again;
- a NATS server restart (SIGKILL, then the same store dir), while that worker is cut off;
- a worker added on a new host and one removed with SIGTERM.
At the end (writers stopped, workers left to catch up): the independent oracle finds every
warehouse table equal to its source row for row, at its newest version, without a
duplicate; status says nothing is queued or pending; the manifest has nothing unloaded; the
workers are on several hosts; every worker still running stops with exit 0 on SIGTERM.
An idle table may re-land its newest rows now and then (an adaptive lookback re-reads from
the oldest transaction open at the source, and the shared MariaDB server's are other
tests' too); such a batch loads as a duplicate, so "drained" is an instant when the
buffer and the manifest are empty, and a message that never leaves fails the test.

Two short tests pin down what the chaos found, deterministically: a state transaction cut
off mid-way must not leave its row locks behind on the server, and a worker whose loader
cannot reach the state store (not even to record that) must keep running.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.conftest import MY_PORT, PG_PORT, ROOT, require_tool, unavailable
from tests.support import netns
from tests.support.chaos_tables import SourceDb, Writers, create_tables
from tests.support.workers import (
    Workers,
    assert_equal,
    diffs,
    status_json,
    store_databases,
    write_config,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

CUSTOMERS, ORDERS = 60, 200
LEASE = 2.0  # the workers' extraction lease: a SIGSTOP of 2 leases + 1 s outlives it
# how long a worker stays cut off: past the state store's network timeout (10 s: libpq's
# tcp_user_timeout), so a state call in flight must have failed by then, not hung
CUT = 20.0
STATE_GONE = "state store ("  # how a StateUnavailable reads in a worker's log
BUSY = "busy: another call"  # ... when it waited for a call that neither ended nor failed
STREAM = "sf_multihost"  # the buffer's stream, on the test's own nats-server
LANDED = "SELECT count(*) FROM sf_state.manifest WHERE status = 'landed'"  # not loaded yet


@dataclass(frozen=True)
class Plan:
    """How big a run is: CI runs one round on two tables per store, in about 100 s."""

    tables: tuple[str, ...]
    rounds: int
    catch_up: float


CI_PLAN = Plan(("orders", "lineitem"), rounds=1, catch_up=60.0)
LONG_PLAN = Plan(("customer", "orders", "lineitem"), rounds=4, catch_up=180.0)


# --- services -----------------------------------------------------------------------------
@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    if os.geteuid() != 0:
        unavailable("network namespaces and iptables need root")
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables"), ("socat", "socat"),
                          ("unshare", "util-linux")):
        require_tool(tool, package)
    netns.sweep_stale()
    with netns.Lab() as made:
        made.forward(PG_PORT)
        made.forward(MY_PORT)
        yield made


@pytest.fixture
def stores() -> Iterator[list[SourceDb]]:
    """Six fresh store databases: three PostgreSQL, three MariaDB (local addresses: the
    writers and the oracle run in this, the root, namespace)."""
    yield from store_databases(3, 3)


class Nats:
    """A nats-server of the test's own, with JetStream, on the lab's bridge address."""

    def __init__(self, host: str, store: Path, log: Path) -> None:
        self.binary = require_tool("nats-server", "nats-server")
        self.host, self.store, self.log = host, store, log
        with socket.socket() as probe:
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store),
             "-l", str(self.log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        netns.wait_port(self.host, self.port, 20, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture
def nats(lab: netns.Lab, tmp_path: Path) -> Iterator[Nats]:
    server = Nats(lab.gateway, tmp_path / "nats", tmp_path / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


# --- the pipeline ---------------------------------------------------------------------------
def via(dsn: str, gateway: str) -> str:
    """The same database as seen from a host: through the forwarder on the bridge."""
    return dsn.replace("@127.0.0.1:", f"@{gateway}:")


def write_pipeline(directory: Path, dbs: list[SourceDb], warehouse_dsn: str, nats_url: str,
                   gateway: str, tables: tuple[str, ...]) -> Path:
    return write_config(
        directory, "multihost", dbs, warehouse_dsn,
        {"url": nats_url, "stream": STREAM, "capacity": 16, "lease": "5s"},
        # no fixed window: the writers stamp rows by the database's clock, so the adaptive
        # lookback (the source's open transactions) covers the late commits; a fixed
        # window re-reads and re-lands its rows on every idle poll (board.md)
        {"lookback": "0s", "page_size": 200, "min_page_size": 50},
        # a store read through a cut gives up within seconds, not the 60 s default
        {"connect_timeout": "3s", "statement_timeout": "8s"},
        tables, reach=lambda dsn: via(dsn, gateway))


class HostWorkers(Workers):
    """Workers started in the lab's hosts; each name remembers its host."""

    def __init__(self, cfg: Path, logs: Path) -> None:
        super().__init__(cfg, logs, LEASE)
        self.host_of: dict[str, netns.Host] = {}

    def start_on(self, host: netns.Host, failpoint: str | None = None) -> str:
        name = self.start(host.popen, failpoint)
        self.host_of[name] = host
        return name

    def restart(self, name: str) -> str:
        """SIGKILL `name` and start another worker on its host (a supervisor's restart)."""
        host = self.host_of[name]
        self.kill(name)
        return self.start_on(host)

    def holder(self, name: str) -> str:
        """How this worker's extraction leases name their holder (host:pid:)."""
        return f"{self.host_of[name].name}:{self.procs[name].pid}:"


def leases_held(warehouse_dsn: str) -> dict[str, int]:
    """Live extraction leases per holder prefix (host:pid:)."""
    with psycopg.connect(warehouse_dsn) as conn:
        rows = conn.execute(
            "SELECT holder FROM sf_state.extract_leases WHERE holder IS NOT NULL AND "
            "expires_at > extract(epoch from clock_timestamp())").fetchall()
    held: dict[str, int] = {}
    for (holder,) in rows:
        prefix = ":".join(str(holder).split(":")[:2]) + ":"
        held[prefix] = held.get(prefix, 0) + 1
    return held


def stream_depth(url: str, stream: str) -> int:
    """Messages in the stream (a cheap poll, no subprocess)."""
    import asyncio

    import nats

    async def read() -> int:
        nc = await nats.connect(url, connect_timeout=5)
        try:
            return int((await nc.jsm().stream_info(stream)).state.messages)
        finally:
            await nc.close()

    return asyncio.run(read())


# the chaos tables' writers at a pace this (2-core, shared) machine's workers follow while
# faults are injected: still concurrent, late commits included
SLOWER = {"busy": (0.1, 0.3), "late": (0.3, 0.8)}


def buffer_report(url: str, stream: str, warehouse_dsn: str) -> str:
    """What the stream still holds, and what the manifest says of those batches."""
    import asyncio

    import nats

    async def read() -> str:
        nc = await nats.connect(url, connect_timeout=5)
        try:
            jsm = nc.jsm()
            info = await jsm.stream_info(stream)
            consumer = await jsm.consumer_info(stream, "loader")
            lines = [f"stream: {info.state}", f"consumer: delivered={consumer.delivered} "
                     f"ack_floor={consumer.ack_floor} pending={consumer.num_pending} "
                     f"ack_pending={consumer.num_ack_pending} "
                     f"redelivered={consumer.num_redelivered}"]
            seq = info.state.first_seq
            while seq and seq <= info.state.last_seq and len(lines) < 40:
                try:
                    msg = await jsm.get_msg(stream, seq=seq, subject=f"{stream}.batches.>",
                                            next=True)
                except nats.js.errors.NotFoundError:
                    break
                batch = json.loads(msg.data or b"{}").get("batch_id")
                with psycopg.connect(warehouse_dsn) as conn:
                    row = conn.execute("SELECT status FROM sf_state.manifest WHERE "
                                       "batch_id = %s", (batch,)).fetchone()
                lines.append(f"  seq {msg.seq} {batch}: manifest {row}")
                seq = (msg.seq or 0) + 1
            return "\n".join(lines)
        finally:
            await nc.close()

    try:
        return asyncio.run(read())
    except Exception as exc:  # noqa: BLE001 - a diagnostic: never the failure itself
        return f"(buffer report failed: {exc!r})"


def landed_report(warehouse_dsn: str, logs: Path) -> list[str]:
    """The batches landed and never loaded: manifest entry, ledger, and what the workers'
    logs say of each (a diagnostic for a failure message)."""
    try:
        with psycopg.connect(warehouse_dsn) as conn:
            rows = conn.execute(
                "SELECT batch_id, extract(epoch FROM now()) - landed_at, error, ref "
                "FROM sf_state.manifest WHERE status = 'landed' LIMIT 5").fetchall()
            out = []
            for batch, age, error, ref in rows:
                ledger = conn.execute(
                    "SELECT rows, loaded_at FROM wh._steadyflow_ledger WHERE batch_id = %s",
                    (batch,)).fetchone()
                out.append(f"landed {age:.0f}s ago, not loaded: {batch} error={error!r} "
                           f"ledger={ledger} ref={ref}")
                for log in sorted(logs.glob("*.log")):
                    said = [line for line in log.read_text(errors="replace").splitlines()
                            if batch in line]
                    out += [f"  {log.stem}: {line[:400]}" for line in said[-6:]]
            return out
    except Exception as exc:  # noqa: BLE001 - a diagnostic: never the failure itself
        return [f"(landed report failed: {exc!r})"]


def open_transactions(stores: list[SourceDb]) -> list[str]:
    """The transactions open at each store now (what an adaptive lookback re-reads from)."""
    out = []
    for db in stores:
        conn = db.connect(autocommit=True)
        try:
            with conn.cursor() as cur:
                if db.kind == "postgres":
                    cur.execute("SELECT state, xact_start, client_port, left(query, 60) FROM "
                                "pg_stat_activity WHERE datname = current_database() AND "
                                "xact_start IS NOT NULL AND pid <> pg_backend_pid()")
                else:
                    cur.execute("SELECT trx_state, trx_started, trx_mysql_thread_id, "
                                "left(trx_query, 60) FROM information_schema.innodb_trx")
                out.append(f"{db.kind} {db.dsn.rsplit('/', 1)[-1]}: open {cur.fetchall()}")
        finally:
            conn.close()
    return out


def patient(fn: Callable[[], Any], tries: int = 10) -> Any:
    """`fn()`, again while PostgreSQL is full (the machine's server is shared: its
    max_connections is the other tests' too); anything else fails at once."""
    for attempt in range(tries):
        try:
            return fn()
        except psycopg.OperationalError as exc:
            if "too many clients" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(1.0)
    return None


def stacks(pid: int) -> str:
    """Every thread's stack of a live process (py-spy, when this machine has it)."""
    spy = shutil.which("py-spy") or str(ROOT / "bench" / ".venv" / "bin" / "py-spy")
    if not os.access(spy, os.X_OK):
        return "(py-spy not found)"
    proc = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                          timeout=60)
    return proc.stdout[-8000:] + proc.stderr[-1000:]


# --- the run --------------------------------------------------------------------------------
class Chaos:
    """The fault schedule, run from the test's thread; `events` says what happened."""

    def __init__(self, lab: netns.Lab, nats: Nats, workers: HostWorkers, warehouse_dsn: str,
                 seed: int) -> None:
        self.lab, self.nats, self.workers = lab, nats, workers
        self.warehouse_dsn = warehouse_dsn
        self.rng = random.Random(seed)
        self.events: list[str] = []
        self.cut_off: list[tuple[str, int, float]] = []  # (worker, log offset, when)
        self.problems: list[str] = []
        self.rejoined: list[str] = []  # workers that were cut off and restored
        self.ended: set[str] = set()  # workers the schedule killed or removed
        self._t0 = time.monotonic()

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self._t0:5.1f}s {what}")

    def wait(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def pick(self, exclude: set[str] | None = None) -> str:
        alive = [n for n in self.workers.alive() if n not in (exclude or set())]
        assert alive, f"no worker left to pick: {self.workers.exits}"
        return self.rng.choice(alive)

    def kill_one(self, exclude: set[str] | None = None) -> None:
        victim = self.pick(exclude)
        self.ended.add(victim)
        started = self.workers.restart(victim)
        self.note(f"SIGKILL {victim}, {started} started on "
                  f"{self.workers.host_of[started].name}")

    def stall_one(self) -> None:
        victim = self.pick()
        self.workers.signal(victim, signal.SIGSTOP)
        self.wait(2 * LEASE + 1)
        self.workers.signal(victim, signal.SIGCONT)
        self.note(f"SIGSTOP {victim} {2 * LEASE + 1:g}s, SIGCONT")

    def cut_holder(self) -> str:
        """Cut off (PostgreSQL and NATS) a worker that holds extraction leases now."""
        deadline = time.monotonic() + 5
        while True:
            held = patient(lambda: leases_held(self.warehouse_dsn))
            holders = [n for n in self.workers.alive() if held.get(self.workers.holder(n))]
            if holders or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        victim = self.rng.choice(holders) if holders else self.pick()
        host = self.workers.host_of[victim]
        self.cut_off.append((victim, self.workers.log_size(victim), time.time()))
        host.cut([PG_PORT, self.nats.port])
        self.note(f"cut {victim} ({host.name}, holding "
                  f"{held.get(self.workers.holder(victim), 0)} leases) from PostgreSQL "
                  f"and NATS")
        return victim

    def restore(self, victim: str) -> None:
        self.workers.host_of[victim].restore()
        self.note(f"restored {victim}")

    def restart_nats(self) -> None:
        self.nats.kill()
        self.wait(1.0)
        self.nats.start()
        self.note("nats-server SIGKILLed and restarted")

    def add_and_remove(self, exclude: set[str]) -> None:
        host = self.lab.add_host(f"h{len(self.lab.hosts)}")
        added = self.workers.start_on(host)
        victim = self.pick(exclude | {added})
        self.ended.add(victim)
        code = self.workers.terminate(victim)
        self.note(f"added {added} on {host.name}, SIGTERM {victim} -> {code}")
        assert code == 0, self.workers.tail(victim)

    def round(self) -> None:
        """~32 s: kill, stall, cut + NATS restart + kill, restore, add/remove, kill."""
        self.kill_one()
        self.wait(2.5)
        self.stall_one()
        cut_at = time.monotonic()
        victim = self.cut_holder()
        self.wait(3)
        self.restart_nats()
        self.wait(2)
        self.kill_one(exclude={victim})
        self.wait(cut_at + CUT - time.monotonic())
        self.restore(victim)
        self.check_noticed()
        self.rejoined.append(victim)
        self.wait(1)
        self.add_and_remove(exclude={victim})
        self.wait(3)
        self.kill_one(exclude={victim})
        self.wait(3)

    def check_noticed(self) -> None:
        """The cut-off worker's state calls failed while it was cut off (StateUnavailable
        within the store's network timeout), rather than hanging until the network came
        back; and it is still running. A miss is kept in `problems` (with every thread's
        stack) and the run goes on, so the end state is reported beside it."""
        victim, offset, cut_wall = self.cut_off[-1]
        if victim not in self.workers.alive():
            self.problems.append(f"worker {victim} exited while cut off (code "
                                 f"{self.workers.exits.get(victim)}):\n"
                                 + self.workers.log_since(victim, offset)[-4000:])
            return
        delay = first_notice(self.workers.log_since(victim, offset), cut_wall)
        self.note(f"{victim} noticed the cut after {delay:.1f}s" if delay is not None
                  else f"{victim} never noticed the cut")
        if delay is None:
            self.problems.append(
                f"worker {victim} was cut off from PostgreSQL for {CUT:g}s and never said "
                f"its state store was unavailable: a state call hung instead of failing "
                f"within the store's timeout. Its log meanwhile:\n"
                f"{self.workers.log_since(victim, offset)[-3000:]}\nIts threads:\n"
                + stacks(self.workers.procs[victim].pid))


def first_notice(log: str, since: float) -> float | None:
    """Seconds from `since` (a wall-clock time) to the first log line that says the state
    store is unavailable because a call on it failed (not only that one is still stuck)."""
    for line in log.splitlines():
        if STATE_GONE not in line or BUSY in line:  # busy: a call in flight has not failed
            continue
        try:
            stamp = json.loads(line)["ts"]
        except (ValueError, KeyError):
            continue
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        return when - since
    return None


def run_chaos(tmp_path: Path, lab: netns.Lab, nats: Nats, stores: list[SourceDb],
              warehouse_dsn: str, plan: Plan, seed: int) -> None:
    rng = random.Random(seed)
    writers = [Writers(db, CUSTOMERS, create_tables(db, CUSTOMERS, ORDERS, seed + i), seed + i,
                       pauses=SLOWER) for i, db in enumerate(stores)]
    cfg = write_pipeline(tmp_path, stores, warehouse_dsn, nats.url, lab.gateway, plan.tables)
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = HostWorkers(cfg, logs)
    chaos = Chaos(lab, nats, workers, warehouse_dsn, rng.randrange(1 << 30))
    try:
        try:
            for i in range(3):
                workers.start_on(lab.add_host(f"h{i}"))
            for w in writers:
                w.start()
            chaos.wait(5)  # started, and working
            for _ in range(plan.rounds):
                chaos.round()
        finally:
            for host in lab.hosts:  # a failure mid-cut must not leave the catch-up cut off
                host.restore()
            for w in writers:
                w.stop()
        assert sum(w.commits["late"] for w in writers) >= 5
        chaos.note("writers stopped")
        try:
            check_end(cfg, stores, warehouse_dsn, workers, chaos, plan)
        finally:
            assert not chaos.problems, "\n\n".join(chaos.problems + chaos.events)
        chaos.note("checked")
        print("\n".join(chaos.events))  # shown with -rP: where the time went
    finally:
        for name in workers.alive():
            workers.kill(name)


def check_end(cfg: Path, stores: list[SourceDb], warehouse_dsn: str, workers: HostWorkers,
              chaos: Chaos, plan: Plan) -> None:
    # converged: equal, nothing landed left unloaded, and status shows an empty buffer.
    # An idle table may still re-land its newest rows now and then (a re-read window, see
    # the module docstring), so the buffer is not empty at every instant: what must not
    # happen is a message that stays (stuck, or an orphan), which keeps it from ever
    # being empty, and that fails here at the deadline with the stream's contents.
    deadline = time.monotonic() + plan.catch_up
    drained, found = False, []
    while not drained:
        quiet = not patient(lambda: count(warehouse_dsn, LANDED)) and not stream_depth(
            chaos.nats.url, STREAM)
        if quiet or time.monotonic() > deadline:
            found = patient(lambda: diffs(stores, warehouse_dsn, plan.tables))
        if quiet and all(d.clean for d in found):
            now = status_json(cfg)
            drained = now["queue_depth"] == 0 and now["pending_batches"] == 0
        if not drained and time.monotonic() > deadline:
            now = status_json(cfg)
            break
        time.sleep(0.5)
    chaos.note("caught up" if drained else "gave up catching up")
    report = now["workers"]
    alive = {(workers.host_of[n].name, workers.procs[n].pid) for n in workers.alive()}
    listed = {(w["host"], w["pid"]) for w in report}
    assert alive <= listed, (alive, report)  # every live worker has registered
    assert len({host for host, _ in alive}) >= 3, (alive, report)  # on several hosts
    assert any(w["status"] == "lost" for w in report), report  # the SIGKILLed ones
    for victim in set(chaos.rejoined) - chaos.ended:  # working since the network returned
        assert victim in workers.alive(), workers.tail(victim)
    workers.stop_all()
    assert_equal(found, cfg, chaos.events)
    assert drained, "\n".join([
        f"never drained: {({k: now[k] for k in ('queue_depth', 'pending_batches')})}",
        buffer_report(chaos.nats.url, STREAM, warehouse_dsn),
        *landed_report(warehouse_dsn, workers.logs),
        *open_transactions(stores), *chaos.events])
    with psycopg.connect(warehouse_dsn) as conn:
        unloaded = conn.execute(LANDED).fetchone()
        assert unloaded == (0,), "landed batches were never loaded"
        stopped = conn.execute("SELECT count(*) FROM sf_state.workers WHERE "
                               "status = 'stopped'").fetchone()
        assert stopped is not None and stopped[0] >= 4  # one mid-run, three at the end


# A worker whose network goes while one of its state transactions is open (between two of
# its statements, the lease row locked FOR UPDATE) gives up on its side within the state
# store's timeout; the server's side of that transaction must not outlive it, or the locked
# lease row can never be taken over: the table stalls until the server's TCP keepalive
# notices the dead peer (two hours by default), or forever behind a proxy.
CUT_MIDWAY = """
import sys, time
from steadyflow.state.postgres import PostgresStateStore

store = PostgresStateStore(sys.argv[1], sys.argv[2])
assert store.try_lease("store0", "orders", "cut:1:x", 1.0) is not None
try:
    with store._tx() as c:  # a lease transaction in flight when the network goes
        c.execute("SELECT holder FROM extract_leases WHERE source = ? AND tbl = ? "
                  "FOR UPDATE", ("store0", "orders"))
        print("in transaction", flush=True)
        time.sleep(3)  # the test cuts the network now
        c.execute("SELECT 1")
    print("committed", flush=True)
except Exception as exc:
    print(f"gave up: {type(exc).__name__}: {exc}", flush=True)
"""


def test_a_state_transaction_cut_midway_leaves_no_lock_behind(
        tmp_path: Path, lab: netns.Lab, pg_dsn: str) -> None:
    from steadyflow.errors import StateUnavailable
    from steadyflow.state.postgres import PostgresStateStore

    host = lab.add_host("h0")
    out = tmp_path / "client.log"
    with out.open("w") as sink:
        client = host.popen([sys.executable, "-c", CUT_MIDWAY, via(pg_dsn, lab.gateway),
                             "sf_state"], stdout=sink, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while "in transaction" not in out.read_text():
            assert client.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        host.cut([PG_PORT])
        cut_at = time.monotonic()
        here = PostgresStateStore(pg_dsn, "sf_state")
        lease = None
        while lease is None and time.monotonic() < cut_at + 30:
            try:  # the cut-off client's lease (1 s) is long expired: ours to take
                lease = here.try_lease("store0", "orders", "here:2:y", 5.0)
            except StateUnavailable:  # lock_timeout: the row is still locked
                pass
        took = time.monotonic() - cut_at
        assert client.wait(30) == 0
        said = out.read_text()
        assert "gave up: StateUnavailable" in said, said  # failed, did not hang
        assert lease is not None, (
            f"the lease row stayed locked {took:.0f}s after its holder was cut off "
            f"mid-transaction: the server kept the dead client's transaction open")
        here.close()
    finally:
        host.restore()
        if client.poll() is None:
            client.kill()


def test_a_worker_cut_off_from_its_state_store_keeps_working(
        tmp_path: Path, lab: netns.Lab, nats: Nats, mysql_dsn: str,
        pg_warehouse_dsn: str) -> None:
    """A load that fails while the state store is unreachable (the warehouse is on the same
    server here) cannot record its failure in the state store either: the worker must log
    it and wait for the network, not stop. The cut resets (every call fails at once, so
    the loader meets it within the cut), and the loader pauses after each commit (a
    failpoint), so batches are waiting in the buffer when the cut comes."""
    db = SourceDb("mysql", mysql_dsn)
    writers = Writers(db, CUSTOMERS, create_tables(db, CUSTOMERS, ORDERS, 7), 7)
    cfg = write_pipeline(tmp_path, [db], pg_warehouse_dsn, nats.url, lab.gateway,
                         ("orders", "lineitem"))
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = HostWorkers(cfg, logs)
    host = lab.add_host("h0")
    name = workers.start_on(host, failpoint="load.after_commit:1:sleep1")
    loaded = "SELECT count(*) FROM sf_state.manifest WHERE status = 'loaded'"
    try:
        writers.start()
        deadline = time.monotonic() + 60
        while not patient(lambda: count(pg_warehouse_dsn, loaded)):
            assert name in workers.alive() and time.monotonic() < deadline, (
                workers.tail(name, 3000))
            time.sleep(0.2)
        offset = workers.log_size(name)
        host.cut([PG_PORT], reset=True)
        time.sleep(8)
        host.restore()
        time.sleep(2)
        said = workers.log_since(name, offset)
        assert name in workers.alive(), f"the worker stopped when cut off:\n{said[-4000:]}"
        assert "could not record the error" in said, said[-4000:]  # the case this is about
        before = patient(lambda: count(pg_warehouse_dsn, loaded))
        deadline = time.monotonic() + 30
        while patient(lambda: count(pg_warehouse_dsn, loaded)) == before:  # working again
            assert time.monotonic() < deadline, workers.log_since(name, offset)[-4000:]
            time.sleep(0.5)
        assert workers.terminate(name) == 0
    finally:
        writers.stop()
        for left in workers.alive():
            workers.kill(left)


def count(dsn: str, sql: str) -> int:
    """A count, 0 while the table is not there yet (the workers create it)."""
    try:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(sql).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def test_workers_on_many_hosts_exactly_once_under_chaos(
        tmp_path: Path, lab: netns.Lab, nats: Nats, stores: list[SourceDb],
        pg_warehouse_dsn: str) -> None:
    run_chaos(tmp_path, lab, nats, stores, pg_warehouse_dsn, CI_PLAN, seed=11)


@pytest.mark.exhaustive
@pytest.mark.parametrize("seed", [12, 13])
def test_workers_on_many_hosts_exactly_once_under_long_chaos(
        tmp_path: Path, lab: netns.Lab, nats: Nats, stores: list[SourceDb],
        pg_warehouse_dsn: str, seed: int) -> None:
    run_chaos(tmp_path, lab, nats, stores, pg_warehouse_dsn, LONG_PLAN, seed=seed)
