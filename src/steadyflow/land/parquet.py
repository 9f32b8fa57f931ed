"""Land extracted pages as Parquet files, atomically, before anything else touches them.

A landed file is the replayable truth: written to a hidden temp name, fsynced, renamed
into place, and the directory fsynced, so a reader (or a restart after SIGKILL) sees
either the whole file or nothing. The batch id is derived from the content, so landing
the same page twice yields the same id and the ledger absorbs the repeat.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from steadyflow.errors import FatalError, RetryableError
from steadyflow.failpoints import failpoint
from steadyflow.model import BatchRef, Watermark

TEMP_PREFIX = ".tmp-"


class LandingZone:
    """A directory of immutable Parquet batches laid out source/table/date=YYYY-MM-DD."""

    def __init__(self, root: Path, compression: str = "zstd") -> None:
        self.root = root
        self.compression = compression
        self.root.mkdir(parents=True, exist_ok=True)

    def write(
        self,
        table: pa.Table,
        source: str,
        name: str,
        low: Watermark | None,
        high: Watermark | None,
        kind: str = "extract",
        meta: dict[str, object] | None = None,
    ) -> BatchRef:
        """Write one batch durably and return its reference (not yet in the manifest)."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=self.compression)
        data = sink.getvalue().to_pybytes()
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
        )

    def _write_atomically(self, directory: Path, final: Path, data: bytes) -> None:
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

    def sweep_temp_files(self) -> int:
        """Delete temp files left by a crash mid-write; they were never visible."""
        removed = 0
        for temp in self.root.rglob(f"{TEMP_PREFIX}*"):
            temp.unlink(missing_ok=True)
            removed += 1
        return removed

    def visible_files(self) -> list[Path]:
        return [p for p in self.root.rglob("*.parquet") if not p.name.startswith(".")]
