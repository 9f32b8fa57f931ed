"""The Landing contract (ports.Landing), written once and run against every adapter.

`local` is a directory in tmp_path (land/local.py); `s3` is a bucket of its own on moto's
S3 server on loopback (land/object_store.py through pyarrow's S3 client; see
tests/support/s3.py). "Another instance" is a second adapter on the same directory or
prefix, as a process on another host would open it: nothing is shared in memory.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Endpoint, s3_endpoint

from steadyflow.errors import FatalError, RetryableError, SteadyflowError
from steadyflow.land.local import LocalLanding
from steadyflow.land.object_store import ObjectStoreLanding
from steadyflow.land.parquet import LandingZone
from steadyflow.model import Watermark
from steadyflow.ports import Landing

__all__ = ["s3_endpoint"]  # the session fixture, imported for pytest to find

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Adapter:
    """Opens landing stores of one kind on one shared location."""

    kind: str
    where: str  # a directory, or s3://bucket/prefix
    endpoint: str = ""
    opened: list[Landing] = field(default_factory=list)

    def open(self) -> Landing:
        store = open_store(self.kind, self.where, self.endpoint)
        self.opened.append(store)
        return store


def open_store(kind: str, where: str, endpoint: str) -> Landing:
    if kind == "local":
        return LocalLanding(Path(where))
    return ObjectStoreLanding(where, endpoint=endpoint, region=REGION, access_key=ACCESS_KEY,
                              secret_key=SECRET_KEY)


@pytest.fixture(params=["local", "s3"])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Adapter]:
    if request.param == "s3":
        endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
        found = Adapter("s3", f"s3://{endpoint.new_bucket()}/landing/p1", endpoint.url)
    else:
        found = Adapter("local", str(tmp_path / "landing"))
    yield found
    for store in found.opened:
        store.close()


def page(n: int, start: int = 0) -> pa.Table:
    ids = pa.array(range(start, start + n), pa.int64())
    return pa.table({"id": ids, "note": pc.cast(ids, pa.string())})


def parquet_files(store: Landing) -> list[str]:
    return [f.path for f in store.list() if f.path.endswith(".parquet")]


def test_a_written_file_is_listed_and_read_whole_by_another_instance(adapter: Adapter
                                                                      ) -> None:
    writer, reader = adapter.open(), adapter.open()
    writer.write("s/t/date=2026-01-01/a.parquet", b"first file")
    writer.write("s/u/date=2026-01-01/b.parquet", b"second")
    assert reader.read("s/t/date=2026-01-01/a.parquet") == b"first file"
    assert reader.open("s/u/date=2026-01-01/b.parquet").read() == b"second"
    assert reader.exists("s/t/date=2026-01-01/a.parquet")
    assert not reader.exists("s/t/date=2026-01-01/nope.parquet")
    assert [(f.path, f.size) for f in reader.list()] == [
        ("s/t/date=2026-01-01/a.parquet", 10), ("s/u/date=2026-01-01/b.parquet", 6)]
    assert [f.path for f in reader.list("s/u")] == ["s/u/date=2026-01-01/b.parquet"]
    assert list(reader.list("nothing/here")) == []
    reader.delete("s/t/date=2026-01-01/a.parquet")
    reader.delete("s/t/date=2026-01-01/a.parquet")  # a repeat (or a missing file): no-op
    assert [f.path for f in writer.list()] == ["s/u/date=2026-01-01/b.parquet"]


def test_landing_the_same_batch_again_is_one_file_and_one_id(adapter: Adapter) -> None:
    zone = LandingZone(adapter.open())
    rows = page(100)
    first = zone.write(rows, "s", "t", None, Watermark(99, (99,)))
    again = zone.write(rows, "s", "t", None, Watermark(99, (99,)))
    assert (again.batch_id, again.path, again.checksum) == (
        first.batch_id, first.path, first.checksum)
    assert parquet_files(zone.store) == [first.path]
    assert LandingZone(adapter.open()).read(first).equals(rows)


def test_a_reader_sees_no_file_or_the_whole_file_never_a_part(adapter: Adapter) -> None:
    """12 MB: above pyarrow's multipart threshold on S3, several writes of a file locally."""
    writer, reader = adapter.open(), adapter.open()
    data = os.urandom(12 << 20)
    path = "s/t/date=2026-01-01/big.parquet"
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                got = reader.read(path)
            except FatalError:
                seen.append("none")
                continue
            seen.append("whole" if got == data else f"PART {len(got)}")

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        writer.write(path, data)
    finally:
        done.set()
        thread.join()
    assert reader.read(path) == data
    assert {s for s in seen if s.startswith("PART")} == set(), seen
    assert "none" in seen or "whole" in seen


def _killed_writer(kind: str, where: str, endpoint: str) -> None:
    """The child of the test below: lands one page with land.mid_write armed."""
    LandingZone(open_store(kind, where, endpoint)).write(page(50_000), "s", "t", None, None)


