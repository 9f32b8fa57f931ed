"""Asyncio TCP proxy that injects network faults between steadyflow and a real service.

Resilience claims (retries, resume, exactly-once) only count if they hold against the real
PostgreSQL/MariaDB/HTTP servers over a misbehaving network, and there is no toxiproxy here.
The event loop runs in a daemon thread so synchronous tests and drivers need no asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

Direction = Literal["up", "down"]
_CHUNK = 65536
_QUEUE_CHUNKS = 64  # bounded so a slow direction pushes back on the sender, like a real link
_TIMEOUT = 5.0
_Queue = asyncio.Queue[tuple[float, bytes | None]]  # (due time, chunk | b"" EOF | None reset)


@dataclass(frozen=True)
class _Faults:
    """Immutable, swapped whole by setters: the loop thread never sees a half-applied change."""

    latency: float = 0.0
    jitter: float = 0.0
    bandwidth: int | None = None
    reset_after: int | None = None
    blackhole: bool = False
    cut: bool = False
    slow_close: float = 0.0


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Abort with SO_LINGER 0 so the peer gets ECONNRESET, the failure drivers handle worst."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One proxied connection, registered so that faults also reach connections already open."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.down_bytes = 0
        self.open_directions = 2
        self.dead = False
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        self.dead = True
        _rst(self.client)
        _rst(self.upstream)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()

    async def close(self) -> None:
        """Graceful close; waits for buffered bytes so stop() never leaks half-flushed sockets."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), _TIMEOUT)


