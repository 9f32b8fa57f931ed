"""Landing layout: `steadyflow compact` and `steadyflow gc` (run/compact.py, run/retention.py).

- compact merges a table's small files of a day into few, and every batch still reads the
  same rows: `replay` into an emptied warehouse and `reconcile --repair` after damage give
  a warehouse equal to the source (independent oracle), on a local folder and on S3;
- a compaction SIGKILLed after writing, after moving the manifest, or after deleting
  leaves every batch readable, and the rerun finishes the job leaving no stray file;
- gc deletes files of loaded batches past the retention only: a batch not yet loaded, or
  with an open quarantine entry, keeps its file; the rows stay, marked gone;
- a soak of many short cycles (rows, run, compact, gc) keeps the file count bounded.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.conftest import steadyflow
from tests.support.items import TABLE, add_rows, make_source, write_config
from tests.support.oracle import diff, read_source, read_warehouse
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Endpoint, s3_endpoint

from steadyflow.errors import FatalError, RetryableError
from steadyflow.land.parquet import LandingZone
from steadyflow.model import BatchRef
from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run import compact as compact_module
from steadyflow.run.compact import CompactResult, compact, compact_pipeline
from steadyflow.run.load import BatchLoader, LoadOutcome
from steadyflow.run.pipeline import Pipeline
from steadyflow.run.replay import replay_batches, replay_quarantine
from steadyflow.run.retention import collect, gc_pipeline
from steadyflow.state import SqliteStateStore

__all__ = ["s3_endpoint"]  # the session fixture, imported for pytest to find

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROWS = 2_000
PAGE = 100  # 20 batch files for 2,000 rows
FOLDER = "shop/items/"
ENV = {"SF_S3_ACCESS": ACCESS_KEY, "SF_S3_SECRET": SECRET_KEY, "STEADYFLOW_FAILPOINT": ""}


@pytest.fixture(params=["local", "s3"])
def landing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    if request.param == "local":
        return {"path": "landing"}
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    for name in ("SF_S3_ACCESS", "SF_S3_SECRET"):  # for the pipelines opened in this process
        monkeypatch.setenv(name, ENV[name])
    return {"url": f"s3://{endpoint.new_bucket()}/lz", "endpoint": endpoint.url,
            "region": REGION, "access_key": "${SF_S3_ACCESS}",
            "secret_key": "${SF_S3_SECRET}"}


def cli(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = steadyflow(*args, "--json", env={**ENV, **(env or {})})
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def files(cfg: Path) -> list[str]:
    with Pipeline.from_yaml(cfg) as pipeline:
        return [f.path for f in pipeline.landing.store.list(FOLDER)]


def assert_every_batch_reads(cfg: Path) -> int:
    """Every manifest entry's rows read back whole (from its own file or its part)."""
    total = 0
    with Pipeline.from_yaml(cfg) as pipeline:
        for ref, status in pipeline.state.landed_batches():
            assert status in ("loaded", "duplicate")
            assert pipeline.landing.read(ref).num_rows == ref.rows
            total += ref.rows
    return total


def warehouse_equals_source(directory: Path) -> None:
    expected = read_source("sqlite", str(directory / "shop.db"), TABLE)
    actual = read_warehouse("duckdb", str(directory / "warehouse.duckdb"), "main", TABLE)
    assert len(expected) > 0 and diff(expected, actual) == ""


def run_in_process(cfg: Path) -> None:
    with Pipeline.from_yaml(cfg) as pipeline:
        pipeline.run_once()


def replay_all(cfg: Path) -> None:
    with Pipeline.from_yaml(cfg) as pipeline:
        replay_batches(pipeline, [], "shop.items")


