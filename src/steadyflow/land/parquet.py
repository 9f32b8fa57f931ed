"""Land extracted pages as Parquet files, atomically, before anything else touches them.

A landed file is the replayable truth. Where it lives is the landing store's business
(ports.Landing: a directory, land/local.py, or an object store, land/object_store.py),
each of which makes a file visible whole or not at all. This module decides what is
written: the Parquet bytes of a page, its content checksum, and the batch id derived from
it, so landing the same page twice yields the same id and the ledger absorbs the repeat.

A batch is either a file of its own or, after `steadyflow compact`, a run of row groups
in a compacted file (`BatchRef.part`); `read` and `batches` serve both.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from steadyflow.errors import FatalError, LandedFileMissing, RetryableError
from steadyflow.failpoints import failpoint
from steadyflow.land.local import TEMP_PREFIX, LocalLanding
from steadyflow.model import BatchRef, Watermark
from steadyflow.ports import Landing
from steadyflow.secrets import scrub

__all__ = ["TEMP_PREFIX", "Compression", "LandingZone"]

# the Parquet codecs a landing zone can use (config.py: LandingConfig.compression)
Compression = Literal["zstd", "lz4", "snappy", "gzip", "brotli", "none"]


# Chosen by measurement on 200k-row sales pages (bench/RESULTS.md, "landing codec"):
# dictionary encoding of unique columns (keys, timestamps) cost 2-3x the write time for no
# gain once the pages are compressed, zstd level 1 writes as fast as lz4/snappy and lands
# files ~40% smaller (less to fsync), and column statistics are never read back (a landed
# file is always read whole).
ZSTD_LEVEL = 1
# landed pages kept in memory for an in-process loader (see `handoff`): always 2 (a full
# load's big pages: the one being loaded and the next), more while they hold at most
# HANDOFF_BYTES together (a follower's small batches: twenty tables' polls land dozens,
# each read back from the file and hashed again cost ~7 ms of the loader's time), never more
# than HANDOFF_MAX; one not read within HANDOFF_STALE (loaded by another process) is dropped
HANDOFF_MIN = 2
HANDOFF_MAX = 64
HANDOFF_BYTES = 32 * 1024 * 1024
HANDOFF_STALE = 60.0
# a batch of more rows is written as several row groups, so a streamed read (`batches`)
# holds one of them at a time; a page of the default size is one row group
ROW_GROUP_ROWS = 64 * 1024
# a landed file of more bytes is decoded on Arrow's thread pool (see `_whole`)
THREADED_READ_BYTES = 1 << 20
HASH_CHUNK = 1 << 20  # bytes hashed at a time when a batch is streamed (`batches`)
FOOTERS_KEPT = 8  # footers of compacted files kept for the next reads (see `_compacted`)
# the meta key of a replayed batch (run/replay.py) naming the manifest entry it re-applies
REPLAY_OF = "replay_of"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch encoded and named, not yet written (LandingZone.prepare)."""

    table: pa.Table
    data: memoryview
    ref: BatchRef


