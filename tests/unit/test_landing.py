from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from steadyflow.errors import FatalError
from steadyflow.land.parquet import LandingZone
from steadyflow.model import Watermark


def test_same_page_lands_as_the_same_batch(tmp_path: Path) -> None:
    zone = LandingZone(tmp_path)
    page = pa.table({"id": [1, 2, 3]})
    a = zone.write(page, "s", "t", None, Watermark(3, (3,)))
    b = zone.write(page, "s", "t", None, Watermark(3, (3,)))
    c = zone.write(pa.table({"id": [1, 2, 4]}), "s", "t", None, Watermark(3, (3,)))
    assert a.batch_id == b.batch_id != c.batch_id
    assert zone.read(a).equals(page)
    assert a.path.startswith("s/t/date=")
    assert not list(tmp_path.rglob(".tmp-*"))


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    zone = LandingZone(tmp_path)
    ref = zone.write(pa.table({"id": [1]}), "s", "t", None, None)
    (tmp_path / ref.path).write_bytes(b"garbage")
    with pytest.raises(FatalError, match="checksum"):
        zone.read(ref)


def test_sweep_removes_only_temp_files(tmp_path: Path) -> None:
    zone = LandingZone(tmp_path)
    ref = zone.write(pa.table({"id": [1]}), "s", "t", None, None)
    (tmp_path / "s" / ".tmp-half.parquet.999999999").write_bytes(b"half")
    assert zone.sweep_temp_files() == 1
    assert [p.name for p in zone.visible_files()] == [Path(ref.path).name]


def test_sweep_spares_a_temp_file_a_live_process_is_writing(tmp_path: Path) -> None:
    import os

    zone = LandingZone(tmp_path)
    live = tmp_path / f".tmp-x.parquet.{os.getppid()}"
    live.write_bytes(b"being written")
    assert zone.sweep_temp_files() == 0 and live.exists()


def test_the_handoff_keeps_small_pages_by_bytes_and_big_ones_two_at_a_time(
        tmp_path: Path) -> None:
    """A follower lands dozens of small batches at a time: all of them reach its loader from
    memory (their files are gone here, so a read from the store would fail); a full load's
    big pages stay at two in memory, the next is read from the store."""
    from steadyflow.land import parquet

    zone = parquet.LandingZone(tmp_path)
    zone.handoff = True
    small = [zone.write(pa.table({"k": pa.array(range(i * 100, i * 100 + 100))}), "s", "t",
                        None, None, seq=i) for i in range(20)]
    for ref in small:
        (tmp_path / ref.path).unlink()
    assert [zone.read(ref).num_rows for ref in small] == [100] * 20

    rows = parquet.HANDOFF_BYTES // 8 // 2 + 1  # two such pages are over the byte cap
    big = [zone.write(pa.table({"k": pa.array(range(i, i + rows), pa.int64())}), "s", "t",
                      None, None, seq=100 + i) for i in range(3)]
    assert [zone.read(ref).num_rows for ref in big[:2]] == [rows, rows]
    (tmp_path / big[2].path).unlink()
    with pytest.raises(Exception, match="missing|No such file|not found"):
        zone.read(big[2])


_READ_THREADS = """
import os, sys
from pathlib import Path
import pyarrow as pa
from steadyflow.land.parquet import LandingZone
zone = LandingZone(Path(sys.argv[1]))
page = pa.table({"k": pa.array(range(2000), pa.int64()),
                 "v": pa.array([f"v{i}" for i in range(2000)])})
ref = zone.write(page, "s", "t", None, None)
before = len(os.listdir("/proc/self/task"))
same = all(zone.read(ref).equals(page) for _ in range(5))
print(same, len(os.listdir("/proc/self/task")) - before)
"""


def test_a_small_landed_page_is_read_in_the_calling_thread(tmp_path: Path) -> None:
    """A loader reads a page another worker landed from its file: a small one is decoded
    in the loader's thread, without pq.read_table's dataset and Arrow's thread pool (2.2x
    the CPU on a 2,000-row page, bench/NOTES.md session 14). Measured by the threads the
    read starts (the pool's are native threads, started on first use): a process of its
    own, so no other test has started them."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _READ_THREADS, str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "0"]


def test_a_large_landed_file_reads_back_whole(tmp_path: Path) -> None:
    """A file over THREADED_READ_BYTES (decoded on Arrow's pool) reads back equal, schema
    metadata included."""
    from steadyflow.land import parquet

    zone = LandingZone(tmp_path, "none")
    rows = 200_000
    page = pa.table({"k": pa.array(range(rows), pa.int64()),
                     "v": pa.array([f"value {i}" for i in range(rows)])}
                    ).replace_schema_metadata({"m": "1"})
    ref = zone.write(page, "s", "t", None, None)
    assert (tmp_path / ref.path).stat().st_size > parquet.THREADED_READ_BYTES
    back = zone.read(ref)
    assert back.equals(page, check_metadata=True)
