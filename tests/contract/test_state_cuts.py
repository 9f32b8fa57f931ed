"""The state's part of work stealing (run/steal.py), on both adapters (the `adapter`
fixture of test_state_contract.py): a stealer cuts a first load's reader, one-piece or a
key range's, and leases the far part; the reader's next record is refused (LoadCut) and
nothing of it lands, its renewals go on, a stale view of the reader cuts nothing, two
stealers racing for one reader cut it once, and the checkpoint waits for the stolen
range.
"""

from __future__ import annotations

import threading
import time

import pytest
from tests.contract.test_state_contract import Adapter, adapter  # noqa: F401 - the fixture

from steadyflow.errors import LoadCut
from steadyflow.model import BatchRef, Watermark
from steadyflow.state import ChunkLease, Lease, LoadLease, StateStore


def _ref(batch_id: str) -> BatchRef:
    return BatchRef(batch_id, "s", "t", f"{batch_id}.parquet", 3, 100, "c",
                    Watermark(1, ()), Watermark(5, ()), time.time())


def _key(n: int) -> Watermark:
    return Watermark(n, ())


def _loading(state: StateStore) -> tuple[Lease, LoadLease]:
    lease = state.try_lease("s", "t", "vm:1:holder", 30)
    assert lease is not None
    state.start_backfill("s", "t", Watermark(9, (9,)), lease=lease, since="{}")
    after, upto, cuts = state.load_bound("s", "t")
    assert (after, upto, cuts) == (None, None, 0)
    return lease, LoadLease(lease.source, lease.table, lease.holder, lease.generation,
                            lease.seconds, cuts, upto)


def test_a_cut_refuses_the_readers_next_page_and_leases_the_far_part(
        adapter: Adapter) -> None:  # noqa: F811
    a, b = adapter.open(), adapter.open()
    lease, held = _loading(a)
    a.record_landed(_ref("p1"), lease=held)
    a.advance_backfill("s", "t", _key(10), lease=held)
    [reader] = b.first_loads()
    assert (reader.chunk, reader.after, reader.high, reader.cuts) == (None, _key(10), None, 0)

    stolen = b.cut(reader, _key(50), _key(100), "vm:2:thief", 30)
    assert isinstance(stolen, ChunkLease)
    assert (stolen.chunk, stolen.low, stolen.high, stolen.after, stolen.generation) == (
        0, _key(50), _key(100), None, 1)
    # the page read against the old bound is not recorded, the position does not move
    with pytest.raises(LoadCut):
        a.record_landed(_ref("p2"), lease=held)
    assert a.batch("p2") is None
    with pytest.raises(LoadCut):
        a.advance_backfill("s", "t", _key(60), lease=held)
    assert a.load_bound("s", "t") == (_key(10), _key(50), 1)
    a.renew_lease(lease)  # the reader keeps its table
    # a stealer with the view from before the cut cuts nothing
    assert b.cut(reader, _key(30), _key(50), "vm:3:late", 30) is None
    # the reader, told its new bound, records again
    held = LoadLease(*(lease.source, lease.table, lease.holder, lease.generation,
                       lease.seconds), 1, _key(50))
    a.record_landed(_ref("p3"), lease=held)
    a.advance_backfill("s", "t", _key(20), lease=held)
    # a view from before the reader's last record cuts nothing either (its page in hand
    # might hold keys past the cut)
    [fresh] = [r for r in b.first_loads() if r.chunk is None]
    assert b.cut(reader, _key(30), _key(50), "vm:3:late", 30) is None
    assert fresh.after == _key(20)
    # the checkpoint waits for the stolen range
    assert not a.finish_backfill("s", "t", lease=lease)
    assert a.checkpoint("s", "t") is None
    b.finish_chunk(stolen)
    assert a.finish_backfill("s", "t", lease=lease)
    assert a.checkpoint("s", "t") == Watermark(9, (9,))
    assert a.first_loads() == []


def test_a_key_ranges_reader_is_cut_the_same_way(adapter: Adapter) -> None:  # noqa: F811
    a, b = adapter.open(), adapter.open()
    assert a.plan_backfill("s", "t", Watermark(9, (9,)), [(None, _key(100))])
    # a split load is not cut as one piece: its ranges are
    assert b.first_loads() == []
    held = a.claim_chunk("s", "t", "vm:1:reader", 30)
    assert held is not None and held.cuts == 0
    a.advance_chunk(held, _key(10), 10)
    [reader] = b.first_loads()
    assert (reader.chunk, reader.low, reader.after, reader.high) == (0, None, _key(10),
                                                                    _key(100))
    stolen = b.cut(reader, _key(40), _key(100), "vm:2:thief", 30)
    assert stolen is not None and stolen.chunk == 1
    with pytest.raises(LoadCut):
        a.advance_chunk(held, _key(45), 10)
    with pytest.raises(LoadCut):
        a.finish_chunk(held)
    a.renew_lease(held)
    now = a.chunk_bound(held)
    assert (now.high, now.cuts, now.after, now.generation) == (_key(40), 1, _key(10), 1)
    a.advance_chunk(now, _key(40), 30)
    a.finish_chunk(now)
    assert [(c.chunk, c.low, c.high, c.status, c.rows) for c in a.backfill_chunks("s", "t")] \
        == [(0, None, _key(40), "done", 40), (1, _key(40), _key(100), "pending", 0)]
    assert not a.finish_backfill("s", "t")


def test_two_stealers_racing_for_one_reader_cut_it_once(adapter: Adapter) -> None:  # noqa: F811
    a = adapter.open()
    _, held = _loading(a)
    a.advance_backfill("s", "t", _key(10), lease=held)
    [reader] = a.first_loads()
    thieves = [adapter.open() for _ in range(4)]
    got: list[ChunkLease | None] = []
    start = threading.Barrier(len(thieves))

    def thief(state: StateStore, n: int) -> None:
        start.wait()
        got.append(state.cut(reader, _key(50 + n), _key(100), f"vm:{n + 2}:thief", 30))

    threads = [threading.Thread(target=thief, args=(s, n)) for n, s in enumerate(thieves)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [g for g in got if g is not None]
    assert len(won) == 1, got
    assert [(c.chunk, c.low) for c in a.backfill_chunks("s", "t")] == [(0, won[0].low)]
    assert a.load_bound("s", "t") == (_key(10), won[0].low, 1)


def test_readers_not_listed_to_stealers(adapter: Adapter) -> None:  # noqa: F811
    """No stealer cuts a load begun by an older version (no re-read start recorded), a
    load whose reader's lease expired (the next extraction resumes it)."""
    a = adapter.open()
    lease = a.try_lease("s", "old", "vm:1:holder", 30)
    assert lease is not None
    a.start_backfill("s", "old", Watermark(9, (9,)), lease=lease)  # since NULL
    short = a.try_lease("s", "t", "vm:1:holder", 0.2)
    assert short is not None
    a.start_backfill("s", "t", Watermark(9, (9,)), lease=short, since="{}")
    assert [(r.table, r.chunk) for r in a.first_loads()] == [("t", None)]
    time.sleep(0.4)
    assert a.first_loads() == []