class LandingZone:
    """Immutable Parquet batches laid out source/table/date=YYYY-MM-DD on a landing store.

    `store` is a ports.Landing, or a Path for a local directory (the embedded default)."""

    def __init__(self, store: Landing | Path, compression: Compression = "zstd") -> None:
        self.store: Landing = LocalLanding(store) if isinstance(store, Path) else store
        self.compression = compression
        # In-process handoff (Pipeline.run_once turns it on while its loader runs beside the
        # extractors): landed pages not yet read stay in memory (HANDOFF_*), and `read`
        # of such a batch returns the very table whose Parquet bytes were hashed and made
        # durable, instead of reading, hashing and decoding the file again. A page landed
        # while that many wait is read from the store. Off, every read comes from the store
        # and is checked against the checksum.
        self.handoff = False
        self._handed: dict[str, tuple[str, pa.Table, float]] = {}
        self._handed_lock = threading.Lock()
        self._footers: dict[str, pq.FileMetaData] = {}  # of compacted files, newest last
        # the manifest's entry of a batch id (Pipeline sets StateStore.batch): a batch whose
        # file is missing is read from where compaction moved it (see `_moved`)
        self.locate: Callable[[str], BatchRef | None] | None = None

    @property
    def root(self) -> Path:
        """The directory of a local landing zone (tests and tools that look at files)."""
        if not isinstance(self.store, LocalLanding):
            raise TypeError(f"landing {self.store.where} is not a local directory")
        return self.store.root

    def encode(self, table: pa.Table) -> pa.Buffer:
        """The Parquet bytes of one batch (see ZSTD_LEVEL for how they are written)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=self.compression,
                       compression_level=ZSTD_LEVEL if self.compression == "zstd" else None,
                       use_dictionary=False, write_statistics=False,
                       row_group_size=ROW_GROUP_ROWS)
        return sink.getvalue()

    def write(
        self,
        table: pa.Table,
        source: str,
        name: str,
        low: Watermark | None,
        high: Watermark | None,
        kind: str = "extract",
        meta: dict[str, object] | None = None,
        seq: int = 0,
    ) -> BatchRef:
        """Write one batch durably and return its reference (not yet in the manifest)."""
        return self.store_prepared(self.prepare(table, source, name, low, high, kind, meta,
                                                seq))

    def prepare(
        self,
        table: pa.Table,
        source: str,
        name: str,
        low: Watermark | None,
        high: Watermark | None,
        kind: str = "extract",
        meta: dict[str, object] | None = None,
        seq: int = 0,
    ) -> Prepared:
        """Encode a batch and derive its id, writing nothing yet: an extractor that finds
        the id is the one it landed for the same window last time skips the write."""
        data = memoryview(self.encode(table))  # no copy: hashed and written as is
        checksum = hashlib.blake2b(data, digest_size=16).hexdigest()
        identity = "|".join(
            [source, name, kind, low.to_json() if low else "", high.to_json() if high else "",
             checksum]
        )
        batch_id = hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        path = f"{source}/{name}/date={day}/{batch_id}.parquet"
        return Prepared(table, data, BatchRef(
            batch_id=batch_id,
            source=source,
            table=name,
            path=path,
            rows=table.num_rows,
            nbytes=len(data),
            checksum=checksum,
            low=low,
            high=high,
            landed_at=time.time(),
            kind=kind,
            meta=dict(meta or {}),
            seq=seq,
        ))

    def store_prepared(self, prepared: Prepared) -> BatchRef:
        """Write a prepared batch durably; its reference, stamped with the landing time."""
        ref, data = prepared.ref, prepared.data
        self.store.write(ref.path, data)
        failpoint("land.after_rename")
        if self.handoff and ref.kind == "extract":
            self._hand(ref, prepared.table)
        return replace(ref, landed_at=time.time())

    def _hand(self, ref: BatchRef, table: pa.Table) -> None:
        """Keep a landed page for the loader if it fits (the loader reads in landing
        order: the oldest are kept, a page landed while the handoff is full is read from
        the store)."""
        now = time.monotonic()
        with self._handed_lock:
            for batch_id in [b for b, (_, _, at) in self._handed.items()
                             if now - at > HANDOFF_STALE]:
                del self._handed[batch_id]
            held = sum(t.nbytes for _, t, _ in self._handed.values())
            if len(self._handed) < HANDOFF_MIN or (
                    len(self._handed) < HANDOFF_MAX and held + table.nbytes <= HANDOFF_BYTES):
                self._handed[ref.batch_id] = (ref.checksum, table, now)

    def read(self, ref: BatchRef) -> pa.Table:
        """Read a landed batch, verified, so corruption is never loaded: a file of its own
        against its checksum; a part of a compacted file by Parquet's page checksums
        (written by compaction) and its row count."""
        if self.handoff:
            with self._handed_lock:
                handed = self._handed.pop(ref.batch_id, None)
            if handed is not None and handed[0] == ref.checksum:
                return handed[1]
        try:
            return self._read(ref)
        except LandedFileMissing:
            moved = self._moved(ref)
            if moved is None:
                raise
            return self._read(moved)

    def _read(self, ref: BatchRef) -> pa.Table:
        with self._context(ref):
            if ref.part is not None:
                with self.store.open(ref.path) as fh:
                    return self._checked(ref, self._compacted(fh, ref).read_row_groups(
                        list(range(*ref.part)), use_threads=False))
            data = self.store.read(ref.path)
            if hashlib.blake2b(data, digest_size=16).hexdigest() != ref.checksum:
                raise self._tampered(ref)
            return _whole(data)

    def batches(self, ref: BatchRef) -> Iterator[pa.RecordBatch]:
        """A landed batch as a stream of record batches, in memory bounded by one row group
        (plus a hashing buffer), whatever the file's size: the checksum of a file of its own
        is verified by a first streamed pass, before any row is handed out."""
        try:
            yield from self._batches(ref)
        except LandedFileMissing:  # raised on opening, before any row: nothing handed twice
            moved = self._moved(ref)
            if moved is None:
                raise
            yield from self._batches(moved)

    def _batches(self, ref: BatchRef) -> Iterator[pa.RecordBatch]:
        with self._context(ref):
            if ref.part is None:
                digest = hashlib.blake2b(digest_size=16)
                with self.store.open(ref.path) as fh:
                    while chunk := fh.read(HASH_CHUNK):
                        digest.update(chunk)
                if digest.hexdigest() != ref.checksum:
                    raise self._tampered(ref)
            groups = list(range(*ref.part)) if ref.part is not None else None
            count = 0
            with self.store.open(ref.path) as fh:
                parquet = self._compacted(fh, ref) if ref.part is not None else (
                    pq.ParquetFile(fh))
                for batch in parquet.iter_batches(row_groups=groups, use_threads=False):
                    count += batch.num_rows
                    yield batch
            if count != ref.rows:
                raise self._short(ref, count)

    def _moved(self, ref: BatchRef) -> BatchRef | None:
        """Where the manifest says the batch is now, if not where `ref` says: a reference
        taken before `compact` moved it (a redelivered message, a replay that raced it: a
        replay's batch has an id of its own, its meta names the entry, REPLAY_OF)."""
        entry = str(ref.meta.get(REPLAY_OF, ref.batch_id))
        current = self.locate(entry) if self.locate is not None else None
        if current is None or (current.path, current.part) == (ref.path, ref.part):
            return None
        return current

    def read_file(self, path: str) -> pa.Table:
        """A landed file by path, unverified (quarantined rows and raw pages, which are
        indexed by path in the quarantine index, not by a manifest entry)."""
        return _whole(self.store.read(path))

    def _compacted(self, fh: pa.NativeFile, ref: BatchRef) -> pq.ParquetFile:
        """A compacted file, its page checksums verified (compaction writes them). Its footer
        is kept for the next few reads: a replay reads its batches one after another, and on
        an object store each footer read is a request of its own. A compacted file's name
        is a digest of its batches, and it is never rewritten with other content."""
        with self._handed_lock:
            footer = self._footers.pop(ref.path, None)
        parquet = pq.ParquetFile(fh, metadata=footer, page_checksum_verification=True)
        with self._handed_lock:
            self._footers[ref.path] = parquet.metadata
            while len(self._footers) > FOOTERS_KEPT:
                self._footers.pop(next(iter(self._footers)))
        return parquet

    def _checked(self, ref: BatchRef, rows: pa.Table) -> pa.Table:
        if rows.num_rows != ref.rows:
            raise self._short(ref, rows.num_rows)
        return rows

    def _context(self, ref: BatchRef) -> _BatchContext:
        return _BatchContext(ref)

    def _tampered(self, ref: BatchRef) -> FatalError:
        return FatalError(
            f"landed file does not match its checksum: {self.store.where}/{ref.path}",
            stage="load", source=ref.source, table=ref.table, batch_id=ref.batch_id,
            hint="the file was changed after landing; re-extract this range")

    def _short(self, ref: BatchRef, found: int) -> FatalError:
        return FatalError(
            f"landed batch has {found} rows, its manifest entry {ref.rows}: "
            f"{self.store.where}/{ref.path} {ref.part or ''}".rstrip(),
            stage="load", source=ref.source, table=ref.table, batch_id=ref.batch_id,
            hint="the file was changed after landing; re-extract this range")

    def stop_handoff(self) -> None:
        with self._handed_lock:
            self.handoff = False
            self._handed.clear()

    def sweep_temp_files(self) -> int:
        """Delete what writers that crashed mid-write left (never visible)."""
        return self.store.sweep_temp()

    def visible_files(self) -> list[Path]:
        """The visible files of a local landing zone (tests and tools)."""
        return [self.root / f.path for f in self.store.list() if f.path.endswith(".parquet")]


# what pyarrow's S3 client says when a read broke off (anything else is the file itself)
_TRANSIENT = ("AWS Error NETWORK", "curlCode", "Connection", "timed out", "Timeout")


class _BatchContext:
    """Adds the batch's source, table and id to a landing error raised inside it (the
    store names the path; the caller needs to know which batch it was)."""

    def __init__(self, ref: BatchRef) -> None:
        self.ref = ref

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        ref = self.ref
        if isinstance(exc, FatalError) and not exc.batch_id:
            raise type(exc)(exc.message, stage="load", source=ref.source, table=ref.table,
                            batch_id=ref.batch_id, hint=exc.hint) from exc
        if isinstance(exc, OSError) and any(m in str(exc) for m in _TRANSIENT):
            raise RetryableError(  # the store's connection broke mid-read (pyarrow's own)
                f"cannot read landed file {ref.path}: {scrub(str(exc))}", stage="load",
                source=ref.source, table=ref.table, batch_id=ref.batch_id) from exc
        if isinstance(exc, pa.ArrowException | OSError):  # a page CRC, a codec, a footer
            raise FatalError(
                f"landed file unreadable: {ref.path} {ref.part or ''}: {scrub(str(exc))}",
                stage="load", source=ref.source, table=ref.table, batch_id=ref.batch_id,
                hint="the file was changed after landing; re-extract this range") from exc


def day_of(path: str) -> str | None:
    """The YYYY-MM-DD of a landed path's `date=` folder, or None."""
    for part in path.split("/"):
        if part.startswith("date="):
            return part[5:]
    return None


def with_part(ref: BatchRef, path: str, first: int, end: int) -> BatchRef:
    """The manifest entry of a batch moved into row groups [first, end) of `path`."""
    return replace(ref, path=path, part=(first, end))


def _whole(data: bytes) -> pa.Table:
    """A Parquet file's bytes as one table. `pq.read_table` builds a dataset (fragment,
    scanner) around the one file and decodes on Arrow's thread pool: for a loader's small
    page that cost 2.2x the CPU of a plain read in the calling thread (2,000 rows: 0.78-0.94
    against 0.38-0.40 ms; 122,880 rows: ~10 ms either way; bench/NOTES.md, session 14,
    h-scale). Among workers most batches a loader takes were landed by another worker, so
    it reads most of its pages from their files. A file over THREADED_READ_BYTES is still
    decoded on the pool: there the threads cost no more CPU and save wall time."""
    return pq.ParquetFile(pa.BufferReader(data)).read(
        use_threads=len(data) > THREADED_READ_BYTES)
