"""A read of the SQLite state store sees every commit that returned before it, whichever
thread or store handle made it (state/sqlite.py reads on a connection of its own).

The extractor threads, the loader thread and the status page of one process share one
SqliteStateStore: a checkpoint advanced by one thread and read by another right after
(a lease handed over, a poll reading where the last one ended) must not come from an
older snapshot, nor may a read block behind another thread's open write transaction
and then see a state from before it.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from steadyflow.model import Watermark
from steadyflow.state import SqliteStateStore

ROUNDS = 200


def _mark(i: int) -> Watermark:
    return Watermark(i, (i,))


def _seen(store: SqliteStateStore) -> int:
    mark = store.checkpoint("s", "t")
    return -1 if mark is None else int(mark.cursor)  # type: ignore[arg-type]


def _read_after_each_commit(writer: SqliteStateStore, reader: SqliteStateStore) -> list[str]:
    """`writer` advances the checkpoint in one thread, `reader` reads it in another as soon
    as each commit returned; what the reader missed."""
    committed: queue.Queue[int | None] = queue.Queue()
    stale: list[str] = []

    def read() -> None:
        while (i := committed.get()) is not None:
            seen = _seen(reader)
            if seen < i:
                stale.append(f"committed {i}, read {seen}")

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(ROUNDS):
            writer.advance_checkpoint("s", "t", _mark(i))
            committed.put(i)
    finally:
        committed.put(None)
        thread.join()
    return stale


def test_a_thread_reads_what_another_thread_of_its_store_committed(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    try:
        assert _read_after_each_commit(store, store) == []
    finally:
        store.close()


def test_a_store_reads_what_another_handle_of_the_file_committed(tmp_path: Path) -> None:
    """Another handle is another process's connection (`extract` beside `run --follow`)."""
    writer = SqliteStateStore(tmp_path / "state.db")
    reader = SqliteStateStore(tmp_path / "state.db")
    try:
        assert _read_after_each_commit(writer, reader) == []
    finally:
        writer.close()
        reader.close()


def test_a_write_transaction_reads_its_own_writes(tmp_path: Path) -> None:
    """Inside a transaction, the store's own reads (a method that asks for the checkpoint
    while recording) see what the transaction wrote so far; another thread sees none of it
    until the commit."""
    store = SqliteStateStore(tmp_path / "state.db")
    store.advance_checkpoint("s", "t", _mark(1))
    outside: list[int] = []
    try:
        with store._tx() as c:
            c.execute("UPDATE checkpoints SET watermark=? WHERE source='s' AND tbl='t'",
                      (_mark(2).to_json(),))
            assert _seen(store) == 2
            thread = threading.Thread(target=lambda: outside.append(_seen(store)))
            thread.start()
            thread.join()
        assert outside == [1]
        assert _seen(store) == 2
    finally:
        store.close()
