"""The JetStream buffer's round trips per batch on a loader's path, timed through a proxy
that delays every byte both ways (so one round trip takes 2 x LATENCY), and what must
hold with fewer of them (buffer/jetstream.py):

- a group is gathered in ONE pull request (`take`, used by run/load.py's `gather`), not a
  depth request and a pull request per batch;
- `ack` returns without waiting for the server's reply, and this instance's `contains`,
  `depth` and `put` of the batch afterwards still see it acked: a put right after the ack
  queues the batch again (taken for "already queued", it would never load).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tests.support.faultproxy import FaultProxy
from tests.support.jetstream import NATS_HOST, NATS_PORT, fresh_stream

from steadyflow.buffer.jetstream import JetStreamBuffer
from steadyflow.model import BatchRef
from steadyflow.run.load import gather

pytestmark = pytest.mark.integration

LATENCY = 0.25  # each way


def _ref(name: str) -> BatchRef:
    return BatchRef(name, "s", "t", f"{name}.parquet", 1, 1, "c", None, None, time.time())


@pytest.fixture
def slow() -> Iterator[tuple[JetStreamBuffer, JetStreamBuffer]]:
    """(a buffer behind the delaying proxy, one on the same stream without it)."""
    with fresh_stream("sf_trips") as stream, FaultProxy(NATS_HOST, NATS_PORT) as proxy:
        direct = JetStreamBuffer(f"nats://{NATS_HOST}:{NATS_PORT}", stream, capacity=20,
                                 lease=30.0)
        delayed = JetStreamBuffer(f"nats://127.0.0.1:{proxy.port}", stream, capacity=20,
                                  lease=30.0)
        proxy.set_latency(LATENCY)
        try:
            yield delayed, direct
        finally:
            proxy.set_latency(0.0)
            delayed.close()
            direct.close()


def test_a_group_is_gathered_in_one_round_trip(
        slow: tuple[JetStreamBuffer, JetStreamBuffer]) -> None:
    """Five batches ready: the first got, the other four gathered in one pull request.
    Main's code asked for the depth, then pulled each batch alone, each pull request given
    0.1 s (a `get(0)`): over this link it gathered none of the four."""
    delayed, direct = slow
    for n in range(5):
        direct.put(_ref(f"b{n}"))
    first = delayed.get(wait=5)
    assert first is not None
    started = time.monotonic()
    group = gather(delayed, first, max_batches=32, max_rows=1_000_000)
    took = time.monotonic() - started
    assert [b.batch_id for b in group] == [f"b{n}" for n in range(5)]
    assert took < 2.5 * 2 * LATENCY, f"gathering took {took:.2f}s: more than one round trip"
    assert direct.get() is None, "every gathered batch is leased"


def test_an_ack_does_not_wait_for_the_server_yet_is_seen(
        slow: tuple[JetStreamBuffer, JetStreamBuffer]) -> None:
    delayed, direct = slow
    for name in ("b1", "b2"):
        direct.put(_ref(name))
    taken = [delayed.get(wait=5), delayed.get(wait=5)]
    assert [d.ref.batch_id for d in taken if d is not None] == ["b1", "b2"]
    started = time.monotonic()
    delayed.ack("b1")
    delayed.ack("b2")
    took = time.monotonic() - started
    assert took < LATENCY, f"two acks took {took:.2f}s: they waited for the server"
    # seen by this instance at once: contains and put wait for the batch's ack ...
    assert not delayed.contains("b1")
    delayed.put(_ref("b1"))  # queued again, not taken for "already queued"
    assert direct.contains("b1") and not direct.contains("b2")
    # ... and depth for every ack on its way
    assert delayed.depth() == 1 == direct.depth()
    again = direct.get(wait=5)
    assert again is not None and again.ref.batch_id == "b1" and again.attempt == 1
    direct.ack("b1")
    assert direct.depth() == 0
