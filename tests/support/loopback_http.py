"""One loopback HTTP server for the tests that serve an API of their own: every GET is
answered by a function of the request handler, on a thread per request (so a test can
hold one answer while the pipeline's other requests go on)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_get(answer: Callable[[BaseHTTPRequestHandler], None]
              ) -> tuple[str, Callable[[], None]]:
    """Serve `answer(handler)` for every GET on 127.0.0.1; returns the server's URL and
    the function stopping it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            answer(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", stop


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"",
         **headers: str) -> None:
    """Answer with `status`, `headers` and `body` (its Content-Length set)."""
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def send_json(handler: BaseHTTPRequestHandler, body: bytes, **headers: str) -> None:
    """A 200 answer of a JSON body."""
    send(handler, 200, body, **{"Content-Type": "application/json", **headers})
