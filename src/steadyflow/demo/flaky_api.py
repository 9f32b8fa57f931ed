"""A deliberately unreliable sales REST API on loopback, for the demo and HTTP-source fault tests.

Why a real server: steadyflow's HTTP source must survive what real APIs do -- rate limits,
5xx bursts, dropped connections, truncated or malformed bodies -- and still land every record
exactly once. Mocking httpx would only test our assumptions about those failures; this server
produces them on a real socket, on demand, from the test process or another one (POST /_faults).

Data lives in SQLite so it survives restarts and a test can compare source against warehouse.
Pagination is keyset on (updated_at, sale_id), like most incremental APIs: a row updated while a
client pages moves behind the cursor and is served again, so clients must dedupe on sale_id.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import random
import sqlite3
import sys
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
CURRENCIES = ("USD", "EUR", "GBP")
COLUMNS = ("sale_id", "store_id", "sku", "qty", "unit_price", "currency", "sold_at", "updated_at")
DEFAULT_LIMIT, MAX_LIMIT = 500, 5000
_MIN_ID = -(2**63)  # below any SQLite integer: (since, _MIN_ID) is an inclusive lower bound
_INSERT = f"INSERT INTO sales ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def iso_utc(dt: datetime) -> str:
    """Fixed-width UTC text with microseconds, so SQLite's text order equals time order."""
    return dt.astimezone(UTC).strftime(TS_FORMAT)


def _row(rng: random.Random, sale_id: int, store_id: int, updated_at: datetime) -> tuple[Any, ...]:
    cents = rng.randint(50, 50_000)
    sold_at = updated_at - timedelta(seconds=rng.uniform(0, 600))
    return (sale_id, store_id, f"SKU-{rng.randrange(10_000):05d}", rng.randint(1, 20),
            f"{cents // 100}.{cents % 100:02d}", rng.choice(CURRENCIES), iso_utc(sold_at),
            iso_utc(updated_at))


def create_api_db(path: str | os.PathLike[str], rows: int, seed: int = 0,
                  store_id: int = 900) -> None:
    """(Re)create the sales table with ``rows`` seeded rows, updated_at within the last hour.

    Values depend only on ``seed``; timestamps are relative to now so ``updated_since`` windows
    stay realistic. About 10% of rows share an updated_at with an earlier row on purpose: the
    sale_id tiebreak is exactly what naive ``updated_at > last_seen`` clients get wrong.
    """
    rng, now = random.Random(seed), datetime.now(UTC)
    stamps: list[datetime] = []
    for _ in range(rows):
        tie = bool(stamps) and rng.random() < 0.1
        stamps.append(rng.choice(stamps) if tie else now - timedelta(seconds=rng.uniform(0, 3600)))
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")  # the server's reads never block mutate()
        with db:
            db.execute("DROP TABLE IF EXISTS sales")
            db.execute("CREATE TABLE sales (sale_id INTEGER PRIMARY KEY, store_id INTEGER NOT NULL,"
                       " sku TEXT, qty INTEGER, unit_price TEXT, currency TEXT, sold_at TEXT,"
                       " updated_at TEXT NOT NULL)")
            db.execute("CREATE INDEX sales_cursor ON sales (updated_at, sale_id)")
            db.executemany(_INSERT, [_row(rng, i, store_id, t) for i, t in enumerate(stamps, 1)])


def mutate(path: str | os.PathLike[str], inserts: int, updates: int, seed: int = 1) -> None:
    """Insert new rows and update random existing ones, all stamped with one 'now' (UTC).

    One shared timestamp mimics a bulk UPDATE and again exercises the sale_id tiebreak.
    """
    rng, now = random.Random(seed), datetime.now(UTC)
    with closing(sqlite3.connect(path, timeout=5)) as db, db:
        max_id, store_id = db.execute(
            "SELECT COALESCE(MAX(sale_id), 0), COALESCE(MAX(store_id), 900) FROM sales").fetchone()
        ids = [r[0] for r in db.execute("SELECT sale_id FROM sales ORDER BY sale_id")]
        for sale_id in rng.sample(ids, min(updates, len(ids))):
            fresh = _row(rng, sale_id, store_id, now)
            db.execute("UPDATE sales SET qty = ?, unit_price = ?, updated_at = ? WHERE sale_id = ?",
                       (fresh[3], fresh[4], fresh[7], sale_id))
        new = [_row(rng, max_id + i, store_id, now) for i in range(1, inserts + 1)]
        db.executemany(_INSERT, new)


