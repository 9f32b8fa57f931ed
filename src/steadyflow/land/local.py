"""The landing store on a local (or shared, POSIX) filesystem: the embedded default.

A file is written to a hidden temp name beside its final one, fsynced, renamed into place,
and the directory fsynced, so a reader (or a restart after SIGKILL) sees either the whole
file or nothing, and a file that is visible survives a power cut. A temp name ends in the
writer's pid, so `sweep_temp` can tell a dead writer's leftovers from a live one's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from steadyflow.errors import LandedFileMissing, RetryableError
from steadyflow.failpoints import failpoint
from steadyflow.ports import LandedFile

if TYPE_CHECKING:
    import pyarrow as pa

TEMP_PREFIX = ".tmp-"


class LocalLanding:
    """Files under one directory; see the module docstring for the write protocol."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, path: str, data: bytes | memoryview) -> None:
        final = self.root / path
        temp = final.parent / f"{TEMP_PREFIX}{final.name}.{os.getpid()}"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as fh:
                half = len(data) // 2
                fh.write(data[:half])
                failpoint("land.mid_write")
                fh.write(data[half:])
                fh.flush()
                os.fsync(fh.fileno())
            self._publish(temp, final)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise _unwritable(final, exc) from exc

    @contextmanager
    def staged(self, path: str) -> Iterator[Path]:
        final = self.root / path
        temp = final.parent / f"{TEMP_PREFIX}{final.name}.{os.getpid()}"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            yield temp
            with open(temp, "rb+") as fh:
                os.fsync(fh.fileno())
            self._publish(temp, final)
        except OSError as exc:
            raise _unwritable(final, exc) from exc
        finally:
            temp.unlink(missing_ok=True)

    def _publish(self, temp: Path, final: Path) -> None:
        os.replace(temp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def read(self, path: str) -> bytes:
        try:
            return (self.root / path).read_bytes()
        except FileNotFoundError:
            raise _missing(self.root / path) from None

    def open(self, path: str) -> pa.NativeFile:
        import pyarrow as pa  # a file opened for Arrow (Parquet) reads: pyarrow is loaded

        try:
            return pa.OSFile(str(self.root / path), "rb")
        except FileNotFoundError:
            raise _missing(self.root / path) from None

    def exists(self, path: str) -> bool:
        return (self.root / path).is_file()

    def list(self, prefix: str = "") -> Iterator[LandedFile]:
        top = self.root / prefix if prefix else self.root
        for found in sorted(top.rglob("*")):
            if found.name.startswith(".") or not found.is_file():
                continue
            try:
                stat = found.stat()
            except FileNotFoundError:  # deleted while we walked
                continue
            yield LandedFile(found.relative_to(self.root).as_posix(), stat.st_size,
                             stat.st_mtime)

    def delete(self, path: str) -> None:
        try:
            (self.root / path).unlink(missing_ok=True)
        except OSError as exc:
            raise RetryableError(f"cannot delete landed file {self.root / path}: "
                                 f"{exc.strerror or exc}", stage="land") from exc

    def sweep_temp(self) -> int:
        """Delete temp files left by a crash mid-write; they were never visible."""
        removed = 0
        for temp in self.root.rglob(f"{TEMP_PREFIX}*"):
            if _writer_alive(temp):
                continue  # another process on this host is writing it right now
            temp.unlink(missing_ok=True)
            removed += 1
        return removed

    def close(self) -> None:
        pass


def _missing(path: Path) -> LandedFileMissing:
    return LandedFileMissing(f"landed file missing: {path}", stage="land",
                      hint="a file of a loaded batch is deleted by `steadyflow gc` once it "
                           "is older than landing.retention; otherwise re-extract the range")


def _unwritable(final: Path, exc: OSError) -> RetryableError:
    return RetryableError(f"cannot land batch at {final}: {exc.strerror or exc}",
                          stage="land",
                          hint="check free space and permissions of the landing directory")


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
