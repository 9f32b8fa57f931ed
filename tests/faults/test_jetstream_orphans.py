"""A nats-server that crashes between acknowledging a message and removing it from disk.

Found by tests/faults/test_multihost.py: after a SIGKILL and restart of the server, a
message the loader had acked was back in the stream while the consumer's ack floor was past
it. The consumer never delivers it again and the work-queue stream never removes it: the
buffer's depth never reaches 0, a slot of its capacity is lost for good, and a re-put of
that batch is refused by the per-subject limit as "already queued", so it would never load.

The crash is made deterministic here: the stream's message files are copied while the
message is queued, the message is acked, and the copy is put back before the server
starts again (what a crash before the removal was synced leaves behind: the consumer's
state says acked, the stream still holds it). The last test swaps the consumer's state and
the stream's files the other way (a removal synced, a delivery's ack and the last message
not), which leaves the ack floor behind what the consumer delivered: a batch put then is
stored where the consumer never looks, with nothing pending or with a lost message
pending past the stream's end.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import nats
import pytest
from tests.faults.test_multihost import Nats

from steadyflow.buffer.jetstream import CONSUMER, JetStreamBuffer
from steadyflow.errors import RetryableError
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



def consumer_state(server: Nats) -> tuple[int, int, int]:
    """The consumer's ack floor, last delivered stream sequence and deliveries pending."""
    async def read() -> tuple[int, int, int]:
        nc = await nats.connect(server.url, connect_timeout=5)
        try:
            info = await nc.jsm().consumer_info(STREAM, CONSUMER)
        finally:
            await nc.close()
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        delivered = info.delivered.stream_seq if info.delivered else 0
        return int(floor or 0), int(delivered or 0), int(info.num_ack_pending or 0)

    return asyncio.run(read())


def swap_files(server: Nats, msgs: Path, consumer: Path | None = None) -> None:
    """Stop the server cleanly and start it on these copies of the stream's message files
    (and of the consumer's state): what a crash leaves when the two were synced at
    different moments."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(30)
    for saved, kind in ((msgs, "msgs"), (consumer, f"obs/{CONSUMER}")):
        if saved is not None:
            live = next(server.store.rglob(f"streams/{STREAM}/{kind}"))
            shutil.rmtree(live)
            shutil.copytree(saved, live)
    server.start()


def snapshot(server: Nats, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """Copies of the stream's message files and the consumer's state, taken while the
    server is stopped cleanly (everything synced)."""
    restart(server)
    msgs, consumer = tmp_path / f"{name}-msgs", tmp_path / f"{name}-consumer"
    shutil.copytree(next(server.store.rglob(f"streams/{STREAM}/msgs")), msgs)
    shutil.copytree(next(server.store.rglob(f"streams/{STREAM}/obs/{CONSUMER}")), consumer)
    return msgs, consumer


def test_a_batch_put_behind_a_stalled_ack_floor_after_a_crash_is_delivered(
        server: Nats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash whose files disagree: the consumer's state is newer than the stream's.

    Before it, Z, A, B were queued; Z was delivered and acked, A delivered and held (its
    loader died), B delivered and acked: the consumer delivered up to sequence 3, ack
    floor 1, A pending. The stream's files come back from an earlier moment: A's removal
    synced, B never stored (Z, acked, is back too: below the floor, an orphan). After the
    restart the consumer finds A's sequence deleted and drops it from its pending list
    without moving its ack floor: floor 1, delivered 3, nothing pending.

    A batch C landed now is stored at sequence 3: above the floor, so not taken for an
    orphan, and not above what the consumer delivered, so never delivered. Nothing moves
    the floor again while nothing is acked: C stays in the stream (its depth never
    reaches 0) and `contains` says it is queued, so the sweeper never queues it again; its
    rows never load while every run reports fine.
    """
    import steadyflow.buffer.jetstream as jetstream

    monkeypatch.setattr(jetstream, "REAP_EVERY", 0.2)  # an idle get looks for orphans at once
    lease = 1.0
    batch = {name: replace(REF, batch_id=f"b{name}") for name in "ZABC"}

    def open_leased() -> JetStreamBuffer:
        return JetStreamBuffer(server.url, STREAM, capacity=4, lease=lease)

    buffer = open_leased()
    buffer.put(batch["Z"])
    buffer.put(batch["A"])
    buffer.close()
    queued, fresh = snapshot(server, tmp_path, "queued")  # Z, A queued, nothing delivered
    buffer = open_leased()
    buffer.ack("bA")  # removed before any delivery: the stream's files of the crash
    buffer.close()
    a_removed, _ = snapshot(server, tmp_path, "a-removed")

    swap_files(server, queued, fresh)  # the timeline the consumer's state comes from
    buffer, holder = open_leased(), open_leased()
    try:
        for who, name in ((buffer, "Z"), (holder, "A")):
            delivery = who.get(wait=10)
            assert delivery is not None and delivery.ref.batch_id == f"b{name}"
        buffer.ack("bZ")
        buffer.put(batch["B"])
        delivery = buffer.get(wait=10)
        assert delivery is not None and delivery.ref.batch_id == "bB"
        buffer.ack("bB")
    finally:
        holder.close()  # A given back: pending still, as when its loader was killed
        buffer.close()
    swap_files(server, a_removed)

    buffer = open_leased()
    try:
        deadline = time.monotonic() + 20
        while consumer_state(server)[2]:  # until the consumer gives up A
            assert buffer.get(wait=lease) is None
            assert time.monotonic() < deadline, consumer_state(server)
        buffer.put(batch["C"])  # an extractor's put: it returns, the batch is queued
        delivery = None
        for _ in range(5):
            delivery = buffer.get(wait=2 * lease)
            if delivery is not None:
                break
            if not buffer.contains("bC"):  # the sweeper's test: queued again if not held
                buffer.put(batch["C"])
        floor, delivered, pending = consumer_state(server)
        assert delivery is not None and delivery.ref.batch_id == "bC", (
            f"batch C never delivered; the buffer says it is queued: {buffer.contains('bC')}, "
            f"depth {buffer.depth()}; consumer: ack floor {floor}, delivered {delivered}, "
            f"{pending} pending")
        buffer.ack("bC")
        assert buffer.get(wait=1) is None
        assert buffer.depth() == 0
    finally:
        buffer.close()