def encode_token(updated_at: str, sale_id: int) -> str:
    """Opaque cursor: base64url JSON of the last (updated_at, sale_id) served."""
    return base64.urlsafe_b64encode(json.dumps([updated_at, sale_id]).encode()).decode()


def _decode_token(token: str) -> tuple[str, int]:
    try:
        updated_at, sale_id = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        datetime.strptime(updated_at, TS_FORMAT)
        if type(sale_id) is not int:
            raise TypeError
    except (ValueError, TypeError):  # binascii.Error and JSONDecodeError are ValueErrors
        raise ValueError("after: not a cursor issued by this server") from None
    return updated_at, sale_id


def parse_query(query: str) -> tuple[tuple[str, int], int]:
    """Turn the query string into (exclusive lower bound on (updated_at, sale_id), limit).

    Strict on purpose: a typo'd parameter that is silently ignored would hide a client bug.
    """
    qs = parse_qs(query, keep_blank_values=True)
    if bad := sorted(k for k, v in qs.items()
                     if k not in ("updated_since", "after", "limit") or len(v) > 1):
        raise ValueError(f"unknown or repeated parameter(s): {', '.join(bad)}")
    bounds = [("", _MIN_ID)]
    if "updated_since" in qs:
        raw = qs["updated_since"][0].replace(" ", "+")  # an unencoded '+00:00' arrives as ' 00:00'
        try:
            since = datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(f"updated_since: not ISO-8601: {raw!r}") from None
        if since.tzinfo is None:
            raise ValueError("updated_since: needs 'Z' or a UTC offset; naive times are ambiguous")
        bounds.append((iso_utc(since), _MIN_ID))
    if "after" in qs:
        bounds.append(_decode_token(qs["after"][0]))
    raw = qs.get("limit", [str(DEFAULT_LIMIT)])[0]
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
        raise ValueError(f"limit: must be an integer 1..{MAX_LIMIT}")
    return max(bounds), int(raw)  # ASCII text compares the same in Python and SQLite


def query_page(db_path: str, after: tuple[str, int], limit: int) -> dict[str, Any]:
    """One page in (updated_at, sale_id) order; ``next`` is null once a page comes up short."""
    with closing(sqlite3.connect(db_path, timeout=5)) as db:
        sql = f"SELECT {', '.join(COLUMNS)} FROM sales WHERE (updated_at, sale_id) > (?, ?)"
        rows = db.execute(sql + " ORDER BY updated_at, sale_id LIMIT ?", (*after, limit)).fetchall()
    nxt = encode_token(rows[-1][7], rows[-1][0]) if len(rows) == limit else None
    return {"data": [dict(zip(COLUMNS, r, strict=True)) for r in rows], "next": nxt}


_DEFAULTS: dict[str, float] = dict.fromkeys(
    ("latency", "jitter", "rate_limit_every", "rate_limit_burst", "error_burst", "drop_every",
     "truncate_every", "malformed_every", "wrong_shape_every"), 0.0) | {"retry_after": 1.0}


