"""Incremental extraction from REST APIs: pages of JSON records, landed raw before parsing.

    GET {url}{endpoint}?updated_since=<checkpoint cursor>&limit=<page size>   first page
    GET {url}{endpoint}?after=<next token>&limit=<page size>                  following pages
    → {"data": [{...}, ...], "next": "<token>" | null}

or, with no `next` in the body, the URL an RFC 8288 header names, asked as written:

    Link: <{url}{endpoint}?page=2&per_page=100>; rel="next"

or, under `pagination: offset`, every page asked with the start and the position
steadyflow counts itself, each page from `overlap` records before the last one's end:

    GET {url}{endpoint}?updated_since=<start>&limit=<page size>&offset=<position>

Parameter and field names come from the table config (`since_param`, `next_param`,
`limit_param`, `records_path`, `next_path`, `pagination`, `offset_param`), headers from
the source config (secrets as `${VAR}`). Which walk is safe on which API, and how an
offset walk proves that no record slid past a page boundary: extract/chain.py and
extract/offset_walk.py. The flow of one page, and why:

1. `fetch` (under the source's SourceGuard: breaker, concurrency cap, retries with
   backoff and full jitter) returns the complete raw body of a 2xx answer. Transport
   failures (a body its Content-Encoding cannot undo among them), 5xx and 429 are
   retryable (Retry-After is honoured, up to the source's
   backoff_max: resilience.SourceGuard); 401/403 (credentials),
   404 (endpoint) and other 4xx are fatal at once. A body that arrives too slowly is cut
   at statement_timeout + grace.
2. The extractor lands the raw bytes (a Parquet file with one binary `payload` column)
   BEFORE they are parsed: what the API said is kept, whatever it was.
3. `parse` turns the body into Arrow rows in the contract's columns and the page's high
   watermark (cursor, key...) taken from the records themselves, never from a clock. A
   body that is not JSON or has the wrong shape raises BadPayload: the extractor
   quarantines the landed raw page with that reason and requests the page again. One
   record that cannot be placed (no key or cursor, a cursor that is not a time, not an
   object) costs that record only: it is returned in `HttpPage.rejected`, landed with its
   reason as a rejected-records file and quarantined; the rest of the page and the chain
   go on. `run.extract.replay_pages` re-parses quarantined pages and records later
   (optionally with another `records_path`) and loads them through the normal path.

Resuming, and why a run follows one token chain from one resume point: an API's pages
come in whatever order the API chose (newest first, by id, unordered), so within a chain
every page keeps every record past the RUN's resume point (the checkpoint it started
from; with `lookback`, every record at or after `since`), never just those past the
previous page. The chain's high is a running maximum over its pages (`TokenChain`), and
the checkpoint moves to it only when the chain has ended: a crash after page 1 of a
newest-first API re-reads the chain instead of skipping the older pages. A re-read page
is harmless: the merge keeps the newest extraction of each key.

Every text built from a request URL (the raw page's `request` label, error messages) goes
through `secrets.scrub`: a key passed as a query parameter (`params: {api_key: ${KEY}}`)
must not reach landing, state, logs or the status page.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import repeat
from math import isfinite
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
from steadyflow.extract.arrow_values import column_to_arrow
from steadyflow.extract.chain import TokenChain
from steadyflow.extract.offset_walk import Identity, OffsetWalk, identity
from steadyflow.model import INVALID, Column, Contract, Watermark
from steadyflow.resilience import Watchdog, watchdog_grace
from steadyflow.secrets import scrub

if TYPE_CHECKING:  # httpx is imported where a request is made: SQL-only runs skip ~0.1 s
    import httpx

RAW_SUFFIX = ".raw"  # landed raw pages live under landing/<source>/<table>.raw/
REJECTED_SUFFIX = ".rejected"  # records that could not be placed: <table>.rejected/
_TEXT_LIMIT = 200
# RFC 8288 relations that place an answer in a paged list: an answer with one of them and
# no rel="next" is the list's last page, as the API says
_PAGE_RELS = frozenset({"next", "prev", "previous", "first", "last"})


@dataclass(eq=False)
class ServerError(SourceUnavailable):
    """A 5xx answer: transient, counts against the breaker, may carry a Retry-After."""

    retry_after: float | None = None
    server_error: bool = True


class PageTooLarge(SourceTimeout):
    """An answer whose body passed the table's max_page_bytes: cut there, unparsed. A
    timeout's kin: the page size halves and the page is asked again. Read whole, a JSON
    page of N bytes took ~6N of memory to parse, and nothing bounded N: a page of large
    records at the default page size, or a gzip bomb (200 KiB of gzip took the process to
    1.2 GiB), ended in the OOM killer instead of an error naming the table."""


class BadPayload(QuarantineError):
    """A 2xx answer whose body cannot be read as a page: park it raw, with this reason."""


@dataclass(frozen=True)
class RawPage:
    """One complete HTTP answer, as received (after content decoding).

    `seq` is the extraction sequence number taken before the request was made: a replay
    of this page loads its records with it, so a version of a row read later still wins.
    """

    request: str  # method, path and query, scrubbed of secrets: no headers, no credentials
    status: int
    content_type: str
    body: bytes
    seconds: float = 0.0
    seq: int = 0
    link: str = ""  # the answer's Link header ("" without one), scrubbed: landed with it
    next_link: str | None = None  # its rel="next" target, resolved against the request
    paged: bool = False  # it names a page of a list (rel next, prev, first or last)

    def as_table(self) -> pa.Table:
        return pa.table({
            "payload": pa.array([self.body], pa.binary()),
            "request": pa.array([self.request], pa.string()),
            "status": pa.array([self.status], pa.int32()),
            "content_type": pa.array([self.content_type], pa.string()),
            "seq": pa.array([self.seq], pa.int64()),
            "link": pa.array([self.link or None], pa.string()),
        })

    @classmethod
    def from_table(cls, table: pa.Table) -> RawPage:
        row = table.slice(0, 1).to_pylist()[0]
        return cls(request=row["request"], status=row["status"],
                   content_type=row["content_type"], body=row["payload"],
                   seq=row.get("seq") or 0, link=row.get("link") or "")


@dataclass(frozen=True)
class Rejected:
    """One record of a page that cannot be placed in the keyset order, and why."""

    record: Any
    reason: str

    def text(self) -> str:
        """The record as JSON text, the API's characters kept; a lone UTF-16 surrogate
        (valid JSON, no Unicode character, so not encodable as UTF-8) is written back
        as its JSON escape, which parses to the same record."""
        text = json.dumps(self.record, ensure_ascii=False, default=str)
        return _escape_surrogates(text)


def _escape_surrogates(text: str) -> str:
    """`text` with each lone UTF-16 surrogate as its \\uXXXX escape: what JSON spells it."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def rejected_table(raw: RawPage, rejected: list[Rejected]) -> pa.Table:
    """The rejected records of one page as landed: one row per record, its JSON text in
    `payload`, its reason, and the page's request and read sequence (for replay)."""
    n = len(rejected)
    return pa.table({
        "payload": pa.array([r.text().encode() for r in rejected], pa.binary()),
        "reason": pa.array([r.reason for r in rejected], pa.string()),
        "request": pa.array([raw.request] * n, pa.string()),
        "status": pa.array([raw.status] * n, pa.int32()),
        "content_type": pa.array([raw.content_type] * n, pa.string()),
        "seq": pa.array([raw.seq] * n, pa.int64()),
    })