def test_compacted_batches_replay_and_repair_to_the_source(tmp_path: Path,
                                                            landing: dict[str, Any]) -> None:
    make_source(tmp_path / "shop.db", ROWS)
    cfg = write_config(tmp_path, landing, page_size=PAGE)
    run_in_process(cfg)
    before = files(cfg)
    assert len(before) >= ROWS // PAGE
    with Pipeline.from_yaml(cfg) as pipeline:
        stale = pipeline.state.landed_batches()[0][0]

    result = cli("compact", "-c", str(cfg), "--include-today", "--target", "16KB")
    after = files(cfg)
    assert result["batches_moved"] >= ROWS // PAGE
    assert 1 <= len(after) < len(before) // 3, (before, after)
    assert all(p.rsplit("/", 1)[-1].startswith("compact-") for p in after)
    with Pipeline.from_yaml(cfg) as pipeline:  # the manifest names only what is there
        assert {r.path for r, _ in pipeline.state.landed_batches()} == set(after)
        assert all(r.part is not None for r, _ in pipeline.state.landed_batches())
    assert assert_every_batch_reads(cfg) >= ROWS
    with Pipeline.from_yaml(cfg) as pipeline:  # a reference taken before the compaction (a
        assert pipeline.landing.read(stale).num_rows == stale.rows  # redelivered message)
        pipeline.buffer.put(stale)  # reads where the manifest says the batch is now
        assert pipeline.run_once().ok

    # a warehouse restored empty: replay from the compacted files
    (tmp_path / "warehouse.duckdb").unlink()
    replay_all(cfg)
    warehouse_equals_source(tmp_path)

    # damage, then reconcile --repair reads and lands beside compacted files
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute("DELETE FROM main.items WHERE id % 7 = 0")
        con.execute("UPDATE main.items SET note = 'wrong' WHERE id = 10")
    with Pipeline.from_yaml(cfg) as pipeline:
        (report,) = reconcile(pipeline, options=Options(repair=True))
        assert report.repair and report.repair["upserted"] > 0
    warehouse_equals_source(tmp_path)

    # compacting again leaves the big file alone and merges the repair's small files
    with Pipeline.from_yaml(cfg) as pipeline:
        again = compact_pipeline(pipeline, 16 << 10, include_today=True)
    assert again.files_after <= again.files_before
    assert_every_batch_reads(cfg)


def test_a_compaction_stalled_past_its_lease_moves_no_batch_into_a_swept_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compactor stalls after writing its first file, past its lease; another (with
    another target, so other files) takes the table over, sweeps that file as referenced
    by no entry and moves every batch. When the first wakes it must move nothing: its
    manifest move pointed 5 batches at the swept file (unreadable, replay impossible)."""
    make_source(tmp_path / "shop.db", ROWS)
    cfg = write_config(tmp_path, {"path": "landing"}, page_size=PAGE)
    run_in_process(cfg)
    monkeypatch.setattr(compact_module, "LEASE_SECONDS", 0.2)
    stalled: list[CompactResult] = []
    woken = False

    def stall(name: str) -> None:
        nonlocal woken
        if name == "compact.after_write" and not woken:
            woken = True
            time.sleep(0.4)  # past the lease: the next compact takes the table over
            with Pipeline.from_yaml(cfg) as other:
                stalled.append(compact_pipeline(other, 1 << 30, include_today=True))

    monkeypatch.setattr(compact_module, "failpoint", stall)
    with Pipeline.from_yaml(cfg) as pipeline, pytest.raises(RetryableError) as caught:
        compact_pipeline(pipeline, 8 << 10, include_today=True)
    assert "shop.items" in str(caught.value) and "took the table over" in str(caught.value)
    assert stalled and stalled[0].swept == 1 and stalled[0].files_after == 1
    assert assert_every_batch_reads(cfg) >= ROWS
    (tmp_path / "warehouse.duckdb").unlink()
    replay_all(cfg)
    warehouse_equals_source(tmp_path)


def test_a_replay_that_races_a_compaction_reads_the_moved_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`replay` reads its batches' entries first, then loads them one by one; a `compact`
    meanwhile moves them and deletes their files. Each is read where it was moved (was:
    the replay failed on its first batch with 'landed file missing': a replayed batch's
    id of its own was looked up in the manifest)."""
    make_source(tmp_path / "shop.db", 1_000)
    cfg = write_config(tmp_path, {"path": "landing"}, page_size=PAGE)
    run_in_process(cfg)
    (tmp_path / "warehouse.duckdb").unlink()
    process = BatchLoader.process
    compacted: list[CompactResult] = []

    def racing(loader: BatchLoader, batch: BatchRef) -> LoadOutcome:
        if not compacted:  # after replay read the entries, before it loads the first
            with Pipeline.from_yaml(cfg) as other:
                compacted.append(compact_pipeline(other, 1 << 30, include_today=True))
        return process(loader, batch)

    monkeypatch.setattr(BatchLoader, "process", racing)
    replay_all(cfg)
    assert compacted[0].batches_moved >= 1_000 // PAGE
    warehouse_equals_source(tmp_path)


