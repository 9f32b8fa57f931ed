"""One snapshot of pipeline health, shared by `steadyflow status`, the status page and
the metrics endpoint, so all three always agree.

The snapshot is scrubbed of registered secrets here, where it is made, so no consumer
(`status --json`, /api/status, the page) can show one: errors in state were scrubbed when
written, but a state file written by an older version, or a secret registered only now,
is caught here too.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from steadyflow.errors import StateUnavailable, SteadyflowError
from steadyflow.run.lock import loop_status
from steadyflow.run.worker import held_by
from steadyflow.secrets import scrub_tree


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def snapshot(pipeline: Any) -> dict[str, Any]:
    """`collect`, or when the state cannot be read (a SQLite state file locked by another
    process past its busy timeout, corrupt, or deleted; a PostgreSQL state store down) a
    failing report that says so: /api/status answered 500 "internal error" and `status`
    a traceback with exit code 1 (degraded), neither naming the problem."""
    try:
        return collect(pipeline)
    except (sqlite3.Error, SteadyflowError) as exc:
        return unreadable(pipeline, exc)


def unreadable(pipeline: Any, exc: BaseException) -> dict[str, Any]:
    """The report of a pipeline whose state cannot be read: failing (exit 2), the reason
    in `state_error`, each configured table's state 'unknown' (nothing about it can be
    said), the readings that come from state absent (None), never 0."""
    where = getattr(pipeline.state, "where", None) or "the state store"
    return _failing(pipeline.config, where, exc, _queue(pipeline.buffer),
                    pipeline.buffer.capacity)


def unopened(config: Any, exc: BaseException) -> dict[str, Any]:
    """`unreadable`'s report for a pipeline whose state could not even be opened (its
    file overwritten, unreadable): `status --json` printed a plain error line, no JSON,
    so a script or a check reading it got nothing to parse. The buffer is not opened:
    its readings are unknown (None)."""
    where = (str(config.resolve(config.state_dir) / "state.db")
             if config.state.kind == "sqlite" else "the state store")
    return _failing(config, where, exc, (None, None, None), config.buffer.capacity)


def _failing(config: Any, where: str, exc: BaseException,
             queue: tuple[int | None, float | None, str | None],
             capacity: int | None) -> dict[str, Any]:
    """The failing report of a state that cannot be read (`where`: its file or store);
    the loop named all the same (its lock file is not the state): a suspended or killed
    one is what to act on first."""
    error = (f"the state cannot be read ({where}): {type(exc).__name__}: {exc}"
             if isinstance(exc, sqlite3.Error) or where not in str(exc)
             else f"the state cannot be read: {exc}")
    tables = [{"table": ref.label, "source": ref.source, "name": ref.table,
               "target": ref.target, "state": "unknown", "freshness_seconds": None,
               "freshness_human": "unknown", "lag_seconds": None, "lag_human": "–",
               "newest_cursor": None, "last_success": None, "last_success_human": "unknown",
               "last_error": None, "last_error_at": None, "rows_changed": None,
               "rows_reread": None, "rows_loaded": None, "rows_quarantined": None,
               "rows_in_quarantine": None,
               "open_quarantine_batches": None, "page_size": None, "breaker": None,
               "failing_batches": None, "holder": None, "unloaded_seconds": None,
               "last_poll_seconds": None, "last_poll_human": "unknown"}
              for _, _, ref in config.tables()]
    depth, oldest, buffer_error = queue
    try:
        loop = loop_status(config.resolve(config.state_dir))
    except OSError:
        loop = None
    report: dict[str, Any] = scrub_tree({
        "pipeline": config.name, "at": time.time(), "tables": tables,
        "state_error": error, "disk_error": full_disks(config),
        "queue_depth": depth,
        "queue_capacity": capacity, "queue_oldest_seconds": oldest,
        "buffer_error": buffer_error, "pending_batches": None, "pending_rows": None,
        "loop": loop, "runs": [], "workers": [], "reconcile": []})
    report["health"], report["exit_code"] = overall(report)
    return report


def _check_state(pipeline: Any, loop: dict[str, Any] | None) -> None:
    """Raise StateUnavailable when the state this process reads is not the pipeline's:
    its file was deleted or replaced under this process, or this process had to create it
    while a loop runs (that loop records into a file nobody else can open now); the
    readings would be those of a file nobody writes (the old one, or an empty one that
    said 'waiting', healthy, exit 0)."""
    replaced = getattr(pipeline.state, "replaced", None)
    problem = replaced() if replaced is not None else None
    if (problem is None and getattr(pipeline.state, "created", False) and loop is not None
            and loop.get("status") in ("running", "suspended")
            and loop.get("pid") != os.getpid()):  # another process's loop
        problem = (f"the state file {pipeline.state.where} was missing while "
                   f"`steadyflow {loop.get('command')}` (pid {loop.get('pid')}) runs: it "
                   "records into a file that was deleted or moved; restart it")
    if problem is not None:
        raise StateUnavailable(problem, stage="state")


def still_parked(item: dict[str, Any]) -> int:
    """What an open quarantine entry still holds: its rows less those its last replay let
    through (each replay validates all of them again); a raw HTTP page counts as itself
    until it parses whole. The status page showed the rows ever quarantined beside the
    open entries ('2 rows, in 0 open batches' once every row was replayed)."""
    from steadyflow.extract.http import is_raw_page, is_rejected_records

    if is_raw_page(item["path"]) and not is_rejected_records(item["path"]):
        return int(item["rows"])
    return max(0, int(item["rows"]) - int(item["replayed_rows"] or 0))


def collect(pipeline: Any) -> dict[str, Any]:
    now = pipeline.state.now()  # the clock the state's times were stamped by
    loop = loop_status(pipeline.config.resolve(pipeline.config.state_dir))
    _check_state(pipeline, loop)
    health = {(h.source, h.table): h for h in pipeline.state.health()}
    quarantined = pipeline.state.quarantined("open")
    failing = pipeline.state.failing_batches()
    leases = pipeline.state.leases()
    holders = {(lease["source"], lease["table"]): lease["holder"]
               for lease in leases if lease["chunk"] is None}
    polls = pipeline.state.polls()
    pending_since = pipeline.state.pending_since()
    highs = {key: high for key, (high, _) in polls.items()}
    workers = _holding_now(pipeline.state.workers(), leases)
    # something is meant to poll every table now: a follow loop or a worker runs
    polling = (loop is not None and loop["status"] == "running"
               and loop.get("command") in _LOOPS) or any(
        w["status"] == "running" for w in workers)
    tables = []
    for _, t, ref in pipeline.config.tables():
        h = health.get((ref.source, ref.table))
        polled_at = polls.get((ref.source, ref.table), (None, None))[1]
        since_poll = max(0.0, now - polled_at) if polled_at is not None else None
        freshness = (now - h.newest_cursor_epoch) if h and h.newest_cursor_epoch else None
        since_success = (now - h.last_success) if h and h.last_success else None
        high = highs.get((ref.source, ref.table))
        landed = pending_since.get((ref.source, ref.table))
        unloaded = max(0.0, now - landed) if landed is not None else None
        # lag, not freshness, says whether the table is behind (the alerts' measure, see
        # PipelineMetrics._lag_of): the source's newest cursor the last successful poll
        # saw minus the newest loaded; 0 on an idle table however old its data is
        lag = (max(0.0, high - h.newest_cursor_epoch) if high is not None and h is not None
               and h.newest_cursor_epoch is not None else None)
        tables.append({
            "table": ref.label, "source": ref.source, "name": ref.table, "target": ref.target,
            "freshness_seconds": freshness, "freshness_human": human_age(freshness),
            "lag_seconds": lag, "lag_human": human_age(lag) if lag is not None else "–",
            "newest_cursor": h.newest_cursor if h else None,
            "last_success": h.last_success if h else None,
            "last_success_human": (human_age(since_success) + " ago") if since_success
            is not None else "never",
            "last_error": h.last_error if h else None,
            "last_error_at": h.last_error_at if h else None,
            # changed: inserted or updated in the warehouse; reread: read again without
            # effect (lookback); loaded (their sum) is kept for older readers
            "rows_changed": h.rows_changed if h else 0,
            "rows_reread": h.rows_reread if h else 0,
            "rows_loaded": h.rows_loaded if h else 0,
            # every row quarantined since the table's start (replayed ones included),
            # and those its open entries still hold
            "rows_quarantined": h.rows_quarantined if h else 0,
            "rows_in_quarantine": sum(still_parked(q) for q in quarantined
                                      if q["source"] == ref.source and q["table"] == ref.table),
            "open_quarantine_batches": sum(1 for q in quarantined if q["source"] == ref.source
                                           and q["table"] == ref.table),
            "page_size": h.page_size if h else None,
            "breaker": h.breaker if h else None,
            "failing_batches": failing.get((ref.source, ref.table), 0),
            # host:pid of the process extracting the table now (its lease), or None
            "holder": _process(holders.get((ref.source, ref.table))),
            # how long its oldest landed batch has waited to load (None: none waits)
            "unloaded_seconds": unloaded,
            # the last time the source was read to its end (any process)
            "last_poll_seconds": since_poll,
            "last_poll_human": (human_age(since_poll) + " ago") if since_poll is not None
            else "never",
            "state": ("failing" if failing.get((ref.source, ref.table)) and h is not None
                      and h.last_success else _state(h, polled_at,
                                                     failing.get((ref.source, ref.table)))),
        })
        # a table failing since its last success is stalled too once its polls have
        # failed that long: it said 'failing' (degraded, exit 1) for ever, while a table
        # that never loaded said 'error' (failing) and SteadyflowPollFailing fired
        if (polling and tables[-1]["state"] in ("ok", "failing") and since_poll is not None
                and since_poll > stalled_after(pipeline.config, t)
                and pipeline.state.backfill(ref.source, ref.table) is None):
            tables[-1]["state"] = "stalled"
        elif (polling and tables[-1]["state"] in ("ok", "failing") and unloaded is not None
              and unloaded > behind_after(pipeline.config, t)):
            # 'failing' too: a poll error since the last success (degraded, exit 1) hid
            # a loader that had loaded nothing of the table for hours
            tables[-1]["state"] = "behind"
    pending = pipeline.state.pending_batches()
    runs = pipeline.state.runs(10)
    ahead = max((at - now for at in (*(p for _, p in polls.values()), *pending_since.values(),
                                     *(h.last_success or 0 for h in health.values()))),
                default=0.0)
    if loop is not None and loop["status"] == "killed":
        # its unfinished runs are not running: nothing runs this pipeline any more
        runs = [{**r, "outcome": "killed"} if r["ended_at"] is None and r["command"] == "run"
                and r["started_at"] >= float(loop.get("since") or 0) - 1 else r for r in runs]
    depth, oldest, buffer_error = _queue(pipeline.buffer)
    report: dict[str, Any] = scrub_tree({
        "pipeline": pipeline.config.name,
        "at": now,
        # a folder the pipeline writes whose filesystem is full, or None
        "disk_error": full_disks(pipeline.config),
        "tables": tables,
        "queue_depth": depth,
        "queue_capacity": pipeline.buffer.capacity,
        "queue_oldest_seconds": oldest,
        # why the buffer could not be read (its server unreachable), or None
        "buffer_error": buffer_error,
        "pending_batches": len(pending),
        "pending_rows": sum(b.rows for b in pending),
        # the loop (run, run --follow, serve --run) named by the state directory's lock
        "loop": loop,
        "runs": runs,
        "workers": workers,
        "reconcile": pipeline.state.last_reconcile(),
        # times recorded ahead of this host's clock: it stepped back (or the recording
        # host's runs ahead), and every age measured from them reads 0 until it catches up
        "clock_error": (f"times in the state are up to {human_age(ahead)} ahead of this "
                        "host's clock (it stepped back, or the host that recorded them "
                        "runs ahead): ages read from them (last poll, unloaded, last "
                        "success) show 0 until it catches up, and a table cannot be "
                        "called stalled or behind meanwhile") if ahead > CLOCK_AHEAD
        else None,
    })
    report["health"], report["exit_code"] = overall(report)
    return report


#: seconds a recorded time may lie ahead of this host's clock before status says so
#: (hosts' clocks differ a little)
CLOCK_AHEAD = 60.0
#: `steadyflow status` exit codes, by overall health (docs/operations.md lists them)
EXIT_CODES = {"healthy": 0, "degraded": 1, "failing": 2}
_FAILING_STATES = {"error", "source down", "stalled", "behind"}
#: commands whose loop is meant to run until stopped: killed, nothing moves data any more
_LOOPS = {"run --follow", "serve --run"}
#: a table not read to its end for this long while a loop or a worker runs is stalled
#: (SteadyflowPollFailing's 15 min, deploy/prometheus/alerts.yml)
STALLED_AFTER = 900.0


def behind_after(config: Any, table: Any) -> float:
    """Seconds a table's oldest landed batch may wait to load, while a loop or a worker
    runs, before the table is behind (failing): its own `behind_after`, else
    run.behind_after (15 min by default). Its loader is blocked then (a lock another
    warehouse session holds, a hung merge) or cannot keep up. Its lag could not say it:
    measured in cursor time at a successful poll, it stays what the source was ahead when
    the loader stopped (minutes) while no row loads for hours; the polls went on, so the
    table was 'ok' and status healthy, exit 0. The bound was fixed at 15 min: too long
    for a table whose data is due in the warehouse within a minute, too short for one
    loaded in a nightly window."""
    own = getattr(table, "behind_after", None)
    return float(own if own is not None else config.run.behind_after)


def stalled_after(config: Any, table: Any) -> float:
    """Seconds without a successful poll after which a table is stalled: STALLED_AFTER, or
    three of its longest idle pauses if longer (run/follow.py cadence_of).

    Its lag cannot say it: lag is measured at a successful poll, so it stayed 0 (status
    healthy) while a worker's extraction waited for ever on a buffer it could not reach
    (NATS cut from its host only) or a poll hung, the worker's heartbeat going on. A
    table's first load (which records no poll until done) and a pipeline that nothing
    polls now (`run` from cron: its tables wait for the next run) are not stalled."""
    pause = table.poll_max if table.poll_max is not None else config.run.interval
    return max(STALLED_AFTER, 3 * float(pause))


def full_disks(config: Any) -> str | None:
    """The local folders the pipeline writes (state_dir: state, buffer, loop lock; the
    landing folder; a DuckDB warehouse's) whose filesystem has less than DISK_FULL_BELOW
    free, named with what is free, or None. Nothing can record that it failed for want of
    space (its error would be written to the full state), so status said healthy, exit 0,
    with the last poll growing towards 'stalled' (15 min), while no row moved."""
    folders = [config.resolve(config.state_dir)]
    if config.landing.url is None:
        folders.append(config.resolve(config.landing.path))
    if config.warehouse.kind == "duckdb":
        folders.append(config.resolve(config.warehouse.path or "warehouse.duckdb").parent)
    full: list[str] = []
    seen: set[int] = set()
    for folder in folders:
        path = Path(folder)
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        if st.f_fsid in seen:
            continue
        seen.add(st.f_fsid)
        free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
        if free < DISK_FULL_BELOW:
            full.append(f"{folder} ({free // 1024} KiB free)")
    return (f"the disk is full under {', '.join(full)}: nothing lands, loads or is "
            "recorded (not even the error); free space there") if full else None


#: free bytes under a folder the pipeline writes below which status calls its disk full
DISK_FULL_BELOW = 1 << 20


def _queue(buffer: Any) -> tuple[int | None, float | None, str | None]:
    """(depth, oldest message's age, None), or (None, None, why) when the buffer cannot be
    read: an unreachable NATS server is a pipeline that moves nothing, not an empty queue
    (and not a status that cannot be shown at all)."""
    try:
        return buffer.depth(), buffer.oldest_age(), None
    except (SteadyflowError, sqlite3.Error) as exc:  # sqlite3: its file damaged or gone
        return None, None, f"the buffer cannot be read: {exc}"


def overall(report: dict[str, Any], loop_error: str | None = None) -> tuple[str, int]:
    """The pipeline's health in one word, and the exit code `status` gives it.

    failing (2): a table in error, stalled, behind (a batch waiting 15 min to load) or
    whose source is down, an open breaker, a
    batch that failed for good, a stopped loop, a follow loop killed (it never let go of
    its lock) or suspended (SIGSTOP, Ctrl-Z: it holds its lock and moves nothing),
    workers that ran and none of which runs now, one lost (not heard of) or
    failed (its loop ended by itself), a buffer or a state that cannot be read, a full
    disk under the state, landing or DuckDB warehouse (disk_error): data is
    not moving and will not by itself, or nothing can be told of it.
    degraded (1): a table that failed since its last success (it retries), a half-open
    breaker, times recorded ahead of the clock (clock_error: ages cannot be trusted), a
    one-off command (`run`, `reset`) killed before it finished, a table whose last
    reconcile left rows missing or mismatched (unreconciled), or a last run that
    failed (failed_run).
    healthy (0): everything else, tables still waiting for their first load too.
    """
    tables = report.get("tables", [])
    workers = report.get("workers", [])
    loop = report.get("loop") or {}
    if loop.get("status") in ("killed", "suspended") and loop.get("command") in _LOOPS:
        return "failing", EXIT_CODES["failing"]
    if workers and not any(w["status"] == "running" for w in workers) and any(
            w["status"] in ("lost", "failed") for w in workers):
        return "failing", EXIT_CODES["failing"]  # workers ran, and none is heard of now
    if loop_error or report.get("buffer_error") or report.get("state_error") or report.get(
            "disk_error") or any(
            t["state"] in _FAILING_STATES or t.get("breaker") == "open"
            or t.get("failing_batches") for t in tables):
        return "failing", EXIT_CODES["failing"]
    if loop.get("status") == "killed" or report.get("clock_error") or any(
            t["state"] == "failing" or t.get("breaker") == "half-open" for t in tables
    ) or unreconciled(report) or failed_run(report):
        return "degraded", EXIT_CODES["degraded"]
    return "healthy", EXIT_CODES["healthy"]


def failed_run(report: dict[str, Any]) -> str | None:
    """One line for operators when the last finished run (or follow round) failed, or the
    last `extract` or `load` run alone (from cron) did, unless a later `run` did that stage
    since. Its error need not be any table's: a warehouse that cannot be opened fails the
    run before a batch is tried, and status said healthy (exit 0) after every such run."""
    finished = [r for r in report.get("runs") or [] if r.get("ended_at") is not None]
    texts: list[str] = []
    told: set[int] = set()
    for stage in ("extract", "load"):
        last = next((r for r in finished if r.get("command") in ("run", stage)), None)
        if last is None or last.get("outcome") != "error" or last["run_id"] in told:
            continue
        told.add(last["run_id"])
        name = "run" if last["command"] == "run" else f"`{last['command']}`"
        texts.append(f"the last {name} ({human_age(time.time() - float(last['ended_at']))} "
                     f"ago) failed: {last.get('error') or 'see its log'}")
    return "; ".join(texts) or None


def unreconciled(report: dict[str, Any]) -> list[str]:
    """One line for each configured table whose last reconcile left rows missing,
    mismatched or twice in the warehouse (a repair, or a clean reconcile, ends it): the
    warehouse is known wrong, and nothing in the loop mends it by itself. Extra rows are
    not counted: without mirror_deletes the warehouse keeps rows deleted at the source."""
    tables = {(t["source"], t["name"]) for t in report.get("tables", [])}
    lines = []
    for r in report.get("reconcile") or []:
        bad = {k: int(r.get(k) or 0) for k in ("missing", "mismatched", "duplicates")}
        if (r["source"], r["table"]) in tables and any(bad.values()):
            found = ", ".join(f"{n} {k}" for k, n in bad.items() if n)
            lines.append(f"{r['source']}.{r['table']}: its last reconcile "
                         f"({human_age(time.time() - float(r['at'] or 0))} ago) found {found} "
                         "rows; `steadyflow reconcile --repair` mends them")
    return lines


def killed_loop(loop: dict[str, Any]) -> str:
    """One line for operators about a loop that ended without letting go of its lock."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(loop.get("since") or 0)))
    return (f"`steadyflow {loop.get('command')}` (pid {loop.get('pid')} on host "
            f"{loop.get('host')}, started {since}) was killed: it ended without stopping, "
            f"and nothing runs this pipeline now")


def suspended_loop(loop: dict[str, Any]) -> str:
    """One line for operators about a loop whose process is stopped (SIGSTOP, Ctrl-Z)."""
    return (f"`steadyflow {loop.get('command')}` (pid {loop.get('pid')} on host "
            f"{loop.get('host')}) is suspended (stopped by a signal): nothing moves until "
            f"it is continued (kill -CONT {loop.get('pid')}, or `fg` in its terminal)")


def _holding_now(workers: list[dict[str, Any]], leases: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Workers no longer running (lost, stopped) hold what the leases of this snapshot say
    they still hold, not what their last heartbeat said: a worker killed while extracting
    a table was listed as holding it for as long as it was listed (an hour), after its
    lease had expired and while another worker held the table."""
    return [w if w["status"] == "running" else {**w, "units": held_by(w["host"], w["pid"],
                                                                       leases)}
            for w in workers]


def _process(holder: str | None) -> str | None:
    """host:pid of a lease holder ("host:pid:token"), the name a worker is listed under."""
    return ":".join(holder.split(":")[:2]) if holder else None


def _state(h: Any, polled_at: float | None, failing_batches: int | None) -> str:
    """A table's error is over once a later load succeeded, or a later poll read its
    source to the end while none of its batches fails to load (a load error stays on its
    batch until it loads): a source back after an outage with nothing new to load stayed
    'failing' until a new row arrived, on an idle table for ever."""
    over = bool(h is not None and h.last_error_at is not None and polled_at is not None
                and polled_at > h.last_error_at and not failing_batches)
    if h is None or h.last_success is None:
        return "error" if h is not None and h.last_error and not over else "waiting"
    if h.breaker == "open":
        return "source down"
    if h.last_error_at and h.last_error_at > h.last_success and not over:
        return "failing"
    return "ok"
