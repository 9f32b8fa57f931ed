"""`steadyflow autoscale`: grow and shrink the local `steadyflow worker` processes from lag.

Decide, then act (STYLE §7). `decide` is pure: from the lag samples of the last minutes,
the count it keeps now and when it last changed it, it returns the count it should keep and
why. `Autoscaler` does the IO around it: it samples the lag (`LagProbe`), asks `decide`,
and makes the processes match (`WorkerProcesses`): starts workers, drains the youngest on
a scale-down, restarts one that died, and drains them all when it is stopped itself.

The signal is lag, in the two places work waits:
- backlog: batches in the buffer not loaded yet, taken or not (JetStream: the durable
  consumer's num_pending + num_ack_pending; SQLite: the queue's depth). More workers load
  more batches at once.
- extraction lag: per table, the source's high-water mark (what its last poll saw) minus
  the newest cursor loaded (steadyflow_lag_seconds), capped at how long the table has been
  seen behind (see `extraction_lag`); the worst table's. More workers extract more tables
  at once.

Hysteresis, so a burst does not start a worker that only lives to be drained, and a lull
between two bursts does not drain one that is needed again a second later:
- up: the signal stayed above a threshold (either one) for `up_after` seconds; the count
  grows in proportion to how far above it stayed (like Kubernetes' HPA: count x pressure),
  by one at least, because a spike is met best at once;
- down: both stayed at or below their low marks for `down_after` seconds; one worker at a
  time, because draining is slow and the last one out should still be needed;
- a `cooldown` between two changes, and only samples taken after the last change count: a
  new worker needs time to show its effect before it is judged;
- never outside [minimum, maximum]; below the minimum (at start) is corrected at once.
Correctness never depends on any of this: a worker drained or killed at any moment hands
its units back (run/worker.py), so the count only changes how soon data arrives.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadyflow.observe import logs

log = logs.get("autoscale")

#: a worker that dies sooner than this after its start is crash-looping: wait before the next
CRASH_WINDOW = 10.0
MAX_RESTART_DELAY = 60.0
#: a worker asked to leave before it is up (registered in the state store, which it does once
#: its SIGTERM handler is set) gets SIGTERM once it is up, or after this long at the latest:
#: a SIGTERM before the handler kills the worker instead of draining it
UP_WAIT = 60.0


# --- the decision (pure) ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Sample:
    """The lag at one moment (monotonic seconds); None where it could not be read."""

    at: float
    backlog: int | None
    lag: float | None


@dataclass(frozen=True, slots=True)
class Policy:
    """When to add and remove workers. Thresholds are absolute, not per worker: the buffer's
    capacity bounds the backlog (backpressure), so a per-worker target could become
    unreachable as workers are added."""

    minimum: int = 1
    maximum: int = 4
    backlog_high: int = 8      # batches waiting: above this is pressure
    lag_high: float = 30.0     # seconds behind the source: above this is pressure
    backlog_low: int = 0       # at or below both lows is quiet
    lag_low: float = 5.0
    up_after: float = 30.0     # pressure held this long before a scale-up
    down_after: float = 120.0  # quiet held this long before a scale-down
    cooldown: float = 60.0     # between two changes

    def __post_init__(self) -> None:
        if not 0 <= self.minimum <= self.maximum or self.maximum < 1:
            raise ValueError(f"need 0 <= min <= max and max >= 1 (got min {self.minimum}, "
                             f"max {self.maximum})")
        if min(self.backlog_low, self.lag_low) < 0:
            raise ValueError("the low marks cannot be negative")
        if self.backlog_low >= self.backlog_high or self.lag_low >= self.lag_high:
            raise ValueError("the low marks must be below the high ones, or one sample could "
                             "be pressure and quiet at once")
        if min(self.up_after, self.down_after, self.cooldown) < 0:
            raise ValueError("up_after, down_after and cooldown cannot be negative")

    @property
    def window(self) -> float:
        """How far back `decide` can look: older samples can be dropped."""
        return max(self.up_after, self.down_after)

    def pressure(self, sample: Sample) -> float | None:
        """How far above its threshold the sample is (> 1: pressure), from whichever of the
        two signals is worse; None if neither could be read."""
        ratios = []
        if sample.backlog is not None:  # the thresholds are > 0: the lows are >= 0 and below
            ratios.append(sample.backlog / self.backlog_high)
        if sample.lag is not None:
            ratios.append(sample.lag / self.lag_high)
        return max(ratios) if ratios else None

    def quiet(self, sample: Sample) -> bool:
        """Both signals read, and both at or below their low marks."""
        return (sample.backlog is not None and sample.lag is not None
                and sample.backlog <= self.backlog_low and sample.lag <= self.lag_low)


@dataclass(frozen=True, slots=True)
class Decision:
    """The worker count to keep, and why (every change is logged with it)."""

    desired: int
    reason: str


def _held(samples: Sequence[Sample], since: float, holds: Callable[[Sample], bool]
          ) -> list[Sample]:
    """The newest unbroken run of samples (taken after `since`) for which `holds` is true."""
    run: list[Sample] = []
    for sample in reversed(samples):
        if sample.at <= since or not holds(sample):
            break
        run.append(sample)
    run.reverse()
    return run


def decide(samples: Sequence[Sample], current: int, last_change: float | None,
           policy: Policy) -> Decision:
    """The worker count to keep, given the samples (oldest first), the count kept now and
    the monotonic time of the last change (None: never changed).

    Time is the newest sample's: the function reads no clock, so a test can replay any
    history.
    """
    if current < policy.minimum:
        return Decision(policy.minimum, f"below the minimum of {policy.minimum}")
    if current > policy.maximum:
        return Decision(policy.maximum, f"above the maximum of {policy.maximum}")
    if not samples:
        return Decision(current, "no lag sample yet")
    now = samples[-1].at
    if last_change is not None and now - last_change < policy.cooldown:
        return Decision(current, f"cooling down ({now - last_change:.1f} of "
                                 f"{policy.cooldown:g} s since the last change)")
    since = -math.inf if last_change is None else last_change
    latest = samples[-1]

    pressed = _held(samples, since, lambda s: (policy.pressure(s) or 0.0) > 1.0)
    if pressed and now - pressed[0].at >= policy.up_after:
        if current >= policy.maximum:
            return Decision(current, f"under pressure ({_describe(latest)}) but at the "
                                     f"maximum of {policy.maximum}")
        sustained = min(policy.pressure(s) or 0.0 for s in pressed)
        wanted = max(current + 1, math.ceil(max(current, 1) * sustained))
        return Decision(min(policy.maximum, wanted),
                        f"{_describe(latest)} above the thresholds (backlog > "
                        f"{policy.backlog_high}, or lag > {policy.lag_high:g} s) for "
                        f"{now - pressed[0].at:.1f} s, at least x{sustained:.2f}")

    calm = _held(samples, since, policy.quiet)
    if calm and now - calm[0].at >= policy.down_after:
        if current <= policy.minimum:
            return Decision(current, f"quiet, at the minimum of {policy.minimum}")
        return Decision(current - 1, f"{_describe(latest)} at or below the low marks "
                                     f"(backlog <= {policy.backlog_low}, lag <= "
                                     f"{policy.lag_low:g} s) for {now - calm[0].at:.1f} s")
    return Decision(current, f"holding ({_describe(latest)})")


def _describe(sample: Sample) -> str:
    backlog = "?" if sample.backlog is None else str(sample.backlog)
    lag = "?" if sample.lag is None else f"{sample.lag:.1f} s"
    return f"backlog {backlog} batches, lag {lag}"


def extraction_lag(highs: Mapping[tuple[str, str], float | None],
                   loaded: Mapping[tuple[str, str], float | None],
                   behind_since: dict[tuple[str, str], float], now: float) -> float:
    """The worst table's lag (seconds): its source's high-water mark minus its newest
    loaded cursor, clamped at 0 (steadyflow_lag_seconds), but never more than how long the
    table has been seen behind (`behind_since`, wall-clock, kept by the caller across
    calls).

    Why the cap: the cursor gap alone includes a table's idle time. A table quiet for an
    hour that gets one new row is "3600 s behind" until that row loads a second later,
    which is no reason for a worker; seen behind for only a second, it counts one second.
    A table that stays behind keeps its first `behind_since`, so its lag is the cursor gap
    once that is the smaller. A table with nothing loaded yet counts from when it was
    first seen so.
    """
    worst = 0.0
    for key, high in highs.items():
        if high is None:  # not a time cursor, or an empty table
            continue
        done = loaded.get(key)
        if done is not None and high <= done:
            behind_since.pop(key, None)
            continue
        seen = now - behind_since.setdefault(key, now)
        worst = max(worst, seen if done is None else min(high - done, seen))
    return worst


# --- reading the lag ----------------------------------------------------------------------
class LagProbe:
    """Reads a pipeline's backlog and extraction lag from its buffer and its state store."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self._behind_since: dict[tuple[str, str], float] = {}

    def read(self, at: float) -> Sample:
        return Sample(at, self._guarded("backlog", self.backlog),
                      self._guarded("extraction lag", self.lag))

    def backlog(self) -> int:
        buffer = self.pipeline.config.buffer
        if buffer.kind == "jetstream":
            return asyncio.run(_consumer_backlog(buffer.url, buffer.stream))
        return int(self.pipeline.buffer.depth())

    def lag(self) -> float:
        state = self.pipeline.state
        highs = {key: high for key, (high, _) in state.polls().items()}
        loaded = {(h.source, h.table): h.newest_cursor_epoch for h in state.health()}
        return extraction_lag(highs, loaded, self._behind_since, time.time())

    def registered_pids(self) -> set[int]:
        """The pids of this host's workers that registered in the state store and run."""
        host = socket.gethostname()
        workers = self._guarded("workers", self.pipeline.state.workers) or []
        return {int(w["pid"]) for w in workers if w["host"] == host
                and w["status"] == "running"}

    def _guarded(self, what: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - an unread signal holds the count
            log.warning("could not read the %s (holding the worker count): %s", what, exc,
                        extra={"stage": "autoscale"})
            return None


async def _consumer_backlog(url: str, stream: str) -> int:
    """The durable loader consumer's undelivered + delivered-but-unacked messages, on a
    connection of its own (one short request every few seconds)."""
    from nats.aio.client import Client

    from steadyflow.buffer.jetstream import CONSUMER

    async def quiet(exc: Exception) -> None:
        """nats-py prints connection errors by default; the caller logs the failure."""

    client = Client()
    await client.connect(servers=[url], connect_timeout=2, allow_reconnect=False,
                         max_reconnect_attempts=0, error_cb=quiet,
                         name=f"steadyflow-autoscale-{stream}")
    try:
        info = await client.jsm(timeout=5).consumer_info(stream, CONSUMER)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    finally:
        await client.close()


# --- the processes ------------------------------------------------------------------------
@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    started: float
    up: bool = False                     # registered in the state: its handlers are set
    stopping: bool = False               # asked to leave: no longer counted as running
    drain_deadline: float | None = None  # SIGTERM sent; SIGKILL from then (monotonic)
    killed: bool = False


@dataclass(frozen=True, slots=True)
class Exit:
    name: str
    pid: int
    code: int
    drained: bool   # it was asked to stop (SIGTERM), as opposed to dying by itself
    killed: bool    # it outlived its drain grace and was SIGKILLed
    lived: float


@dataclass
class WorkerProcesses:
    """The local worker subprocesses: started, drained (SIGTERM, then SIGKILL after the
    grace period), reaped. Started in the autoscaler's process group, so a terminal's Ctrl-C
    reaches them too and each stops itself cleanly."""

    command: list[str]
    grace: float
    up_wait: float = UP_WAIT
    clock: Callable[[], float] = time.monotonic
    procs: list[WorkerProcess] = field(default_factory=list)
    _serial: int = 0

    @property
    def running(self) -> list[WorkerProcess]:
        """Started and not asked to stop, oldest first."""
        return [p for p in self.procs if not p.stopping]

    @property
    def draining(self) -> list[WorkerProcess]:
        return [p for p in self.procs if p.stopping]

    def start(self) -> WorkerProcess:
        self._serial += 1
        name = f"w{self._serial:02d}"
        process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
        proc = WorkerProcess(name, process, self.clock())
        self.procs.append(proc)
        return proc

    def drain(self, proc: WorkerProcess) -> None:
        """Ask one worker to finish the unit in hand and hand its leases back (SIGTERM, as
        soon as it is up: see UP_WAIT)."""
        proc.stopping = True
        self._signal_drains()

    def _signal_drains(self) -> None:
        now = self.clock()
        for proc in self.procs:
            if proc.stopping and proc.drain_deadline is None and (
                    proc.up or now - proc.started >= self.up_wait):
                proc.drain_deadline = now + self.grace
                _signal(proc.process, signal.SIGTERM)

    def drain_youngest(self) -> WorkerProcess | None:
        """Drain the most recently started worker: the oldest ones have warm connections
        and are least likely to be in the middle of their first big unit."""
        running = self.running
        if not running:
            return None
        self.drain(running[-1])
        return running[-1]

    def reap(self) -> list[Exit]:
        """Collect the workers that exited; SIGTERM those asked to leave that are up now,
        SIGKILL those past their drain grace."""
        self._signal_drains()
        now = self.clock()
        exits = []
        for proc in list(self.procs):
            code = proc.process.poll()
            if code is None:
                if proc.drain_deadline is not None and now >= proc.drain_deadline \
                        and not proc.killed:
                    proc.killed = True
                    _signal(proc.process, signal.SIGKILL)
                continue
            self.procs.remove(proc)
            exits.append(Exit(proc.name, proc.process.pid, code, proc.stopping, proc.killed,
                              now - proc.started))
        return exits


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        process.send_signal(sig)
    except ProcessLookupError:  # exited in between: reaped next time
        pass


def worker_command(config: Path, log_level: str, heartbeat: float) -> list[str]:
    return [sys.executable, "-m", "steadyflow", "--log-level", log_level, "worker",
            "-c", str(config), "--heartbeat", f"{heartbeat:g}"]


# --- the loop -----------------------------------------------------------------------------
@dataclass
class AutoscaleMetrics:
    """desired/actual workers and the signal, for /metrics (private registry)."""

    registry: Any = None

    def __post_init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        r = self.registry
        self.desired = Gauge("steadyflow_autoscale_desired_workers",
                             "Workers the autoscaler wants.", registry=r)
        self.actual = Gauge("steadyflow_autoscale_workers",
                            "Worker processes running (not draining).", registry=r)
        self.draining = Gauge("steadyflow_autoscale_draining_workers",
                              "Worker processes asked to stop and not exited yet.", registry=r)
        self.backlog = Gauge("steadyflow_autoscale_backlog_batches",
                             "Buffer backlog at the last sample (pending + ack pending).",
                             registry=r)
        self.lag = Gauge("steadyflow_autoscale_lag_seconds",
                         "Worst table's extraction lag at the last sample.", registry=r)
        self.changes = Counter("steadyflow_autoscale_changes",
                               "Changes of the desired worker count.", ("direction",),
                               registry=r)
        self.restarts = Counter("steadyflow_autoscale_restarts",
                                "Workers restarted after exiting unasked.", registry=r)
        for direction in ("up", "down"):
            self.changes.labels(direction)


class Autoscaler:
    """Samples the lag, decides, and keeps that many local workers running until stopped."""

    def __init__(self, probe: Callable[[float], Sample], workers: WorkerProcesses,
                 policy: Policy, sample_every: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 metrics: AutoscaleMetrics | None = None,
                 registered: Callable[[], set[int]] | None = None) -> None:
        """`registered` gives the pids of this host's workers that registered in the state
        store (LagProbe.registered_pids); None: a worker is up as soon as it is started."""
        self.probe = probe
        self.workers = workers
        self.registered = registered
        self.policy = policy
        self.sample_every = sample_every
        self.clock = clock
        self.metrics = metrics or AutoscaleMetrics()
        self.desired = policy.minimum
        self.last_change: float | None = None
        self.samples: deque[Sample] = deque()
        self._stop = threading.Event()
        self._restart_delay = 0.0
        self._restart_at = 0.0

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        """Scale until stopped, then drain every worker; 0 if all of them left cleanly."""
        log.info("keeping %d to %d workers, starting with %d", self.policy.minimum,
                 self.policy.maximum, self.desired, extra={"stage": "autoscale"})
        try:
            while not self._stop.is_set():
                self.step()
                self._stop.wait(self.sample_every)
        finally:
            clean = self.shutdown()
        return 0 if clean else 1

    def step(self) -> None:
        """One round: sample, reap, decide, act."""
        now = self.clock()
        sample = self.probe(now)
        self.samples.append(sample)
        while self.samples and self.samples[0].at < now - self.policy.window - 1:
            self.samples.popleft()
        self._mark_up()
        self._reap()
        decision = decide(list(self.samples), self.desired, self.last_change, self.policy)
        if decision.desired != self.desired:
            direction = "up" if decision.desired > self.desired else "down"
            log.info("scale %s %d -> %d: %s", direction, self.desired, decision.desired,
                     decision.reason, extra={"stage": "autoscale"})
            self.last_change = now
            self.metrics.changes.labels(direction).inc()
            self.desired = decision.desired
        self._match(now)
        self.metrics.desired.set(self.desired)
        self.metrics.actual.set(len(self.workers.running))
        self.metrics.draining.set(len(self.workers.draining))
        if sample.backlog is not None:
            self.metrics.backlog.set(sample.backlog)
        if sample.lag is not None:
            self.metrics.lag.set(sample.lag)

    def _mark_up(self) -> None:
        pids = self.registered() if self.registered is not None else None
        for proc in self.workers.procs:
            if pids is None or proc.process.pid in pids:
                proc.up = True

    def _reap(self) -> None:
        for done in self.workers.reap():
            if done.drained or self._stop.is_set():  # asked to stop, or Ctrl-C on the group
                how = "SIGKILLed after its drain grace" if done.killed else "drained"
                level = log.info if done.code == 0 and not done.killed else log.warning
                level("worker %s (pid %d) %s, exit code %d", done.name, done.pid, how,
                      done.code, extra={"stage": "autoscale"})
                continue
            self.metrics.restarts.inc()
            if done.lived < CRASH_WINDOW:  # crash-looping (a bad config?): back off
                self._restart_delay = min(MAX_RESTART_DELAY, max(1.0, 2 * self._restart_delay))
            else:
                self._restart_delay = 0.0
            self._restart_at = self.clock() + self._restart_delay
            log.warning("worker %s (pid %d) exited by itself with code %d after %.1f s; "
                        "restarting it%s", done.name, done.pid, done.code, done.lived,
                        f" in {self._restart_delay:g} s" if self._restart_delay else "",
                        extra={"stage": "autoscale"})

    def _match(self, now: float) -> None:
        """Start or drain workers until as many run as desired."""
        while len(self.workers.running) > self.desired:
            proc = self.workers.drain_youngest()
            if proc is None:
                break
            log.info("draining worker %s (pid %d): SIGTERM once it is up, SIGKILL %g s later",
                     proc.name, proc.process.pid, self.workers.grace,
                     extra={"stage": "autoscale"})
        while (len(self.workers.running) < self.desired and now >= self._restart_at
               and not self._stop.is_set()):
            proc = self.workers.start()
            log.info("started worker %s (pid %d); %d running", proc.name, proc.process.pid,
                     len(self.workers.running), extra={"stage": "autoscale"})

    def shutdown(self) -> bool:
        """Drain every worker, wait for all to exit (SIGKILL after the grace period)."""
        self.desired = 0
        for proc in self.workers.running:
            self.workers.drain(proc)
        if self.workers.procs:
            log.info("stopping: draining %d workers", len(self.workers.procs),
                     extra={"stage": "autoscale"})
        clean = True
        while self.workers.procs:
            if any(p.drain_deadline is None for p in self.workers.procs):
                self._mark_up()  # SIGTERM waits for a worker to be up (UP_WAIT)
            for done in self.workers.reap():
                clean = clean and done.code == 0 and not done.killed
                log.info("worker %s (pid %d) stopped, exit code %d%s", done.name, done.pid,
                         done.code, " (SIGKILLed)" if done.killed else "",
                         extra={"stage": "autoscale"})
            time.sleep(0.2)
        self.metrics.desired.set(0)
        self.metrics.actual.set(0)
        self.metrics.draining.set(0)
        return clean


def serve_metrics(metrics: AutoscaleMetrics, host: str, port: int) -> Callable[[], None]:
    """Serve /metrics in a thread; returns how to stop it."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, host, registry=metrics.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


__all__ = ["Autoscaler", "Decision", "LagProbe", "Policy", "Sample", "WorkerProcesses",
           "decide", "extraction_lag", "worker_command"]
