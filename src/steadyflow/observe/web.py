"""`steadyflow serve`: /metrics, the status page, /api/status and /healthz over HTTP.

One stdlib ``ThreadingHTTPServer`` and no web framework.  This module is the HTTP side:
routing, headers, authentication and the Host check.  What it serves comes from
`StatusService` (service.py: snapshots, their history, the pipeline loop) and
`render_page` (page.py: the HTML).

Read-only by construction: only GET and HEAD are routed, and nothing here writes pipeline
state except, in follow mode, the pipeline loop itself.

Two ways to watch a pipeline:
- live: the pipeline runs in this process (``follow=True`` runs its loop here, or the caller
  runs it, as `steadyflow run --serve` does).  /metrics is that process's registry.
- read-only view: a config path whose pipeline runs in another process.  The page and
  /api/status are complete (they read the shared state files); on /metrics only the
  state-derived gauges (freshness, last success, breaker) are meaningful, the counters
  live in the other process, so point Prometheus at that one.

Security defaults: binds 127.0.0.1; a non-loopback address is refused unless a bearer
token is configured (or ``insecure`` is set explicitly).  With a token every endpoint,
/healthz included, needs ``Authorization: Bearer <token>`` (compared in constant time).
While bound to loopback without a token, requests whose Host header is not a loopback
name are refused, so a web page in the operator's browser cannot read the status page
through DNS rebinding.  Every value on the page is HTML-escaped and every error text
passes through `logs.scrub` first.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import sqlite3
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from steadyflow.errors import ConfigError, SteadyflowError
from steadyflow.observe import logs
from steadyflow.observe.history import History
from steadyflow.observe.page import render_page, sparkline
from steadyflow.observe.service import SAMPLE_EVERY, StatusService

__all__ = [  # History and sparkline: re-exported, callers import them from here
    "DEFAULT_HOST", "DEFAULT_PORT", "METRICS_CONTENT_TYPE", "History", "StatusServer",
    "is_loopback", "parse_address", "render_page", "serve", "sparkline", "start_server",
]

log = logs.get("web")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108
# The text format generate_latest() writes; prometheus_client's CONTENT_TYPE_LATEST names a
# newer version that this body is not.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'")


# --- address checks -------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """True if every address `host` names is a loopback address."""
    name = host.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def _host_header_is_loopback(value: str | None) -> bool:
    if not value:
        return False
    try:
        hostname = urlsplit(f"//{value}").hostname
    except ValueError:
        return False
    if hostname is None:
        return False
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


# --- HTTP ------------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    app: StatusServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return "steadyflow"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", logs.scrub(format % args), extra={"stage": "observe"})

    def _send(self, code: int, body: bytes, content_type: str,
              extra: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", _CSP)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if code >= 400:  # an unread request body must not be parsed as the next request
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _text(self, code: int, text: str, extra: dict[str, str] | None = None,
              head: bool = False) -> None:
        self._send(code, text.encode(), "text/plain; charset=utf-8", extra, head)

    def _refused(self) -> bool:
        """Answer 401/421 and return True if this request must not be served."""
        app = self.server.app
        if app.token is not None:
            header = self.headers.get("Authorization") or ""
            scheme, _, provided = header.partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                provided.strip().encode(), app.token.encode())
            if not ok:
                self._text(401, "unauthorized\n",
                           {"WWW-Authenticate": 'Bearer realm="steadyflow"'})
                return True
        elif app.loopback_only and not _host_header_is_loopback(self.headers.get("Host")):
            self._text(421, "misdirected request: use a loopback host name\n")
            return True
        return False

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _not_allowed(self) -> None:
        self._text(405, "read-only: GET and HEAD only\n", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _dispatch(self, head: bool) -> None:
        try:
            if self._refused():
                return
            path = urlsplit(self.path).path
            app = self.server.app
            if path == "/metrics":
                if app.service.tables_from_state:
                    try:
                        app.service.sync_metrics()
                    except (sqlite3.Error, SteadyflowError) as exc:
                        # its gauges come from the state: served as they were, they
                        # would read as current; a failed scrape (Prometheus' `up` 0,
                        # SteadyflowDown) says nothing can be told
                        self._text(503, logs.scrub(f"the state cannot be read: {exc}\n"),
                                   head=head)
                        return
                app.service.sync_queue()
                self._send(200, app.pipeline.metrics.exposition(), METRICS_CONTENT_TYPE,
                           head=head)
            elif path in ("/", "/index.html"):
                page = render_page(app.service.report(), app.service.history.series(),
                                   mode=app.service.mode,
                                   loop_error=app.service.loop_failure)
                self._send(200, page.encode(), "text/html; charset=utf-8", head=head)
            elif path == "/api/status":
                body = json.dumps(app.service.report(), default=str).encode()
                self._send(200, body, "application/json", head=head)
            elif path == "/healthz":
                if app.service.loop_alive:
                    self._text(200, "ok\n", head=head)
                else:
                    self._text(503, f"pipeline loop stopped: {app.service.loop_failure}\n",
                               head=head)
            else:
                self._text(404, "not found\n", head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:
            log.error("request %s failed: %s", urlsplit(self.path).path, exc,
                      extra={"stage": "observe"})
            try:
                self._text(500, "internal error\n", head=head)
            except OSError:
                pass


class StatusServer:
    """The HTTP server plus its `StatusService`; `start()` serves in a background thread."""

    def __init__(self, pipeline: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 token: str | None = None, insecure: bool = False, follow: bool = False,
                 live: bool | None = None, owns_pipeline: bool = False,
                 sample_every: float = SAMPLE_EVERY) -> None:
        loopback = is_loopback(host)
        if not loopback and not token and not insecure:
            raise ConfigError(
                f"refusing to serve on non-loopback address {host!r} without a token",
                hint="set a bearer token (--token-env VAR) or pass --insecure deliberately")
        self.pipeline = pipeline
        self.token = token or None
        logs.register_secret(self.token)
        self.loopback_only = loopback
        self.owns_pipeline = owns_pipeline
        self.service = StatusService(pipeline, follow=follow, live=live,
                                     sample_every=sample_every)
        server_cls = _Server6 if ":" in host.strip("[]") else _Server
        try:
            self.httpd = server_cls((host.strip("[]"), port), _Handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.httpd.app = self
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.httpd.server_address[0])
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> StatusServer:
        self.service.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="status-http",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        log.info("serving %s", self.url, extra={"stage": "observe"})
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving, stop the pipeline loop (follow mode), close what we opened."""
        if self._stopped:
            return
        self._stopped = True
        finished = self.service.stop(timeout)
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()
        if self.owns_pipeline:
            if finished:
                self.pipeline.close()
            else:  # closing state under a live loop thread would only add errors
                log.warning("pipeline loop did not stop in %.0fs; not closing it", timeout,
                            extra={"stage": "observe"})
                self.pipeline.metrics.stopped()

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(pipeline_or_config_path: Any, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, *, follow: bool = False, token: str | None = None,
                 insecure: bool = False,
                 sample_every: float = SAMPLE_EVERY) -> tuple[str, Callable[[], None]]:
    """Serve the status page and /metrics in background threads; returns (url, stop).

    Pass a `Pipeline` this process runs (live: /metrics is its registry), or a config path
    for a read-only view of a pipeline that runs in another process (see the module
    docstring for what /metrics means then).
    ``port=0`` picks a free port; the returned url names it.  ``follow=True`` also runs
    ``pipeline.run(follow=True)`` in a background thread.  ``stop()`` is idempotent.
    """
    owns = isinstance(pipeline_or_config_path, str | Path)
    if owns:
        from steadyflow.run.pipeline import Pipeline

        pipeline = Pipeline.from_yaml(pipeline_or_config_path, view=not follow)
    else:
        pipeline = pipeline_or_config_path
    try:
        server = StatusServer(pipeline, host, port, token=token, insecure=insecure,
                              follow=follow, live=follow or not owns, owns_pipeline=owns,
                              sample_every=sample_every)
    except BaseException:
        if owns:
            pipeline.close()
        raise
    server.start()
    return server.url, server.stop


def parse_address(value: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` → (host, port); the host defaults to loopback."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, text
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"not an address: {value!r} (expected PORT or HOST:PORT)")
    return host.strip("[]") or DEFAULT_HOST, int(port)


def serve(pipeline: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          token: str | None = None, insecure: bool = False, follow: bool = False,
          announce: Callable[[str], None] = print) -> None:
    """Serve until SIGINT/SIGTERM (main thread only); what `steadyflow serve` runs.

    Read-only unless `follow` (`serve --run`): a viewer must never start a second loop
    beside the pipeline it watches (the caller holds the loop lock when it does run it).
    """
    import signal

    server = StatusServer(pipeline, host, port, token=token, insecure=insecure, follow=follow)
    done = threading.Event()

    def stop(signum: int, frame: object) -> None:
        pipeline.stop()
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    announce(server.url)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
