"""The Buffer contract, written once and run against every adapter.

SqliteBuffer runs on a file in tmp_path; JetStreamBuffer on a stream of its own, deleted
afterwards (marked integration: with CI=true a missing NATS fails, elsewhere it skips).
Each test opens buffers through `adapter.open`, so "another instance" means another
connection to the same file or stream, as a second process would have.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest
from tests.conftest import require_service, write_pipeline
from tests.support.jetstream import NATS_HOST, NATS_PORT, NATS_URL, delete_stream

from steadyflow.buffer.jetstream import JetStreamBuffer
from steadyflow.buffer.sqlite import SqliteBuffer
from steadyflow.config import load_config
from steadyflow.demo.stores import create_stores
from steadyflow.errors import RetryableError
from steadyflow.model import BatchRef
from steadyflow.ports import Buffer
from steadyflow.reconcile.compare import compare_target
from steadyflow.run.pipeline import Pipeline


def _ref(name: str) -> BatchRef:
    return BatchRef(name, "s", "t", f"{name}.parquet", 1, 1, "c", None, None, time.time())


def _unique_stream() -> str:
    return f"sf_test_{uuid.uuid4().hex[:12]}"


@dataclass
class Adapter:
    """Opens buffers of one kind on one shared location (a SQLite file or a stream)."""

    kind: str
    where: str
    opened: list[Buffer] = field(default_factory=list)

    def open(self, capacity: int = 10, lease: float = 30.0,
             should_stop: Callable[[], bool] = lambda: False) -> Buffer:
        buf: Buffer
        if self.kind == "sqlite":
            buf = SqliteBuffer(Path(self.where), capacity=capacity, lease=lease,
                               should_stop=should_stop)
        else:
            buf = JetStreamBuffer(NATS_URL, self.where, capacity=capacity, lease=lease,
                                  should_stop=should_stop)
        self.opened.append(buf)
        return buf


@pytest.fixture(params=["sqlite", pytest.param("jetstream", marks=pytest.mark.integration)])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Adapter]:
    if request.param == "jetstream":
        require_service("NATS", NATS_HOST, NATS_PORT)
        found = Adapter("jetstream", _unique_stream())
    else:
        found = Adapter("sqlite", str(tmp_path / "buffer.db"))
    yield found
    for buf in found.opened:
        buf.close()
    if found.kind == "jetstream":
        delete_stream(found.where)


def _ids(buf: Buffer, n: int) -> list[str]:
    out = []
    for _ in range(n):
        delivery = buf.get(wait=2)
        assert delivery is not None
        out.append(delivery.ref.batch_id)
    return out


def test_put_is_idempotent_and_delivery_is_fifo(adapter: Adapter) -> None:
    buf = adapter.open()
    for name in ("b1", "b2", "b1", "b3", "b2"):
        buf.put(_ref(name))
    assert buf.depth() == 3
    assert _ids(buf, 3) == ["b1", "b2", "b3"]
    buf.put(_ref("b2"))  # a repeat of a leased batch is a no-op too
    assert buf.depth() == 3
    buf.ack("b1")
    assert buf.depth() == 2 and not buf.contains("b1") and buf.contains("b2")


def test_contains_sees_queued_and_leased_batches_until_acked(adapter: Adapter) -> None:
    buf = adapter.open()
    assert not buf.contains("b1")
    buf.put(_ref("b1"))
    assert buf.contains("b1")
    assert buf.get(wait=2) is not None
    assert buf.contains("b1"), "a leased batch is still in the buffer"
    buf.ack("b1")
    assert not buf.contains("b1") and buf.depth() == 0


def test_a_put_after_an_ack_queues_the_batch_again(adapter: Adapter) -> None:
    """The pipeline acks a batch that failed for good out of the buffer and the sweeper
    puts it back later: JetStream dropped that put as a duplicate (same Nats-Msg-Id
    within two minutes) and the batch silently never loaded."""
    buf = adapter.open()
    buf.put(_ref("b1"))
    assert _ids(buf, 1) == ["b1"]
    buf.ack("b1")
    buf.put(_ref("b1"))
    assert buf.contains("b1") and buf.depth() == 1
    assert _ids(buf, 1) == ["b1"]


def test_full_buffer_blocks_put_until_an_ack_frees_space(adapter: Adapter) -> None:
    buf = adapter.open(capacity=2)
    buf.put(_ref("b1"))
    buf.put(_ref("b2"))
    done = threading.Event()

    def producer() -> None:
        buf.put(_ref("b3"))
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.5), "put must wait while the buffer is full"
    assert buf.depth() == 2
    delivery = buf.get(wait=2)
    assert delivery is not None and delivery.ref.batch_id == "b1"
    buf.ack("b1")
    assert done.wait(5), "put must resume once there is space"
    assert sorted(_ids(buf, 2)) == ["b2", "b3"], "nothing was dropped"
    assert buf.depth() == 2


def test_a_blocked_put_gives_up_only_at_its_timeout_or_a_stop(adapter: Adapter) -> None:
    stop = threading.Event()
    buf = adapter.open(capacity=1, should_stop=stop.is_set)
    buf.put(_ref("b1"))
    buf.put(_ref("b1"), timeout=0.1)  # a repeat is not blocked by a full buffer
    started = time.monotonic()
    with pytest.raises(RetryableError, match="full"):
        buf.put(_ref("b2"), timeout=0.4)
    assert time.monotonic() - started >= 0.4
    stop.set()
    started = time.monotonic()
    with pytest.raises(RetryableError, match="stopped"):
        buf.put(_ref("b2"))
    assert time.monotonic() - started < 2
    assert buf.depth() == 1 and not buf.contains("b2")


def test_an_unacked_message_is_redelivered_after_its_lease(adapter: Adapter) -> None:
    buf = adapter.open(lease=1.0)
    buf.put(_ref("b1"))
    first = buf.get(wait=2)
    assert first is not None and first.attempt == 1
    leased_at = time.monotonic()
    assert buf.get() is None, "a leased message is not delivered twice within its lease"
    again = buf.get(wait=5)
    assert again is not None and again.ref.batch_id == "b1" and again.attempt == 2
    assert time.monotonic() - leased_at >= 0.8
    buf.ack("b1")
    assert buf.depth() == 0


def test_extend_restarts_the_lease_of_a_held_message(adapter: Adapter) -> None:
    """A long group load keeps its batches: each extend restarts the lease."""
    buf = adapter.open(lease=1.0)
    other = adapter.open(lease=1.0)
    buf.put(_ref("b1"))
    assert _ids(buf, 1) == ["b1"]
    for _ in range(5):  # 2.5 s in all, 0.5 s between extends: never a second delivery
        time.sleep(0.5)
        buf.extend("b1")
        assert other.get() is None, "an extended lease ran out"
    buf.extend("never-taken")  # not held by this instance: nothing happens
    again = other.get(wait=5)  # no more extends: delivered again after the lease
    assert again is not None and again.ref.batch_id == "b1"


def test_nack_delivers_again_after_its_delay(adapter: Adapter) -> None:
    buf = adapter.open(lease=30.0)
    buf.put(_ref("b1"))
    buf.put(_ref("b2"))
    assert _ids(buf, 1) == ["b1"]
    buf.nack("b1", delay=1.0)
    nacked_at = time.monotonic()
    assert _ids(buf, 1) == ["b2"], "a delayed message does not hold up the ones behind it"
    buf.ack("b2")
    assert buf.get() is None and buf.depth() == 1
    again = buf.get(wait=5)
    assert again is not None and again.ref.batch_id == "b1" and again.attempt == 2
    assert time.monotonic() - nacked_at >= 0.8
    buf.nack("b1")  # no delay: at once, long before the 30 s lease
    third = buf.get(wait=2)
    assert third is not None and third.ref.batch_id == "b1" and third.attempt == 3


def test_depth_and_oldest_age_count_queued_and_leased_messages(adapter: Adapter) -> None:
    buf = adapter.open()
    assert buf.depth() == 0 and buf.oldest_age() is None
    buf.put(_ref("b1"))
    time.sleep(0.4)
    buf.put(_ref("b2"))
    age = buf.oldest_age()
    assert buf.depth() == 2 and age is not None and 0.3 <= age < 5
    assert _ids(buf, 1) == ["b1"]
    assert buf.depth() == 2, "a leased message still counts"
    buf.ack("b1")
    younger = buf.oldest_age()
    assert buf.depth() == 1 and younger is not None and younger < age
    buf.ack("b2")
    assert buf.depth() == 0 and buf.oldest_age() is None


def test_another_instance_shares_the_queue_and_can_ack_what_it_does_not_hold(
        adapter: Adapter) -> None:
    first = adapter.open()
    first.put(_ref("b1"))
    second = adapter.open()  # opening again (same setup) is idempotent and loses nothing
    assert second.depth() == 1 and second.contains("b1")
    assert _ids(first, 1) == ["b1"]
    assert second.get() is None, "the lease holds across instances"
    second.ack("b1")  # the sweeper's path: the ledger has it, whoever holds the lease
    assert first.depth() == 0 and not first.contains("b1")
    first.ack("b1")  # acking again, or acking an unknown id, is harmless
    second.ack("never-queued")
    assert second.depth() == 0


def test_take_leases_the_ready_messages_together_and_never_waits(adapter: Adapter) -> None:
    """A loader's group: `take` hands over up to n of the messages ready now, oldest first,
    each leased as by `get` (attempt 1, invisible to another instance); with fewer ready
    it returns those at once, with none an empty list, never waiting for more."""
    buf = adapter.open(lease=30.0)
    other = adapter.open(lease=30.0)
    for name in ("b1", "b2", "b3", "b4", "b5"):
        buf.put(_ref(name))
    taken = buf.take(3)
    assert [(d.ref.batch_id, d.attempt) for d in taken] == [("b1", 1), ("b2", 1), ("b3", 1)]
    assert _ids(other, 1) == ["b4"], "the taken messages are leased"
    started = time.monotonic()
    assert [d.ref.batch_id for d in buf.take(10)] == ["b5"]
    assert buf.take(4) == [] and other.get() is None
    assert time.monotonic() - started < 1.0, "take waited for messages not there"
    assert buf.depth() == 5
    for name in ("b1", "b2", "b3", "b5"):
        buf.ack(name)
    other.ack("b4")
    assert buf.depth() == 0 and other.depth() == 0


TAKER = """
import os, sys, time
from pathlib import Path
kind, where, url = sys.argv[1:4]
if kind == "sqlite":
    from steadyflow.buffer.sqlite import SqliteBuffer
    buf = SqliteBuffer(Path(where), capacity=10, lease=1.0)