@dataclass(frozen=True)
class HttpPage:
    rows: pa.Table  # contract columns, only records past the run's resume point
    high: Watermark | None  # highest (cursor, key...) of every placed record in the page
    next_token: str | None
    records: int  # records in the payload, before dropping those at or before `after`
    extra_fields: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    marks: list[tuple[Any, ...]] = field(default_factory=list)  # (cursor, key...) of each
    ids: list[Identity] = field(default_factory=list)  # every record's, in the API's order
    next_field: bool = True  # the answer has the next token's field (next_path), null or
    # not, or a Link header naming a page of a list: the answer says whether more follow
    next_link: bool = False  # next_token is the URL of the answer's Link rel="next"


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


def step_before(start: Any) -> Any:
    """The incremental start an API is asked for: a second (a day, one unit) before the
    run's start. An API whose since is exclusive (`updated_after`: `>`), or that reads it
    to the second, left out a record tying the checkpoint's cursor written after the run
    that set it: lost, every run ok. What the step adds before the start is dropped here
    (`parse_records`), as a server ignoring since_param is; the records at the start are
    kept (run.extract.start_point: one written later may tie it with a lower key)."""
    if isinstance(start, datetime):
        return start - timedelta(seconds=1)
    if isinstance(start, date):
        return start - timedelta(days=1)
    if isinstance(start, int | Decimal) and not isinstance(start, bool):
        return start - 1  # a decimal: any step back will do, the surplus is dropped
    return start


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


