"""A mutable paged API on a loopback server, and a pipeline reading it into DuckDB, for the
HTTP pagination tests: records served by offset in a sorted (or shuffled) order, with
hooks that write to the records before a given request is answered (deterministic: by
request number, never by a timer) or reshape the page sent.

`OffsetApi` reads the position from `offset` (steadyflow's `pagination: offset`) or from
the `after` token it hands out itself (`pagination: token`, token "<offset>"), in the body
or (`link`) as the URL of an RFC 8288 `Link: <...>; rel="next"` header, GitHub's way. It
compares times as instants to the nanosecond, so records may be stamped the way Go's
RFC3339Nano spells them.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import duckdb

from steadyflow.config import PipelineConfig, parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary
from tests.support.loopback_http import send, send_json, serve_get

T0 = datetime(2026, 1, 1, tzinfo=UTC)
Query = dict[str, list[str]]
Page = dict[str, Any]


def stamp(second: int) -> str:
    return (T0 + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_UTC_TEXT = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z")


def instant(value: Any) -> Any:
    """A UTC text time as (its second, its nanoseconds), which order as the instants do
    whatever the fraction's width ("…:01.5Z" after "…:01.000000001Z", which text order
    has the other way round); anything else as it is, with 0."""
    match = _UTC_TEXT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return (value, 0)
    return (match.group(1), int((match.group(2) or "").ljust(9, "0")))


class OffsetApi:
    """Records served `limit` at a time by offset (`offset`, or token "<offset>" in
    `after`), in `order` ("asc", "desc": by (cursor, id); "id": by id only); the token
    "e<offset>" is answered with an empty page whose token is "<offset>".

    `before` may write to the records before a request is answered, `shape` rewrite the
    page before it is sent (both see the request number). `cap` serves at most that many
    records whatever the limit asked (as APIs with a maximum page size do); `shuffle`
    serves another order on each request (an API sorting by nothing stable). `asked`
    lists each request's (offset, limit). `link` moves the token out of the body into a
    Link header naming the next page's whole URL (rel="next", and rel="first" on pages
    after the first; no header on a list's only page), at `link_origin` if set. `gzip`
    sends every answer gzip-encoded, and the answers to the request numbers in `garbled`
    with a body no gzip reader takes (a stream garbled on the way)."""

    def __init__(self, count: int, order: str = "asc") -> None:
        self.records = {i: {"id": i, "updated_at": stamp(i), "qty": i} for i in
                        range(1, count + 1)}
        self.order = order
        self.requests = 0
        self.shape: Callable[[OffsetApi, Query, Page], Page] | None = None
        self.before: Callable[[OffsetApi], None] | None = None  # a write before answering
        self.moved_to = ""  # answer every request with a 301 to here
        self.gone_after = ""  # answer a request with this token with a 410 (expired)
        self.timeout_at: set[int] = set()  # answer these request numbers with a 408
        self.exclusive = False  # since is `updated_after`: records strictly after it
        self.cap: int | None = None
        self.shuffle = False
        self.link = False
        self.link_origin = ""  # the next links' scheme://host:port ("": this server's)
        self.gzip = False
        self.garbled: set[int] = set()
        self.asked: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def page(self, query: Query) -> Page:
        self.requests += 1
        if self.before is not None:
            self.before(self)
        if query.get("after", [""])[0].startswith("e"):  # an empty page, then that offset
            return {"data": [], "next": query["after"][0][1:]}
        limit = int(query.get("limit", ["100"])[0])
        offset = int(query.get("offset", query.get("after", ["0"]))[0])
        self.asked.append((offset, limit))
        since = query.get("updated_since", [""])[0]
        start = instant(since)
        rows = sorted((r for r in self.records.values() if instant(r["updated_at"]) > start
                       or (instant(r["updated_at"]) == start and not self.exclusive)),
                      key=lambda r: (r["id"],) if self.order == "id" else
                      (instant(r["updated_at"]), r["id"]), reverse=self.order == "desc")
        if self.shuffle:
            random.Random(self.requests).shuffle(rows)
        limit = min(limit, self.cap) if self.cap else limit
        more = offset + limit < len(rows)
        page: Page = {"data": rows[offset:offset + limit],
                      "next": str(offset + limit) if more else None}
        return self.shape(self, query, page) if self.shape else page

    def links(self, query: Query, page: Page, here: str) -> tuple[Page, dict[str, str]]:
        """`link` mode: the page without its `next`, and the Link header naming the next
        page's URL (the request's own query, `after` moved on), as GitHub pages."""
        if not self.link:
            return page, {}
        token = page.pop("next", None)
        origin = self.link_origin or here
        params = {k: v[-1] for k, v in query.items()}
        rels = []
        if token:
            rels.append(f'<{origin}/items?{urlencode({**params, "after": token})}>; '
                        'rel="next"')
        if "after" in params:
            first = {k: v for k, v in params.items() if k != "after"}
            rels.append(f'<{origin}/items?{urlencode(first)}>; rel="first"')
        return page, {"Link": ", ".join(rels)} if rels else {}


def serve_api(api: OffsetApi) -> tuple[str, Callable[[], None]]:
    """Serve `api` on 127.0.0.1; returns its URL and the function stopping it."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        with api.lock:  # one request at a time: request numbers are the test's clock
            _answer(api, handler)

    return serve_get(answer)


