"""A nats-server that crashes between acknowledging a message and removing it from disk.

Found by tests/faults/test_multihost.py: after a SIGKILL and restart of the server, a
message the loader had acked was back in the stream while the consumer's ack floor was past
it. The consumer never delivers it again and the work-queue stream never removes it: the
buffer's depth never reaches 0, a slot of its capacity is lost for good, and a re-put of
that batch is refused by the per-subject limit as "already queued", so it would never load.

The crash is made deterministic here: the stream's message files are copied while the
message is queued, the message is acked, and the copy is put back before the server
starts again (what a crash before the removal was synced leaves behind: the consumer's
state says acked, the stream still holds it).
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.faults.test_multihost import Nats

from steadyflow.buffer.jetstream import JetStreamBuffer
from steadyflow.model import BatchRef

pytestmark = [pytest.mark.faults, pytest.mark.integration]

STREAM = "sf_orphans"
REF = BatchRef(batch_id="b0rphan", source="store", table="orders", path="store/orders/b.parquet",
               rows=1, nbytes=1, checksum="c", low=None, high=None, landed_at=0.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Nats]:
    made = Nats("127.0.0.1", tmp_path / "store", tmp_path / "nats.log")
    made.start()
    try:
        yield made
    finally:
        made.kill()


def restart(server: Nats, before: Path | None = None) -> None:
    """Stop the server cleanly (everything synced); with `before`, put those message files
    back in place of the stream's before it starts again."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(30)
    if before is not None:
        msgs = next(server.store.rglob(f"streams/{STREAM}/msgs"))
        shutil.rmtree(msgs)
        shutil.copytree(before, msgs)
    server.start()


def open_buffer(server: Nats) -> JetStreamBuffer:
    return JetStreamBuffer(server.url, STREAM, capacity=4, lease=5)


def crash_after_the_ack(server: Nats, tmp_path: Path) -> None:
    """REF put, delivered and acked, then the server restarted with the stream's message
    files as they were while REF was queued: the stream has it again, the consumer acked
    it."""
    buffer = open_buffer(server)
    buffer.put(REF)
    buffer.close()
    restart(server)
    queued = tmp_path / "msgs-queued"
    shutil.copytree(next(server.store.rglob(f"streams/{STREAM}/msgs")), queued)

    buffer = open_buffer(server)
    delivery = buffer.get(wait=10)
    assert delivery is not None and delivery.ref.batch_id == REF.batch_id
    buffer.ack(REF.batch_id)
    assert buffer.depth() == 0
    buffer.close()
    restart(server, before=queued)


def test_a_message_acked_before_a_crash_does_not_stay_in_the_stream(
        server: Nats, tmp_path: Path) -> None:
    crash_after_the_ack(server, tmp_path)
    buffer = open_buffer(server)
    try:
        assert buffer.get(wait=1) is None  # the consumer will not deliver it again...
        assert buffer.depth() == 0  # ... so it is not left in the stream (reaped when idle)
        buffer.put(REF)  # and a batch put again is queued, not taken for "already there"
        again = buffer.get(wait=10)
        assert again is not None and again.ref.batch_id == REF.batch_id
        buffer.ack(REF.batch_id)
        assert buffer.depth() == 0
    finally:
        buffer.close()


def test_a_sweeper_re_put_of_an_orphaned_batch_is_queued(server: Nats, tmp_path: Path) -> None:
    """The same crash, met first by `contains` and `put` (the sweeper's path)."""
    crash_after_the_ack(server, tmp_path)

    buffer = open_buffer(server)
    try:
        assert not buffer.contains(REF.batch_id)  # not "in flight": the sweeper re-puts it
        buffer.put(REF)
        again = buffer.get(wait=10)
        assert again is not None and again.ref.batch_id == REF.batch_id
    finally:
        buffer.close()
