"""Races between the cuts of one first load's readers (StateStore.cut, run/steal.py), on
both adapters (the `adapter` fixture of test_state_contract.py). Stealers cut different
readers of one load at once (each a different idle slot or worker): each cut takes the
next range number of the load, and none may fail for another's."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.contract.test_state_contract import Adapter, adapter  # noqa: F401 - the fixture

from steadyflow.model import Watermark
from steadyflow.state import ChunkLease, StateStore


def _key(n: int) -> Watermark:
    return Watermark(n, ())


def test_two_ranges_of_one_load_cut_at_once_both_take_a_range(
        adapter: Adapter) -> None:  # noqa: F811
    """Each cut locked only its own reader's row and read max(chunk) + 1 for its new
    range: two cuts of two ranges at once took the same number, and on PostgreSQL the
    later INSERT raised a unique violation out of `cut` (its stealer's slot stopped
    stealing). The first cut is held between its max(chunk) and its INSERT (its clock
    read, which comes between them, waits 0.5 s) while the second runs."""
    a = adapter.open()
    assert a.plan_backfill("s", "t", Watermark(9, (9,)), [(None, _key(100)),
                                                          (_key(100), _key(200))])
    assert a.claim_chunk("s", "t", "vm:1:r0", 30) is not None
    assert a.claim_chunk("s", "t", "vm:1:r1", 30) is not None
    first, second = sorted(a.first_loads(), key=lambda r: r.chunk or 0)
    slow, fast = adapter.open(), adapter.open()
    clock = slow._now

    def late(c: Any) -> float:
        time.sleep(0.5)
        return clock(c)

    slow._now = late  # type: ignore[method-assign]
    got: dict[str, ChunkLease | None | BaseException] = {}

    def cut(name: str, state: StateStore, reader: Any, mid: int, high: int) -> None:
        try:
            got[name] = state.cut(reader, _key(mid), _key(high), f"vm:9:{name}", 30)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion
            got[name] = exc

    held = threading.Thread(target=cut, args=("slow", slow, first, 50, 100))
    held.start()
    time.sleep(0.1)
    cut("fast", fast, second, 150, 200)
    held.join()
    assert all(isinstance(g, ChunkLease) for g in got.values()), got
    assert sorted(g.chunk for g in got.values()) == [2, 3]  # type: ignore[union-attr]
    assert [(c.chunk, c.low, c.high) for c in a.backfill_chunks("s", "t")] == [
        (0, None, _key(50)), (1, _key(100), _key(150)),
        *sorted([(got["slow"].chunk, _key(50), _key(100)),  # type: ignore[union-attr]
                 (got["fast"].chunk, _key(150), _key(200))])]  # type: ignore[union-attr]