_INTEGER = re.compile(r"-?[0-9]+")  # str.isdigit() took "²" and "--1": int() refused them
_SUB_MICRO = re.compile(r"(:[0-9]{2}\.[0-9]{6})([0-9]+)")  # a fraction past the microsecond
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # what a date column's text cast reads


def micro_time(text: str) -> str:
    """A text time with its fraction cut to the microsecond, the precision of a timestamp
    column: RFC 3339 allows any number of digits, and Go's RFC3339Nano writes up to nine
    ("2026-01-01T10:00:00.123456789Z"); a text cast refuses them, so every record of such
    an API was quarantined. Cut, never rounded: the value stays at or before the API's own
    instant, and the cursor (`_cursor_value`) and the column get the same value; a record
    written later within the same microsecond ties the checkpoint's cursor and is kept
    (the next run starts at that cursor, inclusive: run.extract.start_point)."""
    return _SUB_MICRO.sub(r"\1", text, count=1) if len(text) > 26 else text


def _finer_than_micro(text: str) -> bool:
    """`text` is a time whose digits past the microsecond are not all zero."""
    match = _SUB_MICRO.search(text) if len(text) > 26 else None
    return match is not None and bool(match.group(2).strip("0"))


class _Unplaceable(ValueError):
    """A record's key or cursor value that cannot take part in the keyset order."""


def _cursor_value(value: Any, contract: Contract, name: str) -> Any:
    """A record's cursor/key value in watermark form; _Unplaceable if it cannot be one."""
    arrow = contract.column(name).arrow_type
    if pa.types.is_timestamp(arrow):
        if isinstance(value, str) and name in contract.primary_key and \
                _finer_than_micro(value.strip()):  # cut, two records would be one row
            raise _Unplaceable(
                f"{name} is a key time finer than the microsecond ({value.strip()[:40]!r}), "
                "which a timestamp column cannot hold: records apart by less would share "
                "one key (declare the key column string)")
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(
                    micro_time(value.strip()).replace("Z", "+00:00"))
            except ValueError:
                parsed = None
            if parsed is not None:
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        raise _Unplaceable(f"{name} is not an ISO-8601 time: {str(value)[:40]!r}")
    if pa.types.is_date(arrow):
        return _date_value(value, name)
    if pa.types.is_integer(arrow):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            return int(value)
        raise _Unplaceable(f"{name} is not an integer ({_kind(value)})")
    if pa.types.is_decimal(arrow):
        return _decimal_value(value, name)
    if value is None or isinstance(value, dict | list):
        raise _Unplaceable(f"{name} is {_kind(value)}")
    if pa.types.is_string(arrow) and isinstance(value, bool | int | float):
        value = _field(value, arrow)  # as the column holds it: 1 and "1" are one key
        value = value if isinstance(value, str) else str(value)
    if isinstance(value, str) and _escape_surrogates(value) != value:
        raise _Unplaceable(f"{name} holds a lone UTF-16 surrogate (not Unicode text): "
                           f"'{_escape_surrogates(value)[:40]}'")
    return value


def _date_value(value: Any, name: str) -> date:
    """A date cursor or key as a date. Compared as the API's text, one record spelled
    "2026-1-9" (or "Jan 9, 2026") sorted after every "2026-01-..": its own record was
    quarantined by the column's cast, but its text was the page's high, the checkpoint
    moved there, and every later record, spelled right, was dropped as at or before it
    (each run ok, nothing quarantined)."""
    text = value.strip() if isinstance(value, str) else None
    if text is not None and _DATE.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise _Unplaceable(f"{name} is not an ISO-8601 date (YYYY-MM-DD): {str(value)[:40]!r}")