else:
    from steadyflow.buffer.jetstream import JetStreamBuffer
    buf = JetStreamBuffer(url, where, capacity=10, lease=1.0)
taken = buf.take(3)
buf.ack(taken[0].ref.batch_id)
buf.depth()  # waits for the ack's confirmation (see JetStreamBuffer.ack)
print(" ".join(d.ref.batch_id for d in taken), flush=True)
time.sleep(60)
"""


def test_messages_taken_together_by_a_killed_process_come_back_once_each(
        adapter: Adapter) -> None:
    """A loader SIGKILLed with a group taken, one batch of it acked, the others not: each
    unacked batch is delivered again (after the lease, or at once for a dead SQLite
    owner), once, to another process; the acked one never is."""
    buf = adapter.open(lease=30.0)
    for name in ("b1", "b2", "b3", "b4"):
        buf.put(_ref(name))
    with subprocess.Popen([sys.executable, "-c", TAKER, adapter.kind, adapter.where,
                           NATS_URL], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().split() == ["b1", "b2", "b3"]
        finally:
            child.kill()
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        delivery = buf.get(wait=1.0)
        if delivery is not None:
            assert delivery.ref.batch_id not in seen, "delivered twice"
            seen[delivery.ref.batch_id] = delivery.attempt
            buf.ack(delivery.ref.batch_id)
    # b2 and b3 come back as redeliveries; JetStream's count may be higher than 2 at high
    # load: a redelivery that reached a pull request just as it expired client-side counts
    # too (seen in a suite at load 20), yet none of them came here twice (asserted above)
    assert set(seen) == {"b2", "b3", "b4"}, seen
    assert seen["b2"] >= 2 and seen["b3"] >= 2, seen
    assert buf.get(wait=1.5) is None and buf.depth() == 0


CHILD = """
import sys, time
from pathlib import Path
from steadyflow.model import BatchRef
kind, where, url = sys.argv[1:4]
if kind == "sqlite":
    from steadyflow.buffer.sqlite import SqliteBuffer
    buf = SqliteBuffer(Path(where), capacity=10, lease=30.0)
