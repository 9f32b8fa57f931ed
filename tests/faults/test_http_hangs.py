"""An API that keeps a request alive without ever finishing its answer must not hang a run:
every request, headers included, ends at statement_timeout + grace (extract/http_deadline).
A real loopback server that trickles bytes; the run is watched from another thread.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.paged_api import OffsetApi, run, served, serving, warehouse

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(60)]


def trickler(head: bytes, drip: bytes, every: float) -> tuple[str, Callable[[], None]]:
    """A server answering each request with `head`, then `drip` every `every` seconds,
    for ever (each read of the client gets bytes well within its read timeout)."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(head)
                while not done.wait(every):
                    conn.sendall(drip)
            except OSError:
                pass  # the client cut the connection: what the test wants

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    def stop() -> None:
        done.set()
        listener.close()

    return f"http://127.0.0.1:{listener.getsockname()[1]}", stop


def run_watched(tmp: Path, url: str, wait: float) -> tuple[RunSummary | None, float]:
    """One run with a 1 s statement_timeout (deadline 2 s); None if still running after
    `wait` seconds (a hang)."""
    config = parse_config({
        "name": "hangs", "base_dir": str(tmp), "state_dir": str(tmp / "state"),
        "landing": {"path": str(tmp / "landing")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "w"},
        "contracts": {"t": {"primary_key": ["id"], "cursor": "updated_at", "columns": {
            "id": {"type": "int64", "nullable": False},
            "updated_at": {"type": "timestamp", "nullable": False}}}},
        "sources": [{"name": "api", "kind": "http", "url": url,
                     "resilience": {"retries": 1, "backoff_initial": 0.01,
                                    "backoff_max": 0.02, "statement_timeout": 1.0,
                                    "connect_timeout": 1.0},
                     "tables": [{"name": "t", "contract": "t", "endpoint": "/items"}]}]})
    out: list[RunSummary] = []

    def go() -> None:
        with Pipeline(config) as pipeline:
            out.append(pipeline.run_once(raise_on_error=False))

    started = time.monotonic()
    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(wait)
    return (out[0] if out else None), time.monotonic() - started


@pytest.mark.parametrize("where", ["headers", "body"])
def test_an_answer_trickled_for_ever_ends_at_the_deadline(tmp_path: Path, where: str) -> None:
    """A server sending its status line and then a header line every 0.2 s (or a chunked
    body a byte at a time) answers every read within the 1 s read timeout: the headers
    had no deadline at all, and the run hung for as long as the server went on. Now each
    attempt is cut at 2 s (statement_timeout + grace), the table fails naming it."""
    if where == "headers":
        head, drip = b"HTTP/1.1 200 OK\r\n", b"X-Pad: a\r\n"
    else:
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        drip = b"1\r\n \r\n"
    url, stop = trickler(head, drip, 0.2)
    try:
        summary, seconds = run_watched(tmp_path, url, wait=20)
    finally:
        stop()
    assert summary is not None, "the run hung on a trickling server"
    assert not summary.ok
    text = " ".join(str(e) for e in summary.errors)
    assert "statement_timeout + grace" in text and "table=t" in text, text
    assert seconds < 15, seconds  # two attempts of 2 s each, plus start-up


@pytest.fixture
def serve() -> Iterator[Callable[[OffsetApi], str]]:
    yield from serving()


def test_a_healthy_walk_is_exact_under_the_deadline(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """The deadline costs a healthy API nothing: a walk of several pages is exact."""
    api = OffsetApi(10)
    url = serve(api)
    summary = run(tmp_path, url)
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)