def test_a_writer_killed_mid_write_leaves_nothing_visible(adapter: Adapter) -> None:
    code = ("import sys; from tests.contract.test_landing_contract import _killed_writer; "
            "_killed_writer(*sys.argv[1:])")
    proc = subprocess.run(
        [sys.executable, "-c", code, adapter.kind, adapter.where, adapter.endpoint],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "STEADYFLOW_FAILPOINT": "land.mid_write",
             "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = adapter.open()
    assert list(store.list()) == []  # nothing visible, not even a temp file
    store.sweep_temp()  # a dead writer's leftovers are removed
    if adapter.kind == "local":
        assert [p for p in Path(adapter.where).rglob("*") if p.is_file()] == []
    zone = LandingZone(store)
    ref = zone.write(page(50_000), "s", "t", None, None)  # the rerun lands it whole
    assert zone.read(ref).num_rows == 50_000


def test_a_batch_is_streamed_in_bounded_memory(adapter: Adapter) -> None:
    zone = LandingZone(adapter.open())
    rows = page(1_000_000)
    ref = zone.write(rows, "s", "t", None, None)
    whole = rows.nbytes
    del rows
    gc.collect()
    reader = LandingZone(adapter.open())
    base = pa.total_allocated_bytes()
    peak = count = 0
    for batch in reader.batches(ref):
        count += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - base)
        del batch
    assert count == 1_000_000
    # one row group (ROW_GROUP_ROWS rows) at a time, not the whole batch
    assert peak < whole / 4, f"peak {peak:,} bytes for a {whole:,}-byte batch"


def test_a_missing_file_is_a_clear_error_naming_it(adapter: Adapter) -> None:
    store = adapter.open()
    zone = LandingZone(store)
    ref = zone.write(page(10), "s", "t", None, None)
    store.delete(ref.path)
    for read in (lambda: store.read(ref.path), lambda: store.open(ref.path)):
        with pytest.raises(FatalError) as caught:
            read()
        assert f"{store.where}/{ref.path}" in str(caught.value)
        assert "missing" in str(caught.value)
    with pytest.raises(FatalError) as caught:
        zone.read(ref)
    assert ref.path in str(caught.value) and caught.value.batch_id == ref.batch_id
    with pytest.raises(FatalError, match="missing"):
        list(zone.batches(ref))


def test_a_changed_file_is_refused(adapter: Adapter) -> None:
    store = adapter.open()
    zone = LandingZone(store)
    ref = zone.write(page(10), "s", "t", None, None)
    store.write(ref.path, zone.encode(page(10, start=1)))  # valid Parquet, other rows
    with pytest.raises(FatalError, match="checksum"):
        zone.read(ref)
    with pytest.raises(FatalError, match="checksum"):
        list(zone.batches(ref))


def test_a_staged_file_is_published_whole_or_not_at_all(adapter: Adapter) -> None:
    store = adapter.open()
    with store.staged("s/t/date=2026-01-01/compact-a.parquet") as local:
        local.write_bytes(b"compacted bytes")
        assert not store.exists("s/t/date=2026-01-01/compact-a.parquet")
    assert store.read("s/t/date=2026-01-01/compact-a.parquet") == b"compacted bytes"
    with pytest.raises(RuntimeError), store.staged("s/t/date=2026-01-01/compact-b.parquet"
                                                    ) as local:
        local.write_bytes(b"half of it")
        raise RuntimeError("the compactor failed")
    assert not store.exists("s/t/date=2026-01-01/compact-b.parquet")
    assert [f.path for f in store.list()] == ["s/t/date=2026-01-01/compact-a.parquet"]


def test_object_store_credentials_are_in_no_error(s3_endpoint: S3Endpoint) -> None:
    """Unreachable endpoint, a bucket that does not exist, a missing object: each error
    names the place, never the secret key."""
    down = ObjectStoreLanding("s3://sf-nowhere/p", endpoint="http://127.0.0.1:1",
                              region=REGION, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                              timeout=2)
    nobucket = ObjectStoreLanding("s3://sf-no-such-bucket/p", endpoint=s3_endpoint.url,
                                  region=REGION, access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    errors: list[SteadyflowError] = []
    for attempt in (lambda: down.write("a.parquet", b"x"), lambda: down.read("a.parquet"),
                    lambda: list(down.list()), lambda: nobucket.write("a.parquet", b"x"),
                    lambda: nobucket.read("a.parquet")):
        with pytest.raises(SteadyflowError) as caught:
            attempt()
        errors.append(caught.value)
    assert isinstance(errors[0], RetryableError) and "s3://sf-nowhere/p/a.parquet" in str(
        errors[0])
    for exc in errors:
        text = f"{exc}\n{exc!r}\n{exc.hint}\n{exc.__cause__!r}"
        assert SECRET_KEY not in text, text
    assert SECRET_KEY not in repr(down) and SECRET_KEY not in str(vars(down))
