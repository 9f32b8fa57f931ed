"""Land extracted pages as Parquet files, atomically, before anything else touches them.

A landed file is the replayable truth: written to a hidden temp name, fsynced, renamed
into place, and the directory fsynced, so a reader (or a restart after SIGKILL) sees
either the whole file or nothing. The batch id is derived from the content, so landing
the same page twice yields the same id and the ledger absorbs the repeat.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from steadyflow.errors import FatalError, RetryableError
from steadyflow.failpoints import failpoint
from steadyflow.model import BatchRef, Watermark

TEMP_PREFIX = ".tmp-"

# the Parquet codecs a landing zone can use (config.py: LandingConfig.compression)
Compression = Literal["zstd", "lz4", "snappy", "gzip", "brotli", "none"]


# Chosen by measurement on 200k-row sales pages (bench/RESULTS.md, "landing codec"):
# dictionary encoding of unique columns (keys, timestamps) cost 2-3x the write time for no
# gain once the pages are compressed, zstd level 1 writes as fast as lz4/snappy and lands
# files ~40% smaller (less to fsync), and column statistics are never read back (a landed
# file is always read whole).
ZSTD_LEVEL = 1
HANDOFF_MAX = 2  # landed pages kept in memory for an in-process loader (see `handoff`)


class LandingZone:
    """A directory of immutable Parquet batches laid out source/table/date=YYYY-MM-DD."""

    def __init__(self, root: Path, compression: Compression = "zstd") -> None:
        self.root = root
        self.compression = compression
        self.root.mkdir(parents=True, exist_ok=True)
        # In-process handoff (Pipeline.run_once turns it on while its loader runs beside the
        # extractors): up to HANDOFF_MAX landed pages not yet read stay in memory, and `read`
        # of such a batch returns the very table whose Parquet bytes were hashed, fsynced
        # and renamed, instead of reading, hashing and decoding the file again. A page
        # landed while that many wait is read from disk. Off, every read comes from disk
        # and is checked against the checksum.
        self.handoff = False
        self._handed: dict[str, tuple[str, pa.Table]] = {}
        self._handed_lock = threading.Lock()

    def encode(self, table: pa.Table) -> pa.Buffer:
        """The Parquet bytes of one batch (see ZSTD_LEVEL for how they are written)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=self.compression,
                       compression_level=ZSTD_LEVEL if self.compression == "zstd" else None,
                       use_dictionary=False, write_statistics=False)
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
        data = memoryview(self.encode(table))  # no copy: hashed and written as is
        checksum = hashlib.blake2b(data, digest_size=16).hexdigest()
        identity = "|".join(
            [source, name, kind, low.to_json() if low else "", high.to_json() if high else "",
             checksum]
        )
        batch_id = hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        directory = self.root / source / name / f"date={day}"
        final = directory / f"{batch_id}.parquet"
        self._write_atomically(directory, final, data)
        failpoint("land.after_rename")
        if self.handoff and kind == "extract":
            with self._handed_lock:  # the loader reads in landing order: keep the oldest
                if len(self._handed) < HANDOFF_MAX:
                    self._handed[batch_id] = (checksum, table)
        return BatchRef(
            batch_id=batch_id,
            source=source,
            table=name,
            path=str(final.relative_to(self.root)),
            rows=table.num_rows,
            nbytes=len(data),
            checksum=checksum,
            low=low,
            high=high,
            landed_at=time.time(),
            kind=kind,
            meta=dict(meta or {}),
            seq=seq,
        )

    def _write_atomically(self, directory: Path, final: Path, data: bytes | memoryview
                          ) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            temp = directory / f"{TEMP_PREFIX}{final.name}.{os.getpid()}"
            with open(temp, "wb") as fh:
                half = len(data) // 2
                fh.write(data[:half])
                failpoint("land.mid_write")
                fh.write(data[half:])
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, final)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            try:
                temp.unlink(missing_ok=True)
            except (OSError, UnboundLocalError):
                pass
            raise RetryableError(
                f"cannot land batch at {final}: {exc.strerror or exc}",
                stage="land",
                hint="check free space and permissions of the landing directory",
            ) from exc

    def read(self, ref: BatchRef) -> pa.Table:
        """Read a landed batch, verifying its checksum so corruption is never loaded."""
        if self.handoff:
            with self._handed_lock:
                handed = self._handed.pop(ref.batch_id, None)
            if handed is not None and handed[0] == ref.checksum:
                return handed[1]
        path = self.root / ref.path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FatalError(
                f"landed file missing: {path}", stage="load", source=ref.source,
                table=ref.table, batch_id=ref.batch_id,
            ) from None
        if hashlib.blake2b(data, digest_size=16).hexdigest() != ref.checksum:
            raise FatalError(
                f"landed file does not match its checksum: {path}", stage="load",
                source=ref.source, table=ref.table, batch_id=ref.batch_id,
                hint="the file was changed after landing; re-extract this range",
            )
        return pq.read_table(pa.BufferReader(data))

    def stop_handoff(self) -> None:
        with self._handed_lock:
            self.handoff = False
            self._handed.clear()

    def sweep_temp_files(self) -> int:
        """Delete temp files left by a crash mid-write; they were never visible."""
        removed = 0
        for temp in self.root.rglob(f"{TEMP_PREFIX}*"):
            if _writer_alive(temp):
                continue  # another process on this host is writing it right now
            temp.unlink(missing_ok=True)
            removed += 1
        return removed

    def visible_files(self) -> list[Path]:
        return [p for p in self.root.rglob("*.parquet") if not p.name.startswith(".")]


def _writer_alive(temp: Path) -> bool:
    """Temp names end in the writer's pid; a live pid other than ours is still writing."""
    pid = temp.name.rsplit(".", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
