"""HTTP APIs in any page order, judged by an independent read of the warehouse.

A real HTTP server on 127.0.0.1 (a thread of this process) serves one `orders` table in
ascending (cursor, id), descending, by-id or shuffled order, in pages of 1..7 records,
honouring `updated_since` or ignoring it. Every case runs the real pipeline, then reads
the DuckDB file with duckdb itself and compares it with the server's records key by key.
What each test adds:

- every order × page size × since honoured/ignored × lookback, with a second run after
  new and changed records: the warehouse equals the server's data;
- a run that dies mid-chain (an injected fatal answer, a SIGKILL of the CLI) leaves the
  checkpoint where the chain began, and the next run completes the table;
- one malformed record costs that record only (quarantined, listed), and a page that is
  not JSON makes the table fail visibly each run until the API is fixed;
- a replayed raw page loads its updates, but never over a newer version read since;
- Retry-After: 3600 does not hold a run longer than backoff_max, and stop ends the sleep;
- an API key passed as a query parameter never reaches landed raw pages or error texts.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml
from tests.conftest import write_pipeline

from steadyflow.config import load_config
from steadyflow.extract.http import RawPage
from steadyflow.run.extract import replay_pages
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ORDERS: dict[str, Any] = {
    "primary_key": ["id"], "cursor": "updated_at",
    "columns": {"id": {"type": "int64", "nullable": False},
                "updated_at": {"type": "timestamp", "nullable": False},
                "name": {"type": "string"},
                "qty": {"type": "int64"}}}
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
ORDERS_ORDER = ("ascending", "descending", "by_id", "shuffled")


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class OrdersApi:
    """GET /orders?updated_since=&limit=&after=<token> → {"data": [...], "next": token|null}.

    Offset tokens over the filtered, ordered records (what most unsorted APIs do); a full
    page always carries a token, so an exact multiple ends with an empty page. Knobs:
    `order`, `honour_since`, `fail_at` (this request number and later answer 400),
    `block_at` (this request waits for `release`), `bad_body` (request number → body),
    `rate_limited` (every request: 429 with Retry-After: 3600), `key` (required api_key).
    """

    def __init__(self, order: str = "ascending", honour_since: bool = True,
                 key: str | None = None) -> None:
        self.order, self.honour_since, self.key = order, honour_since, key
        self.records: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.requests = 0
        self.fail_at: int | None = None
        self.block_at: int | None = None
        self.blocked, self.release = threading.Event(), threading.Event()
        self.bad_body: dict[int, bytes] = {}
        self.always_bad: bytes | None = None
        self.rate_limited = False
        self.seen_429 = threading.Event()
        self.queries: list[str] = []
        self.extra: list[dict[str, Any]] = []  # served as they are, after the records
        self._server: ThreadingHTTPServer | None = None

    # --- data -----------------------------------------------------------------------
    def put(self, id_: int, updated_at: datetime, name: str, qty: int) -> None:
        with self.lock:
            self.records[id_] = {"id": id_, "updated_at": iso(updated_at), "name": name,
                                 "qty": qty}

    def expected(self) -> dict[int, tuple[datetime, str, int]]:
        with self.lock:
            return {r["id"]: (datetime.fromisoformat(r["updated_at"].replace("Z", "+00:00")),
                              r["name"], r["qty"]) for r in self.records.values()}

    def _ordered(self, since: str | None) -> list[dict[str, Any]]:
        with self.lock:
            rows = [dict(r) for r in self.records.values()]
        if since is not None and self.honour_since:
            floor = datetime.fromisoformat(since.replace("Z", "+00:00"))
            rows = [r for r in rows if
                    datetime.fromisoformat(r["updated_at"].replace("Z", "+00:00")) >= floor]
        if self.order == "ascending":
            rows.sort(key=lambda r: (r["updated_at"], r["id"]))
        elif self.order == "descending":
            rows.sort(key=lambda r: (r["updated_at"], r["id"]), reverse=True)
        elif self.order == "by_id":
            rows.sort(key=lambda r: r["id"])
        else:
            rows.sort(key=lambda r: r["id"])
            random.Random(len(rows)).shuffle(rows)  # stable across the pages of one chain
        return rows + self.extra

    # --- HTTP -----------------------------------------------------------------------
    def answer(self, query: str) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests += 1
            n = self.requests
            self.queries.append(query)
        if self.block_at is not None and n == self.block_at:
            self.blocked.set()
            self.release.wait(30)
        qs = {k: v[0] for k, v in parse_qs(query).items()}
        if self.key is not None and qs.get("api_key") != self.key:
            return 403, {}, b'{"error": "bad key"}'
        if self.rate_limited:
            self.seen_429.set()
            return 429, {"Retry-After": "3600"}, b'{"error": "slow down"}'
        if self.fail_at is not None and n >= self.fail_at:
            return 400, {}, json.dumps({"error": f"cannot serve {query}"}).encode()
        if self.always_bad is not None:
            return 200, {}, self.always_bad
        if n in self.bad_body:
            return 200, {}, self.bad_body[n]
        if "after" in qs:
            state = json.loads(base64.urlsafe_b64decode(qs["after"]))
            since, offset = state["since"], state["offset"]
        else:
            since, offset = qs.get("updated_since"), 0
        limit = int(qs.get("limit", "5"))
        rows = self._ordered(since)
        page = rows[offset:offset + limit]
        token = base64.urlsafe_b64encode(json.dumps(
            {"since": since, "offset": offset + limit}).encode()).decode()
        return 200, {}, json.dumps({"data": page,
                                    "next": token if len(page) == limit else None}).encode()

    def start(self) -> OrdersApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                status, headers, body = api.answer(url.query)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # a killed client: what a real server shrugs off too

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def api() -> Iterator[OrdersApi]:
    server = OrdersApi().start()
    yield server
    server.stop()


def seed(api: OrdersApi, n: int = 13) -> None:
    """n records; several share an updated_at (ties across page boundaries)."""
    for i in range(1, n + 1):
        api.put(i, T0 + timedelta(seconds=i // 3, microseconds=i % 2), f"order {i}", i)


def change(api: OrdersApi, n: int = 13) -> None:
    """New records and changed ones, all with newer cursors (two share one)."""
    later = T0 + timedelta(minutes=5)
    for i in (2, n // 2, n):
        api.put(i, later, f"order {i} changed", 100 + i)
    for i in range(n + 1, n + 4):
        api.put(i, later + timedelta(seconds=i % 2), f"order {i}", i)


def config(tmp_path: Path, api: OrdersApi, resilience: dict[str, Any] | None = None,
           **table: Any) -> Path:
    source = {"name": "api", "kind": "http", "url": api.url,
              "resilience": {"connect_timeout": 2, "statement_timeout": 3, "retries": 2,
                             "backoff_initial": 0.01, "backoff_max": 0.05,
                             "breaker_failures": 50, "breaker_reset": 1,
                             **(resilience or {})},
              "tables": [{"name": "orders", "contract": "orders", "endpoint": "/orders",
                          "page_size": 5, "min_page_size": 1, **table}]}
    return write_pipeline(tmp_path, [source], contracts={"orders": ORDERS})


def run(cfg: Path) -> Any:
    with Pipeline(load_config(cfg)) as pipeline:
        return pipeline.run_once(raise_on_error=False)


def warehouse(cfg: Path) -> dict[int, tuple[datetime, str, int]]:
    """The warehouse as duckdb itself reads it (no steadyflow code involved)."""
    with duckdb.connect(str(cfg.parent / "warehouse.duckdb"), read_only=True) as db:
        rows = db.execute(
            "SELECT id, epoch_us(updated_at), name, qty FROM main.orders").fetchall()
    assert len(rows) == len({r[0] for r in rows}), "duplicate keys in the warehouse"
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return {r[0]: (epoch + timedelta(microseconds=r[1]), r[2], r[3]) for r in rows}


def assert_equal(cfg: Path, api: OrdersApi) -> None:
    got, want = warehouse(cfg), api.expected()
    missing = sorted(set(want) - set(got))
    wrong = sorted(k for k in set(want) & set(got) if got[k] != want[k])
    extra = sorted(set(got) - set(want))
    assert (missing, wrong, extra) == ([], [], []), (got, want)


def checkpoint(cfg: Path) -> Any:
    with Pipeline(load_config(cfg)) as pipeline:
        return pipeline.state.checkpoint("api", "orders")


CASES = [(order, honour, size, lookback)
         for order in ORDERS_ORDER for honour in (True, False)
         for size, lookback in ((1, 0), (2, 60), (3, 0), (4, 0), (5, 60), (6, 0), (7, 60))
         if (size + len(order) + honour) % 2 == 0 or size in (1, 7)]


@pytest.mark.parametrize(("order", "honour_since", "page_size", "lookback"), CASES)
def test_every_order_and_page_size_reaches_the_warehouse_whole(
        tmp_path: Path, api: OrdersApi, order: str, honour_since: bool, page_size: int,
        lookback: int) -> None:
    api.order, api.honour_since = order, honour_since
    seed(api)
    cfg = config(tmp_path, api, page_size=page_size, lookback=lookback)
    first = run(cfg)
    assert first.ok, first.errors
    assert_equal(cfg, api)
    change(api)
    second = run(cfg)
    assert second.ok, second.errors
    assert_equal(cfg, api)
    # the checkpoint is the highest (cursor, id) the server holds: nothing re-read forever
    newest = max((t, k) for k, (t, _, _) in api.expected().items())
    mark = checkpoint(cfg)
    assert (mark.cursor, mark.key) == (newest[0], (newest[1],))


@pytest.mark.parametrize("order", ORDERS_ORDER)
def test_a_run_failing_mid_chain_keeps_the_checkpoint_and_the_next_completes(
        tmp_path: Path, api: OrdersApi, order: str) -> None:
    """Page 1 of a newest-first API holds the highest cursor: moving the checkpoint there
    before the chain ends would skip every older page for good."""
    api.order = order
    seed(api)
    cfg = config(tmp_path, api, page_size=3)
    assert run(cfg).ok
    change(api)
    before = checkpoint(cfg)
    api.fail_at = api.requests + 2  # the second page of the next chain: HTTP 400, fatal
    failed = run(cfg)
    assert not failed.ok and "HTTP 400" in failed.errors[0]
    assert checkpoint(cfg) == before
    api.fail_at = None
    assert run(cfg).ok
    assert_equal(cfg, api)


def test_sigkill_mid_chain_then_a_rerun_completes(tmp_path: Path, api: OrdersApi) -> None:
    api.order = "descending"
    seed(api, 20)
    cfg = config(tmp_path, api, page_size=3)
    api.block_at = 3  # the CLI has landed pages 1 and 2 when it asks for page 3
    child = subprocess.Popen([sys.executable, "-m", "steadyflow", "run", "-c", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert api.blocked.wait(60), "the CLI never asked for page 3"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    api.block_at = None
    api.release.set()
    assert checkpoint(cfg) is None  # the chain never ended
    assert run(cfg).ok
    assert_equal(cfg, api)


def test_a_malformed_record_costs_only_itself(tmp_path: Path, api: OrdersApi) -> None:
    api.order = "descending"
    seed(api)
    api.extra = [{"name": "no key", "updated_at": iso(T0)},
                 {"id": 900, "updated_at": "yesterday", "name": "bad cursor", "qty": 1},
                 {"id": 901, "updated_at": 1767225600, "name": "epoch cursor", "qty": 1}]
    cfg = config(tmp_path, api, page_size=4)
    summary = run(cfg)
    assert summary.ok, summary.errors
    assert_equal(cfg, api)  # every placeable record, none of the three
    with Pipeline(load_config(cfg)) as pipeline:
        parked = pipeline.state.quarantined("open")
    reasons = {r: n for q in parked for r, n in q["reasons"].items()}
    assert reasons == {"payload: record lacks id": 1,
                       "payload: updated_at is not an ISO-8601 time: 'yesterday'": 1,
                       "payload: updated_at is not an ISO-8601 time: '1767225600'": 1}
    shown = subprocess.run([sys.executable, "-m", "steadyflow", "quarantine", "list",
                            "-c", str(cfg), "--json"], capture_output=True, text=True,
                           timeout=60, check=True)
    assert sum(q["rows"] for q in json.loads(shown.stdout)) == 3
    # a second run reads the same bad records again: they are not quarantined twice
    change(api)
    assert run(cfg).ok
    assert_equal(cfg, api)
    with Pipeline(load_config(cfg)) as pipeline:
        assert sum(q["rows"] for q in pipeline.state.quarantined("open")) == 3


def test_a_page_that_is_never_json_fails_the_table_visibly_each_run(
        tmp_path: Path, api: OrdersApi) -> None:
    seed(api)
    cfg = config(tmp_path, api, page_size=4, bad_page_retries=1)
    api.always_bad = b"<html>maintenance</html>"
    for _ in range(2):
        summary = run(cfg)
        assert not summary.ok and "bad payload" in summary.errors[0]
        cli = subprocess.run([sys.executable, "-m", "steadyflow", "run", "-c", str(cfg)],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode != 0
    status = subprocess.run([sys.executable, "-m", "steadyflow", "status", "-c", str(cfg),
                             "--json"], capture_output=True, text=True, timeout=60)
    assert "bad payload" in status.stdout
    api.always_bad = None
    assert run(cfg).ok
    assert_equal(cfg, api)


def test_a_replayed_page_loads_its_updates_but_not_over_newer_reads(
        tmp_path: Path, api: OrdersApi) -> None:
    seed(api, 6)
    cfg = config(tmp_path, api, page_size=10, bad_page_retries=0)
    assert run(cfg).ok
    later = T0 + timedelta(minutes=1)

    def park_next_answer() -> None:
        """The next answer comes in another envelope: parked raw, the table fails."""
        api.bad_body[api.requests + 1] = json.dumps({"items": api._ordered(None)}).encode()
        assert not run(cfg).ok

    api.put(1, later, "v2", 2)
    api.put(2, later, "v2", 2)
    park_next_answer()
    with Pipeline(load_config(cfg)) as pipeline:
        result = replay_pages(pipeline, records_path="items")
    assert result["pages"] == 1 and result["loaded_rows"] == 6
    got = warehouse(cfg)
    assert got[1][1:] == got[2][1:] == ("v2", 2)  # loaded with seq 0 they were lost
    assert_equal(cfg, api)

    api.put(3, later, "v2", 2)
    park_next_answer()
    api.put(3, later + timedelta(minutes=1), "v3", 3)
    assert run(cfg).ok  # reads v3 after the parked page was read
    with Pipeline(load_config(cfg)) as pipeline:
        assert replay_pages(pipeline, records_path="items")["pages"] == 1
    assert warehouse(cfg)[3][1:] == ("v3", 3)  # the replay did not win over a later read
    assert_equal(cfg, api)


def test_retry_after_is_capped_and_a_stop_ends_the_sleep(tmp_path: Path,
                                                        api: OrdersApi) -> None:
    seed(api)
    api.rate_limited = True
    cfg = config(tmp_path, api, resilience={"backoff_max": 1, "retries": 2})
    started = time.monotonic()
    summary = run(cfg)
    assert not summary.ok and "HTTP 429" in summary.errors[0]
    assert time.monotonic() - started < 6  # two waits of at most backoff_max, not 3600 s

    (tmp_path / "slow").mkdir()
    slow = config(tmp_path / "slow", api, resilience={"backoff_max": 120, "retries": 5})
    with Pipeline(load_config(slow)) as pipeline:
        api.seen_429.clear()
        worker = threading.Thread(target=lambda: pipeline.run_once(raise_on_error=False),
                                  daemon=True)
        worker.start()
        assert api.seen_429.wait(30)
        time.sleep(0.3)  # now in the capped 120 s sleep
        stopped = time.monotonic()
        pipeline.stop()
        worker.join(5)
        assert not worker.is_alive()
        assert time.monotonic() - stopped < 1.5


def test_an_api_key_in_the_query_never_reaches_raw_pages_or_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "k3y-0f-the-0rders-api"
    monkeypatch.setenv("ORDERS_KEY", key)
    server = OrdersApi(key=key).start()
    try:
        seed(server)
        cfg = config(tmp_path, server, page_size=4, params={"api_key": "${ORDERS_KEY}"})
        assert run(cfg).ok
        assert_equal(cfg, server)
        server.fail_at = server.requests + 1  # a 400 whose body echoes the query
        failed = run(cfg)
        assert not failed.ok and "HTTP 400" in failed.errors[0]
        assert all(key not in e for e in failed.errors)
        with Pipeline(load_config(cfg)) as pipeline:
            root = pipeline.landing.root
        labels = [RawPage.from_table(pq.read_table(p)).request
                  for p in root.glob("api/orders.raw/*/*.parquet")]
        assert labels and all("api_key=***" in label for label in labels), labels
        assert not any(key in label for label in labels)
        assert key in yaml.safe_dump(server.queries)  # the server did get it
    finally:
        server.stop()


@pytest.mark.parametrize("lookback", [0, 1])
def test_a_record_stamped_in_the_future_holds_no_later_record_back(
        tmp_path: Path, api: OrdersApi, lookback: int) -> None:
    """An API record stamped years ahead moves the checkpoint there: each later run
    stepped back from now minus the lookback, so a record written (with a correct clock)
    between two runs, more than the lookback before the second, was filtered out by
    updated_since for good, every run ok. It steps back from the previous run's start."""
    api.put(1, datetime.now(UTC), "now", 1)
    api.put(2, datetime(2099, 1, 1, tzinfo=UTC), "future", 2)
    cfg = config(tmp_path, api, lookback=lookback)
    assert run(cfg).ok
    for i in (3, 4):
        time.sleep(0.05)
        api.put(i, datetime.now(UTC), "between runs", i)
        time.sleep(lookback + 1.5)
        assert run(cfg).ok
        assert_equal(cfg, api)


