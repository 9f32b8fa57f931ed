"""Freshness budget trace for bench/spike.py's steadyflow child (session 12).

    SF_TRACE=/tmp/t.jsonl PYTHONPATH=bench/budget_trace:src bench/.venv/bin/python \\
        bench/spike.py --tool steadyflow --scale 0.25 --out /tmp/SPIKE.md
    bench/.venv/bin/python bench/budget.py /tmp/t.jsonl

Loaded by every interpreter started with it on PYTHONPATH (sitecustomize); it does nothing
without SF_TRACE. Once `run --follow` begins it wraps the extractor's poll, page read and
publish, the landing write, the SQLite buffer's get, the loader's handle_all, the
PostgreSQL warehouse's load_group and parts, and the state commits, and appends one JSON
line per event to $SF_TRACE (flushed every 2 s). Times are wall clock, comparable with the
rows' cursor (the bench stamps updated_at with the writer's clock just before its commit),
so each batch's rows get a commit -> poll -> read -> landed -> buffered -> loader ->
committed budget, and every 2 s the process's CPU time (user, system) so far, so a phase's
CPU per published row can be compared between runs. Not for production: the wrappers cost
~0.3 ms per batch.
"""

from __future__ import annotations

import atexit
import builtins
import json
import os
import threading
import time
from typing import Any

PATH = os.environ.get("SF_TRACE")
_events: list[tuple[Any, ...]] = []
_lock = threading.Lock()
_local = threading.local()
_patched: list[bool] = []  # non-empty once patch() ran: this is the steadyflow child
STATE_CALLS = ("next_seq", "record_landed", "advance_checkpoint", "record_poll", "_mark",
               "checkpoint", "look_after", "batch")


def emit(*event: Any) -> None:
    with _lock:
        _events.append(event)


def flush() -> None:
    with _lock:
        events = list(_events)
        _events.clear()
    if events and PATH:
        with open(PATH, "a") as out:
            for event in events:
                out.write(json.dumps(event, default=str) + "\n")


def _flusher() -> None:
    while True:
        time.sleep(2)
        if _patched:  # the steadyflow child, not the bench itself
            cpu = os.times()  # the process's CPU so far: budget.py's CPU per row of a phase
            emit("cpu", time.time(), cpu.user, cpu.system)
        flush()


def _cursor_epochs(rows: Any) -> tuple[float | None, float | None, float | None]:
    """(min, max, mean) of the batch's updated_at as epoch seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        column = rows.column("updated_at")
        micros = pc.cast(pc.cast(column, pa.timestamp("us", tz=column.type.tz)), pa.int64())
        ends = pc.min_max(micros)
        return (ends["min"].as_py() / 1e6, ends["max"].as_py() / 1e6,
                pc.mean(micros).as_py() / 1e6)
    except Exception as exc:  # noqa: BLE001 - the trace never breaks a publish
        emit("trace_error", repr(exc))
        return None, None, None


def _wrap_state(cls: type, name: str) -> None:
    original = cls.__dict__[name]

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return original(self, *args, **kwargs)
        finally:
            emit("state", name, started, time.time())

    setattr(cls, name, timed)


def _wrap_step(owner: Any, name: str, label: str) -> None:
    """A step of a poll timed as ("step", label, start, end): where a poll's time goes."""
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            emit("step", label, started, time.time())

    setattr(owner, name, timed)


def _wrap_lateness(scheduler: Any) -> None:
    """How late each poll starts after its due time (a free poll thread was waited for)."""
    original = scheduler._run_unit

    def run_unit(self: Any, unit: Any) -> Any:
        emit("late", unit.key, time.time(), max(0.0, self.clock() - unit.due))
        return original(self, unit)

    scheduler._run_unit = run_unit