def test_replay_of_a_table_takes_every_kept_batch_whatever_its_history(
        tmp_path: Path) -> None:
    """gc keeps manifest rows as history ('gone'); `replay --table` took the newest
    million rows of that history and replayed the kept ones among them, so a batch kept
    older than that (an open quarantine's, a long retention's) was left out while the
    replay said ok (here: every batch, the warehouse left empty). A table name that is
    no table is refused instead of replaying nothing."""
    make_source(tmp_path / "shop.db", 500)
    cfg = write_config(tmp_path, {"path": "landing"}, page_size=PAGE)
    run_in_process(cfg)
    later = time.time() + 60
    with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as db, db:
        db.execute(  # a million batches landed, loaded and gc'd since
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999999) "
            "INSERT INTO manifest(batch_id, source, tbl, ref, rows, landed_at, status) "
            "SELECT printf('gone%07d', i), 'shop', 'items', '{}', 1, ? + i, 'gone' FROM n",
            (later,))
    (tmp_path / "warehouse.duckdb").unlink()
    assert cli("replay", "-c", str(cfg), "--table", "shop.items")["batches"] >= 500 // PAGE
    warehouse_equals_source(tmp_path)
    refused = steadyflow("replay", "-c", str(cfg), "--table", "shop.itemz")
    assert refused.returncode != 0 and "no table shop.itemz" in refused.stdout + refused.stderr


@pytest.mark.faults
@pytest.mark.parametrize(("landing", "point"), [
    ("local", "compact.after_write:1"), ("local", "compact.after_relocate:2"),
    ("local", "compact.after_delete:1"), ("s3", "compact.after_relocate:2")],
    indirect=["landing"])
