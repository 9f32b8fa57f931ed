"""`steadyflow compact`: merge a table's small landed files of one day into a few big ones.

Extraction lands one Parquet file per page, so a busy table leaves thousands of small
files a day: slow to list, costly per request on an object store, and never deleted. A
loaded batch's rows never change, so its file can be rewritten into a bigger one: each
batch becomes one row group of a compacted file (`compact-<digest>.parquet`, written with
Parquet page checksums), and its manifest entry then names that file and its row groups
(`BatchRef.part`). Reads (load, replay, reconcile repair) go through LandingZone.read,
which serves both shapes, so nothing downstream changes.

The order is what makes it crash-safe (a SIGKILL anywhere leaves every batch readable):
1. write the compacted file (published whole, or not at all: ports.Landing.staged);
2. move the manifest entries of all its batches in ONE state transaction;
3. delete the input files, now referenced by no entry.
A crash before 2 leaves an unreferenced compacted file, a crash before 3 unreferenced
inputs; the next `compact` deletes both first (`_sweep`). Only loaded batches are taken:
a batch still to be loaded is in the buffer by its old path. Days before today only, by
default: a re-extraction of a page lands its file again under today's date.

One compactor per table at a time, across hosts: it holds a lease in the state store
named `<table>/compact` (no table name holds a '/'). Step 2 is fenced by that lease: a
compactor that stalled past it (a long read, SIGSTOP) while another took the table over,
swept its unreferenced output and moved the batches itself, must not point them back at
that deleted file.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from steadyflow.errors import ExtractionFenced, RetryableError
from steadyflow.failpoints import failpoint
from steadyflow.land.parquet import ZSTD_LEVEL, Compression, LandingZone, day_of, with_part
from steadyflow.model import BatchRef
from steadyflow.observe import logs
from steadyflow.state import Lease, StateStore

if TYPE_CHECKING:
    from steadyflow.run.pipeline import Pipeline

log = logs.get("compact")

LEASE_SECONDS = 600.0
LOADED = ("loaded", "duplicate")
PREFIX = "compact-"


@dataclass
class CompactResult:
    """What one `compact` did, per table label and in total."""

    files_before: int = 0
    files_after: int = 0
    batches_moved: int = 0
    bytes_written: int = 0
    swept: int = 0
    busy: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"files_before": self.files_before, "files_after": self.files_after,
                "batches_moved": self.batches_moved, "bytes_written": self.bytes_written,
                "swept": self.swept, "busy": self.busy}


def compact_pipeline(pipeline: Pipeline, target: int | None = None,
                     include_today: bool = False) -> CompactResult:
    """`steadyflow compact`: every table of the pipeline, to landing.compact_target."""
    tables = [(ref.source, ref.table) for _, _, ref in pipeline.config.tables()]
    return compact(pipeline.landing, pipeline.state, tables,
                   target or pipeline.config.landing.compact_target, include_today,
                   pipeline.buffer.contains)


def compact(landing: LandingZone, state: StateStore, tables: list[tuple[str, str]],
            target: int, include_today: bool = False,
            queued: Callable[[str], bool] = lambda batch_id: False) -> CompactResult:
    """Compact every (source, table) in `tables`. `queued(batch_id)`: still in the buffer
    (its loader reads it by its landed path, so that file is left where it is)."""
    result = CompactResult()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    for source, table in tables:
        lease = state.try_lease(source, f"{table}/compact", holder, LEASE_SECONDS)
        if lease is None:
            result.busy.append(f"{source}.{table}")
            continue
        try:
            _Table(landing, state, source, table, target, queued, result, lease).run(
                None if include_today else today)
        except ExtractionFenced as exc:
            raise RetryableError(
                f"compaction of {source}.{table} stalled past its {lease.seconds:g}s lease "
                "and another `steadyflow compact` took the table over: this one moved no "
                "more manifest entries and deleted nothing", stage="compact",
                source=source, table=table,
                hint="nothing to repair: the file it wrote last is referenced by no entry "
                     "and the next compact deletes it") from exc
        finally:
            state.release_lease(lease)
    return result


@dataclass
class _Table:
    landing: LandingZone
    state: StateStore
    source: str
    table: str
    target: int
    queued: Callable[[str], bool]
    result: CompactResult
    # the table's compaction lease: renewed before each file and checked in the manifest
    # transaction that moves its batches (ExtractionFenced once another took it over)
    lease: Lease

    def run(self, before: str | None) -> None:
        live = self.state.landed_batches(self.source, self.table)
        top = f"{self.source}/{self.table}/"
        days: dict[str, list[tuple[BatchRef, str]]] = {}
        for ref, status in live:
            day = day_of(ref.path)
            if ref.path.startswith(top) and day is not None and (before is None or day < before):
                days.setdefault(day, []).append((ref, status))
        for day in sorted(days):
            self._day(day, days[day])

    def _day(self, day: str, entries: list[tuple[BatchRef, str]]) -> None:
        folder = f"{self.source}/{self.table}/date={day}/"
        sizes = {f.path: f.size for f in self.landing.store.list(folder)}
        # before 352742c a repair batch's file bore only its content id: `<id>.parquet` for
        # the entry `<id>.repair<run>.<i>`
        repaired = {ref.batch_id.partition(".repair")[0] for ref, _ in entries
                    if ".repair" in ref.batch_id}
        self._sweep(folder, sizes, {ref.path for ref, _ in entries}, repaired)
        sizes = {f.path: f.size for f in self.landing.store.list(folder)}
        self.result.files_before += len(sizes)
        # a file is an input if every batch in it is loaded and it is small: a loose file,
        # or a compacted one under half the target (an earlier run's tail of the day)
        by_file: dict[str, list[BatchRef]] = {}
        blocked: set[str] = set()
        for ref, status in entries:
            by_file.setdefault(ref.path, []).append(ref)
            if status not in LOADED or self.queued(ref.batch_id):
                blocked.add(ref.path)
        inputs = [p for p in by_file if p not in blocked and p in sizes and (
            not p.rsplit("/", 1)[-1].startswith(PREFIX) or sizes[p] < self.target // 2)]
        if len(inputs) < 2:
            self.result.files_after += len(sizes)
            return
        inputs.sort(key=lambda p: min(r.landed_at for r in by_file[p]))
        batches = [r for p in inputs for r in sorted(by_file[p], key=_order)]
        moved: list[BatchRef] = []
        for group in _groups(batches, by_file, sizes, self.target):
            while group:  # a batch of another schema (a column added) starts a new file
                self.state.renew_lease(self.lease)  # a compactor that lost it stops
                written, group = self._write(folder, group)
                moved += written
        # an output may bear an input's name (the same batches again, e.g. after a schema
        # cut): that file is referenced again, never deleted
        gone = {r.path for r in batches} - {r.path for r in moved}
        for path in gone:
            self.landing.store.delete(path)
        failpoint("compact.after_delete")
        self.result.batches_moved += len(moved)
        self.result.files_after += len(sizes) - len(gone) + len({r.path for r in moved})
        log.info("compacted %d files of %d batches into %d", len(gone), len(moved),
                 len({r.path for r in moved}), extra={
                     "source": self.source, "table": self.table, "stage": "compact"})

    def _write(self, folder: str, group: list[BatchRef]
               ) -> tuple[list[BatchRef], list[BatchRef]]:
        """One compacted file of the leading batches of `group` that share a schema, then
        those batches moved into it; returns (moved, the batches left for the next file)."""
        digest = hashlib.blake2b("|".join(r.batch_id for r in group).encode(),
                                 digest_size=12).hexdigest()
        path = f"{folder}{PREFIX}{digest}.parquet"
        counts: list[int] = []
        with self.landing.store.staged(path) as local:
            writer: pq.ParquetWriter | None = None
            schema: pa.Schema | None = None
            try:
                for ref in group:
                    rows = self.landing.read(ref)  # verified: corruption is never copied
                    if schema is None:
                        schema = rows.schema
                        writer = _writer(str(local), schema, self.landing.compression)
                    elif not rows.schema.equals(schema, check_metadata=False):
                        break
                    assert writer is not None
                    writer.write_table(rows, row_group_size=max(1, rows.num_rows))
                    counts.append(rows.num_rows)
            finally:
                if writer is not None:
                    writer.close()
            groups = pq.read_metadata(str(local))
            self.result.bytes_written += os.path.getsize(local)
            parts = _parts(counts, [groups.row_group(i).num_rows
                                    for i in range(groups.num_row_groups)])
        failpoint("compact.after_write")
        written = group[:len(counts)]
        moved = [with_part(ref, path, first, end)
                 for ref, (first, end) in zip(written, parts, strict=True)]
        self.state.relocate(moved, self.lease)  # fenced: see compact_pipeline's lease
        failpoint("compact.after_relocate")
        return moved, group[len(counts):]

    def _sweep(self, folder: str, sizes: dict[str, int], referenced: set[str],
               repaired: set[str]) -> None:
        """Delete what a crashed compaction left: its output nobody references yet, inputs
        whose batches all moved. A loose file no entry names at all is not ours: a batch
        landed but not yet recorded looks just like that; except one named by the content
        id of a repair batch whose entry names another file (`repaired`, see `_day`)."""
        for path in sizes:
            if path in referenced:
                continue
            name = path.rsplit("/", 1)[-1]
            if not name.startswith(PREFIX):
                batch_id = name.removesuffix(".parquet")
                ref = self.state.batch(batch_id)
                if (ref is None and batch_id not in repaired) or (ref is not None and (
                        ref.path == path or self.queued(batch_id))):
                    continue
            self.landing.store.delete(path)
            self.result.swept += 1


def _order(ref: BatchRef) -> tuple[int, float]:
    return (ref.part[0] if ref.part else 0, ref.landed_at)


def _groups(batches: list[BatchRef], by_file: dict[str, list[BatchRef]],
            sizes: dict[str, int], target: int) -> Iterator[list[BatchRef]]:
    """Runs of batches of about `target` bytes (by their share of their file's size)."""
    group: list[BatchRef] = []
    size = 0
    for ref in batches:
        group.append(ref)
        size += sizes[ref.path] // len(by_file[ref.path])
        if size >= target:
            yield group
            group, size = [], 0
    if group:
        yield group


def _writer(path: str, schema: pa.Schema, compression: Compression) -> pq.ParquetWriter:
    return pq.ParquetWriter(path, schema, compression=compression,
                            compression_level=ZSTD_LEVEL if compression == "zstd" else None,
                            use_dictionary=False, write_statistics=False,
                            write_page_checksum=True)


def _parts(counts: list[int], groups: list[int]) -> list[tuple[int, int]]:
    """Row groups [first, end) of each batch, from the batches' row counts and the file's
    row groups in order (a batch of 0 rows holds none: an empty range)."""
    parts: list[tuple[int, int]] = []
    index = 0
    for count in counts:
        first, found = index, 0
        while found < count:
            found += groups[index]
            index += 1
        if found != count:
            raise AssertionError(f"row groups do not line up with batches: {counts} {groups}")
        parts.append((first, index))
    return parts