def _kill_at(cfg: Path, api: OrdersApi, request: int) -> None:
    """A `steadyflow run` CLI SIGKILLed while it waits for answer number `request`."""
    api.block_at = request
    child = subprocess.Popen([sys.executable, "-m", "steadyflow", "run", "-c", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert api.blocked.wait(60), f"the CLI never asked for answer {request}"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    api.block_at = None
    api.release.set()


@pytest.mark.parametrize(("lookback", "dies"), [(0, "error"), (1, "error"), (0, "sigkill")])
def test_a_walk_dying_past_a_future_checkpoint_keeps_the_earlier_start(
        tmp_path: Path, api: OrdersApi, lookback: int, dies: str) -> None:
    """An API's checkpoint moves only at its walk's end, so the pages a dying walk
    landed (an HTTP 400, a SIGKILL) stand behind the checkpoint an earlier walk left.
    They recorded their own, later start; the next run took it as the last poll's and
    stepped back from it past a record written before that walk, served on a page the
    walk never reached: lost for good, every later run ok. The start that counts is the
    last walk's that moved the checkpoint."""
    api.order = "by_id"
    api.put(1, datetime(2099, 1, 1, tzinfo=UTC), "future", 1)
    cfg = config(tmp_path, api, page_size=2, lookback=lookback)
    assert run(cfg).ok
    time.sleep(0.05)
    api.put(3, datetime.now(UTC), "between runs", 3)  # served after ids 1 and 2
    api.put(2, datetime(2099, 1, 2, tzinfo=UTC), "future too", 2)  # page 1 is new
    time.sleep(lookback + 1.5)
    before = checkpoint(cfg)
    if dies == "error":
        api.fail_at = api.requests + 2  # the walk's second page, the one holding id 3
        failed = run(cfg)
        assert not failed.ok and "HTTP 400" in failed.errors[0]
        api.fail_at = None
    else:
        _kill_at(cfg, api, api.requests + 2)
    assert checkpoint(cfg) == before
    landed = {i for f in tmp_path.rglob("*.parquet") if "orders" in f.parts
              for i in pq.read_table(f).column("id").to_pylist()}
    assert 2 in landed  # the dying walk's first page is landed (its start recorded)
    time.sleep(0.05)
    assert run(cfg).ok
    assert_equal(cfg, api)
