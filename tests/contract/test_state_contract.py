"""The StateStore contract, written once and run against every adapter.

SqliteStateStore runs on a file in tmp_path; PostgresStateStore on a fresh database of its
own (marked integration: with CI=true a missing PostgreSQL fails). Each test opens stores
through `adapter.open`, so "another instance" means another connection, as another process
(or, for PostgreSQL, another host) has.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from steadyflow.errors import ExtractionFenced, StateUnavailable
from steadyflow.model import BatchRef, Watermark
from steadyflow.state import ChunkLease, Lease, SqliteStateStore, StateStore
from steadyflow.state.postgres import PostgresStateStore


@dataclass
class Adapter:
    name: str
    open: Callable[[], StateStore]


@pytest.fixture(params=["sqlite", "postgres"])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Adapter]:
    opened: list[StateStore] = []

    def track(store: StateStore) -> StateStore:
        opened.append(store)
        return store

    if request.param == "sqlite":
        yield Adapter("sqlite", lambda: track(SqliteStateStore(tmp_path / "state.db")))
    else:
        request.applymarker(pytest.mark.integration)
        dsn = request.getfixturevalue("pg_dsn")
        yield Adapter("postgres", lambda: track(PostgresStateStore(dsn, "sf_state")))
    for store in opened:
        store.close()


def _ref(batch_id: str, source: str = "s", table: str = "t", rows: int = 3) -> BatchRef:
    return BatchRef(batch_id, source, table, f"{batch_id}.parquet", rows, 100, "c",
                    Watermark(1, (1,)), Watermark(5, (9,)), time.time())


def test_checkpoint_keeps_full_precision_and_is_overwritten(adapter: Adapter) -> None:
    a, b = adapter.open(), adapter.open()
    assert a.checkpoint("s", "t") is None
    mark = Watermark(datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), ("k€y", 7))
    a.advance_checkpoint("s", "t", mark)
    assert b.checkpoint("s", "t") == mark
    lower = Watermark(Decimal("1.000000000000000000001"), (1,))
    b.advance_checkpoint("s", "t", lower)  # never compared: overwritten as told
    assert a.checkpoint("s", "t") == lower
    a.reset_checkpoint("s", "t")
    assert b.checkpoint("s", "t") is None


def test_backfill_runs_start_advance_finish(adapter: Adapter) -> None:
    s = adapter.open()
    high = Watermark(10, (100,))
    s.start_backfill("s", "t", high)
    s.start_backfill("s", "t", Watermark(99, (1,)))  # a restart keeps the first high
    assert s.backfill("s", "t") == (high, None)
    s.advance_backfill("s", "t", Watermark(None, (50,)))
    assert s.backfill("s", "t") == (high, Watermark(None, (50,)))
    s.finish_backfill("s", "t")
    assert s.backfill("s", "t") is None
    assert s.checkpoint("s", "t") == high


def test_backfill_chunks_are_leased_fenced_and_gate_the_checkpoint(adapter: Adapter) -> None:
    a, b = adapter.open(), adapter.open()
    high = Watermark(10, (100,))
    bounds = [(None, Watermark(1, (50,))), (Watermark(1, (50,)), Watermark(2, (9,)))]
    assert a.plan_backfill("s", "t", high, bounds, since='"x"')
    assert not b.plan_backfill("s", "t", Watermark(99, (1,)), bounds[:1])  # planned once
    assert a.backfill("s", "t") == (high, None)
    first = a.claim_chunk("s", "t", "h:1:a", 30)
    second = b.claim_chunk("s", "t", "h:1:b", 30)
    assert first is not None and second is not None
    assert (first.chunk, first.low, first.high, first.since) == (0, None, bounds[0][1], '"x"')
    assert (second.chunk, second.low, second.high) == (1, *bounds[1])
    assert a.claim_chunk("s", "t", "h:1:c", 30) is None  # both held by live holders
    assert [(x["chunk"], x["holder"]) for x in b.leases()] == [(0, "h:1:a"), (1, "h:1:b")]
    a.advance_chunk(first, Watermark(1, (20,)), 20)
    assert not a.finish_backfill("s", "t")  # chunks left: the checkpoint does not move
    assert a.checkpoint("s", "t") is None
    # the second holder stalls past its lease: a third takes chunk 1 over and resumes
    # after its last key; the stalled one is fenced from then on
    b.advance_chunk(second, Watermark(1, (70,)), 5)
    expired = ChunkLease(second.source, second.table, second.holder, second.generation,
                         0.0, second.chunk)
    b.renew_lease(expired)  # a 0 s renewal: the chunk's lease ends now
    time.sleep(0.05)
    third = a.claim_chunk("s", "t", "h:1:c", 30)
    assert third is not None and third.chunk == 1 and third.generation == second.generation + 1
    assert third.after == Watermark(1, (70,))
    for step in (lambda: b.advance_chunk(second, Watermark(2, (1,)), 1),
                 lambda: b.record_landed(_ref("stale"), lease=second),
                 lambda: b.finish_chunk(second), lambda: b.renew_lease(second)):
        with pytest.raises(ExtractionFenced):
            step()
    assert b.batch("stale") is None
    a.record_landed(_ref("fresh"), lease=third)
    a.finish_chunk(third)
    b.release_lease(second)  # not its lease any more: nothing changes
    a.finish_chunk(first)
    chunks = b.backfill_chunks("s", "t")
    assert [(c.status, c.rows, c.holder) for c in chunks] == [("done", 20, "h:1:a"),
                                                              ("done", 5, "h:1:c")]
    assert b.claim_chunk("s", "t", "h:1:d", 30) is None
    assert a.finish_backfill("s", "t")
    assert b.checkpoint("s", "t") == high
    assert b.backfill("s", "t") is None and len(b.backfill_chunks("s", "t")) == 2  # history
    b.reset_checkpoint("s", "t")
    assert b.backfill_chunks("s", "t") == []
    # a load noted by start_backfill is split while it has landed nothing, never after
    b.start_backfill("s", "t", high)
    assert b.plan_backfill("s", "t", Watermark(99, (1,)), bounds)
    assert b.backfill("s", "t") == (high, None)
    b.reset_checkpoint("s", "t")
    b.start_backfill("s", "t", high)
    b.advance_backfill("s", "t", Watermark(1, (3,)))
    assert not b.plan_backfill("s", "t", high, bounds)
    assert b.backfill_chunks("s", "t") == []


def test_sequence_strictly_increases_across_instances_and_threads(adapter: Adapter) -> None:
    stores = [adapter.open() for _ in range(3)]
    taken: list[int] = []
    lock = threading.Lock()

    def take(store: StateStore) -> None:
        for _ in range(40):
            n = store.next_seq()
            with lock:
                taken.append(n)

    threads = [threading.Thread(target=take, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(taken)) == len(taken) == 120  # never reused
    assert stores[0].next_seq() > max(taken)


def test_raised_sequence_hands_out_numbers_above_and_never_lowers(adapter: Adapter) -> None:
    """raise_seq (a repair after the state was lost beside a kept warehouse): every later
    number is above the one given, while other instances keep taking numbers; a lower one
    changes nothing."""
    a, b = adapter.open(), adapter.open()
    a.next_seq()
    taken: list[int] = []

    def take() -> None:
        taken.extend(b.next_seq() for _ in range(30))

    thread = threading.Thread(target=take)
    thread.start()
    a.raise_seq(2_500_000)  # more than one statement's worth of numbers on PostgreSQL
    thread.join()
    after = b.next_seq()
    assert after > 2_500_000 and after > max(taken)
    a.raise_seq(10)
    assert a.next_seq() > after
    assert len(set(taken)) == len(taken)


def test_the_first_number_taken_is_above_the_floor_asked_once(adapter: Adapter) -> None:
    """floor_seq_by (the warehouse's highest number, run/pipeline.py): the floor is asked
    once, with the state's current number, before the first number is handed out, and
    every number after is above it; another instance's numbers are unaffected until it
    asks its own. A floor that fails hands out nothing and is asked again."""
    a, b = adapter.open(), adapter.open()
    first = b.next_seq()
    asked: list[int] = []

    def floor(current: int) -> int | None:
        asked.append(current)
        if len(asked) == 1:
            raise RuntimeError("the warehouse cannot be reached")
        return 5_000

    a.floor_seq_by(floor)
    with pytest.raises(RuntimeError):
        a.next_seq()
    assert a.current_seq() == first
    taken = [a.next_seq() for _ in range(3)]
    assert asked == [first, first] and min(taken) > 5_000
    assert a.current_seq() == max(taken) and b.next_seq() > max(taken)
    b.floor_seq_by(lambda current: None)  # nothing above: nothing written
    assert b.next_seq() == a.current_seq()


def test_lease_is_exclusive_under_contention_and_generations_fence(adapter: Adapter) -> None:
    stores = [adapter.open() for _ in range(4)]
    for round_ in range(25):  # a race shows up only now and then: ask often
        got: list[Lease] = []
        if round_ % 2:  # a lease held and released before: its row exists already
            freed = stores[0].try_lease("s", f"r{round_}", "otherhost:0:x", 30)
            assert freed is not None
            stores[0].release_lease(freed)
        barrier = threading.Barrier(len(stores))

        def grab(i: int, table: str, barrier: threading.Barrier = barrier,
                 got: list[Lease] = got) -> None:
            barrier.wait()
            lease = stores[i].try_lease("s", table, f"otherhost:{i}:x", 30)
            if lease is not None:
                got.append(lease)

        threads = [threading.Thread(target=grab, args=(i, f"r{round_}"))
                   for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 1, got  # exactly one holder, even when all asked at once
    got = [stores[0].try_lease("s", "t", "otherhost:0:x", 30)]  # type: ignore[list-item]
    assert len(got) == 1, got  # exactly one holder, even when all asked at once
    first = got[0]
    assert first.generation == 1
    stores[0].renew_lease(first)
    stores[0].record_landed(_ref("b1"), first)
    stores[1].release_lease(first)
    second = stores[2].try_lease("s", "t", "otherhost:9:y", 30)
    assert second is not None and second.generation == 2
    with pytest.raises(ExtractionFenced):
        stores[0].record_landed(_ref("b2"), first)
    with pytest.raises(ExtractionFenced):
        stores[0].advance_checkpoint("s", "t", Watermark(1, (1,)), first)
    assert stores[3].batch("b2") is None and stores[3].checkpoint("s", "t") is None
    stores[3].record_landed(_ref("b3"), second)
    assert stores[1].lease_holder("s", "t") == ("otherhost:9:y", pytest.approx(
        stores[1].lease_holder("s", "t")[1]))  # type: ignore[index]


def test_expired_lease_is_taken_over(adapter: Adapter) -> None:
    a, b = adapter.open(), adapter.open()
    old = a.try_lease("s", "t", "otherhost:1:a", 0.3)
    assert old is not None
    assert b.try_lease("s", "t", "otherhost:2:b", 30) is None  # live, not expired
    time.sleep(0.5)
    new = b.try_lease("s", "t", "otherhost:2:b", 30)
    assert new is not None and new.generation == old.generation + 1
    with pytest.raises(ExtractionFenced):
        a.renew_lease(old)


def test_every_fenced_write_renews_the_lease_and_a_stale_one_names_the_holder(
        adapter: Adapter) -> None:
    """The fence is also the renewal (record_landed, the checkpoint, a chunk's page): a
    lease kept busy by fenced writes outlives its seconds; one taken over is refused with
    the new holder and generation named, and nothing it wrote stays."""
    a, b = adapter.open(), adapter.open()
    lease = a.try_lease("s", "t", "otherhost:1:a", 0.6)
    assert lease is not None
    for i in range(3):  # 1.05 s in all, each write well within the 0.6 s it renews
        time.sleep(0.35)
        a.record_landed(_ref(f"r{i}"), lease)
        a.advance_checkpoint("s", "t", Watermark(i, (i,)), lease)
    assert b.try_lease("s", "t", "otherhost:2:b", 30) is None  # renewed: still live
    time.sleep(0.7)
    taken = b.try_lease("s", "t", "otherhost:2:b", 30)
    assert taken is not None and taken.generation == lease.generation + 1
    with pytest.raises(ExtractionFenced, match=r"now generation 2, held by otherhost:2:b"):
        a.record_landed(_ref("late"), lease)
    assert b.batch("late") is None
    assert b.checkpoint("s", "t") == Watermark(2, (2,))
    chunked = a.try_lease("s", "c", "otherhost:1:a", 30)
    assert chunked is not None
    a.plan_backfill("s", "c", Watermark(9, (9,)), [(None, Watermark(9, (9,)))],
                    lease=chunked)
    chunk = a.claim_chunk("s", "c", "otherhost:1:a", 0.6)
    assert chunk is not None
    time.sleep(0.35)
    a.advance_chunk(chunk, Watermark(1, (1,)), 1)
    time.sleep(0.35)  # past the claim's 0.6 s, within the page's renewal
    assert b.claim_chunk("s", "c", "otherhost:2:b", 30) is None
    time.sleep(0.7)
    assert b.claim_chunk("s", "c", "otherhost:2:b", 30) is not None
    with pytest.raises(ExtractionFenced, match=r"chunk 0 .*held by otherhost:2:b"):
        a.advance_chunk(chunk, Watermark(2, (2,)), 1)


def test_manifest_is_idempotent_and_tracks_status(adapter: Adapter) -> None:
    a, b = adapter.open(), adapter.open()
    a.record_landed(_ref("b1"))
    a.record_landed(_ref("b1"))  # a repeat is a no-op
    b.record_landed(_ref("b2", table="u"))
    assert [r.batch_id for r in a.pending_batches()] == ["b1", "b2"]
    b.mark_failed("b1", "boom postgresql://u:hunter2@h/db")
    assert a.failed_batch_ids() == {"b1"}
    assert a.failing_batches() == {("s", "t"): 1}
    assert "hunter2" not in str(a.batches())
    a.mark_loaded("b1", 3, 0)
    assert [r.batch_id for r in b.pending_batches()] == ["b2"]
    assert {r["batch_id"] for r in b.batches(table="t")} == {"b1"}
    assert {r["batch_id"] for r in b.batches(source="s")} == {"b1", "b2"}
    assert b.batch("b1") == _ref("b1").__class__.from_json(a.batch("b1").to_json())  # type: ignore
    assert b.batch("nope") is None


def test_a_killed_loops_runs_are_closed(adapter: Adapter) -> None:
    s = adapter.open()
    before = s.start_run("run")
    s.end_run(before, "ok", 0, 0)
    since = time.time()
    open_run, other = s.start_run("run"), s.start_run("extract")
    assert s.close_runs("killed", since=since, command="run") == 1
    runs = {r["run_id"]: r for r in s.runs()}
    assert runs[open_run]["outcome"] == "killed" and runs[open_run]["ended_at"] is not None
    assert runs[before]["outcome"] == "ok" and runs[other]["ended_at"] is None


def test_runs_health_polls_quarantine_reconcile(adapter: Adapter) -> None:
    s = adapter.open()
    run = s.start_run("run")
    assert s.start_run("extract") > run
    s.end_run(run, "ok", 2, 10)
    assert s.runs()[-1]["outcome"] == "ok" and s.last_successful_run() is not None
    s.record_load("s", "t", 10, 1, "2026-01-01", 1.0e9, changed=4)
    s.record_load("s", "t", 5, 0, None, None)
    s.record_load("s", "t", 1, 0, "older", 5.0e8)  # an older cursor does not go backwards
    s.record_error("s", "t", "bad")
    s.record_source_state("s", "t", page_size=500)
    s.record_source_state("s", "t", breaker="open")
    (h,) = s.health()
    assert (h.rows_loaded, h.rows_changed, h.rows_quarantined) == (16, 10, 1)
    assert (h.newest_cursor, h.newest_cursor_epoch) == ("2026-01-01", 1.0e9)
    assert (h.page_size, h.breaker, h.last_error) == (500, "open", "bad")
    s.record_poll("s", "t", Watermark(3, (1,)), 3.0)
    s.record_poll("s", "u", None, None)
    polls = s.polls()
    assert polls[("s", "t")][0] == 3.0 and polls[("s", "u")][0] is None
    s.record_quarantine("q1", "s", "t", "p", 2, {"null key": 2}, ["h1", "h2"])
    s.record_quarantine("q1", "s", "t", "p", 2, {"null key": 2}, ["h1", "h2"])
    assert s.parked_by("s", "t", ["h1", "h3"]) == {"h1": "q1"}
    assert [q["batch_id"] for q in s.quarantined()] == ["q1"]
    s.mark_quarantine_replayed("q1", 2, 0)
    assert s.quarantined() == [] and len(s.quarantined(None)) == 1
    s.record_reconcile("s", "t", 64, 1000, 1, 0, 0, 0, {"x": 1})
    s.record_reconcile("s", "t", 64, 1000, 0, 0, 0, 1, {"x": 2})
    (last,) = s.last_reconcile()
    assert last["repaired"] == 1


def test_postgres_outage_is_an_error_not_a_hang(pg_dsn: str) -> None:
    """A PostgreSQL store whose server goes away raises StateUnavailable (retryable) at
    once, with no password in it, and works again on the next call once it is back."""
    store = PostgresStateStore(pg_dsn.replace("postgres@", "postgres:s3cr3t@"), "sf_state")
    try:
        store.record_landed(_ref("b1"))
        with psycopg.connect(pg_dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                      "datname = %s AND pid <> pg_backend_pid()", (pg_dsn.rsplit("/", 1)[1],))
        started = time.monotonic()
        with pytest.raises(StateUnavailable) as err:
            store.record_landed(_ref("b2"))
        assert time.monotonic() - started < 5
        assert "s3cr3t" not in str(err.value)
        store.record_landed(_ref("b2"))  # reconnects
        assert {r.batch_id for r in store.pending_batches()} == {"b1", "b2"}
    finally:
        store.close()


def test_postgres_fenced_page_writes_are_one_round_trip_each(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A landed page's fenced writes (its manifest row, then the first load's position or
    the checkpoint) are one autocommitted statement each on PostgreSQL, not a transaction
    of four round trips (BEGIN, fence, write, COMMIT): a worker pays them on every page.
    One statement is as fenced as the transaction was: a stale table or chunk lease writes
    nothing and names who holds it now."""
    a, b = PostgresStateStore(pg_dsn, "sf_state"), PostgresStateStore(pg_dsn, "sf_state")
    try:
        lease = a.try_lease("s", "t", "otherhost:1:a", 30)
        assert lease is not None
        a.start_backfill("s", "t", Watermark(9, (9,)), lease)
        trips: list[int] = []
        wait = psycopg.Connection.wait

        def counted(self: psycopg.Connection[object], *args: object, **kw: object) -> object:
            trips.append(1)  # one per statement sent and answered: the round trips
            return wait(self, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(psycopg.Connection, "wait", counted)
        for write in (lambda: a.record_landed(_ref("p1"), lease),
                      lambda: a.advance_backfill("s", "t", Watermark(3, (3,)), lease),
                      lambda: a.advance_checkpoint("s", "t", Watermark(4, (4,)), lease),
                      lambda: a.record_landed(_ref("p2"))):
            trips.clear()
            write()
            assert len(trips) == 1, f"{len(trips)} round trips"
        monkeypatch.undo()
        assert b.batch("p1") is not None and b.batch("p2") is not None
        assert b.backfill("s", "t") == (Watermark(9, (9,)), Watermark(3, (3,)))
        assert b.checkpoint("s", "t") == Watermark(4, (4,))

        a.release_lease(lease)
        taken = b.try_lease("s", "t", "otherhost:2:b", 30)
        assert taken is not None and taken.generation == lease.generation + 1
        with pytest.raises(ExtractionFenced, match=r"now generation 2, held by otherhost:2:b"):
            a.record_landed(_ref("late"), lease)
        with pytest.raises(ExtractionFenced):
            a.advance_backfill("s", "t", Watermark(7, (7,)), lease)
        with pytest.raises(ExtractionFenced):
            a.advance_checkpoint("s", "t", Watermark(8, (8,)), lease)
        assert b.batch("late") is None
        assert b.backfill("s", "t") == (Watermark(9, (9,)), Watermark(3, (3,)))
        assert b.checkpoint("s", "t") == Watermark(4, (4,))

        table = a.try_lease("s", "c", "otherhost:1:a", 30)
        assert table is not None
        a.plan_backfill("s", "c", Watermark(9, (9,)), [(None, Watermark(9, (9,)))],
                        lease=table)
        chunk = a.claim_chunk("s", "c", "otherhost:1:a", 0.3)
        assert chunk is not None
        a.record_landed(_ref("c1", table="c"), chunk)
        time.sleep(0.5)
        assert b.claim_chunk("s", "c", "otherhost:2:b", 30) is not None
        with pytest.raises(ExtractionFenced, match=r"chunk 0 .*held by otherhost:2:b"):
            a.record_landed(_ref("c2", table="c"), chunk)
        assert b.batch("c1") is not None and b.batch("c2") is None
    finally:
        a.close()
        b.close()


def test_workers_registry_and_held_leases(adapter: Adapter) -> None:
    a, b = adapter.open(), adapter.open()
    a.register_worker("h1:1:x", "h1", 1, 0.2)
    b.register_worker("h2:2:y", "h2", 2, 60)
    lease = a.try_lease("s", "t", "h1:1:tok", 30)
    assert lease is not None
    assert [(x["source"], x["table"], x["chunk"], x["holder"]) for x in b.leases()] == [
        ("s", "t", None, "h1:1:tok")]
    a.heartbeat_worker("h1:1:x", ["extract s.t"], {"uptime_seconds": 1})
    seen = {w["worker_id"]: w for w in b.workers()}
    assert seen["h1:1:x"]["units"] == ["extract s.t"] and seen["h1:1:x"]["status"] == "running"
    time.sleep(0.8)  # three heartbeat periods of h1 without a beat: lost
    seen = {w["worker_id"]: w for w in b.workers()}
    assert seen["h1:1:x"]["status"] == "lost" and seen["h2:2:y"]["status"] == "running"
    a.release_lease(lease)
    assert b.leases() == []
    b.stop_worker("h2:2:y")
    assert {w["worker_id"]: w["status"] for w in a.workers()}["h2:2:y"] == "stopped"


def test_manifest_relocate_and_mark_gone(adapter: Adapter) -> None:
    """Compaction moves batches into a file's row groups all at once (`relocate`); gc marks
    loaded batches whose files it deleted 'gone' and keeps their rows (`mark_gone`)."""
    a, b = adapter.open(), adapter.open()
    for i in range(3):
        a.record_landed(_ref(f"b{i}"))
    for i in range(2):
        a.mark_loaded(f"b{i}", 3, 0)
    live = sorted(b.landed_batches("s", "t"), key=lambda e: e[0].batch_id)
    assert [(r.batch_id, s) for r, s in live] == [
        ("b0", "loaded"), ("b1", "loaded"), ("b2", "landed")]
    assert b.landed_batches("s", "other") == []
    assert [r.batch_id for r, _ in b.landed_batches(before=live[1][0].landed_at)] == ["b0"]
    moved = [replace(r, path="s/t/date=2026-01-01/compact-x.parquet", part=(i, i + 1))
             for i, (r, _) in enumerate(live[:2])]
    a.relocate(moved)
    assert b.batch("b1") == moved[1] and moved[1].part == (1, 2)  # `part` round-trips
    a.mark_gone(["b0", "b1", "b2"])  # b2 is not loaded: never marked
    assert [(r.batch_id, s) for r, s in b.landed_batches()] == [("b2", "landed")]
    assert {x["batch_id"]: x["status"] for x in b.batches()} == {
        "b0": "gone", "b1": "gone", "b2": "landed"}
    assert [r.batch_id for r in b.pending_batches()] == ["b2"]
    again = replace(_ref("b0"), path="s/t/date=2026-01-02/b0.parquet")
    a.record_landed(again)  # a gone batch landed again: its new file is pending
    a.record_landed(replace(again, path="elsewhere"))  # known and not gone: kept as is
    assert b.batch("b0") == again
    assert sorted(r.batch_id for r in b.pending_batches()) == ["b0", "b2"]


def test_verified_buckets_of_an_incremental_reconcile(adapter: Adapter) -> None:
    """Buckets a clean reconcile verified: bounds and checksums past 64 bits kept exactly,
    a partial save updates only its buckets and moves `since` for the whole table, a
    replace drops the old ones, forget clears the table only."""
    from steadyflow.state.store import VerifiedBucket

    a, b = adapter.open(), adapter.open()
    assert a.verified_buckets("s", "t") == []
    big = 2 ** 70 + 3
    first = [VerifiedBucket(0, None, -(2 ** 63), 5, big, 100.0, None),
             VerifiedBucket(1, -(2 ** 63), 2 ** 64, 7, 12, 100.0, None),
             VerifiedBucket(2, 2 ** 64, None, 0, 0, 100.0, None)]
    a.save_verified_buckets("s", "t", first, since=1_700_000_000_000_000, replace=True)
    a.save_verified_buckets("s", "other", first[:1], since=None, replace=True)
    got = b.verified_buckets("s", "t")
    assert [(x.bucket, x.lo, x.hi, x.rows, x.checksum) for x in got] == [
        (0, None, -(2 ** 63), 5, big), (1, -(2 ** 63), 2 ** 64, 7, 12), (2, 2 ** 64, None, 0, 0)]
    assert {x.since for x in got} == {1_700_000_000_000_000}
    b.save_verified_buckets("s", "t", [replace(first[1], rows=8, checksum=13,
                                               verified_at=200.0)], since=1_800_000_000_000_000)
    got = a.verified_buckets("s", "t")
    assert [(x.rows, x.checksum, x.verified_at) for x in got] == [
        (5, big, 100.0), (8, 13, 200.0), (0, 0, 100.0)]
    assert {x.since for x in got} == {1_800_000_000_000_000}
    a.save_verified_buckets("s", "t", first[:1], since=None, replace=True)
    assert [(x.bucket, x.since) for x in b.verified_buckets("s", "t")] == [(0, None)]
    b.forget_verified_buckets("s", "t")
    assert a.verified_buckets("s", "t") == []
    assert len(a.verified_buckets("s", "other")) == 1


def test_a_quarantine_is_resolved_once_and_only_while_open(adapter: Adapter) -> None:
    s = adapter.open()
    for batch_id in ("q1", "q2", "q3"):
        s.record_quarantine(batch_id, "s", "t", f"{batch_id}.parquet", 1, {"bad": 1})
    s.mark_quarantine_replayed("q3", 1, 0)
    assert s.resolve_quarantine(["q1", "q3", "nope"]) == ["q1"]  # q3 was replayed already
    assert s.resolve_quarantine(["q1"]) == []
    status = {q["batch_id"]: (q["status"], q["replayed_at"] is not None)
              for q in s.quarantined(None)}
    assert status == {"q1": ("resolved", True), "q2": ("open", False), "q3": ("replayed", True)}
    assert [q["batch_id"] for q in s.quarantined()] == ["q2"]
