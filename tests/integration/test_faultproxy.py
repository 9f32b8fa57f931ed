"""The fault proxy is itself test infrastructure, so it gets tests against real peers.

Every fault test here asserts an observable effect (time, bytes, an exception) and, where the
effect could be produced by the environment alone, also a fault-free baseline, so a proxy that
silently ignored a knob would fail rather than pass.
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from tests.conftest import unavailable
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

PG_HOST, PG_PORT = "127.0.0.1", 5432
MB = 1024 * 1024


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass  # the proxy RSTs connections on purpose


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def echo_proxy(echo_port: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo_port) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def pg_user() -> str:
    """Real PostgreSQL is the point of these tests; in CI its absence is a failure, not a skip."""
    errors = []
    for user in ("postgres", "root"):
        try:
            with psycopg.connect(_pg_dsn(PG_PORT, user)) as conn:
                conn.execute("SELECT 1")
            return user
        except psycopg.Error as exc:
            errors.append(f"{user}: {exc}")
    unavailable(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT} (db test): "
                f"{'; '.join(errors)}")


@pytest.fixture
def pg_proxy(pg_user: str) -> Iterator[FaultProxy]:
    with FaultProxy(PG_HOST, PG_PORT) as proxy:
        yield proxy


def _pg_dsn(port: int, user: str, timeout: int = 3) -> str:
    return f"host={PG_HOST} port={port} dbname=test user={user} connect_timeout={timeout}"


def _connect(proxy: FaultProxy, timeout: float = 3.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(min(65536, n - len(buf)))
        if not data:
            raise EOFError(f"peer closed after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def _roundtrip(sock: socket.socket, payload: bytes) -> float:
    start = time.monotonic()
    sock.sendall(payload)
    assert _recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - start


def _echo_bulk(proxy: FaultProxy, payload: bytes) -> float:
    """Sends from a thread: writing 1 MB without reading would deadlock on full buffers."""
    with _connect(proxy, timeout=10) as sock:
        start = time.monotonic()
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        received = _recv_exactly(sock, len(payload))
        elapsed = time.monotonic() - start
        sender.join(5)
    assert received == payload
    return elapsed


# -- echo server ---------------------------------------------------------------------------


def test_clean_passthrough_and_counters(echo_proxy: FaultProxy) -> None:
    assert echo_proxy.address == f"127.0.0.1:{echo_proxy.port}"
    assert (echo_proxy.connections_total, echo_proxy.bytes_up, echo_proxy.bytes_down) == (0, 0, 0)
    payload = os.urandom(300_000)
    with _connect(echo_proxy) as sock:
        _roundtrip(sock, b"hello")
        _echo_bulk(echo_proxy, payload)
    assert echo_proxy.connections_total == 2
    assert echo_proxy.bytes_up == len(payload) + 5
    assert echo_proxy.bytes_down == len(payload) + 5


def test_latency_delays_each_direction(echo_proxy: FaultProxy) -> None:
    with _connect(echo_proxy) as sock:
        baseline = _roundtrip(sock, b"ping")
        echo_proxy.set_latency(0.2)  # applies to this already-open connection
        delayed = _roundtrip(sock, b"ping")
        echo_proxy.clear()
        after = _roundtrip(sock, b"ping")
    assert baseline < 0.2
    assert 0.4 <= delayed < 1.5  # 0.2 s up + 0.2 s down
    assert after < 0.2


def test_jitter_keeps_stream_order(echo_proxy: FaultProxy) -> None:
    echo_proxy.set_latency(0.03, jitter=0.03)
    messages = [f"{i:05d};".encode() for i in range(300)]
    with _connect(echo_proxy) as sock:
        for message in messages:  # many small writes -> many separately delayed chunks
            sock.sendall(message)
        received = _recv_exactly(sock, sum(map(len, messages)))
    assert received == b"".join(messages)


def test_bandwidth_caps_a_1mb_transfer(echo_proxy: FaultProxy) -> None:
    payload = os.urandom(MB)
    uncapped = _echo_bulk(echo_proxy, payload)
    echo_proxy.set_bandwidth(1_000_000)
    capped = _echo_bulk(echo_proxy, payload)
    assert uncapped < 0.5 * capped  # the slowness is the cap's doing, not the machine's
    # Both directions are capped but pipelined, so the echo takes about one direction's time.
    assert 0.85 * MB / 1_000_000 <= capped < 2.5


def test_reset_after_breaks_connection_mid_stream(echo_proxy: FaultProxy) -> None:
    echo_proxy.reset_after(100_000)
    received = bytearray()
    with _connect(echo_proxy) as sock:
        sender = threading.Thread(target=_send_ignoring_errors, args=(sock, b"x" * MB))
        sender.start()
        with pytest.raises(ConnectionResetError):
            while data := sock.recv(65536):
                received += data
        sender.join(5)
    assert echo_proxy.bytes_down == 100_000
    assert 0 < len(received) <= 100_000


def _send_ignoring_errors(sock: socket.socket, payload: bytes) -> None:
    try:
        sock.sendall(payload)
    except OSError:
        pass


def test_reset_all_breaks_open_connections_but_not_new_ones(echo_proxy: FaultProxy) -> None:
    with _connect(echo_proxy) as sock:
        _roundtrip(sock, b"before")
        echo_proxy.reset_all()
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"after")
            sock.recv(10)
    with _connect(echo_proxy) as sock:
        _roundtrip(sock, b"fresh")


def test_blackhole_makes_client_time_out(echo_proxy: FaultProxy) -> None:
    with _connect(echo_proxy, timeout=1.0) as sock:
        _roundtrip(sock, b"alive")
        echo_proxy.blackhole(True)
        sock.sendall(b"into the void")
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            sock.recv(10)
        assert time.monotonic() - start >= 0.9
    with _connect(echo_proxy, timeout=1.0) as sock:  # new connections vanish too
        sock.sendall(b"still void")
        with pytest.raises(TimeoutError):
            sock.recv(10)
    up_before = echo_proxy.bytes_up
    echo_proxy.restore()
    with _connect(echo_proxy) as sock:
        _roundtrip(sock, b"back")
    assert echo_proxy.bytes_up == up_before + 4


def test_cut_then_restore(echo_proxy: FaultProxy) -> None:
    with _connect(echo_proxy) as sock:
        _roundtrip(sock, b"before")
        echo_proxy.cut()
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"after")
            sock.recv(10)
    # The RST can even beat connect()'s own completion check, so include the connect.
    with pytest.raises((ConnectionResetError, EOFError)), _connect(echo_proxy) as sock:
        _roundtrip(sock, b"during")
    echo_proxy.restore()
    with _connect(echo_proxy) as sock:
        _roundtrip(sock, b"after")


def test_slow_close_delays_the_fin(echo_proxy: FaultProxy) -> None:
    echo_proxy.slow_close(0.5)
    with _connect(echo_proxy) as sock:
        _roundtrip(sock, b"bye")
        start = time.monotonic()  # before the shutdown: the proxy's first 0.5 s starts there
        sock.shutdown(socket.SHUT_WR)  # echo server closes on EOF; that close comes back late
        assert sock.recv(10) == b""
        elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 2.5  # client FIN delayed 0.5 s, then server FIN another 0.5 s


def test_stop_is_prompt_with_open_connections(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port).start()
    with _connect(proxy) as sock:
        _roundtrip(sock, b"x")
        proxy.blackhole(True)
        start = time.monotonic()
        proxy.stop()
        assert time.monotonic() - start < 1.0
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    assert not any(t.name.startswith("faultproxy") for t in threading.enumerate())


# -- real PostgreSQL -----------------------------------------------------------------------


def test_pg_passthrough_and_counters(pg_proxy: FaultProxy, pg_user: str) -> None:
    with psycopg.connect(_pg_dsn(pg_proxy.port, pg_user)) as conn:
        (total,) = conn.execute("SELECT sum(i) FROM generate_series(1, 1000) AS i").fetchone()
        rows = conn.execute("SELECT repeat('x', 1000) FROM generate_series(1, 1000)").fetchall()
    assert total == 500500
    assert len(rows) == 1000
    assert pg_proxy.connections_total == 1
    assert pg_proxy.bytes_up > 0
    assert pg_proxy.bytes_down > 1_000_000  # the result really crossed the proxy


def test_pg_latency(pg_proxy: FaultProxy, pg_user: str) -> None:
    with psycopg.connect(_pg_dsn(pg_proxy.port, pg_user)) as conn:
        start = time.monotonic()
        conn.execute("SELECT 1").fetchone()
        baseline = time.monotonic() - start
        pg_proxy.set_latency(0.25)
        start = time.monotonic()
        conn.execute("SELECT 1").fetchone()
        delayed = time.monotonic() - start
    assert baseline < 0.2
    assert 0.5 <= delayed < 2.0  # 0.25 s each way


def test_pg_reset_after_breaks_large_select(pg_proxy: FaultProxy, pg_user: str) -> None:
    with psycopg.connect(_pg_dsn(pg_proxy.port, pg_user)) as conn:
        conn.execute("SELECT 1").fetchone()
        pg_proxy.reset_after(pg_proxy.bytes_down + 200_000)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT i, md5(i::text) FROM generate_series(1, 1000000) AS i").fetchall()
        assert conn.broken
    assert 200_000 <= pg_proxy.bytes_down < 300_000


def test_pg_cut_then_restore(pg_proxy: FaultProxy, pg_user: str) -> None:
    with psycopg.connect(_pg_dsn(pg_proxy.port, pg_user)) as conn:
        conn.execute("SELECT 1").fetchone()
        pg_proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1").fetchone()
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError), psycopg.connect(_pg_dsn(pg_proxy.port, pg_user)):
        pass
    assert time.monotonic() - start < 1.0  # refused at once, not a timeout
    pg_proxy.restore()
    with psycopg.connect(_pg_dsn(pg_proxy.port, pg_user)) as conn:
        assert conn.execute("SELECT 42").fetchone() == (42,)
    assert pg_proxy.connections_total == 3