def _as_dates(contract: Contract, after: Watermark | None, since: Any | None
              ) -> tuple[Watermark | None, Any | None]:
    """The resume point with its date positions as dates: a checkpoint written before date
    cursors and keys were read as dates holds their text, which no date compares with."""
    order = contract.order_by
    dated = [pa.types.is_date(contract.column(n).arrow_type) for n in order]
    if not any(dated):
        return after, since

    def day(value: Any, is_date: bool) -> Any:
        if not is_date or not isinstance(value, str):
            return value
        try:
            return _date_value(value, "")
        except _Unplaceable:  # the high of a page that held such a record, for good
            raise FatalError(
                f"the checkpoint's date {value[:40]!r} is not an ISO-8601 date: a record "
                "spelled so set it, and records after it were dropped as before it; the "
                "table reads nothing until it is reset", stage="extract",
                hint="steadyflow reset --table SOURCE.TABLE: the next run reads the API "
                     "from its start") from None

    marks = after.as_tuple() if after is not None else ()
    if len(marks) == len(dated):
        marks = tuple(day(v, d) for v, d in zip(marks, dated, strict=True))
        after = Watermark(cursor=marks[0], key=tuple(marks[1:]))
    return after, day(since, dated[0])


def _decimal_value(value: Any, name: str) -> Decimal:
    """A decimal cursor or key as a Decimal, however the API spells the number. APIs send
    exact numbers as strings ("10.5"): kept as text they compared as text, "9" above "10",
    so the checkpoint stayed at "9" and every record from 10 to 89 was passed (ok, lost)."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            number = Decimal(value.strip() if isinstance(value, str) else repr(value)
                             if isinstance(value, float) else value)
        except ArithmeticError:
            number = None
        if number is not None and number.is_finite():
            return number
    raise _Unplaceable(f"{name} is not a decimal number: {str(value)[:40]!r}")


def _mark(record: Any, contract: Contract) -> tuple[Any, ...]:
    """The record's (cursor, key...) position; _Unplaceable says why it has none."""
    if not isinstance(record, dict):
        raise _Unplaceable(f"record is {_kind(record)}, not an object")
    order = contract.order_by
    missing = [k for k in order if k not in record]
    if missing:
        raise _Unplaceable(f"record lacks {', '.join(missing)}")
    return tuple(_cursor_value(record[k], contract, k) for k in order)


class JsonDigits(float):
    """A JSON number a double does not hold exactly (12345678901234567.89, 1e400, 1e-400):
    its float for float columns, its digits for decimal and string columns, and for an
    integer column the integer it spells (9007199254740993.0). Read as a plain float, a
    decimal(20,2) amount landed as 12345678901234568.00, an integer column's
    9007199254740993.0 as ...992, a string column's 12345678901234567.89 as
    '1.2345678901234568e+16' (two such keys one row) and its 1e400 as 'inf', each run ok.
    A page is read so when its contract has a decimal column, or when a string or integer
    column of it holds a JSON fraction (`parse_page`; ~1 us a float more, paid only then)."""

    text: str

    def __new__(cls, text: str) -> JsonDigits:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


_EXACT_DIGITS = 15  # a decimal of at most 15 significant digits survives a double exactly
_NORMAL = 2.2250738585072014e-308  # ... when the double is normal (not 0, subnormal or inf)


def json_number(text: str) -> float:
    """json.loads' parse_float: a float, or JsonDigits where the double loses digits (an
    overflow to infinity and an underflow to 0 or a subnormal among them)."""
    number = float(text)
    normal = _NORMAL <= abs(number) <= sys.float_info.max
    if normal and len(text) <= _EXACT_DIGITS or repr(number) == text:  # most: no loss
        return number
    digits = sum(c.isdigit() for c in text.partition("e")[0].partition("E")[0])
    if normal and digits <= _EXACT_DIGITS or isfinite(number) and \
            Decimal(repr(number)) == Decimal(text):
        return number
    return JsonDigits(text)


class _JsonConstant(float):
    """Python's JSON extensions Infinity, -Infinity and NaN, spelled so by the API: a float
    column holds them as before (an infinite plain float is a number past a double's
    range, `_fields`)."""


def _digits_matter(records: list[Any], contract: Contract) -> bool:
    """Does a string or integer column of `records` hold a JSON fraction (a float)? Its
    digits must then be read as written (`json_number`): a double may have lost some. One
    C-level pass a column (~1 ms for 20,000 records); not a list of objects: True."""
    names = [c.name for c in contract.columns
             if pa.types.is_string(c.arrow_type) or pa.types.is_integer(c.arrow_type)]
    try:
        return any(float in set(map(type, map(dict.get, records, repeat(name))))
                   for name in names)
    except TypeError:  # a record that is no object: it is rejected, the page read exactly
        return True