class FaultProxy:
    """TCP proxy whose faults can be changed at any moment from the (synchronous) test thread."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listen = (listen_host, listen_port)
        self._faults = _Faults()
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._connections_total = 0
        self._bytes: dict[Direction, int] = {"up": 0, "down": 0}
        self.port = 0

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"faultproxy->{self._upstream}", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """RST everything rather than drain: a test that is finishing must not wait on peers."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._server is not None:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_TIMEOUT)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{self._listen[0]}:{self.port}"

    @property
    def connections_total(self) -> int:
        return self._connections_total

    @property
    def bytes_up(self) -> int:
        return self._bytes["up"]

    @property
    def bytes_down(self) -> int:
        return self._bytes["down"]

    def _set(self, **changes: Any) -> None:
        with self._lock:
            self._faults = replace(self._faults, **changes)

    def set_latency(self, seconds: float, jitter: float = 0.0) -> None:
        self._set(latency=seconds, jitter=jitter)

    def set_bandwidth(self, bytes_per_second: int | None) -> None:
        """Per connection and direction, so one slow download cannot hide behind another."""
        self._set(bandwidth=bytes_per_second)

    def reset_after(self, n_bytes: int | None) -> None:
        """Per connection, server->client bytes: that is where 'lost mid-result' bites."""
        self._set(reset_after=n_bytes)

    def blackhole(self, on: bool) -> None:
        """Data (not FIN/RST) vanishes, so clients only escape through their own timeouts."""
        self._set(blackhole=on)

    def slow_close(self, seconds: float) -> None:
        self._set(slow_close=seconds)

    def reset_all(self) -> None:
        self._on_loop(self._reset_all_now)

    def cut(self) -> None:
        """Keeps listening and RSTs new clients, so the port stays ours for restore()."""
        self._set(cut=True)
        self._on_loop(self._reset_all_now)

    def restore(self) -> None:
        self._set(cut=False, blackhole=False)

    def clear(self) -> None:
        with self._lock:
            self._faults = _Faults()

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Blocks until done so that, when the call returns, the fault has really happened."""
        loop = self._loop
        if loop is None:
            return

        async def run() -> None:
            fn()
            await asyncio.sleep(0)  # let abort() callbacks close the sockets

        asyncio.run_coroutine_threadsafe(run(), loop).result(_TIMEOUT)

    def _reset_all_now(self) -> None:
        for conn in list(self._conns):
            conn.reset()

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, *self._listen)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        self._reset_all_now()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for _ in range(3):  # pending connection_lost callbacks close the sockets
            await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), _TIMEOUT)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections_total += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            if self._faults.cut:
                conn.reset()
                return
            if self._faults.blackhole:
                while await reader.read(_CHUNK):  # never dialled upstream: nothing can leak
                    pass
                return
            try:
                up_reader, conn.upstream = await asyncio.wait_for(
                    asyncio.open_connection(*self._upstream), _TIMEOUT
                )
            except (OSError, TimeoutError):
                conn.reset()  # upstream down: the client should see a broken connection
                return
            if conn.dead or self._faults.cut:
                conn.reset()
                return
            up_q: _Queue = asyncio.Queue(_QUEUE_CHUNKS)
            down_q: _Queue = asyncio.Queue(_QUEUE_CHUNKS)
            conn.tasks = [
                asyncio.ensure_future(self._read(reader, up_q)),
                asyncio.ensure_future(self._read(up_reader, down_q)),
                asyncio.ensure_future(self._write(conn, conn.upstream, up_q, "up")),
                asyncio.ensure_future(self._write(conn, writer, down_q, "down")),
            ]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # only stop() cancels us; Python 3.11 would log a cancelled handler as an error
        finally:
            if not conn.dead:
                await conn.close()
            self._conns.discard(conn)
            self._handlers.discard(handler)

    async def _read(self, src: asyncio.StreamReader, queue: _Queue) -> None:
        """Stamps each chunk with a due time; b'' means EOF, None means the peer reset."""
        loop = asyncio.get_running_loop()
        last_due = 0.0
        while True:
            chunk: bytes | None
            try:
                chunk = await src.read(_CHUNK)
            except OSError:
                chunk = None
            faults = self._faults
            if chunk and faults.blackhole:
                continue
            delay = faults.latency + self._rng.uniform(-faults.jitter, faults.jitter)
            # Never due before the previous chunk: jitter must not reorder a TCP stream.
            last_due = max(last_due, loop.time() + max(0.0, delay))
            await queue.put((last_due, chunk))
            if not chunk:
                return

    async def _write(
        self,
        conn: _Conn,
        dst: asyncio.StreamWriter,
        queue: _Queue,
        direction: Direction,
    ) -> None:
        loop = asyncio.get_running_loop()
        next_send = 0.0
        try:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    await asyncio.sleep(self._faults.slow_close)
                    if chunk is None or conn.dead:
                        conn.reset()
                        return
                    if dst.can_write_eof():
                        dst.write_eof()  # propagate half-close; the other direction may go on
                    conn.open_directions -= 1
                    if conn.open_directions == 0:
                        await conn.close()
                    return
                view = memoryview(chunk)
                while view:
                    faults = self._faults
                    if faults.blackhole:
                        break
                    size = len(view)
                    limit = faults.reset_after if direction == "down" else None
                    if limit is not None:
                        size = min(size, limit - conn.down_bytes)
                        if size <= 0:
                            await self._reset_when_flushed(conn, dst)
                            return
                    if faults.bandwidth:
                        size = min(size, max(1, faults.bandwidth // 20))  # smooth, not bursty
                        next_send = max(next_send, loop.time())
                        await asyncio.sleep(next_send - loop.time())
                        next_send += size / faults.bandwidth
                    piece, view = view[:size], view[size:]
                    self._bytes[direction] += size  # before write: tests never see it lag
                    if direction == "down":
                        conn.down_bytes += size
                    dst.write(piece)
                    await dst.drain()
                    if limit is not None and conn.down_bytes >= limit:
                        await self._reset_when_flushed(conn, dst)
                        return
        except OSError:
            conn.reset()

    async def _reset_when_flushed(self, conn: _Conn, dst: asyncio.StreamWriter) -> None:
        """Hand the last allowed bytes to the kernel first, so 'after n bytes' means n bytes."""
        dst.transport.set_write_buffer_limits(high=0)
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(dst.drain(), 1.0)
        conn.reset()
