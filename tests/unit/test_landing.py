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
