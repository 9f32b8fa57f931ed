"""Incremental extraction from REST APIs: pages of JSON records, landed raw before parsing.

    GET {url}{endpoint}?updated_since=<checkpoint cursor>&limit=<page size>   first page
    GET {url}{endpoint}?after=<next token>&limit=<page size>                  following pages
    → {"data": [{...}, ...], "next": "<token>" | null}

Parameter and field names come from the table config (`since_param`, `next_param`,
`limit_param`, `records_path`, `next_path`), headers from the source config (secrets as
`${VAR}`). The flow of one page, and why:

1. `fetch` (under the source's SourceGuard: breaker, concurrency cap, retries with
   backoff and full jitter) returns the complete raw body of a 2xx answer. Transport
   failures, 5xx and 429 are retryable (Retry-After is honoured); 401/403 (credentials),
   404 (endpoint) and other 4xx are fatal at once. A body that arrives too slowly is cut
   at statement_timeout + grace.
2. The extractor lands the raw bytes (a Parquet file with one binary `payload` column)
   BEFORE they are parsed: what the API said is kept, whatever it was.
3. `parse` turns the body into Arrow rows in the contract's columns and the page's high
   watermark (cursor, key...) taken from the records themselves, never from a clock. A
   body that is not JSON, has the wrong shape or records without their key or cursor
   raises BadPayload: the extractor quarantines the landed raw page with that reason and
   requests the page again; `run.extract.replay_pages` re-parses quarantined pages later
   (optionally with another `records_path`) and loads them through the normal path.

Resuming: the checkpoint is a (cursor, key) watermark. A new run starts with
`since_param=<cursor - lookback>` (inclusive) and drops records at or before the
checkpoint, so nothing is skipped and little is re-read; within a run it follows the
server's opaque next-page tokens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from steadyflow.config import SourceConfig, TableConfig
from steadyflow.errors import (
    AuthError,
    FatalError,
    QuarantineError,
    RateLimited,
    SchemaError,
    SourceTimeout,
    SourceUnavailable,
)
from steadyflow.extract.sql import column_to_arrow
from steadyflow.model import Contract, Watermark
from steadyflow.resilience import watchdog_grace

if TYPE_CHECKING:  # httpx is imported where a request is made: SQL-only runs skip ~0.1 s
    import httpx

RAW_SUFFIX = ".raw"  # landed raw pages live under landing/<source>/<table>.raw/
_TEXT_LIMIT = 200


@dataclass(eq=False)
class ServerError(SourceUnavailable):
    """A 5xx answer: transient, counts against the breaker, may carry a Retry-After."""

    retry_after: float | None = None
    server_error: bool = True


class BadPayload(QuarantineError):
    """A 2xx answer whose body cannot be read as a page: park it raw, with this reason."""


@dataclass(frozen=True)
class RawPage:
    """One complete HTTP answer, as received (after content decoding)."""

    request: str  # method, path and query: no headers, so no credentials
    status: int
    content_type: str
    body: bytes
    seconds: float = 0.0

    def as_table(self) -> pa.Table:
        return pa.table({
            "payload": pa.array([self.body], pa.binary()),
            "request": pa.array([self.request], pa.string()),
            "status": pa.array([self.status], pa.int32()),
            "content_type": pa.array([self.content_type], pa.string()),
        })

    @classmethod
    def from_table(cls, table: pa.Table) -> RawPage:
        row = table.slice(0, 1).to_pylist()[0]
        return cls(request=row["request"], status=row["status"],
                   content_type=row["content_type"], body=row["payload"])


@dataclass(frozen=True)
class HttpPage:
    rows: pa.Table  # contract columns, records strictly after `after` only
    high: Watermark | None  # highest (cursor, key...) of every record in the page
    next_token: str | None
    records: int  # records in the payload, before dropping those at or before `after`
    extra_fields: list[str] = field(default_factory=list)


def retry_after_seconds(value: str | None, date_header: str | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds, or an HTTP date measured against the server's
    own Date header when present (so a skewed local clock does not distort it)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
        now = parsedate_to_datetime(date_header) if date_header else datetime.now(UTC)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, (when - now).total_seconds())


def format_param(value: Any) -> str:
    """A cursor value as a query parameter: times in UTC ISO-8601 with microseconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value)


