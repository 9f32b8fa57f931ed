"""`steadyflow worker`: one of any number of processes, on any number of hosts, that share one
pipeline's state (PostgreSQL), buffer (NATS JetStream), landing zone (object store) and
warehouse (PostgreSQL), and split its work between them.

A worker is the follow loop in shared mode plus a heartbeat; it adds no coordinator, because
each unit of work already has its own owner:
- "extract table T from its checkpoint": the table's extraction lease (run/lease.py), taken
  without waiting; a table another worker holds is simply theirs this time. The lease's
  generation fences a worker that stalls past it (SIGSTOP, a GC pause, a partition): what
  it then tries to record or advance raises ExtractionFenced in the state transaction;
- "load batch B": one JetStream work-queue delivery, redelivered after its lease if the
  worker dies; the warehouse ledger makes a second load of B a no-op, and the extraction
  sequence lets the later read of a row win whoever merges last.
A worker that leaves on SIGTERM finishes the unit in hand and releases its leases; one that
is SIGKILLed loses nothing either: its leases expire and its deliveries come back.

Which worker polls which table: a table stays with the worker that last extracted it while
that worker keeps polling it (the state's lease affinity, `AFFINITY_POLLS` of the table's
longest idle pause); the others skip it as if it were held, unless its owner looks after
two tables more than the one asking (a worker that joins takes its share). Every worker
polling every table cost N workers N connections to each store and N probes per change
(measured by bench/scale.py before it: for one full load of its 20 stores, 4 workers
dialled them 155 times, 1 worker 60).

The heartbeat (every `heartbeat_every` seconds, into the state's `workers` table) is for
operators (`steadyflow status`, the status page): it says which host and pid each worker is,
which tables it holds and when it was last heard of. Correctness never depends on it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

from steadyflow.errors import ConfigError
from steadyflow.observe import logs

log = logs.get("run")

HEARTBEAT_SECONDS = 5.0
# a table's lease stays with the worker that last held it for this many of its longest idle
# pauses (run.interval, or its poll_max): its owner polls it at least that often
AFFINITY_POLLS = 3


def check_shareable(config: Any) -> list[str]:
    """Refuse what cannot be shared between worker processes; return warnings for what can
    be shared by the processes of one host only."""
    if config.warehouse.kind == "duckdb":
        raise ConfigError(
            "workers need a warehouse they can all write to: warehouse.kind is duckdb, a "
            "file with one writing process at a time. Set warehouse.kind: postgres (and a "
            "dsn), or run the pipeline in one process with `steadyflow run --follow`")
    warnings = []
    if config.state.kind == "sqlite":
        warnings.append("state.kind is sqlite: only workers on this host can share it (set "
                        "state.kind: postgres for workers on several hosts)")
    if config.buffer.kind == "sqlite":
        warnings.append("buffer.kind is sqlite: only workers on this host can share it (set "
                        "buffer.kind: jetstream for workers on several hosts)")
    if getattr(config.landing, "url", None) is None:
        warnings.append("landing is a local folder: workers on other hosts cannot read it "
                        "unless it is a shared filesystem (set landing.url: s3://...)")
    return warnings


def affinity(config: Any) -> float:
    """Seconds a table stays with the worker that last polled it: AFFINITY_POLLS of the
    longest pause any table takes between idle polls (run/follow.py cadence_of)."""
    longest = max((t.poll_max if t.poll_max is not None else config.run.interval
                   for _, t, _ in config.tables()), default=config.run.interval)
    return AFFINITY_POLLS * float(longest)


def held_by(host: str, pid: int, leases: list[dict[str, Any]]) -> list[str]:
    """The units of work (tables, key ranges of first loads) whose lease the process `pid`
    on `host` holds among `leases` (StateStore.leases: the ones held now)."""
    mine = f"{host}:{pid}:"
    return [f"extract {lease['source']}.{lease['table']}" if lease["chunk"] is None
            else f"backfill {lease['source']}.{lease['table']} range {lease['chunk']}"
            for lease in leases if str(lease["holder"]).startswith(mine)]


class Worker:
    """Runs a pipeline's follow loop as one worker among many, with a heartbeat."""

    def __init__(self, pipeline: Any, heartbeat_every: float = HEARTBEAT_SECONDS) -> None:
        self.pipeline = pipeline
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.heartbeat_every = heartbeat_every
        self._done = threading.Event()
        self._started = time.time()
        self._asked = False  # `stop` was called: a loop that ends otherwise has died
        # why the loop ended without being asked to (its loader stopped on an error no
        # retry covers, an exception): the worker failed, and says so (`steadyflow
        # worker` exits nonzero, the workers table holds 'failed' and this)
        self.error: str | None = None

    def run(self) -> Any:
        """Work until stopped (SIGTERM/SIGINT call `stop`); returns the run's summary.
        A loop that ends by itself sets `error` (see __init__)."""
        for warning in check_shareable(self.pipeline.config):
            log.warning("%s", warning, extra={"stage": "worker"})
        self.pipeline.shared = True
        state = self.pipeline.state
        state.lease_affinity = affinity(self.pipeline.config)
        state.register_worker(self.worker_id, self.host, self.pid, self.heartbeat_every)
        log.info("worker %s started", self.worker_id, extra={"stage": "worker"})
        beat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        beat.start()
        try:
            summary = self.pipeline.run(follow=True)
            if not self._asked:
                self.error = ("its loop ended without being asked to stop: "
                              + ("; ".join(summary.errors) or "no error reported"))[:2000]
            return summary
        except BaseException as exc:
            self.error = f"its loop ended with an error: {exc}"[:2000]
            raise
        finally:
            self._done.set()
            beat.join(timeout=self.heartbeat_every + 5)
            try:
                state.stop_worker(self.worker_id, self.error)
            except Exception as exc:  # noqa: BLE001 - the heartbeat's age tells the rest
                log.warning("could not record the worker's stop: %s", exc,
                            extra={"stage": "worker"})
            if self.error is None:
                log.info("worker %s stopped", self.worker_id, extra={"stage": "worker"})
            else:
                log.error("worker %s failed: %s", self.worker_id, self.error,
                          extra={"stage": "worker"})

    def stop(self) -> None:
        self._asked = True
        self.pipeline.stop()

    def held_units(self) -> list[str]:
        """The tables (and key ranges of first loads) whose lease this process holds now."""
        return held_by(self.host, self.pid, self.pipeline.state.leases())

    def _beat(self) -> None:
        while not self._done.wait(self.heartbeat_every):
            try:
                self.pipeline.state.heartbeat_worker(
                    self.worker_id, self.held_units(),
                    {"uptime_seconds": round(time.time() - self._started, 1)})
            except Exception as exc:  # noqa: BLE001 - unreachable state: next beat retries
                log.warning("heartbeat not recorded (retrying): %s", exc,
                            extra={"stage": "worker"})
