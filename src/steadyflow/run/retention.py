"""`steadyflow gc`: delete the landed files of loaded batches older than landing.retention.

Without it the landing zone only grows. A landed file is the replayable truth only until
its batch is in the warehouse; after that it serves `replay` (e.g. after a warehouse
restore) for as long as the operator chooses to keep it: that is the retention.

A file is deleted only when EVERY batch in it (one, or all of a compacted file's) is
loaded, landed longer ago than the retention, has no open quarantine entry and is not in
the buffer; a batch not yet loaded is never touched, whatever its age. A loaded batch can
still be queued: its loader was killed after marking it loaded, before the ack, and the
redelivery reads its file (before the ledger tells it the batch is a duplicate), so its
deleted file failed the next run with 'landed file missing'. Its
manifest rows stay, as history, with status 'gone'. The file is deleted before the rows
are marked: a crash between the two leaves rows whose file is already gone, and the next
`gc` deletes (a no-op) and marks them; the other order could leave a file no row leads to.

An HTTP table also lands each raw answer (`<table>.raw/`) and records it could not place
(`<table>.rejected/`). No manifest row names them: they matter only while an open
quarantine entry does (`quarantine replay` re-parses them). Those older than the retention,
by the day of their folder, are deleted unless an open entry names them.

Parked rows (`_quarantine/`, validate/quarantine.py) are the only copy of rows a replay can
still load, so a file an open quarantine entry names is kept whatever its age. Once the
entry is closed (every row loaded by a replay: 'replayed'; or `quarantine resolve`:
'resolved') its file goes when that is older than the retention (the entry stays, as
history). A file no entry names (a
parking killed before it was indexed: its batch, redelivered, parks again) goes once its
day is older than the retention; a parking in progress is always younger.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from steadyflow.extract.http import RAW_SUFFIX, REJECTED_SUFFIX
from steadyflow.land.parquet import LandingZone, day_of
from steadyflow.model import BatchRef
from steadyflow.observe import logs
from steadyflow.state import StateStore
from steadyflow.validate.quarantine import QUARANTINE_SOURCE_DIR

if TYPE_CHECKING:
    from steadyflow.run.pipeline import Pipeline

log = logs.get("gc")

LOADED = ("loaded", "duplicate")
CLOSED = ("replayed", "resolved")  # quarantine entries whose parked rows no replay needs
DAY = 86_400.0


@dataclass
class GcResult:
    files_deleted: int = 0
    batches_gone: int = 0
    files_kept: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"files_deleted": self.files_deleted, "batches_gone": self.batches_gone,
                "files_kept": self.files_kept}


def gc_pipeline(pipeline: Pipeline, retention: float | None = None) -> GcResult:
    """`steadyflow gc`: with landing.retention unless `retention` (seconds) is given."""
    keep = pipeline.config.landing.retention if retention is None else retention
    pages = [f"{ref.source}/{ref.table}{suffix}/" for s, _, ref in pipeline.config.tables()
             if s.kind == "http" for suffix in (RAW_SUFFIX, REJECTED_SUFFIX)]
    return collect(pipeline.landing, pipeline.state, keep, pages=pages,
                   queued=pipeline.buffer.contains)


def collect(landing: LandingZone, state: StateStore, retention: float,
            now: float | None = None, pages: Sequence[str] = (),
            queued: Callable[[str], bool] = lambda batch_id: False) -> GcResult:
    """Delete the files of loaded batches landed more than `retention` seconds ago (see the
    module docstring). A retention of 0 keeps every file. `queued(batch_id)`: still in
    the buffer (a redelivery will read its file)."""
    result = GcResult()
    if retention <= 0:
        return result
    cutoff = (time.time() if now is None else now) - retention
    open_quarantine = {q["batch_id"] for q in state.quarantined("open")}
    files: dict[str, list[tuple[BatchRef, str]]] = {}
    # batches landed since are never collected; a file holds batches of one day folder, so
    # one landed up to two days later still shows whether a file is shared with it
    for ref, status in state.landed_batches(before=cutoff + 2 * DAY):
        files.setdefault(ref.path, []).append((ref, status))
    for path, entries in files.items():
        expired = all(status in LOADED and ref.landed_at < cutoff
                      and ref.batch_id not in open_quarantine for ref, status in entries)
        if not expired or any(queued(ref.batch_id) for ref, _ in entries):
            result.files_kept += 1
            continue
        landing.store.delete(path)
        ids = [ref.batch_id for ref, _ in entries]
        state.mark_gone(ids)
        result.files_deleted += 1
        result.batches_gone += len(ids)
    open_paths = {q["path"] for q in state.quarantined("open")}
    for folder in pages:
        for found in landing.store.list(folder):
            day = day_of(found.path)
            if day is None or found.path in open_paths or _midnight(day) + DAY > cutoff:
                result.files_kept += 1
                continue
            landing.store.delete(found.path)
            result.files_deleted += 1
    _collect_parked(landing, state, cutoff, result)
    if result.files_deleted:
        log.info("deleted %d landed files (%d batches) older than %gs", result.files_deleted,
                 result.batches_gone, retention, extra={"stage": "gc"})
    return result


def _collect_parked(landing: LandingZone, state: StateStore, cutoff: float,
                    result: GcResult) -> None:
    """Delete the quarantine files no open entry needs (see the module docstring)."""
    entries: dict[str, list[dict[str, Any]]] = {}
    for q in state.quarantined(None):
        entries.setdefault(q["path"], []).append(q)
    for found in landing.store.list(f"{QUARANTINE_SOURCE_DIR}/"):
        named = entries.get(found.path)
        if named:
            expired = all(q["status"] in CLOSED and (q["replayed_at"] or cutoff) < cutoff
                          for q in named)
        else:
            day = day_of(found.path)
            expired = day is not None and _midnight(day) + DAY <= cutoff
        if not expired:
            result.files_kept += 1
            continue
        landing.store.delete(found.path)
        result.files_deleted += 1


def _midnight(day: str) -> float:
    """The epoch seconds of a YYYY-MM-DD folder's day start, UTC (landing days are UTC)."""
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
