from __future__ import annotations

import threading
import time
from pathlib import Path

from steadyflow.buffer.sqlite import SqliteBuffer
from steadyflow.model import BatchRef


def _ref(i: int) -> BatchRef:
    return BatchRef(f"b{i}", "s", "t", f"p{i}", 1, 1, "c", None, None, time.time())


def test_put_is_idempotent_and_fifo(tmp_path: Path) -> None:
    buf = SqliteBuffer(tmp_path / "b.db", capacity=10)
    for i in (1, 2, 1):
        buf.put(_ref(i))
    assert buf.depth() == 2
    first = buf.get()
    assert first is not None and first.ref.batch_id == "b1"
    buf.ack("b1")
    assert buf.depth() == 1 and not buf.contains("b1") and buf.contains("b2")


def test_full_buffer_blocks_until_space_never_drops(tmp_path: Path) -> None:
    buf = SqliteBuffer(tmp_path / "b.db", capacity=2)
    buf.put(_ref(1))
    buf.put(_ref(2))
    done = threading.Event()

    def producer() -> None:
        buf.put(_ref(3))
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.5), "put must wait while the buffer is full"
    delivery = buf.get()
    assert delivery is not None
    buf.ack(delivery.ref.batch_id)
    assert done.wait(5), "put must resume once there is space"
    assert {buf.get().ref.batch_id, buf.get().ref.batch_id} == {"b2", "b3"}  # type: ignore[union-attr]


def test_unacked_message_is_redelivered_after_its_lease(tmp_path: Path) -> None:
    buf = SqliteBuffer(tmp_path / "b.db", capacity=5, lease=0.3)
    buf.put(_ref(1))
    assert buf.get() is not None
    assert buf.get() is None
    again = buf.get(wait=2)
    assert again is not None and again.ref.batch_id == "b1" and again.attempt == 2


def test_lease_of_a_dead_process_is_released_at_once(tmp_path: Path) -> None:
    buf = SqliteBuffer(tmp_path / "b.db", capacity=5, lease=600)
    buf.put(_ref(1))
    assert buf.get() is not None
    buf._conn.execute("UPDATE queue SET owner=?", (buf.owner.rsplit(":", 1)[0] + ":999999",))
    assert buf.release_dead_leases() == 1
    assert buf.get() is not None