def test_a_batch_put_behind_a_lost_delivery_after_a_crash_is_delivered(
        server: Nats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same disagreement, with the stream's last writes lost as well.

    Before the crash Z, A, B were queued; Z was delivered and held by a long load, A
    delivered and acked, B delivered and held (its loader died); then Z was acked. The
    stream's files keep Z's removal but lose A and B (never synced); the consumer's state
    keeps A's ack but not Z's. After the restart the consumer drops Z (deleted) without
    moving its floor (0), and keeps B pending: its sequence, 3, is past the stream's end.
    A batch C put now is stored at 2: neither at or below the floor nor, with B pending,
    taken for passed, and never delivered; the sweeper finds it queued for ever.
    """
    import steadyflow.buffer.jetstream as jetstream

    monkeypatch.setattr(jetstream, "REAP_EVERY", 0.2)
    lease = 1.0
    batch = {name: replace(REF, batch_id=f"b{name}") for name in "ZABC"}

    def open_leased() -> JetStreamBuffer:
        return JetStreamBuffer(server.url, STREAM, capacity=4, lease=lease)

    buffer = open_leased()
    buffer.put(batch["Z"])
    buffer.close()
    queued, fresh = snapshot(server, tmp_path, "queued")  # Z queued, nothing delivered
    buffer = open_leased()
    buffer.ack("bZ")  # removed: the stream's files of the crash
    buffer.close()
    z_removed, _ = snapshot(server, tmp_path, "z-removed")

    swap_files(server, queued, fresh)  # the timeline the consumer's state comes from
    buffer, holders = open_leased(), [open_leased(), open_leased()]
    try:
        delivery = holders[0].get(wait=10)
        assert delivery is not None and delivery.ref.batch_id == "bZ"
        buffer.put(batch["A"])
        buffer.put(batch["B"])
        delivery = buffer.get(wait=10)
        assert delivery is not None and delivery.ref.batch_id == "bA"
        buffer.ack("bA")
        delivery = holders[1].get(wait=10)
        assert delivery is not None and delivery.ref.batch_id == "bB"
    finally:
        for holder in holders:
            holder.close()  # Z and B given back: pending still
        buffer.close()
    swap_files(server, z_removed)

    buffer = open_leased()
    try:
        deadline = time.monotonic() + 20
        while consumer_state(server)[2] > 1:  # until the consumer gives up Z
            assert buffer.get(wait=lease) is None
            assert time.monotonic() < deadline, consumer_state(server)
        buffer.put(batch["C"])
        delivery = None
        for _ in range(8):
            delivery = buffer.get(wait=2 * lease)
            if delivery is not None and delivery.ref.batch_id == "bC":
                break
            if delivery is not None:  # whatever else comes back (B) loads and is acked
                buffer.ack(delivery.ref.batch_id)
            if not buffer.contains("bC"):  # the sweeper's test: queued again if not held
                buffer.put(batch["C"])
        floor, delivered, pending = consumer_state(server)
        assert delivery is not None and delivery.ref.batch_id == "bC", (
            f"batch C never delivered; the buffer says it is queued: {buffer.contains('bC')}, "
            f"depth {buffer.depth()}; consumer: ack floor {floor}, delivered {delivered}, "
            f"{pending} pending")
        buffer.ack("bC")
        while (delivery := buffer.get(wait=1)) is not None:
            buffer.ack(delivery.ref.batch_id)
        assert buffer.depth() == 0
    finally:
        buffer.close()


def test_a_server_back_without_its_store_gets_the_stream_made_again(
        server: Nats) -> None:
    """A nats-server restarted without its store (wiped, or a node replaced) has no stream
    and no consumer. The buffer made them only when it opened: every put waited for ever
    ('no response from stream') and every get and depth failed, so a worker extracted and
    loaded nothing until it was restarted. Now the next put or get makes them again, and
    the sweeper's re-put of what the stream had held is delivered."""
    loader, extractor = open_buffer(server), open_buffer(server)
    try:
        extractor.put(REF)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        shutil.rmtree(server.store)
        server.start()

        for _ in range(20):  # a loader's loop, alone first: it fails, then finds it empty
            try:
                assert loader.get(wait=0.5) is None
                assert loader.depth() == 0
                break
            except RetryableError:
                time.sleep(0.5)
        else:
            raise AssertionError("the loader never found the stream again")
        later = replace(REF, batch_id="b1ater")
        extractor.put(later, timeout=15)  # an extraction's put after the restart
        delivery = loader.get(wait=10)
        assert delivery is not None and delivery.ref.batch_id == later.batch_id
        loader.ack(later.batch_id)
        assert not loader.contains(REF.batch_id)  # lost with the store: the sweeper re-puts
        extractor.put(REF, timeout=15)
        delivery = loader.get(wait=10)
        assert delivery is not None and delivery.ref.batch_id == REF.batch_id
        loader.ack(REF.batch_id)
        assert loader.depth() == 0
    finally:
        loader.close()
        extractor.close()