def _dig(doc: Any, path: str) -> tuple[bool, Any]:
    """Follow a dotted path; ('' or '.') is the document itself. Returns (found, value)."""
    node = doc
    for part in [p for p in path.split(".") if p]:
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _cursor_value(value: Any, contract: Contract, name: str, index: int) -> Any:
    """A record's cursor/key value in watermark form; BadPayload if it cannot be one."""
    where = f"record {index}"
    arrow = contract.column(name).arrow_type
    if pa.types.is_timestamp(arrow):
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                parsed = None
            if parsed is not None:
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        raise BadPayload(f"payload: {where}: {name} is not an ISO-8601 time: "
                         f"{str(value)[:40]!r}")
    if pa.types.is_integer(arrow):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise BadPayload(f"payload: {where}: {name} is not an integer ({_kind(value)})")
    if value is None or isinstance(value, dict | list):
        raise BadPayload(f"payload: {where}: {name} is {_kind(value)}")
    return value


def parse_page(table: TableConfig, contract: Contract, raw: RawPage,
               after: Watermark | None = None, records_path: str | None = None) -> HttpPage:
    """Turn one raw answer into contract rows and its high watermark, or raise BadPayload.

    Records missing a non-key field get a null there (validation then applies the
    contract's nullability); a record without its key or cursor cannot be placed in the
    keyset order, so the whole page is bad.
    """
    path = table.records_path if records_path is None else records_path
    try:
        doc = json.loads(raw.body)
    except UnicodeDecodeError:
        raise BadPayload("payload: not JSON (not UTF-8 text)") from None
    except ValueError as exc:
        snippet = raw.body[:40].decode("utf-8", "replace")
        raise BadPayload(f"payload: not JSON ({getattr(exc, 'msg', exc)}; "
                         f"content-type {raw.content_type or '?'}; starts {snippet!r})") from None
    found, records = _dig(doc, path)
    if not found:
        keys = ", ".join(sorted(doc)[:10]) if isinstance(doc, dict) else _kind(doc)
        raise BadPayload(f"payload: wrong shape: no {path!r} in the answer (has: {keys})")
    if not isinstance(records, list):
        raise BadPayload(f"payload: wrong shape: {path!r} is {_kind(records)}, not a list")
    found, token = _dig(doc, table.next_path)
    if token is not None and not isinstance(token, str | int):
        raise BadPayload(f"payload: wrong shape: {table.next_path!r} is {_kind(token)}")
    order = contract.order_by
    names = contract.names
    marks: list[tuple[Any, ...]] = []
    seen: set[str] = set()
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadPayload(f"payload: record {i} is {_kind(record)}, not an object")
        missing = [k for k in order if k not in record]
        if missing:
            raise BadPayload(f"payload: record {i} lacks {', '.join(missing)}")
        marks.append(tuple(_cursor_value(record[k], contract, k, i) for k in order))
        seen.update(record)
    keep = list(range(len(records)))
    if after is not None:
        floor = after.as_tuple()
        try:
            keep = [i for i in keep if marks[i] > floor]
        except TypeError:
            raise BadPayload("payload: cursor or key values do not compare with the "
                             "checkpoint's (type changed?)") from None
    columns = [column_to_arrow([records[i].get(c.name) for i in keep], c.arrow_type)
               for c in contract.columns]
    rows = pa.Table.from_arrays(columns, names=list(names))
    high = None
    if marks:
        top = max(marks)
        high = Watermark(cursor=top[0], key=tuple(top[1:]))
    known = {n.lower() for n in names}
    extra = sorted(f for f in seen if f.lower() not in known)
    return HttpPage(rows=rows, high=high, next_token=None if token is None else str(token),
                    records=len(records), extra_fields=extra)


