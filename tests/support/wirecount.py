"""A TCP proxy that counts what a client asks a database: connections, and queries read off
the client's side of the wire protocol (PostgreSQL or MySQL/MariaDB). No server setting, log
file or extension involved: a test proves "one round trip per idle poll" by the bytes sent.

PostgreSQL: after the untyped startup packets (an SSLRequest is answered 'N' by a server
without SSL), every message is a type byte and a length; a simple query ('Q', one round
trip, possibly several statements) and an extended-protocol Execute ('E') each count one.
MySQL: each packet is a 3-byte length and a sequence number; a command starts at sequence
0, and COM_QUERY (0x03) and COM_STMT_EXECUTE (0x17) each count one. Every counted query is
also kept in order of arrival (`statements`: its text, or "<execute>" where the message has
none), so a test can tell which kind a query was.

PostgreSQL round trips are counted on the server's side: each ReadyForQuery ('Z') ends one
(a simple query, an extended-protocol Sync or a pipeline's, a COPY), however many
statements it carried (`round_trips`).
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Literal

Protocol = Literal["postgres", "mysql"]
_PG_NEGOTIATION = (80877103, 80877104)  # SSLRequest, GSSENCRequest


class _Parser:
    def __init__(self, protocol: Protocol, log: list[str]) -> None:
        self.protocol = protocol
        self.buffer = b""
        self.started = protocol == "mysql"
        self.queries = 0
        self.log = log  # the counter's, appended under its lock

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            size = self._next()
            if size is None or len(self.buffer) < size:
                return
            self._count(self.buffer[:size])
            self.buffer = self.buffer[size:]

    def _next(self) -> int | None:
        """The size of the next whole message at the buffer's head, None if unknown yet."""
        if self.protocol == "mysql":
            if len(self.buffer) < 4:
                return None
            return 4 + int.from_bytes(self.buffer[:3], "little")
        if not self.started:
            return struct.unpack("!i", self.buffer[:4])[0] if len(self.buffer) >= 4 else None
        return 1 + struct.unpack("!i", self.buffer[1:5])[0] if len(self.buffer) >= 5 else None

    def _count(self, message: bytes) -> None:
        if self.protocol == "mysql":
            if message[3] == 0 and len(message) > 4 and message[4] in (0x03, 0x17):
                self.queries += 1
                self.log.append(message[5:].decode(errors="replace") if message[4] == 0x03
                                else "<execute>")
        elif not self.started:
            if struct.unpack("!i", message[4:8])[0] not in _PG_NEGOTIATION:
                self.started = True  # the StartupMessage: typed messages follow
        elif message[:1] in (b"Q", b"E"):
            self.queries += 1
            self.log.append(message[5:-1].decode(errors="replace") if message[:1] == b"Q"
                            else "<execute>")


class _ReadyCounter:
    """The server's side of a PostgreSQL connection: counts ReadyForQuery messages. Before
    the first typed message the server may answer an SSLRequest or GSSENCRequest with one
    untyped 'N' each (no SSL here: an 'S' would make the rest unreadable, and none is
    counted)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.started = False
        self.ready = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while not self.started and self.buffer[:1] == b"N":
            self.buffer = self.buffer[1:]
        if self.buffer:
            self.started = True
        while len(self.buffer) >= 5:
            size = 1 + struct.unpack("!i", self.buffer[1:5])[0]
            if len(self.buffer) < size:
                return
            self.ready += self.buffer[:1] == b"Z"
            self.buffer = self.buffer[size:]


class WireCounter:
    """Listens on 127.0.0.1; forwards to `upstream_port`; counts per `protocol`."""

    def __init__(self, upstream_port: int, protocol: Protocol) -> None:
        self.upstream_port = upstream_port
        self.protocol = protocol
        self._lock = threading.Lock()
        self._parsers: list[_Parser] = []
        self._ready: list[_ReadyCounter] = []
        self._log: list[str] = []
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="wirecount").start()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._parsers)

    @property
    def queries(self) -> int:
        with self._lock:
            return sum(p.queries for p in self._parsers)

    @property
    def round_trips(self) -> int:
        """PostgreSQL: ReadyForQuery messages the server sent, over every connection."""
        with self._lock:
            return sum(r.ready for r in self._ready)

    @property
    def statements(self) -> list[str]:
        """Every counted query so far, in order of arrival."""
        with self._lock:
            return list(self._log)

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            parser = _Parser(self.protocol, self._log)
            ready = _ReadyCounter() if self.protocol == "postgres" else None
            with self._lock:
                self._parsers.append(parser)
                self._ready += [ready] if ready is not None else []
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, parser),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, ready),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket,
              parser: _Parser | _ReadyCounter | None) -> None:
        try:
            while data := src.recv(65536):
                if parser is not None:
                    with self._lock:
                        parser.feed(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