def read_envelope(table: TableConfig, raw: RawPage, records_path: str | None = None,
                  exact: bool = True) -> tuple[list[Any], str | None, bool]:
    """The page's list of records, its next token and whether the answer has the token's
    field at all (null or not); BadPayload if the body is not JSON or not the configured
    envelope (the whole page is bad: nothing in it can be trusted). `exact` reads numbers
    a double cannot hold as JsonDigits (~1 us a float more: only for a contract with a
    decimal column)."""
    path = table.records_path if records_path is None else records_path
    try:
        doc = json.loads(raw.body, parse_float=json_number if exact else float,
                         parse_constant=_JsonConstant)
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
    return records, None if token is None else str(token), found


def _field(value: Any, target: pa.DataType) -> Any:
    """A record's field for its contract column. A nested document (or a JSON true/false)
    in a string column is kept as its JSON text, the API's own spelling, never as a Python
    repr ({'a': 1}, True) that no JSON reader downstream could parse."""
    if pa.types.is_string(target) and isinstance(value, dict | list | bool):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and pa.types.is_timestamp(target):
        return micro_time(value)
    if isinstance(value, JsonDigits):  # other columns check a plain float's fit
        if pa.types.is_integer(target):  # a whole number is that integer, a fraction
            number = Decimal(value.text)  # stays a Decimal, which arrow_values refuses
            return int(number) if number == number.to_integral_value() else number
        return (Decimal(value.text) if pa.types.is_decimal(target) else
                value.text if pa.types.is_string(target) else float(value))
    return value


def _fields(records: list[dict[str, Any]], column: Column,
            invalid: list[str | None]) -> list[Any]:
    """One contract column's values of `records`. A string holding a lone UTF-16
    surrogate ("\\ud800" is valid JSON but no Unicode character: no UTF-8 text, no
    warehouse holds it) is null with its reason in `invalid` (model.INVALID), so it costs
    its record, not the page, which Arrow would refuse whole for it. So is a JSON
    true/false in a number or time column (type drift), which Arrow read as 1.0/0.0."""
    values = [_field(r.get(column.name), column.arrow_type) for r in records]
    numeric = not (pa.types.is_boolean(column.arrow_type)
                   or pa.types.is_string(column.arrow_type))
    floating = pa.types.is_floating(column.arrow_type)
    for i, value in enumerate(values):
        if isinstance(value, str) and (escaped := _escape_surrogates(value)) != value:
            values[i] = None
            invalid[i] = invalid[i] or (f"{column.name}: a lone UTF-16 surrogate, not "
                                        f"Unicode text: '{escaped[:80]}'")
        elif numeric and isinstance(value, bool):  # Arrow reads false as 0.0, silently
            values[i] = None
            invalid[i] = invalid[i] or (f"{column.name}: the JSON {str(value).lower()} "
                                        f"is not a {column.type}")
        elif floating and type(value) is float and not isfinite(value):
            # no JSON number is infinite: one past a double's range was read as inf
            # (Python's own Infinity and NaN constants are _JsonConstant: kept)
            text = getattr(records[i].get(column.name), "text", "a JSON number")
            values[i] = None
            invalid[i] = invalid[i] or (f"{column.name}: {text} is beyond a "
                                        f"{column.type}'s range (about 1.8e308)")
    return values


def parse_page(table: TableConfig, contract: Contract, raw: RawPage,
               after: Watermark | None = None, records_path: str | None = None,
               since: Any | None = None) -> HttpPage:
    """Turn one raw answer into contract rows and its high watermark, or raise BadPayload.

    The next page is the body's token (next_path) or else the answer's Link rel="next"
    (`next_link`); an answer with neither the field nor a Link header naming a page of a
    list has `next_field` False (extract/chain.py: the walk must prove its end).
    Only the envelope can make a page bad. A record that cannot be placed in the keyset
    order (no key or cursor, an unreadable one, not an object) is returned in `rejected`
    with its reason, so it costs that record only. Records missing a non-key field get a
    null there (validation then applies the contract's nullability).
    """
    exact = any(pa.types.is_decimal(c.arrow_type) for c in contract.columns)
    records, token, found = read_envelope(table, raw, records_path, exact)
    if not exact and _digits_matter(records, contract):
        records, token, found = read_envelope(table, raw, records_path, True)
    link = not token and raw.next_link is not None  # next_path's token comes first
    page = parse_records(contract, records, raw.next_link if link else token, after, since)
    if link:
        return replace(page, next_link=True)
    return page if found or raw.paged else replace(page, next_field=False)