class HttpSource:
    """One HTTP client for one API source; reads its tables (endpoints) page by page."""

    def __init__(self, config: SourceConfig, transport: httpx.BaseTransport | None = None
                 ) -> None:
        import httpx

        self.config = config
        r = config.resilience
        self.deadline = r.statement_timeout + watchdog_grace(r)
        self.client = httpx.Client(
            base_url=config.url or "", headers=dict(config.headers), transport=transport,
            timeout=httpx.Timeout(connect=r.connect_timeout, read=r.statement_timeout,
                                  write=r.statement_timeout, pool=r.connect_timeout),
            follow_redirects=False)
        self._tables = {t.name: t for t in config.tables}
        self._continue: dict[str, tuple[Watermark, str]] = {}  # table → (high, next token)

    def close(self) -> None:
        self.client.close()

    def table(self, name: str) -> TableConfig:
        return self._tables[name]

    def probe(self, table: str, contract: Contract) -> list[str]:
        """Nothing to check before the first page: it fails fast on 401/403/404 itself."""
        return []

    def params(self, table: str, after: Watermark | None, since: Any | None, limit: int
               ) -> dict[str, str]:
        t = self._tables[table]
        params = dict(t.params)
        if t.limit_param:
            params[t.limit_param] = str(int(limit))
        cont = self._continue.get(table)
        if after is not None and cont is not None and cont[0] == after:
            params[t.next_param] = cont[1]
        else:
            start = after.cursor if after is not None else since
            if start is not None and t.since_param:
                params[t.since_param] = format_param(start)
        return params

    def fetch(self, table: str, after: Watermark | None, since: Any | None, limit: int
              ) -> RawPage:
        """One request; the whole body, or a steadyflow error saying what to do."""
        import httpx

        t = self._tables[table]
        params = self.params(table, after, since, limit)
        request = self.client.build_request("GET", t.endpoint or "", params=params)
        label = f"GET {request.url.raw_path.decode('ascii', 'replace')}"
        src = self.config.name
        started = time.monotonic()
        try:
            response = self.client.send(request, stream=True)
            try:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if time.monotonic() - started > self.deadline:
                        raise SourceTimeout(
                            f"{label}: body still arriving after {self.deadline:.0f}s "
                            f"(statement_timeout + grace)", stage="extract", source=src,
                            table=table)
            finally:
                response.close()
        except httpx.ConnectTimeout as exc:
            raise SourceUnavailable(f"{label}: connect timeout: {exc}", stage="extract",
                                    source=src, table=table) from None
        except httpx.TimeoutException as exc:
            raise SourceTimeout(f"{label}: {type(exc).__name__}: {exc}", stage="extract",
                                source=src, table=table) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise FatalError(f"{label}: bad URL: {exc}", stage="extract", source=src,
                             table=table) from None
        except httpx.TransportError as exc:
            raise SourceUnavailable(f"{label}: {type(exc).__name__}: {exc}", stage="extract",
                                    source=src, table=table) from None
        seconds = time.monotonic() - started
        status = response.status_code
        ctype = response.headers.get("content-type", "")
        if 200 <= status < 300:
            return RawPage(label, status, ctype, bytes(body), seconds)
        self._raise_for(status, response.headers, bytes(body), label, table)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for(self, status: int, headers: httpx.Headers, body: bytes, label: str,
                   table: str) -> None:
        src = self.config.name
        text = body[:_TEXT_LIMIT].decode("utf-8", "replace").strip()
        wait = retry_after_seconds(headers.get("retry-after"), headers.get("date"))
        what = f"{label}: HTTP {status}: {text}"
        if status == 429:
            raise RateLimited(what, stage="extract", source=src, table=table,
                              retry_after=wait, hint="the API asked us to slow down")
        if status >= 500:
            raise ServerError(what, stage="extract", source=src, table=table,
                              retry_after=wait)
        if status == 408:
            raise SourceTimeout(what, stage="extract", source=src, table=table)
        if status in (401, 403):
            raise AuthError(f"{label}: HTTP {status}: credentials rejected", stage="extract",
                            source=src, table=table,
                            hint="check the headers (token variable) of this source")
        if status in (404, 410):
            raise SchemaError(f"{label}: HTTP {status}: endpoint not found", stage="extract",
                              source=src, table=table, hint="check the table's 'endpoint'")
        raise FatalError(what, stage="extract", source=src, table=table,
                         hint="the API rejected the request; check the table's parameters")

    def parse(self, table: str, contract: Contract, raw: RawPage, after: Watermark | None
              ) -> HttpPage:
        """Parse a landed raw page and remember its next token for the following fetch."""
        page = parse_page(self._tables[table], contract, raw, after)
        if page.high is not None and page.next_token is not None:
            self._continue[table] = (page.high, page.next_token)
        else:
            self._continue.pop(table, None)
        return page

    def has_more(self, page: HttpPage) -> bool:
        return page.next_token is not None and page.records > 0


def is_raw_page(path: str) -> bool:
    """True for a quarantine entry that points at a landed raw HTTP page."""
    parts = path.replace("\\", "/").split("/")
    return len(parts) >= 2 and parts[1].endswith(RAW_SUFFIX)
