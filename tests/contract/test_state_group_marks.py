"""Two loaders mark their groups at once (StateStore.record_loaded): no deadlock, exact counts.

A load group's state transaction updates one table_health row per table it holds. Two
workers whose groups hold batches of the same tables in other orders (each group keeps its
buffer's order within a target) locked those rows in opposite orders: PostgreSQL aborted one
of them as a deadlock, the loader reported its whole group as failed (the tables' errors,
the batches given back) although it was committed, and the redelivered batches, ledger
duplicates, never added their counts. Run against every adapter (the fixture of
test_state_contract.py).
"""

from __future__ import annotations

import threading

from tests.contract.test_state_contract import Adapter, _ref, adapter

from steadyflow.state import LoadedBatch, StateStore

__all__ = ["adapter"]  # the fixture, used by name

GROUPS = 150
ROWS = 10


def test_groups_of_the_same_tables_in_other_orders_mark_without_a_deadlock(
        adapter: Adapter) -> None:
    stores = [adapter.open(), adapter.open()]
    errors: list[BaseException] = []

    def loader(i: int) -> None:
        store = stores[i]
        tables = ["t1", "t2", "t3"] if i == 0 else ["t3", "t2", "t1"]
        for g in range(GROUPS):
            refs = [_ref(f"w{i}-{g}-{t}", table=t, rows=ROWS) for t in tables]
            for ref in refs:
                store.record_landed(ref)
            try:
                store.record_loaded([LoadedBatch(ref, "loaded", ROWS, 0, ROWS) for ref in refs])
            except Exception as exc:  # noqa: BLE001 - the finding, reported below
                errors.append(exc)

    threads = [threading.Thread(target=loader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"{len(errors)} of {2 * GROUPS} group marks failed: {errors[0]}"
    health = {h.table: (h.rows_loaded, h.rows_changed) for h in stores[0].health()}
    assert health == {t: (2 * GROUPS * ROWS, 2 * GROUPS * ROWS) for t in ("t1", "t2", "t3")}
    assert len([b for b in stores[0].batches(limit=10_000) if b["status"] == "loaded"]) == (
        2 * GROUPS * 3)


def test_a_duplicate_counts_once_whoever_marks_it(adapter: Adapter) -> None:
    """A duplicate carries the counts its ledger row kept (run/load.py `duplicate`): they
    are added by the mark that moves a never-marked entry out of 'landed', and by no
    other. The loader and the sweeper marking one batch at once count it once; an entry
    gc deleted ('gone') and landed again, or one the manifest does not know, was counted
    when it first loaded."""
    loader, sweeper = adapter.open(), adapter.open()
    refs = [_ref(f"race-{i}", rows=ROWS) for i in range(GROUPS)]
    for ref in refs:
        loader.record_landed(ref)

    def mark(store: StateStore, status: str) -> None:
        for ref in refs:
            store.record_loaded([LoadedBatch(ref, status, ROWS, 1, ROWS)])

    threads = [threading.Thread(target=mark, args=(loader, "loaded")),
               threading.Thread(target=mark, args=(sweeper, "duplicate"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = [(h.rows_loaded, h.rows_changed, h.rows_quarantined) for h in loader.health()]
    assert counts == [(GROUPS * ROWS, GROUPS * ROWS, GROUPS)]

    loader.mark_gone([refs[0].batch_id])
    loader.record_landed(refs[0])  # landed again under its id
    sweeper.record_loaded([LoadedBatch(refs[0], "duplicate", ROWS, 1, ROWS),
                           LoadedBatch(_ref("unknown", rows=ROWS), "duplicate", ROWS, 1,
                                       ROWS)])
    assert [(h.rows_loaded, h.rows_changed, h.rows_quarantined)
            for h in loader.health()] == counts
    assert loader.pending_batches() == []


def test_a_groups_batches_of_one_table_add_up_and_keep_the_newest_cursor(
        adapter: Adapter) -> None:
    """Each table's health is written once per group: the sum of the counts of the
    batches the group moved out of 'landed', and the newest cursor of any of them (the
    first of equals), never older than what the table had."""
    store = adapter.open()
    refs = [_ref(f"g{i}", table=t) for i, t in enumerate(["t1", "t1", "t1", "t2", "t1"])]
    for ref in refs:
        store.record_landed(ref)
    store.record_loaded([LoadedBatch(refs[4], "loaded", 1, 1, 1, "c-late", 50.0)])
    store.record_loaded([
        LoadedBatch(refs[0], "loaded", 10, 1, 7, "c5", 5.0),
        LoadedBatch(refs[1], "loaded", 20, 2, 20, "c9", 9.0),
        LoadedBatch(refs[2], "duplicate", 30, 0, None, "c11", 11.0),  # kept no counts
        LoadedBatch(refs[3], "loaded", 4, 0, 4, "t2-c", 3.0),
        LoadedBatch(refs[4], "loaded", 99, 9, 99, "c99", 99.0),  # marked before: not again
    ])
    health = {h.table: h for h in store.health()}
    assert (health["t1"].rows_loaded, health["t1"].rows_changed,
            health["t1"].rows_quarantined) == (31, 28, 4)
    assert (health["t1"].newest_cursor, health["t1"].newest_cursor_epoch) == ("c-late", 50.0)
    assert (health["t2"].rows_loaded, health["t2"].newest_cursor) == (4, "t2-c")
    more = [_ref(f"h{i}", table="t1") for i in range(3)]
    for ref in more:
        store.record_landed(ref)
    store.record_loaded([LoadedBatch(more[0], "loaded", 1, 0, 1, "first-of-equals", 60.0),
                         LoadedBatch(more[1], "loaded", 1, 0, 1, "second", 60.0),
                         LoadedBatch(more[2], "loaded", 1, 0, 1, "older", 55.0)])
    t1 = next(h for h in store.health() if h.table == "t1")
    assert (t1.rows_loaded, t1.newest_cursor, t1.newest_cursor_epoch) == (
        34, "first-of-equals", 60.0)