def parse_records(contract: Contract, records: list[Any], token: str | None = None,
                  after: Watermark | None = None, since: Any | None = None) -> HttpPage:
    """Records → rows past the resume point: after `after` (exclusive, on (cursor, key))
    and at or after `since` (inclusive, on the cursor: the server may ignore since_param)."""
    after, since = _as_dates(contract, after, since)
    placed: list[tuple[dict[str, Any], tuple[Any, ...]]] = []
    rejected: list[Rejected] = []
    ids: list[Identity] = []
    for record in records:
        try:
            placed.append((record, mark := _mark(record, contract)))
        except _Unplaceable as exc:
            rejected.append(Rejected(record, f"payload: {exc}"))
            ids.append(identity(record, None))
        else:
            ids.append(identity(record, mark))
    try:
        keep = [record for record, mark in placed
                if (after is None or mark > after.as_tuple())
                and (since is None or mark[0] >= since)]
    except TypeError:
        raise BadPayload("payload: cursor or key values do not compare with the "
                         "checkpoint's (type changed?)") from None
    names = contract.names
    invalid: list[str | None] = [None] * len(keep)
    columns = [column_to_arrow(_fields(keep, c, invalid), c.arrow_type, invalid)
               for c in contract.columns]
    high = None
    if placed:
        try:
            top = max(mark for _, mark in placed)
        except TypeError:
            raise BadPayload("payload: cursor or key values of one page do not compare "
                             "with each other (types mixed?)") from None
        high = Watermark(cursor=top[0], key=tuple(top[1:]))
    # a JSON field name is case-sensitive, as `_fields` reads it: a field "Amount" is not
    # the contract's `amount` (whose values it left null), so it is drift to report
    seen = {f for record, _ in placed for f in record}
    extra = sorted(seen.difference(names))
    if any(invalid):
        columns.append(pa.array(invalid, pa.string()))
    return HttpPage(rows=pa.Table.from_arrays(
                        columns, names=[*names, INVALID] if any(invalid) else list(names)),
                    high=high,
                    next_token=token, records=len(records), extra_fields=extra,
                    rejected=rejected, marks=[mark for _, mark in placed], ids=ids)