class Faults:
    """Thread-safe fault switchboard, consulted once per /v1/sales request.

    "Every N" knobs count data requests since the last set()/clear(), so a test that sets
    ``drop_every=2`` knows the second request after it is the dropped one. When several knobs
    fire at once the first wins: drop, rate_limit_burst/every, error_burst, truncate, malformed,
    wrong_shape.
    """

    def __init__(self) -> None:
        self._lock, self._rng = threading.Lock(), random.Random()
        self.clear()

    def clear(self) -> None:
        """Back to a perfectly healthy API."""
        self.set(clear=True)

    def set(self, clear: bool = False, **changes: float) -> None:
        """Change the named knobs (resetting all first if ``clear``); validates before applying,
        so a bad POST /_faults leaves the config untouched."""
        for name, value in changes.items():
            if name not in _DEFAULTS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(_DEFAULTS)}")
            kinds = (int, float) if name in ("latency", "jitter") else (int,)
            if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
                raise ValueError(f"{name}: must be a non-negative {kinds[-1].__name__}")
        with self._lock:
            if clear:
                self._cfg, self._errors, self._shapes = dict(_DEFAULTS), 0, 0
            self._cfg.update(changes)
            self._seq = 0

    def config(self) -> dict[str, float]:
        with self._lock:
            return dict(self._cfg)

    def next_action(self) -> tuple[float, str, int]:
        """Decide this request's fate: (delay seconds, action, retry_after)."""
        with self._lock:
            c = self._cfg
            self._seq += 1
            due = {k: c[k] > 0 and self._seq % c[k] == 0 for k in c if k.endswith("_every")}
            delay = c["latency"] + (self._rng.uniform(0, c["jitter"]) if c["jitter"] else 0.0)
            action = "ok"
            if due["drop_every"]:
                action = "drop"
            elif c["rate_limit_burst"] > 0 or due["rate_limit_every"]:
                c["rate_limit_burst"] = max(0, c["rate_limit_burst"] - 1)
                action = "rate_limit"
            elif c["error_burst"] > 0:
                c["error_burst"] -= 1
                self._errors += 1
                action = "503" if self._errors % 2 else "500"
            elif due["truncate_every"] or due["malformed_every"]:
                action = "truncate" if due["truncate_every"] else "malformed"
            elif due["wrong_shape_every"]:
                self._shapes += 1
                action = "wrong_shape_items" if self._shapes % 2 else "wrong_shape_no_id"
            return delay, action, int(c["retry_after"])


