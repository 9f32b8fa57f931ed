"""The scaled buffer: a queue of batch references in a NATS JetStream stream.

Same contract, same method order as `SqliteBuffer`; only the storage differs. Like it, it
holds references, not rows, so losing the stream only costs time: the sweeper republishes
from the manifest.

How the Buffer guarantees map onto JetStream:

- bounded: the stream has ``max_msgs=capacity`` and ``discard=new``, so a full stream
  refuses a publish; `put` waits and retries with backoff (backpressure, never a drop).
- idempotent on batch id: each batch is published on its own subject
  ``<stream>.batches.<batch id>`` with ``Nats-Msg-Id = batch id``. JetStream drops a repeat
  id within its duplicate window (two minutes); beyond it, ``max_msgs_per_subject=1`` with
  ``discard_new_per_subject`` refuses a repeat while the first copy is still queued. A
  repeat after the batch was acked is queued again, within the window too (a batch that
  failed for good leaves the buffer and the sweeper puts it back; dropped as a duplicate,
  it would silently never load), and the warehouse ledger absorbs a repeat of a batch
  that did load (the load is a no-op), exactly as with a re-put SQLite row.
- leased: ``retention=workqueue`` (an ack removes the message, so depth == unacked
  messages) and one durable pull consumer shared by every process, with explicit acks and
  ``ack_wait = lease``: a message taken and not acked is delivered again after its lease.
  A loader's group is taken in one pull request (`take`), and an ack does not hold up
  its caller for the server's reply (`ack`): a lost one is a redelivery, which the
  warehouse ledger makes a no-op.
- no orphans: a server killed before it synced can come back with an acked message still
  in the stream while the consumer's ack floor is past it (seen in
  tests/faults/test_multihost.py). The consumer never delivers it again and the stream
  never drops it: it counts in the depth forever, holds a slot of the capacity, and, as
  the per-subject limit refuses a second copy, a sweeper's re-put of that batch would be
  taken for "already queued" and never load. So a message at or below the ack floor is
  an orphan: `contains` and `put` delete it when they meet it, and an idle `get` reaps
  the stream every REAP_EVERY. Deleting one loses nothing: the manifest re-queues any
  batch not loaded. The consumer's state can also come back newer than the stream's
  files (a removal synced, the last messages or an ack not): its floor stays behind what
  it delivered, and a batch put then is stored at a sequence it has passed. So while
  nothing is pending, or while the consumer has delivered past the stream's last
  sequence, every message up to the last one delivered is an orphan too (`_passed`).

The API is synchronous, like the rest of steadyflow. nats-py is asyncio-only, so each
instance runs a private event loop in a daemon thread and submits coroutines to it; there
is no global state, and several instances (or pipelines) can live in one process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, JetStreamManager, api
from nats.js.errors import (
    APIError,
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from steadyflow.errors import ConfigError, FatalError, RetryableError
from steadyflow.model import BatchRef
from steadyflow.observe import logs
from steadyflow.ports import Delivery

log = logs.get("buffer")

T = TypeVar("T")

CONSUMER = "loader"            # the one durable pull consumer every loader process shares
DUPLICATE_WINDOW = 120.0       # seconds JetStream remembers a Nats-Msg-Id
REQUEST_TIMEOUT = 5.0          # one JetStream API call
CONNECT_TIMEOUT = 5.0          # the first connection; later ones reconnect forever
MIN_FETCH, MAX_FETCH = 0.1, 1.0  # a pull request's life: a round trip .. a should_stop check
REAP_EVERY = 10.0  # seconds between two looks for orphans while the consumer is idle

_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_STORE_FAILED = 10077   # JSStreamStoreFailedF: a stream limit refused the message
_NAME_IN_USE = 10058    # JSStreamNameExistErr: same name, different configuration
_NO_MESSAGE = 10057     # JSStreamMsgDeleteFailedF: already gone
_GONE = (10059, 10014)  # JSStreamNotFoundErr, JSConsumerNotFoundErr
_TRANSIENT = (nats.errors.Error, OSError)  # nats errors, timeouts, refused connections


class JetStreamBuffer:
    """A bounded, leased, idempotent queue shared by processes on many hosts."""

    def __init__(self, url: str, stream: str, capacity: int = 64, lease: float = 120.0,
                 should_stop: Callable[[], bool] = lambda: False,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        if not _NAME.fullmatch(stream):
            raise ConfigError(f"buffer.stream {stream!r} is not a valid JetStream stream name",
                              hint="use letters, digits, '-' and '_' only")
        self.capacity = capacity
        self.lease = lease
        self.should_stop = should_stop
        self.url = url
        self.stream = stream
        self.connect_timeout = connect_timeout
        self._where = logs.scrub(url)  # never echo a password in the URL
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._jsm: JetStreamManager | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._fetching: asyncio.Lock | None = None
        self._inflight: dict[str, Msg] = {}  # batch id -> our delivery; touched on the loop only
        # acks sent and not yet confirmed by the server (see ack), by batch id
        self._acks: dict[str, concurrent.futures.Future[None]] = {}
        self._acks_lock = threading.Lock()
        self._closing = self._closed = False
        self._reaped_at = 0.0  # monotonic time of the last look for orphans
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=f"jetstream-{stream}",
                                        daemon=True)
        self._thread.start()
        try:
            self._call("connect", self._open(), timeout=connect_timeout + 4 * REQUEST_TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise

    def put(self, ref: BatchRef, timeout: float | None = None) -> None:
        """Enqueue, waiting while the buffer is full. Backpressure, never a drop.

        An unreachable server is waited out the same way (extraction pauses), until
        `timeout` or `should_stop`.
        """
        self._settle(ref.batch_id)  # an ack of it on its way: see ack
        deadline = None if timeout is None else time.monotonic() + timeout
        payload = ref.to_json().encode()
        pause, warned = 0.01, False
        while True:
            try:
                if self._run(self._publish(ref.batch_id, payload)):
                    return
                reason = f"buffer full ({self.capacity} batches)"
            except APIError as exc:
                if not isinstance(exc, ServiceUnavailableError):
                    raise self._error("publish", exc, ref.batch_id) from exc
                reason = f"JetStream unavailable ({exc})"
            except nats.errors.MaxPayloadError as exc:  # this batch will never fit
                raise FatalError(
                    f"the reference of batch {ref.batch_id} is {len(payload)} bytes, over the "
                    f"NATS server's max_payload", stage="publish", source=ref.source,
                    table=ref.table, batch_id=ref.batch_id,
                    hint="raise max_payload in the nats-server configuration (a repair "
                         "batch carries the keys it deletes)") from exc
            except _TRANSIENT as exc:
                reason = f"JetStream unreachable at {self._where} ({exc})"
                self._remake_if_gone(exc)
            except RuntimeError as exc:
                raise self._error("publish", exc, ref.batch_id) from exc
            if not warned and not reason.startswith("buffer full"):
                warned = True  # a full buffer is ordinary backpressure; an outage is not
                log.warning("waiting to publish: %s", reason,
                            extra={"stage": "publish", "batch_id": ref.batch_id})
            if self.should_stop():
                raise RetryableError("stopped while waiting for buffer space",
                                     stage="publish", batch_id=ref.batch_id)
            if deadline is not None and time.monotonic() > deadline:
                raise RetryableError(
                    f"{reason} for {timeout:.0f}s", stage="publish", batch_id=ref.batch_id,
                    hint="the loader is behind or down; extraction resumes when it drains")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def get(self, wait: float = 0.0) -> Delivery | None:
        """Lease the oldest available message, waiting up to `wait` seconds for one.

        Each pull request lives at least MIN_FETCH (a network round trip), so `get(0)`
        may take that long to say "empty".
        """
        deadline = time.monotonic() + wait
        while True:
            slice_ = min(max(deadline - time.monotonic(), MIN_FETCH), MAX_FETCH)
            delivery = self._call("fetch", self._fetch(slice_), timeout=slice_ + REQUEST_TIMEOUT)
            if delivery is not None:
                return delivery
            self._call("reap", self._reap(due=True))
            if time.monotonic() >= deadline or self.should_stop():
                return None

    def take(self, n: int) -> list[Delivery]:
        """Up to `n` messages available now, leased as by `get`, in ONE pull request that
        never waits (see `_take`); a loader's group, which asked for a depth and then one
        pull request per batch."""
        return self._call("fetch", self._take(n)) if n > 0 else []

    def ack(self, batch_id: str) -> None:
        """Remove the message. Works from any instance: one that does not hold the lease
        (the sweeper, for a batch the ledger already has) deletes it from the stream,
        and waits for that.

        A message this instance holds is acked without waiting for the server: the loader
        acks a batch once it is committed and marked, where a lost ack costs a redelivery
        that the ledger turns into a no-op (a duplicate, its counts added once:
        run/load.py), so waiting for the reply bought nothing but a round trip per batch
        in the loader's thread. The ack still asks for the server's confirmation, on the
        event loop: this instance's `contains` and `put` of that batch, and `depth`,
        `oldest_age` and `close`, first wait for it (`_settle`), so they never see an
        acked batch still queued (a put taken for "already queued" while its ack was on
        its way would be dropped)."""
        if self._closed or not self._thread.is_alive():
            raise self._error("ack", RuntimeError("the JetStream buffer is closed"), batch_id)
        # one key's lookup, atomic under the GIL; `_inflight` is only written on the loop,
        # and a batch got here is in it before `get` or `take` returns it
        if batch_id not in self._inflight:
            self._call("ack", self._ack(batch_id), batch_id=batch_id)
            return
        future = asyncio.run_coroutine_threadsafe(self._ack(batch_id), self._loop)
        with self._acks_lock:
            self._acks[batch_id] = future
        future.add_done_callback(lambda done: self._acked(batch_id, done))

    def extend(self, batch_id: str) -> None:
        """Restart the lease (ack_wait) of a message this instance holds: JetStream's
        in-progress ack, for a group load that runs longer than the lease."""
        self._call("extend", self._extend(batch_id), batch_id=batch_id)

    def nack(self, batch_id: str, delay: float = 0.0) -> None:
        """Give back a message this instance holds, to be delivered again after `delay`.

        A lease held by another instance cannot be shortened from here; it runs its course.
        """
        self._call("nack", self._nack(batch_id, delay), batch_id=batch_id)

    def contains(self, batch_id: str) -> bool:
        """Whether the stream holds the batch, leased or not, by any instance: a direct
        lookup of the batch's own subject (the server keeps a per-subject index)."""
        self._settle(batch_id)
        return self._call("lookup", self._contains(batch_id), batch_id=batch_id)

    def depth(self) -> int:
        """Messages in the stream, leased or not (acked ones are gone: work-queue retention)."""
        self._settle()
        return self._call("stream info", self._depth())

    def oldest_age(self) -> float | None:
        """Seconds since the oldest queued message was stored (the server's clock)."""
        self._settle()
        stored = self._call("stream read", self._oldest())
        return None if stored is None else max(0.0, time.time() - stored)

    def close(self) -> None:
        """Hand back what this instance holds (delivered at once elsewhere, as the SQLite
        buffer releases a dead process's leases), then disconnect."""
        if self._closed:
            return
        self._settle()
        self._closing = True
        try:
            self._run(self._shutdown(), timeout=2 * REQUEST_TIMEOUT)
        except (*_TRANSIENT, RuntimeError) as exc:
            log.warning("closing the JetStream buffer: %s", exc, extra={"stage": "buffer"})
        finally:
            self._closed = True
            self._stop_loop()

    # --- the event loop thread ------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
            leftovers = asyncio.all_tasks(self._loop)
            for task in leftovers:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 2 * REQUEST_TIMEOUT) -> T:
        """Run a coroutine on the private loop and wait for its result (errors as raised)."""
        if self._closed or not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the JetStream buffer is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise
        except concurrent.futures.CancelledError:  # closed by another thread meanwhile
            raise RuntimeError("the JetStream buffer was closed") from None

    def _acked(self, batch_id: str, done: concurrent.futures.Future[None]) -> None:
        """An ack's end (on the event loop): forgotten, and its error told. An ack that
        failed leaves the message to be delivered again after its lease: for a loaded
        batch a no-op load (the ledger), for a parked one a retry."""
        with self._acks_lock:
            if self._acks.get(batch_id) is done:
                del self._acks[batch_id]
        exc = None if done.cancelled() else done.exception()
        if exc is not None:
            log.warning("acking batch %s failed (it is delivered again after its lease; "
                        "the ledger makes a loaded one's load a no-op): %s", batch_id,
                        self._error("ack", exc, batch_id), extra={"stage": "buffer",
                                                                   "batch_id": batch_id})

    def _settle(self, batch_id: str | None = None) -> None:
        """Wait for this instance's acks still on their way (those of `batch_id`, or all),
        so that what follows sees them done. A failed one was told by `_acked`."""
        with self._acks_lock:
            pending = (list(self._acks.values()) if batch_id is None
                       else [f for f in [self._acks.get(batch_id)] if f is not None])
        if pending:
            concurrent.futures.wait(pending, timeout=2 * REQUEST_TIMEOUT)

    def _call(self, what: str, coro: Coroutine[Any, Any, T], batch_id: str | None = None,
              timeout: float = 2 * REQUEST_TIMEOUT) -> T:
        """`_run`, with nats errors translated once, here, into steadyflow errors."""
        try:
            return self._run(coro, timeout)
        except (*_TRANSIENT, RuntimeError) as exc:
            self._remake_if_gone(exc)
            raise self._error(what, exc, batch_id) from exc

    def _remake_if_gone(self, exc: BaseException) -> None:
        """Make the stream and its consumer again when the server says they are not there
        (it came back without them: a wiped or lost store, a stream deleted by hand). They
        were only made at start, so every later put waited and every get failed until the
        process restarted. What the stream held is lost, not the batches: the sweeper
        queues again every batch the manifest has unloaded. The caller's retry goes on."""
        gone = isinstance(exc, NoStreamResponseError | nats.errors.NoRespondersError) or (
            isinstance(exc, NotFoundError) and exc.err_code in _GONE)
        if not gone or self._closing:
            return
        log.warning("stream %s or its consumer is gone from %s: making them again (the "
                    "sweeper queues the unloaded batches again)", self.stream, self._where,
                    extra={"stage": "buffer"})
        try:
            self._run(self._remake())
        except (*_TRANSIENT, RuntimeError) as again:
            log.warning("could not make stream %s again: %s", self.stream, again,
                        extra={"stage": "buffer"})

    def _error(self, what: str, exc: BaseException, batch_id: str | None) -> Exception:
        if isinstance(exc, RuntimeError):
            return RetryableError(f"JetStream {what}: {exc}", stage="buffer", batch_id=batch_id)
        if isinstance(exc, APIError) and not isinstance(exc, ServiceUnavailableError):
            if what == "connect":  # the server understood the setup and said no: not a blip
                return FatalError(
                    f"JetStream refused stream {self.stream!r}: {exc.description}",
                    stage="buffer", hint="a stream of that name exists with another setup; "
                    "delete it (nats stream rm) or choose another buffer.stream")
            return RetryableError(
                f"JetStream {what} on stream {self.stream!r} failed: {exc.description}",
                stage="buffer", batch_id=batch_id,
                hint=f"inspect it with: nats stream info {self.stream}; a restart recreates "
                     "a deleted stream and the sweeper refills it from the manifest")
        return RetryableError(
            f"JetStream {what} failed at {self._where}: {str(exc) or type(exc).__name__}",
            stage="buffer", batch_id=batch_id,
            hint="is nats-server running with JetStream enabled (-js)?")

    # --- coroutines (run on the private loop only) ---------------------------------------
    def _subject(self, batch_id: str) -> str:
        """One subject per batch; ids that are not a safe subject token are hashed."""
        if _TOKEN.fullmatch(batch_id):
            return f"{self.stream}.batches.{batch_id}"
        return f"{self.stream}.batches.~{hashlib.sha256(batch_id.encode()).hexdigest()}"

    async def _open(self) -> None:
        nc = NatsClient()
        try:
            # reconnect forever once connected; bound only the very first attempt
            await asyncio.wait_for(nc.connect(
                servers=[self.url], name=f"steadyflow-{self.stream}", connect_timeout=2,
                reconnect_time_wait=1, max_reconnect_attempts=-1,
                error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected), self.connect_timeout)
            self._nc = nc
            self._js = nc.jetstream(timeout=REQUEST_TIMEOUT)
            self._jsm = nc.jsm(timeout=REQUEST_TIMEOUT)
            self._fetching = asyncio.Lock()
            await self._ensure_stream()
            await self._ensure_consumer()
            self._sub = await self._js.pull_subscribe_bind(CONSUMER, stream=self.stream)
        except BaseException:
            self._closing = True
            await nc.close()
            raise

    async def _ensure_stream(self) -> None:
        """Create the stream, or bring an existing one to this configuration (idempotent)."""
        assert self._jsm is not None
        config = api.StreamConfig(
            name=self.stream, subjects=[f"{self.stream}.batches.>"],
            retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE,
            max_msgs=self.capacity, discard=api.DiscardPolicy.NEW,
            max_msgs_per_subject=1, discard_new_per_subject=True,
            duplicate_window=DUPLICATE_WINDOW)
        try:
            await self._jsm.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != _NAME_IN_USE:
                raise
            await self._jsm.update_stream(config)

    async def _remake(self) -> None:
        await self._ensure_stream()
        await self._ensure_consumer()

    async def _ensure_consumer(self) -> None:
        """Create the durable consumer or update it (a changed lease); the server treats a
        create with a durable's name as create-or-update."""
        assert self._jsm is not None
        await self._jsm.add_consumer(self.stream, api.ConsumerConfig(
            name=CONSUMER, durable_name=CONSUMER, ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.lease, deliver_policy=api.DeliverPolicy.ALL, max_deliver=-1))

    async def _publish(self, batch_id: str, payload: bytes) -> bool:
        """True once the stream holds the batch (now or already); False when it is full."""
        assert self._js is not None
        subject = self._subject(batch_id)
        try:
            ack = await self._js.publish(subject, payload, headers={"Nats-Msg-Id": batch_id})
            if ack.duplicate and not await self._contains(batch_id):
                # the id is within its duplicate window but the message was acked: a put
                # now means "queue it again", so publish it under an id of its own
                await self._js.publish(subject, payload, headers={
                    "Nats-Msg-Id": f"{batch_id}~{time.time_ns()}"})
        except APIError as exc:
            if exc.err_code != _STORE_FAILED:
                raise
            # the per-subject limit is checked first, so this means "already queued" even
            # when the stream is also full; any other store refusal is a full stream
            if "per subject" not in (exc.description or ""):
                return await self._reap(due=True) > 0 and await self._publish(batch_id, payload)
            if not await self._contains(batch_id):  # the queued copy was an orphan
                return await self._publish(batch_id, payload)
            return True
        return True

    async def _fetch(self, timeout: float) -> Delivery | None:
        assert self._sub is not None and self._fetching is not None
        async with self._fetching:  # one pull request at a time per subscription
            while True:
                try:
                    [msg] = await self._sub.fetch(1, timeout=timeout)
                except nats.errors.TimeoutError:
                    return None
                delivery = await self._delivery(msg)
                if delivery is not None:
                    return delivery

    async def _take(self, n: int) -> list[Delivery]:
        """Up to `n` messages in one pull request with `no_wait`: the server delivers what
        it has (at most n) and ends the request at once with a status (no messages, or
        none left) instead of holding it open. nats-py's `fetch(n)` cannot ask that: with
        nothing available it sends a second, waiting request, so a group would wait for
        batches that are not there, and one held open would lease us later batches.

        Every message delivered is leased to this instance whether or not it is read
        here: those that arrive after this gives up (a server slower than
        REQUEST_TIMEOUT) wait in the subscription for the next `get`, or are given back
        by `close`, as a timed-out `get`'s are. Messages already waiting there are taken
        first."""
        assert self._sub is not None and self._fetching is not None and self._nc is not None
        inbox = self._sub._sub  # nats-py keeps no public accessor (see _shutdown)
        taken: list[Delivery] = []
        async with self._fetching:
            while not inbox._pending_queue.empty() and len(taken) < n:
                msg = await inbox.next_msg(timeout=REQUEST_TIMEOUT)
                if not JetStreamContext.is_status_msg(msg):  # a status: an older request's
                    delivery = await self._delivery(msg)
                    taken += [delivery] if delivery is not None else []
            asked = n - len(taken)
            if asked <= 0:
                return taken
            await self._nc.publish(self._sub._nms, json.dumps(
                {"batch": asked, "no_wait": True}).encode(), reply=self._sub._deliver)
            deadline = time.monotonic() + REQUEST_TIMEOUT  # for all: `_call` waits twice it
            while asked > 0:
                try:
                    msg = await inbox.next_msg(timeout=max(deadline - time.monotonic(), 0.01))
                except nats.errors.TimeoutError:
                    break
                if JetStreamContext.is_status_msg(msg):
                    break  # no more for this request (404 / 408)
                asked -= 1
                delivery = await self._delivery(msg)
                taken += [delivery] if delivery is not None else []
        return taken

    async def _delivery(self, msg: Msg) -> Delivery | None:
        """A delivered message as a Delivery held by this instance; None for one that is
        not something `put` wrote (it can never load: terminated, so nobody loops on it)."""
        try:
            ref = BatchRef.from_json(msg.data.decode())
        except (ValueError, KeyError, TypeError) as exc:
            log.error("discarding an unreadable message on %s: %s", msg.subject, exc,
                      extra={"stage": "buffer"})
            await msg.term()
            return None
        self._inflight[ref.batch_id] = msg
        return Delivery(ref, attempt=msg.metadata.num_delivered)

    async def _ack(self, batch_id: str) -> None:
        msg = self._inflight.pop(batch_id, None)  # no extend or nack of it from now on
        if msg is not None:
            try:
                await msg.ack_sync(timeout=REQUEST_TIMEOUT)  # confirmed: depth() sees it gone
                return
            except nats.errors.TimeoutError:
                pass  # fall back to removing it by subject
        await self._delete(batch_id)

    async def _delete(self, batch_id: str) -> None:
        assert self._jsm is not None
        try:
            raw = await self._jsm.get_msg(self.stream, subject=self._subject(batch_id))
            await self._jsm.delete_msg(self.stream, raw.seq or 0)
        except NotFoundError:
            return
        except APIError as exc:
            if exc.err_code != _NO_MESSAGE:  # removed by someone else in between
                raise

    async def _extend(self, batch_id: str) -> None:
        msg = self._inflight.get(batch_id)
        if msg is not None:
            await msg.in_progress()
            assert self._nc is not None
            await self._nc.flush(timeout=int(REQUEST_TIMEOUT))

    async def _nack(self, batch_id: str, delay: float) -> None:
        msg = self._inflight.pop(batch_id, None)
        if msg is None:
            return
        await msg.nak(delay=delay if delay > 0 else None)
        assert self._nc is not None
        await self._nc.flush(timeout=int(REQUEST_TIMEOUT))

    async def _contains(self, batch_id: str) -> bool:
        assert self._jsm is not None
        try:
            raw = await self._jsm.get_msg(self.stream, subject=self._subject(batch_id))
        except NotFoundError:
            return False
        if (raw.seq or 0) <= await self._passed():
            await self._drop_orphans([raw.seq or 0])
            return False
        return True

    async def _passed(self) -> int:
        """The stream sequence at and below which the consumer will deliver nothing more:
        its ack floor, and everything it delivered while no delivery is pending or while it
        has delivered past the stream's last sequence (read after the consumer's state, so
        a message stored and delivered in between cannot make it look so).

        The floor alone is not enough after a crash whose files disagree (the consumer's
        state newer than the stream's). The server drops a pending sequence it finds
        deleted without moving the floor, which then stays below what was delivered; and
        it keeps pending a sequence past the stream's end (a delivered message whose write
        was lost) until a new message is stored there. A batch put after the restart is
        stored at a sequence the consumer delivered before it and is never delivered:
        with nothing pending, no message up to the last delivered one can come again; with
        the consumer ahead of the stream, the one that would is a lost message's
        redelivery, and deleting it only costs a duplicate load (the sweeper puts the
        batch again, at a sequence that moves the stream towards the consumer).
        """
        assert self._jsm is not None
        info = await self._jsm.consumer_info(self.stream, CONSUMER)
        floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
        delivered = int(info.delivered.stream_seq or 0) if info.delivered else 0
        if delivered <= floor:
            return floor
        if info.num_ack_pending:
            last = int((await self._jsm.stream_info(self.stream)).state.last_seq)
            if delivered <= last:
                return floor
        return delivered

    async def _reap(self, due: bool = False) -> int:
        """Delete the orphans (see the module docstring); returns how many. With `due`,
        only if REAP_EVERY has passed since the last look (a full or idle buffer is
        ordinary: it must not cost three API calls a poll)."""
        assert self._jsm is not None
        if due:
            if time.monotonic() - self._reaped_at < REAP_EVERY:
                return 0
            self._reaped_at = time.monotonic()
        state = (await self._jsm.stream_info(self.stream)).state
        if not state.messages:
            return 0
        floor = await self._passed()
        found: list[int] = []
        seq = state.first_seq
        while seq <= floor:
            try:
                raw = await self._jsm.get_msg(self.stream, seq=seq,
                                              subject=f"{self.stream}.batches.>", next=True)
            except NotFoundError:
                break
            if (raw.seq or 0) > floor:
                break
            found.append(raw.seq or 0)
            seq = (raw.seq or 0) + 1
        await self._drop_orphans(found)
        return len(found)

    async def _drop_orphans(self, seqs: list[int]) -> None:
        assert self._jsm is not None
        dropped = []
        for seq in seqs:
            try:
                await self._jsm.delete_msg(self.stream, seq)
            except NotFoundError:
                continue  # another instance removed it first
            except APIError as exc:
                if exc.err_code != _NO_MESSAGE:
                    raise
                continue
            dropped.append(seq)
        if dropped:
            log.warning("removed %d message(s) from stream %s that the consumer had already "
                        "acknowledged (a server restart brought them back): %s", len(dropped),
                        self.stream, dropped[:10], extra={"stage": "buffer"})

    async def _depth(self) -> int:
        assert self._jsm is not None
        return int((await self._jsm.stream_info(self.stream)).state.messages)

    async def _oldest(self) -> float | None:
        assert self._jsm is not None
        state = (await self._jsm.stream_info(self.stream)).state
        if not state.messages:
            return None
        try:  # the first message at or after first_seq, in case it was just acked
            raw = await self._jsm.get_msg(self.stream, seq=state.first_seq,
                                          subject=f"{self.stream}.batches.>", next=True)
        except NotFoundError:
            return None
        return raw.time.timestamp() if raw.time else None

    async def _shutdown(self) -> None:
        held = list(self._inflight.values())
        self._inflight.clear()
        if self._sub is not None:
            # messages that arrived after a pull request timed out are leased to us too
            queue = self._sub._sub._pending_queue  # nats-py keeps no public accessor
            while not queue.empty():
                msg = queue.get_nowait()
                if msg.reply and not JetStreamContext.is_status_msg(msg):
                    held.append(msg)
        if self._nc is None:
            return
        for msg in held:
            try:
                await msg.nak()
            except nats.errors.Error:
                pass  # its lease expires instead
        if self._sub is not None:
            await self._sub.unsubscribe()
        await self._nc.close()  # flushes the naks first

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats: %s", exc, extra={"stage": "buffer"})

    async def _on_disconnected(self) -> None:
        if self._nc is not None and not self._closing:
            log.warning("lost the connection to NATS at %s; reconnecting", self._where,
                        extra={"stage": "buffer"})

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS at %s", self._where, extra={"stage": "buffer"})