def patch() -> None:  # noqa: C901, PLR0915 - one wrapper per traced step, read top down
    from steadyflow.buffer import sqlite as sqlite_buffer
    from steadyflow.land import parquet
    from steadyflow.merge import postgres
    from steadyflow.run import extract, load
    from steadyflow.state import sqlite as sqlite_state
    from steadyflow.state import store

    extractor = extract.TableExtractor
    run, publish = extractor.run, extractor.publish

    def traced_run(self: Any, db: Any, dry_run: bool = False, **kwargs: Any) -> Any:
        _local.poll = started = time.time()
        try:
            return run(self, db, dry_run=dry_run, **kwargs)
        finally:
            emit("poll", self.ref.label, started, time.time())

    def traced_publish(self: Any, rows: Any, low: Any, high: Any, meta: Any = None,
                       advance: Any = None, seq: Any = None) -> Any:
        started = time.time()
        lo, hi, mean = _cursor_epochs(rows)
        ref = publish(self, rows, low, high, meta, advance, seq)
        emit("pub", self.ref.label, ref.batch_id, rows.num_rows, lo, hi, mean,
             getattr(_local, "poll", None), started, getattr(_local, "landed", None),
             time.time())
        return ref

    extractor.run, extractor.publish = traced_run, traced_publish
    store_prepared = parquet.LandingZone.store_prepared

    def traced_store(self: Any, prepared: Any) -> Any:
        result = store_prepared(self, prepared)
        _local.landed = time.time()
        return result

    parquet.LandingZone.store_prepared = traced_store
    get = sqlite_buffer.SqliteBuffer.get

    def traced_get(self: Any, wait: float = 0.0) -> Any:
        started = time.time()
        delivery = get(self, wait)
        if delivery is not None:
            emit("get", delivery.ref.batch_id, started, time.time())
        return delivery

    sqlite_buffer.SqliteBuffer.get = traced_get
    handle_all = load.BatchLoader.handle_all

    def traced_handle_all(self: Any, batches: Any) -> Any:
        started = time.time()
        emit("group", len(batches), started)
        for batch, result in handle_all(self, batches):
            emit("done", batch.batch_id, started, time.time(), type(result).__name__)
            yield batch, result

    load.BatchLoader.handle_all = traced_handle_all
    warehouse = postgres.PostgresWarehouse
    load_group, load_part, copy_direct = (warehouse.load_group, warehouse._load_part,
                                          warehouse._copy_direct)

    def traced_load_group(self: Any, parts: Any) -> Any:
        started, ids = time.time(), []

        def noted() -> Any:
            for part in parts:
                ids.append(part.batch.batch_id)
                yield part

        result = load_group(self, noted())
        emit("commit", ids, started, time.time())
        return result

    def traced_load_part(self: Any, conn: Any, part: Any) -> Any:
        started = time.time()
        _local.kind = "dup"
        result = load_part(self, conn, part)
        emit("part", part.batch.batch_id, part.rows.num_rows, getattr(_local, "kind", "?"),
             started, time.time())
        return result

    def traced_copy_direct(self: Any, conn: Any, ref: Any, target: Any, rows: Any) -> Any:
        direct = copy_direct(self, conn, ref, target, rows)
        _local.kind = "direct" if direct else "staged"
        return direct

    warehouse.load_group, warehouse._load_part = traced_load_group, traced_load_part
    warehouse._copy_direct = traced_copy_direct
    for name in STATE_CALLS:
        for cls in (sqlite_state.SqliteStateStore, store.StateStore, load.BatchLoader):
            if name in cls.__dict__:
                _wrap_state(cls, name)
    from steadyflow.extract import innodb_trx, sql
    from steadyflow.run import lease, scheduler

    _wrap_step(sql.SqlSource, "poll_end", "poll_end")
    _wrap_step(sql.SqlSource, "probe", "probe")
    _wrap_step(innodb_trx, "observe", "innodb_trx")
    _wrap_step(extractor, "_read_page", "read_page")
    _wrap_step(extractor, "_idle", "idle_check")
    _wrap_step(lease, "_acquire", "lease_acquire")
    _wrap_step(lease.KeptLease, "release", "lease_release")
    _wrap_step(parquet.LandingZone, "prepare", "parquet_prepare")
    _wrap_lateness(scheduler.Scheduler)
    _patched.append(True)


if PATH:
    threading.Thread(target=_flusher, daemon=True).start()
    atexit.register(flush)
    _import = builtins.__import__

    def _patching_import(name: str, *args: Any, **kwargs: Any) -> Any:
        module = _import(name, *args, **kwargs)
        if name.startswith("steadyflow.run.follow") and not getattr(_local, "patched", False):
            builtins.__import__ = _import
            try:
                patch()
            except Exception as exc:  # noqa: BLE001 - a trace that cannot patch says so
                emit("patch_error", repr(exc))
        return module

    builtins.__import__ = _patching_import