class _Stats:
    """Counters for data-plane requests (control endpoints under /_ are not counted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: dict[str, Any] = {"requests_total": 0, "by_status": {}, "dropped": 0,
                                   "truncated": 0, "malformed": 0, "wrong_shape": 0,
                                   "rate_limited": []}

    def arrived(self) -> None:
        """Count a request; if the last 429 has no follower yet, this is it (Retry-After check)."""
        with self._lock:
            self._c["requests_total"] += 1
            limited = self._c["rate_limited"]
            if limited and limited[-1]["next_request_at"] is None:
                limited[-1]["next_request_at"] = time.time()

    def add(self, key: str, status: int | None = None, retry_after: str = "0") -> None:
        with self._lock:
            if key:
                self._c[key] += 1
            if status is not None:
                self._c["by_status"][str(status)] = self._c["by_status"].get(str(status), 0) + 1
            if status == 429:
                self._c["rate_limited"].append(
                    {"at": time.time(), "retry_after": int(retry_after), "next_request_at": None})

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._c))  # deep copy, same shape as GET /_stats


class _Server(ThreadingHTTPServer):  # daemon threads: a slow request never blocks stop()
    def __init__(self, owner: FlakyApiServer) -> None:
        self.owner = owner
        super().__init__((owner.host, owner.port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # vanished clients are the point here
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so after stop() no idle keep-alive connection is
    # left behind that would keep answering as if the server were still up.
    protocol_version = "HTTP/1.0"
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              *, count: str = "", truncate: bool = False) -> None:
        headers = headers or {}
        if not self.path.startswith("/_"):
            self.server.owner._stats.add(count, status, headers.get("Retry-After", "0"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))  # the full length, even if truncated
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if truncate else body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def do_GET(self) -> None:
        url, owner, method = urlsplit(self.path), self.server.owner, self.command
        if not url.path.startswith("/_"):
            owner._stats.arrived()
        size = int(self.headers.get("Content-Length") or 0) if method == "POST" else 0
        body, token = self.rfile.read(size), owner.token
        auth = self.headers.get("Authorization", "")
        # compare_digest: don't leak the token through response timing
        if token is not None and not hmac.compare_digest(auth.encode(), f"Bearer {token}".encode()):
            self._json(401, {"error": "missing or invalid bearer token"},
                       {"WWW-Authenticate": "Bearer"})
        elif (method, url.path) == ("GET", "/v1/sales"):
            self._sales(url.query)
        elif (method, url.path) == ("GET", "/_stats"):
            self._json(200, owner.stats())
        elif url.path == "/_faults":  # GET shows, POST changes; {"clear": true} resets first
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("body must be a JSON object of fault settings")
                owner.faults.set(**changes)
            except ValueError as exc:
                return self._json(400, {"error": str(exc)})
            self._json(200, owner.faults.config())
        else:
            self._json(404, {"error": f"no such endpoint: {method} {url.path}"})

    do_POST = do_GET

    def _sales(self, query: str) -> None:
        owner = self.server.owner
        delay, action, retry_after = owner.faults.next_action()
        if delay and owner._stopping.wait(delay):
            action = "drop"  # server stopping mid-delay: vanish like a killed process would
        if action == "drop":
            return owner._stats.add("dropped")  # HTTP/1.0: returning silently closes the socket
        if action == "rate_limit":
            return self._json(429, {"error": "rate limited"}, {"Retry-After": str(retry_after)})
        if action in ("503", "500"):
            extra = {"Retry-After": "1"} if action == "503" else {}
            return self._json(int(action), {"error": "upstream trouble"}, extra)
        if action == "malformed":
            return self._send(200, b"<html>oops</html>", count="malformed")  # Content-Type lies
        try:
            page = query_page(owner.db_path, *parse_query(query))
        except ValueError as exc:
            return self._json(400, {"error": str(exc)})
        except sqlite3.Error as exc:
            return self._json(500, {"error": f"database error: {exc}"})
        if action.startswith("wrong_shape"):
            data = [{k: v for k, v in r.items() if k != "sale_id"} for r in page["data"]]
            shape = {"items": page["data"]} if action.endswith("items") else {"data": data}
            return self._send(200, json.dumps(shape).encode(), count="wrong_shape")
        truncate = action == "truncate"
        self._send(200, json.dumps(page).encode(), count="truncated" * truncate, truncate=truncate)


class FlakyApiServer:
    """The sales API on a daemon thread. ``port=0`` picks a free port; restarts reuse it."""

    def __init__(self, db_path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, *, verbose: bool = False) -> None:
        self.db_path, self.host, self.port = os.fspath(db_path), host, port
        self.token, self.verbose = token, verbose
        self.faults, self._stats, self._stopping = Faults(), _Stats(), threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port == 0:
            raise RuntimeError("no port yet: call start() first")
        return f"http://{self.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        """requests_total, by_status (str keys), dropped, truncated, malformed, wrong_shape and
        rate_limited: [{at, retry_after, next_request_at}] in time.time() seconds."""
        return self._stats.snapshot()

    def start(self) -> FlakyApiServer:
        if self._server is not None:
            raise RuntimeError("already running")
        if not os.path.exists(self.db_path):  # sqlite3 would silently create an empty file
            raise FileNotFoundError(self.db_path)
        self._stopping.clear()
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"flaky-api-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, wake requests sleeping in ``latency`` (they drop), free the port."""
        server, self._server = self._server, None
        if server is not None:
            self._stopping.set()
            server.shutdown()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)

    def __enter__(self) -> FlakyApiServer:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run standalone; prints the URL as the first stdout line so a parent process can read it."""
    p = argparse.ArgumentParser(prog="python -m steadyflow.demo.flaky_api", description=__doc__)
    p.add_argument("--db", required=True, help="SQLite file; created with --rows if missing")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rows", type=int, default=1000, help="rows for a new db (default 1000)")
    p.add_argument("--token-env", help="env var holding the bearer token (keeps it off argv)")
    p.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = p.parse_args(argv)
    token = os.environ.get(args.token_env, "") if args.token_env else None
    if token == "":
        p.error(f"environment variable {args.token_env} is unset or empty")
    if not os.path.exists(args.db):
        create_api_db(args.db, args.rows)
    with FlakyApiServer(args.db, args.host, args.port, token, verbose=args.verbose) as server:
        print(server.url, flush=True)
        try:
            threading.Event().wait()  # until Ctrl-C; SIGTERM's default action is fine too
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
