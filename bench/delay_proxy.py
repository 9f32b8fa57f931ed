"""TCP proxies that only add latency: every chunk is delivered `delay` seconds after it
arrived, in order, in each direction (10 ms each way = 20 ms per round trip). Many proxies
share one event loop in one thread, and a chunk costs one callback (asyncio Protocols, no
streams, queues or per-connection tasks): bench/scale.py's 20 stores' proxies used 1.2-1.4
CPU seconds per run as tests/support/faultproxy.py (20 loops in 20 threads, four tasks per
connection), which the fault tests need and this bench does not.

Backpressure: a direction holding more than HIGH bytes not yet written (queued for its delay
or in the transport's buffer) stops reading its sender until it is below LOW again, so a
slow reader pushes back on the writer as over a real link.
"""

from __future__ import annotations

import asyncio
from collections import deque

HIGH = 1 << 20
LOW = 1 << 18
# connections accepted so far by each proxy (its index in `serve`'s list)
accepted: dict[int, int] = {}


class _Half(asyncio.Protocol):
    """One side of a proxied connection: what it receives goes to `peer` after the delay."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.queue: deque[tuple[float, bytes | None]] = deque()  # None: end of stream
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False  # our reading, because the peer is behind
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._push(data)

    def eof_received(self) -> bool:
        self._push(None)
        return True  # keep our side open: the other direction may go on

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._push(None)  # closes the peer once what came before is delivered

    def _push(self, data: bytes | None) -> None:
        self.queue.append((self.loop.time() + self.delay, data))
        if data:
            self.queued += len(data)
            if self.queued > HIGH and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
        if self.timer is None and self.peer is not None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        """Write every chunk now due to the peer; wait for the next one."""
        self.timer = None
        peer = self.peer
        assert peer is not None and peer.transport is not None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                if peer.transport.can_write_eof() and not peer.closed:
                    peer.transport.write_eof()
                else:
                    peer.transport.close()
                if self.closed:
                    peer.transport.close()
                continue
            self.queued -= len(data)
            if not peer.closed:
                peer.transport.write(data)
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        peer = self.peer
        behind = self.queued + (peer.transport.get_write_buffer_size()
                                if peer is not None and peer.transport is not None else 0)
        if self.paused and behind < LOW and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:  # our transport's buffer is full: stop the peer reading
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.paused:
            peer.paused = True
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer._maybe_resume()


async def _serve_one(index: int, delay: float, upstream: tuple[str, int]
                     ) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    accepted[index] = 0

    def client() -> _Half:
        accepted[index] += 1
        half = _Half(delay)

        async def dial() -> None:
            try:
                _, up = await loop.create_connection(lambda: _Half(delay), *upstream)
            except OSError:
                if half.transport is not None:
                    half.transport.abort()
                return
            half.peer, up.peer = up, half
            for side in (half, up):  # what either said before both were connected
                if side.queue and side.timer is None:
                    side.timer = loop.call_at(side.queue[0][0], side._flush)

        loop.create_task(dial())
        return half

    return await loop.create_server(client, "127.0.0.1", 0)


async def serve(n: int, delay: float, upstream: tuple[str, int]) -> list[asyncio.Server]:
    """`n` proxies to `upstream`, each on a free port of 127.0.0.1."""
    return [await _serve_one(i, delay, upstream) for i in range(n)]


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])