def _answer(api: OffsetApi, handler: BaseHTTPRequestHandler) -> None:
    if api.gone_after and f"after={api.gone_after}" in handler.path:
        return send(handler, 410)
    if api.moved_to:
        return send(handler, 301, Location=api.moved_to)
    if api.requests + 1 in api.timeout_at:
        api.requests += 1
        return send(handler, 408)
    query = parse_qs(urlsplit(handler.path).query)
    here = f"http://127.0.0.1:{handler.server.server_address[1]}"
    page, headers = api.links(query, api.page(query), here)
    body = json.dumps(page).encode()
    if api.gzip:
        body = gzip.compress(body)
        if api.requests in api.garbled:  # BTYPE 11 (reserved): no inflater takes it
            body = body[:10] + b"\xff" * (len(body) - 10)
        headers["Content-Encoding"] = "gzip"
    return send_json(handler, body, **headers)


def serving() -> Iterator[Callable[[OffsetApi], str]]:
    """The body of a `serve` fixture: start(api) -> url; every server stopped after."""
    stops: list[Callable[[], None]] = []

    def start(api: OffsetApi) -> str:
        url, stop = serve_api(api)
        stops.append(stop)
        return url

    yield start
    for stop in stops:
        stop()


def config(tmp: Path, url: str, **table: Any) -> PipelineConfig:
    """Three records a page (at least one), no retries; `table` adds table options. The
    table declares `cursor_order: ascending` (OffsetApi's default order) unless told: a
    walk seen in another order is walked once more all the same."""
    return parse_config(raw_config(tmp, url, **table))


def raw_config(tmp: Path, url: str, **table: Any) -> dict[str, Any]:
    """`config`'s pipeline as the YAML file's mapping."""
    retries = table.pop("retries", 0)
    table.setdefault("cursor_order", "ascending")
    return {"name": "pages", "base_dir": str(tmp), "state_dir": str(tmp / "state"),
           "landing": {"path": str(tmp / "landing")},
           "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "w"},
           "contracts": {"t": {"primary_key": ["id"], "cursor": "updated_at", "columns": {
               "id": {"type": "int64", "nullable": False},
               "updated_at": {"type": "timestamp", "nullable": False},
               "qty": {"type": "int64"}}}},
           "sources": [{"name": "api", "kind": "http", "url": url,
                        "resilience": {"retries": retries, "backoff_initial": 0.01,
                                       "backoff_max": 0.02},
                        "tables": [{"name": "t", "contract": "t", "endpoint": "/items",
                                    "page_size": 3, "min_page_size": 1, **table}]}]}


def run(tmp: Path, url: str, **table: Any) -> RunSummary:
    with Pipeline(config(tmp, url, **table)) as pipeline:
        return pipeline.run_once(raise_on_error=False)


def warehouse(tmp: Path) -> dict[int, tuple[str, int]]:
    """id -> (updated_at as the API spells it, qty), read by DuckDB itself."""
    con = duckdb.connect(str(tmp / "wh.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT id, strftime(updated_at AT TIME ZONE 'UTC', "
                           "'%Y-%m-%dT%H:%M:%S.%fZ'), qty FROM w.t").fetchall()
    finally:
        con.close()
    return {i: (u, q) for i, u, q in rows}


def served(api: OffsetApi) -> dict[int, tuple[str, int]]:
    return {i: (r["updated_at"], r["qty"]) for i, r in api.records.items()}