else:
    from steadyflow.buffer.jetstream import JetStreamBuffer
    buf = JetStreamBuffer(url, where, capacity=10, lease=30.0)
delivery = buf.get(wait=5)
print(delivery.ref.batch_id if delivery else "nothing", delivery.attempt if delivery else 0)
buf.ack(delivery.ref.batch_id)
buf.put(BatchRef("from-child", "s", "t", "p", 1, 1, "c", None, None, time.time()))
buf.close()
"""


def test_a_message_put_by_one_process_is_got_by_another(adapter: Adapter) -> None:
    buf = adapter.open(capacity=10, lease=30.0)
    buf.put(_ref("from-parent"))
    child = subprocess.run([sys.executable, "-c", CHILD, adapter.kind, adapter.where, NATS_URL],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["from-parent", "1"]
    assert not buf.contains("from-parent")
    delivery = buf.get(wait=2)
    assert delivery is not None and delivery.ref.batch_id == "from-child"
    assert (delivery.ref.source, delivery.ref.path, delivery.attempt) == ("s", "p", 1)
    buf.ack("from-child")
    assert buf.depth() == 0


def test_an_unreachable_jetstream_is_a_retryable_error() -> None:
    started = time.monotonic()
    with pytest.raises(RetryableError, match="JetStream connect failed") as err:
        JetStreamBuffer("nats://127.0.0.1:1", _unique_stream(), connect_timeout=0.5)
    assert err.value.hint and "JetStream" in err.value.hint
    assert time.monotonic() - started < 5


@pytest.mark.integration
def test_a_pipeline_through_jetstream_makes_the_warehouse_equal_the_source(
        tmp_path: Path) -> None:
    require_service("NATS", NATS_HOST, NATS_PORT)
    stream = _unique_stream()
    stores = create_stores(tmp_path / "stores", 2, 3000)
    path = write_pipeline(
        tmp_path,
        [{"name": p.stem, "kind": "sqlite", "path": str(p),
          "tables": [{"name": "sales", "contract": "sales", "page_size": 500,
                      "warehouse_filter": {"store_id": number}}]}
         for number, p in enumerate(stores, start=1)],
        buffer={"kind": "jetstream", "url": NATS_URL, "stream": stream, "capacity": 4})
    try:
        with Pipeline.from_yaml(path) as pipeline:
            summary = pipeline.run_once()
            assert summary.ok, summary.errors
            assert summary.extracted_batches > 4, "more batches than capacity: backpressure"
            assert summary.loaded_batches == summary.extracted_batches
            assert pipeline.buffer.depth() == 0
        config = load_config(path)
        con = duckdb.connect(str(config.resolve(config.warehouse.path or "")), read_only=True)
        try:
            rows = con.sql("SELECT * FROM main.sales").to_arrow_table()
        finally:
            con.close()
        result = compare_target(config, "sales", rows)
        assert result.clean, result.examples
        assert result.warehouse_rows == result.expected_rows > 0
        assert result.source_rows == 6000
    finally:
        delete_stream(stream)