class HttpSource:
    """One HTTP client for one API source; reads its tables (endpoints) page by page.

    It keeps no paging state: where a table's chain stands is the caller's TokenChain.
    """

    def __init__(self, config: SourceConfig, transport: httpx.BaseTransport | None = None
                 ) -> None:
        import httpx

        from steadyflow.extract.http_deadline import DeadlineBackend, DeadlineTransport

        self.config = config
        r = config.resilience
        self.deadline = r.statement_timeout + watchdog_grace(r)
        self._backend = DeadlineBackend()  # a request past the deadline is cut there
        if transport is None:
            transport = DeadlineTransport(self._backend)
        self.client = httpx.Client(
            base_url=config.url or "", headers=dict(config.headers), transport=transport,
            timeout=httpx.Timeout(connect=r.connect_timeout, read=r.statement_timeout,
                                  write=r.statement_timeout, pool=r.connect_timeout),
            follow_redirects=False)
        self._tables = {t.name: t for t in config.tables}

    def close(self) -> None:
        self.client.close()

    def table(self, name: str) -> TableConfig:
        return self._tables[name]

    def probe(self, table: str, contract: Contract) -> list[str]:
        """Nothing to check before the first page: it fails fast on 401/403/404 itself."""
        return []

    def chain(self, table: str, resume: Watermark | None, since: Any | None = None,
              **fields: Any) -> TokenChain:
        """A new walk of `table` from (resume, since), offset-counted under
        `pagination: offset`."""
        t = self._tables[table]
        offsets = OffsetWalk(t.overlap) if t.pagination == "offset" else None
        return TokenChain(resume=resume, since=since, source=self.config.name, table=table,
                          offsets=offsets, order=t.cursor_order, **fields)

    def params(self, table: str, chain: TokenChain, limit: int) -> dict[str, str]:
        """The chain's first page asks from its start (since_param); later ones send only
        the token, as the API handed it out. Offset walks send their start on every page,
        and the offset counted by the chain (extract/offset_walk.py)."""
        t = self._tables[table]
        params = dict(t.params)
        if chain.offsets is not None:
            limit = chain.offsets.limit(limit)
        if t.limit_param:
            params[t.limit_param] = str(int(limit))
            chain.asked = int(limit)
        if chain.offsets is not None:
            params[t.offset_param] = str(chain.offsets.start())
        if chain.token is not None:  # never set on an offset walk
            params[t.next_param] = chain.token
        else:
            start = chain.resume.cursor if chain.resume is not None else chain.since
            if start is not None and t.since_param:
                params[t.since_param] = format_param(step_before(start))
        return params

    def fetch(self, table: str, chain: TokenChain, limit: int, seq: int = 0) -> RawPage:
        """One request; the whole body, or a steadyflow error saying what to do."""
        import httpx

        t = self._tables[table]
        if chain.link and chain.token is not None:  # the URL as the API wrote it
            request = self.client.build_request("GET", self._own_origin(chain.token, table))
        else:
            params = self.params(table, chain, limit)
            request = self.client.build_request("GET", t.endpoint or "", params=params)
        label = scrub(f"GET {request.url.raw_path.decode('ascii', 'replace')}")
        src = self.config.name
        started = time.monotonic()
        thread = threading.get_ident()
        # the whole request, headers included, within the deadline (extract/http_deadline)
        dog = Watchdog(self.deadline, lambda: self._backend.cut(thread))
        try:
            with dog:
                response = self.client.send(request, stream=True)
                try:
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > t.max_page_bytes:
                            raise PageTooLarge(
                                f"{label}: the answer passed max_page_bytes "
                                f"({t.max_page_bytes} bytes) after {len(body)} bytes "
                                "(decoded); cut unparsed, the page is asked again smaller",
                                stage="extract", source=src, table=table,
                                hint="raise the table's max_page_bytes if the host has the "
                                     "memory (a page takes ~6 times it parsed), or lower "
                                     "its page_size (an API ignoring limit_param cannot "
                                     "be asked for less)")
                finally:
                    response.close()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            if dog.fired:
                raise SourceTimeout(
                    f"{label}: no complete answer after {self.deadline:.0f}s "
                    f"(statement_timeout + grace; {type(exc).__name__})", stage="extract",
                    source=src, table=table) from None
            mapped = self._transport_error(exc, label, table, request.url)
            if mapped is exc:
                raise
            raise mapped from None
        finally:
            self._backend.forget(thread)
        if dog.fired:  # cut after its last read: an answer ended by EOF may be short
            raise SourceTimeout(f"{label}: cut at the deadline ({self.deadline:.0f}s, "
                                "statement_timeout + grace)", stage="extract", source=src,
                                table=table)
        seconds = time.monotonic() - started
        status = response.status_code
        ctype = response.headers.get("content-type", "")
        if 200 <= status < 300:
            rels = {rel.lower(): link.get("url", "") for link in response.links.values()
                    for rel in link.get("rel", "").split()}
            nxt = rels.get("next")
            return RawPage(label, status, ctype, bytes(body), seconds, seq,
                           link=scrub(response.headers.get("link", "")),
                           next_link=str(request.url.join(nxt)) if nxt else None,
                           paged=not _PAGE_RELS.isdisjoint(rels))
        self._raise_for(status, response.headers, bytes(body), label, table,
                        token=chain.token is not None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _own_origin(self, url: str, table: str) -> str:
        """`url` (a Link rel="next") if it is on the source's own origin (scheme, host and
        port of its `url`); FatalError if not: the source's headers, its credentials with
        them, go with every request, and a link is whatever the answer said."""
        import httpx

        try:
            there, here = httpx.URL(url), self.client.base_url
        except httpx.InvalidURL:
            there = None
        if there is None or (there.scheme, there.host, there.port) != (
                here.scheme, here.host, here.port):
            shown = scrub(url.split("?", 1)[0])[:120]
            raise FatalError(
                f"the API's Link rel=\"next\" points to {shown}, not to the source's own "
                f"origin ({here.scheme}://{here.netloc.decode('ascii', 'replace')}): not "
                "followed, since the source's headers (credentials) go with every request; "
                "the pages before it are landed, the checkpoint stays where it was",
                stage="extract", source=self.config.name, table=table,
                hint="set the source's url to the origin the API's links name")
        return url

    def _transport_error(self, exc: Exception, label: str, table: str, url: httpx.URL
                         ) -> Exception:
        """A transport failure as the steadyflow error saying what to do (anything else
        httpx raised, as it is). `label` names the request in most; a body that cannot be
        decoded names the whole URL (its host too: a proxy may be the one garbling it)."""
        import httpx

        src, text = self.config.name, scrub(str(exc))
        if isinstance(exc, httpx.ConnectTimeout):
            return SourceUnavailable(f"{label}: connect timeout: {text}", stage="extract",
                                     source=src, table=table)
        if isinstance(exc, httpx.TimeoutException):
            return SourceTimeout(f"{label}: {type(exc).__name__}: {text}", stage="extract",
                                 source=src, table=table)
        if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
            return FatalError(f"{label}: bad URL: {text}", stage="extract", source=src,
                              table=table)
        if isinstance(exc, httpx.TransportError):
            return SourceUnavailable(f"{label}: {type(exc).__name__}: {text}",
                                     stage="extract", source=src, table=table)
        if isinstance(exc, httpx.DecodingError):
            # a body its Content-Encoding cannot undo (a gzip stream cut or garbled on
            # the way, a proxy's error page labelled gzip): as transient as a reset
            where = scrub(str(url.copy_with(username=None, password=None)))
            return SourceUnavailable(
                f"GET {where}: the answer's body could not be decoded ({text}); retried with "
                "backoff like a dropped connection", stage="extract", source=src,
                table=table, hint="if it persists, the API (or a proxy before it) sends "
                "bodies its Content-Encoding header does not describe")
        return exc

    def _raise_for(self, status: int, headers: httpx.Headers, body: bytes, label: str,
                   table: str, token: bool = False) -> None:
        src = self.config.name
        # an API may echo the request (and its key) in an error body
        text = scrub(body[:_TEXT_LIMIT].decode("utf-8", "replace").strip())
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
        if 300 <= status < 400:  # not followed: a redirect may drop the query or the key
            where = scrub(headers.get("location", "?"))
            raise FatalError(f"{label}: HTTP {status}: redirected to {where}", stage="extract",
                             source=src, table=table,
                             hint="set the source's url (or the table's endpoint) to where "
                                  "the API now answers; redirects are not followed")
        if token and status in (400, 404, 410, 422):
            # the endpoint answered the walk's first page: this refuses the token (expired)
            raise FatalError(
                f"{what}: the API refused the next-page token it handed out (expired?); "
                "the pages before it are landed, the checkpoint is unmoved and the next run "
                "walks again from it", stage="extract", source=src, table=table,
                hint="if walks outlast the API's token lifetime, raise the table's page_size")
        if status in (404, 410):
            raise SchemaError(f"{label}: HTTP {status}: endpoint not found", stage="extract",
                              source=src, table=table, hint="check the table's 'endpoint'")
        raise FatalError(what, stage="extract", source=src, table=table,
                         hint="the API rejected the request; check the table's parameters")

    def parse(self, table: str, contract: Contract, raw: RawPage, chain: TokenChain
              ) -> HttpPage:
        """Parse a landed raw page against the chain's resume point (not the last page's
        high: the API's order is unknown). The caller moves the chain on (`follow`)."""
        return parse_page(self._tables[table], contract, raw, chain.resume,
                          since=chain.since)

    def has_more(self, page: HttpPage) -> bool:
        return bool(page.next_token)


def is_raw_page(path: str) -> bool:
    """True for a quarantine entry that points at a landed raw HTTP page or at a page's
    rejected records (both replayed by re-parsing: run.extract.replay_pages)."""
    parts = path.replace("\\", "/").split("/")
    return len(parts) >= 2 and parts[1].endswith((RAW_SUFFIX, REJECTED_SUFFIX))


def is_rejected_records(path: str) -> bool:
    parts = path.replace("\\", "/").split("/")
    return len(parts) >= 2 and parts[1].endswith(REJECTED_SUFFIX)
