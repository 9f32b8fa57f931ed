"""One deadline on a whole HTTP request, from its first byte sent to its body's last.

httpx's timeouts bound each socket operation, never a request: a server that sends its
status line and then one header line every few tenths of a second (a stuck proxy, a
tarpit, an application flushing keep-alive headers) answers every read within the read
timeout, and `Client.send` never returns. The body had a deadline of its own (checked as
each chunk arrived); the headers had none: the table, its lease and a `run` hung for as
long as the server trickled (seen: a run still waiting after 15 s with a 2 s deadline).

So every connection of an HttpSource's client is made through `DeadlineBackend`, which
notes, per thread, the stream a request is reading or writing. `HttpSource.fetch` arms a
resilience.Watchdog for statement_timeout + grace around the whole request; when it fires
it shuts the noted socket down (shutdown, not close: a thread blocked in recv() on it
wakes at once), the read fails, and fetch reports a SourceTimeout (retryable; the page
size shrinks).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

SocketOption = Any  # httpcore's SOCKET_OPTION (a tuple of level, name, value)


class _NotedStream(httpcore.NetworkStream):
    """A connection's stream that tells its backend which thread uses it now."""

    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._backend.note(self)
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._backend.note(self)
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _NotedStream(self._inner.start_tls(ssl_context, server_hostname, timeout),
                            self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def cut(self) -> None:
        """Shut the socket down: a read blocked on it (or the next one) fails at once."""
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sync backend, whose streams can be cut from another thread."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._lock = threading.Lock()
        self._current: dict[int, _NotedStream] = {}  # thread id -> the stream it uses

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[SocketOption] | None = None
                    ) -> httpcore.NetworkStream:
        stream = _NotedStream(self._inner.connect_tcp(host, port, timeout, local_address,
                                                      socket_options), self)
        self.note(stream)
        return stream

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[SocketOption] | None = None
                            ) -> httpcore.NetworkStream:
        stream = _NotedStream(self._inner.connect_unix_socket(path, timeout, socket_options),
                              self)
        self.note(stream)
        return stream

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def note(self, stream: _NotedStream) -> None:
        with self._lock:
            self._current[threading.get_ident()] = stream

    def forget(self, thread: int) -> None:
        with self._lock:
            self._current.pop(thread, None)

    def cut(self, thread: int) -> None:
        """Cut the stream `thread` last used (the Watchdog's fire: its request is late)."""
        with self._lock:
            stream = self._current.get(thread)
        if stream is not None:
            stream.cut()


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport, its connections made through a DeadlineBackend."""

    def __init__(self, backend: DeadlineBackend) -> None:
        super().__init__()
        limits = httpx.Limits()  # httpx's defaults, as HTTPTransport() has them
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=backend,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry)