def test_a_compaction_killed_midway_leaves_every_batch_readable(
        tmp_path: Path, landing: dict[str, Any], point: str) -> None:
    make_source(tmp_path / "shop.db", ROWS)
    cfg = write_config(tmp_path, landing, page_size=PAGE)
    run_in_process(cfg)
    before = files(cfg)
    rows = assert_every_batch_reads(cfg)  # >= ROWS: lookback re-reads land again

    killed = steadyflow("compact", "-c", str(cfg), "--include-today", "--target", "8KB",
                        env={"STEADYFLOW_FAILPOINT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert assert_every_batch_reads(cfg) == rows

    with Pipeline.from_yaml(cfg) as pipeline:
        compact_pipeline(pipeline, 8 << 10, include_today=True)
    assert assert_every_batch_reads(cfg) == rows
    after = files(cfg)
    with Pipeline.from_yaml(cfg) as pipeline:  # no stray file: each one is some batch's
        assert {r.path for r, _ in pipeline.state.landed_batches()} == set(after)
    assert len(after) < len(before) // 2
    (tmp_path / "warehouse.duckdb").unlink()
    replay_all(cfg)
    warehouse_equals_source(tmp_path)


def test_gc_deletes_only_loaded_batches_past_the_retention(tmp_path: Path) -> None:
    make_source(tmp_path / "shop.db", 500)
    add_rows(tmp_path / "shop.db", 501, 1, amount="-1")  # quarantined: an open entry
    cfg = write_config(tmp_path, {"path": "landing"}, page_size=PAGE)
    run_in_process(cfg)
    add_rows(tmp_path / "shop.db", 600, 150)
    with Pipeline.from_yaml(cfg) as pipeline:
        pipeline.extract()  # landed, not loaded
    with Pipeline.from_yaml(cfg) as pipeline:
        entries = pipeline.state.landed_batches()
        pending = {r.batch_id for r, s in entries if s == "landed"}
        quarantined = {q["batch_id"] for q in pipeline.state.quarantined("open")}
        assert pending and quarantined
        later = time.time() + 3600
        assert collect(pipeline.landing, pipeline.state, 7200, now=later).files_deleted == 0
        result = collect(pipeline.landing, pipeline.state, 60, now=later)
        kept = {r.batch_id for r, _ in pipeline.state.landed_batches()}
        history = {b["batch_id"]: b["status"] for b in pipeline.state.batches(limit=10_000)}
        refs = {r.batch_id: r for r, _ in entries}
    assert kept == pending | quarantined
    assert result.files_deleted == result.batches_gone == len(entries) - len(kept) > 0
    assert set(history) == set(refs)  # every row kept as history
    assert {b for b, s in history.items() if s == "gone"} == set(refs) - kept
    landed = set(files(cfg))
    assert landed == {refs[b].path for b in kept}
    with Pipeline.from_yaml(cfg) as pipeline:
        # compact takes loaded batches only: a pending one is read by its queued path
        compact_pipeline(pipeline, 8 << 10, include_today=True)
        after = {r.batch_id: r for r, _ in pipeline.state.landed_batches()}
    assert all(after[b] == refs[b] for b in pending)

    run_in_process(cfg)  # the batches gc left alone still load
    warehouse_equals_source_except_bad(tmp_path)
    gone = next(iter(set(refs) - kept))
    with Pipeline.from_yaml(cfg) as pipeline, pytest.raises(FatalError) as caught:
        pipeline.landing.read(refs[gone])
    assert refs[gone].path in str(caught.value) and "gc" in (caught.value.hint or "")
    # the command: the rest of the loaded batches' files, but never the quarantined one's
    result = cli("gc", "-c", str(cfg), "--retention", "1ms")
    assert result["files_deleted"] > 0 and files(cfg) == [
        refs[b].path for b in quarantined]


@pytest.mark.faults
def test_gc_keeps_the_file_of_a_loaded_batch_still_in_the_buffer(tmp_path: Path) -> None:
    """A loader killed after marking its group loaded, before the acks, leaves loaded
    batches in the buffer; gc then must keep their files: the redelivery reads a batch's
    file before the ledger makes it a no-op (was: the next run failed, exit 1, with
    'landed file missing' for a batch already in the warehouse)."""
    make_source(tmp_path / "shop.db", 500)
    cfg = write_config(tmp_path, {"path": "landing"}, page_size=PAGE)
    killed = steadyflow("run", "-c", str(cfg), env={"STEADYFLOW_FAILPOINT": "load.after_mark"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with Pipeline.from_yaml(cfg) as pipeline:
        queued = {r.batch_id for r, s in pipeline.state.landed_batches()
                  if s == "loaded" and pipeline.buffer.contains(r.batch_id)}
        assert queued
        result = gc_pipeline(pipeline, 1e-3)
        kept = {r.batch_id for r, _ in pipeline.state.landed_batches()}
    assert queued <= kept and result.files_kept >= len(queued)
    assert cli("run", "-c", str(cfg))["errors"] == []
    warehouse_equals_source(tmp_path)
    assert cli("gc", "-c", str(cfg), "--retention", "1ms")["files_deleted"] >= len(queued)


def warehouse_equals_source_except_bad(directory: Path) -> None:
    expected = read_source("sqlite", str(directory / "shop.db"), TABLE)
    expected = {k: v for k, v in expected.items() if k != (501,)}
    actual = read_warehouse("duckdb", str(directory / "warehouse.duckdb"), "main", TABLE)
    assert diff(expected, actual) == ""


def test_soak_file_count_stays_bounded(tmp_path: Path) -> None:
    """25 short cycles, each adding rows: landed files grow by ~5 a cycle without
    compaction; with `compact` after each cycle the table's files stay a handful."""
    make_source(tmp_path / "shop.db", 100)
    cfg = write_config(tmp_path, {"path": "landing"}, page_size=50)
    counts: list[int] = []
    with Pipeline.from_yaml(cfg) as pipeline:
        for cycle in range(25):
            add_rows(tmp_path / "shop.db", 101 + cycle * 250, 250)
            pipeline.run_once()
            compact_pipeline(pipeline, target=64 << 10, include_today=True)
            counts.append(len(list(pipeline.landing.store.list(FOLDER))))
        batches = len(pipeline.state.landed_batches())
    assert batches >= 25 * 5
    assert max(counts) <= 8, counts  # vs one file per batch without compaction
    assert counts[-1] <= 8
    warehouse_equals_source(tmp_path)


def test_a_changed_byte_in_a_compacted_file_is_refused(tmp_path: Path) -> None:
    """A compacted file is verified by Parquet page CRCs: one flipped byte in a data page
    is an error naming the batch, never other rows loaded in silence."""
    make_source(tmp_path / "shop.db", 500)
    cfg = write_config(tmp_path, {"path": "landing"}, page_size=PAGE)
    run_in_process(cfg)
    with Pipeline.from_yaml(cfg) as pipeline:
        compact_pipeline(pipeline, 1 << 20, include_today=True)
        refs = [r for r, _ in pipeline.state.landed_batches()]
        victim = next(r for r in refs if r.part and r.rows)
        first = victim.part[0] if victim.part else 0
        path = tmp_path / "landing" / victim.path
        column = pq.read_metadata(path).row_group(first).column(1)
        data = bytearray(path.read_bytes())
        data[column.data_page_offset + column.total_compressed_size // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(FatalError) as caught:
            pipeline.landing.read(victim)
        assert caught.value.batch_id == victim.batch_id and "checksum" in str(caught.value)
        with pytest.raises(FatalError):
            list(pipeline.landing.batches(victim))


def test_a_compacted_file_written_again_under_its_own_name_is_kept(tmp_path: Path) -> None:
    """A small compacted file merged again may come out under its own name (the same
    batches, cut off by a batch of another schema before them): it is referenced again
    and must not be deleted as an input."""
    zone = LandingZone(tmp_path / "landing")
    state = SqliteStateStore(tmp_path / "state.db")
    wide = [zone.write(pa.table({"id": [i], "v": [str(i)]}), "s", "t", None, None)
            for i in range(3)]
    for ref in wide:
        state.record_landed(ref)
        state.mark_loaded(ref.batch_id, 1, 0)
    compact(zone, state, [("s", "t")], 1 << 20, include_today=True)
    (first,) = {r.path for r, _ in state.landed_batches()}
    narrow = zone.write(pa.table({"id": [9]}), "s", "t", None, None)  # a column fewer
    state.record_landed(replace(narrow, landed_at=0.0))  # the oldest: it leads the group
    state.mark_loaded(narrow.batch_id, 1, 0)
    compact(zone, state, [("s", "t")], 1 << 20, include_today=True)
    refs = [r for r, _ in state.landed_batches()]
    assert first in {r.path for r in refs}  # the wide batches came out under their name
    assert sorted(zone.read(r).num_rows for r in refs) == [1, 1, 1, 1]
    assert {f.path for f in zone.store.list()} == {r.path for r in refs}
    state.close()


def test_gc_deletes_old_raw_http_pages_unless_an_open_quarantine_names_them(
        tmp_path: Path) -> None:
    """Raw HTTP answers and rejected records are in no manifest row: gc deletes those of
    days past the retention, but not one an open quarantine entry names (its replay
    re-parses it), until that entry is replayed."""
    cfg = write_config(tmp_path, {"path": "landing"}, sources=[{
        "name": "api", "kind": "http", "url": "http://127.0.0.1:9",
        "tables": [{"name": "sales", "contract": "items", "endpoint": "/sales"}]}])
    with Pipeline.from_yaml(cfg) as pipeline:
        store, state = pipeline.landing.store, pipeline.state
        old = ["api/sales.raw/date=2020-01-01/a.parquet",
               "api/sales.raw/date=2020-01-02/b.parquet",
               "api/sales.rejected/date=2020-01-01/c.parquet"]
        today = pipeline.landing.write(pa.table({"body": ["x"]}), "api", "sales.raw", None,
                                       None, kind="raw").path
        for path in old:
            store.write(path, b"raw answer")
        state.record_quarantine("qa", "api", "sales", old[0], 1, {"bad payload": 1})
        assert gc_pipeline(pipeline, 3600).files_deleted == 2
        assert [f.path for f in store.list()] == sorted([old[0], today])
        state.mark_quarantine_replayed("qa", 1, 0)
        assert gc_pipeline(pipeline, 3600).files_deleted == 1
        assert [f.path for f in store.list()] == [today]


@pytest.mark.faults
def test_repair_files_a_killed_compaction_moved_are_swept(tmp_path: Path) -> None:
    """A compaction SIGKILLed after moving the manifest entries, before deleting its inputs,
    leaves them to the next `compact`, which finds an input by its batch id (its file's
    name). A repair batch's file was named by its content id while its entry has another id
    (`<id>.repair<run>.<i>`): no entry was found for it, so it was kept as a batch not yet
    recorded, for ever, and gc (which deletes only what an entry names) never took it."""
    make_source(tmp_path / "shop.db", 500)
    cfg = write_config(tmp_path, {"path": "landing"}, page_size=PAGE)
    run_in_process(cfg)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute("DELETE FROM main.items WHERE id % 7 = 0")
    with Pipeline.from_yaml(cfg) as pipeline:
        (report,) = reconcile(pipeline, options=Options(repair=True))
        assert report.repair and report.repair["batches"] >= 1
        repairs = {r.batch_id for r, _ in pipeline.state.landed_batches() if r.kind == "repair"}
    assert repairs
    killed = steadyflow("compact", "-c", str(cfg), "--include-today", "--target", "1MB",
                        env={"STEADYFLOW_FAILPOINT": "compact.after_relocate:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with Pipeline.from_yaml(cfg) as pipeline:
        compact_pipeline(pipeline, 1 << 20, include_today=True)
        kept = {r.path for r, _ in pipeline.state.landed_batches()}
        moved = {r.batch_id for r, _ in pipeline.state.landed_batches() if r.part}
    assert repairs <= moved
    assert set(files(cfg)) == kept  # no stray file: each one is some batch's
    assert cli("gc", "-c", str(cfg), "--retention", "1ms")["files_deleted"] == len(kept)
    assert files(cfg) == []
    warehouse_equals_source(tmp_path)


def test_gc_deletes_parked_rows_once_replayed_past_the_retention(tmp_path: Path) -> None:
    """Parked rows (landing/_quarantine/) were never deleted: the landing zone grew by every
    quarantined row for ever. An open entry's file stays whatever its age (a replay still
    needs it); a replayed one's goes once the replay is older than the retention; a file no
    entry names goes once its day is older than the retention."""
    make_source(tmp_path / "shop.db", 300)
    add_rows(tmp_path / "shop.db", 301, 1, amount="-1")
    cfg = write_config(tmp_path, {"path": "landing"}, page_size=PAGE)
    run_in_process(cfg)
    add_rows(tmp_path / "shop.db", 302, 1, amount="-2")
    run_in_process(cfg)
    zone = LandingZone(tmp_path / "landing")
    later = time.time() + 3600  # gc's clock below: past the replay's retention of 60 s
    stray_old = "_quarantine/shop.items/date=2020-01-01/stray.parquet"
    # a day that is not over at `later` (its date: after 23:00 UTC today's day is over then)
    day = time.strftime("%Y-%m-%d", time.gmtime(later))
    stray_new = f"_quarantine/shop.items/date={day}/n.parquet"
    for stray in (stray_old, stray_new):  # a parking killed before it was indexed
        zone.store.write(stray, memoryview(zone.encode(pa.table({"id": ["1"]}))))
    with Pipeline.from_yaml(cfg) as pipeline:
        first, second = pipeline.state.quarantined("open")
        kept = collect(pipeline.landing, pipeline.state, 60, now=later)
        parked = {f.path for f in pipeline.landing.store.list("_quarantine/")}
        assert parked == {first["path"], second["path"], stray_new}, parked
        assert kept.files_kept >= 3
    # the rule fixed (amounts down to -1 allowed), the first entry replayed
    text = cfg.read_text().replace("min: 0", "min: -1")
    assert text != cfg.read_text()
    cfg.write_text(text)
    with Pipeline.from_yaml(cfg) as pipeline:
        assert replay_quarantine(pipeline, [first["batch_id"]])["loaded_rows"] == 1
        status = {q["batch_id"]: q["status"] for q in pipeline.state.quarantined(None)}
        assert status == {first["batch_id"]: "replayed", second["batch_id"]: "open"}
        # within the retention of the replay: kept (e.g. for `quarantine show`)
        collect(pipeline.landing, pipeline.state, 7200, now=later)
        assert {f.path for f in pipeline.landing.store.list("_quarantine/")} == {
            first["path"], second["path"], stray_new}
        collect(pipeline.landing, pipeline.state, 60, now=later)
        parked = {f.path for f in pipeline.landing.store.list("_quarantine/")}
        history = {q["batch_id"] for q in pipeline.state.quarantined(None)}
    assert parked == {second["path"], stray_new}
    assert history == {first["batch_id"], second["batch_id"]}  # the entries stay
    cfg.write_text(cfg.read_text().replace("min: -1", "min: -2"))
    with Pipeline.from_yaml(cfg) as pipeline:  # the open one still replays
        assert replay_quarantine(pipeline, [])["loaded_rows"] == 1
    warehouse_equals_source(tmp_path)


def test_a_repair_file_named_by_its_content_id_is_swept_once_its_batch_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before 352742c a repair batch's file bore its content id, not its entry's id
    (`<id>.repair<run>.<i>`): one a killed compaction moved stayed beside the compacted file
    for ever. The next compact deletes such a file once its batch's entry names another."""
    zone = LandingZone(tmp_path / "landing")
    state = SqliteStateStore(tmp_path / "state.db")
    refs = [zone.write(pa.table({"id": [i], "v": [str(i)]}), "s", "t", None, None,
                       kind="repair") for i in range(3)]
    refs = [replace(r, batch_id=f"{r.batch_id}.repair7.{i}") for i, r in enumerate(refs)]
    pending = zone.write(pa.table({"id": [9], "v": ["9"]}), "s", "t", None, None,
                         kind="repair")  # landed, not yet recorded: never touched
    for ref in refs:
        state.record_landed(ref)
        state.mark_loaded(ref.batch_id, 1, 0)

    def killed(name: str) -> None:
        if name == "compact.after_relocate":
            raise KeyboardInterrupt(name)

    monkeypatch.setattr(compact_module, "failpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        compact(zone, state, [("s", "t")], 1 << 20, include_today=True)
    monkeypatch.undo()
    moved = {r.path for r, _ in state.landed_batches()}
    assert len(moved) == 1 and {r.path for r in refs} <= {f.path for f in zone.store.list()}
    compact(zone, state, [("s", "t")], 1 << 20, include_today=True)
    assert {f.path for f in zone.store.list()} == moved | {pending.path}
    assert sorted(zone.read(r).num_rows for r, _ in state.landed_batches()) == [1, 1, 1]
    state.close()


def test_a_resolved_quarantine_lets_gc_take_its_files(tmp_path: Path) -> None:
    """A row that never passes (fixed at the source and loaded since, or not wanted) kept
    its quarantine open for ever, and with it its parked rows and its batch's landed file.
    `quarantine resolve` closes it without loading; gc then deletes both past the
    retention. Only open entries are resolved; an unknown id is refused, naming it."""
    make_source(tmp_path / "shop.db", 300)
    add_rows(tmp_path / "shop.db", 301, 1, amount="-1")
    cfg = write_config(tmp_path, {"path": "landing"}, page_size=PAGE)
    run_in_process(cfg)
    add_rows(tmp_path / "shop.db", 302, 1, amount="-2")
    run_in_process(cfg)
    with Pipeline.from_yaml(cfg) as pipeline:
        first, second = pipeline.state.quarantined("open")
    refused = steadyflow("quarantine", "resolve", "-c", str(cfg), "--batch", "nope")
    assert refused.returncode != 0 and "nope" in refused.stdout + refused.stderr
    assert cli("quarantine", "resolve", "-c", str(cfg), "--batch",
               first["batch_id"]) == {"resolved": 1}
    assert cli("gc", "-c", str(cfg), "--retention", "1ms")["files_deleted"] > 0
    with Pipeline.from_yaml(cfg) as pipeline:
        parked = {f.path for f in pipeline.landing.store.list("_quarantine/")}
        kept = {r.batch_id for r, _ in pipeline.state.landed_batches()}
        status = {q["batch_id"]: q["status"] for q in pipeline.state.quarantined(None)}
    assert parked == {second["path"]}
    assert kept == {second["batch_id"]}  # the open entry's batch file only
    assert status == {first["batch_id"]: "resolved", second["batch_id"]: "open"}
