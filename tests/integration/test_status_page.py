"""The status page and its HTTP server: rendered in real headless Chromium, escaped, read-only,
guarded by a bearer token, and loopback-only unless told otherwise.

Chromium is Debian's ``chromium`` (``apt-get install -y chromium``); with CI=true a missing
browser fails the test, elsewhere it skips.  The screenshot lands in artifacts/ (gitignored)
so a human can look at what the page really looks like.
"""

from __future__ import annotations

import html
import http.client
import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from tests.conftest import require_tool, steadyflow, write_pipeline

from steadyflow.demo.stores import create_stores
from steadyflow.errors import ConfigError
from steadyflow.observe.status import collect
from steadyflow.observe.web import (
    History,
    StatusServer,
    is_loopback,
    parse_address,
    render_page,
    sparkline,
    start_server,
)
from steadyflow.run.pipeline import Pipeline

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
EXPECTED_STATES = {"store_001.sales": "ok", "store_002.sales": "ok", "store_003.sales": "error"}


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two healthy SQLite stores (with a few malformed rows each) and one whose table is
    missing, run once, so the page has ok, quarantined and error rows to show."""
    root = tmp_path_factory.mktemp("status_page")
    stores = create_stores(root / "stores", 2, 400)
    broken = root / "stores" / "store_003.db"
    with closing(sqlite3.connect(broken)) as db:
        db.execute("CREATE TABLE not_sales (x INTEGER)")
        db.commit()
    sources = [{"name": p.stem, "kind": "sqlite", "path": str(p),
                "tables": [{"name": "sales", "contract": "sales", "page_size": 150,
                            "warehouse_filter": {"store_id": number}}]}
               for number, p in enumerate([*stores, broken], start=1)]
    path = write_pipeline(root, sources, name="shop<&>\"pipeline\"", run={"interval": "1s"})
    with Pipeline.from_yaml(path) as pipeline:
        summary = pipeline.run_once(raise_on_error=False)
    assert summary.loaded_rows > 0
    assert any("store_003" in err for err in summary.errors)
    return path


@pytest.fixture
def pipeline(config: Path) -> Iterator[Pipeline]:
    with Pipeline.from_yaml(config) as p:
        yield p


@pytest.fixture
def server(pipeline: Pipeline) -> Iterator[StatusServer]:
    with StatusServer(pipeline, "127.0.0.1", 0, sample_every=0.1) as srv:
        deadline = time.monotonic() + 5
        while len(srv.service.history) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield srv


def request(url: str, path: str = "/", headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def state_dump(path: Path) -> list[Any]:
    """Every row of every table of a SQLite file, in a stable order."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        names = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [(n, sorted(map(repr, db.execute(f'SELECT * FROM "{n}"')))) for n in names]


# --- the page in a real browser -------------------------------------------------------------

def chromium_binary() -> str:
    return require_tool("chromium", "chromium", fallback="/usr/bin/chromium")


def chromium(binary: str, profile: Path, url: str, *mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--window-size=1280,900",
         # paint everything before capturing; stays below the page's 2 s meta refresh
         "--run-all-compositor-stages-before-draw", "--virtual-time-budget=1000", *mode, url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Rows(HTMLParser):
    """Collects the health table rows: data-table, data-state and the row's visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[str, str]] = {}
        self.headings: list[str] = []
        self.svgs = 0
        self.scripts = 0
        self._row: tuple[str, str] | None = None
        self._text: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-table" in a:
            self._row = (a["data-table"] or "", a.get("data-state") or "")
            self._text = []
        self.svgs += tag == "svg"
        self.scripts += tag == "script"
        self._in_h2 = self._in_h2 or tag == "h2"

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.rows[self._row[0]] = (self._row[1], " ".join("".join(self._text).split()))
            self._row = None
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._row is not None:
            self._text.append(" " + data)
        if self._in_h2:
            self.headings.append(data.strip())


def test_status_page_in_headless_chromium(server: StatusServer, tmp_path: Path) -> None:
    binary = chromium_binary()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status_page.png"
    shot.unlink(missing_ok=True)
    # both at once: each is a separate browser with its own profile
    dump = chromium(binary, tmp_path / "p1", server.url, "--dump-dom")
    snap = chromium(binary, tmp_path / "p2", server.url, f"--screenshot={shot}")
    dom, dump_err = dump.communicate(timeout=60)
    _, snap_err = snap.communicate(timeout=60)
    assert dump.returncode == 0, dump_err[-2000:]
    assert snap.returncode == 0, snap_err[-2000:]

    page = Rows()
    page.feed(dom)
    assert set(page.rows) == set(EXPECTED_STATES), dom[:3000]
    for table, expected in EXPECTED_STATES.items():
        state, text = page.rows[table]
        assert state == expected, (table, state, text)
        assert text.startswith(f"{table} {expected}"), text  # name, then the visible pill
    assert "no such table" in page.rows["store_003.sales"][1]
    for heading in ("Tables", "Open circuit breakers", "Quarantine", "Recent errors",
                    "Recent runs"):
        assert heading in page.headings, page.headings
    assert page.svgs >= 2 * len(EXPECTED_STATES) + 2  # per-table and pipeline sparklines
    assert page.scripts == 0
    # the hostile pipeline name arrived as text, not markup
    assert "shop&lt;&amp;&gt;\"pipeline\"" in dom or "shop&lt;&amp;&gt;&quot;pipeline&quot;" in dom

    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank canvas


# --- endpoints ------------------------------------------------------------------------------

def test_endpoints_serve_metrics_page_json_and_health(server: StatusServer,
                                                      pipeline: Pipeline) -> None:
    status, headers, body = request(server.url, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    # every series also carries the pipeline label (metrics.py), whatever its position
    assert re.search(r'steadyflow_freshness_seconds\{[^}]*source="store_001",table="sales"', text)
    assert re.search(r'steadyflow_breaker_state\{[^}]*source="store_003"[^}]*\} 0\.0', text)

    status, headers, body = request(server.url, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert b'http-equiv="refresh" content="2"' in body

    status, headers, body = request(server.url, "/api/status")
    assert status == 200 and headers["content-type"] == "application/json"
    import json

    report = json.loads(body)
    expected = collect(pipeline)
    assert [t["table"] for t in report["tables"]] == [t["table"] for t in expected["tables"]]
    assert {t["table"]: t["state"] for t in report["tables"]} == EXPECTED_STATES
    assert report["tables"][0]["rows_loaded"] == expected["tables"][0]["rows_loaded"] > 0

    assert request(server.url, "/healthz")[:1] == (200,)
    status, headers, body = request(server.url, "/healthz", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == "3"
    assert request(server.url, "/nope")[0] == 404


def test_server_is_read_only(server: StatusServer, config: Path) -> None:
    state = config.parent / "state" / "state.db"
    before = state_dump(state)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = request(server.url, "/api/status", method=method,
                                     headers={"Content-Length": "0"})
        assert status == 405 and headers["allow"] == "GET, HEAD"
    for path in ("/", "/metrics", "/api/status", "/healthz"):
        request(server.url, path)
    time.sleep(0.3)  # a few sampler rounds
    assert state_dump(state) == before


def test_foreign_host_header_is_refused_on_loopback(server: StatusServer) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read us."""
    assert request(server.url, "/api/status", headers={"Host": "evil.example:80"})[0] == 421
    assert request(server.url, "/", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_bearer_token_guards_every_endpoint(pipeline: Pipeline) -> None:
    token = "tok-3f9c1b2a7e"
    with StatusServer(pipeline, "127.0.0.1", 0, token=token) as srv:
        for path in ("/", "/metrics", "/api/status", "/healthz", "/nope"):
            status, headers, body = request(srv.url, path)
            assert status == 401, path
            assert headers["www-authenticate"].startswith("Bearer")
            assert b"store_001" not in body
            for wrong in (f"Bearer {token}x", f"Bearer {token[:-1]}", f"Basic {token}",
                          token, "Bearer "):
                assert request(srv.url, path, headers={"Authorization": wrong})[0] == 401
        good = {"Authorization": f"Bearer {token}"}
        for path in ("/", "/metrics", "/api/status", "/healthz"):
            assert request(srv.url, path, headers=good)[0] == 200, path
        assert request(srv.url, "/", headers={**good, "Host": "status.example"})[0] == 200


def test_non_loopback_bind_needs_a_token_or_insecure(pipeline: Pipeline, config: Path) -> None:
    with pytest.raises(ConfigError, match="non-loopback"):
        StatusServer(pipeline, "0.0.0.0", 0)
    for kwargs in ({"token": "tok-abcdef"}, {"insecure": True}):
        srv = StatusServer(pipeline, "0.0.0.0", 0, **kwargs)
        srv.stop()
    proc = steadyflow("serve", "-c", str(config), "--host", "0.0.0.0", "--port", "0",
                      timeout=60)
    assert proc.returncode == 2
    assert "non-loopback" in proc.stderr
    proc = steadyflow("serve", "-c", str(config), "--port", "0", "--token-env",
                      "STEADYFLOW_TEST_UNSET_TOKEN", timeout=60)
    assert proc.returncode == 2 and "STEADYFLOW_TEST_UNSET_TOKEN" in proc.stderr


def test_start_server_returns_url_and_idempotent_stop(config: Path) -> None:
    url, stop = start_server(config, "127.0.0.1", 0)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        status, _, body = request(url, "/api/status")
        assert status == 200 and b"store_002.sales" in body
    finally:
        stop()
        stop()
    with pytest.raises(OSError):
        request(url, "/healthz")


# --- rendering ------------------------------------------------------------------------------

def test_every_value_on_the_page_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    attr = '" onmouseover="alert(1)'
    report = {
        "pipeline": evil, "at": time.time(), "queue_depth": 0, "queue_capacity": 8,
        "pending_batches": 0, "pending_rows": 0, "queue_oldest_seconds": None,
        "tables": [{
            "table": f"src.{attr}", "source": evil, "name": "t", "target": evil,
            "freshness_seconds": 5.0, "freshness_human": evil, "newest_cursor": evil,
            "last_success": time.time(), "last_success_human": evil, "last_error": evil,
            "last_error_at": time.time(), "rows_loaded": 1, "rows_quarantined": 1,
            "open_quarantine_batches": 1, "page_size": 10, "breaker": evil, "state": evil}],
        "runs": [{"run_id": 1, "command": evil, "started_at": time.time(), "ended_at": None,
                  "outcome": evil, "batches": 0, "rows": 0, "error": evil}],
        "reconcile": [{"source": evil, "table": evil, "at": time.time(), "buckets": 1,
                       "rows_compared": 1, "missing": 0, "extra": 0, "mismatched": 0,
                       "repaired": 0}],
    }
    page = render_page(report, {}, loop_error=evil)
    assert "<script" not in page
    assert 'onmouseover="' not in page
    assert "&lt;script&gt;" in page and "&quot; onmouseover=&quot;" in page


def test_sparkline_is_inline_svg_with_gaps_and_placeholders() -> None:
    svg = sparkline([0, 5, None, 10, 10], label="t<x>")
    assert svg.startswith("<svg") and svg.count("<polyline") == 2  # the gap splits the line
    assert "<title>t&lt;x&gt;</title>" in svg
    assert "empty" in sparkline([], label="x") and "empty" in sparkline([None, None])


def test_history_computes_rates_and_worst_freshness() -> None:
    h = History(maxlen=3)
    for at, rows, fresh in ((0.0, 0, 9.0), (2.0, 100, 1.0), (4.0, 100, 3.0), (6.0, 160, 5.0)):
        h.add({"at": at, "tables": [
            {"table": "a.t", "rows_changed": rows, "freshness_seconds": fresh},
            {"table": "b.t", "rows_changed": 0, "freshness_seconds": None}]})
    s = h.series()
    assert s["throughput"]["a.t"] == [0.0, 30.0]  # the oldest sample fell out of the ring
    assert s["total_throughput"] == [0.0, 30.0]
    assert s["freshness"]["a.t"] == [1.0, 3.0, 5.0]
    assert s["max_freshness"] == [1.0, 3.0, 5.0]
    assert s["span_seconds"] == 4.0


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
    ("192.168.0.10", False)])
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_parse_address() -> None:
    assert parse_address("9108") == ("127.0.0.1", 9108)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:9108") == ("::1", 9108)
    with pytest.raises(ConfigError):
        parse_address("host:port")


# --- the layout at desktop and phone widths ---------------------------------------------------

LONG_TABLE = "warehouse_north_region_store_0042.sales_order_lines_with_returns_and_refunds"
# Measures the rendered page and writes the findings into the DOM, for --dump-dom to print:
# the page's horizontal overflow, every element that clips its content (overflow hidden or
# clip, content wider than its box), and the table names as rendered.
PROBE = """<script>
const vw = document.documentElement.clientWidth;
const clipped = [];
for (const el of document.querySelectorAll('body *')) {
  const style = getComputedStyle(el);
  const clips = ['hidden', 'clip'].includes(style.overflowX) || style.textOverflow === 'ellipsis';
  if (clips && el.scrollWidth > el.clientWidth + 1)
    clipped.push(el.tagName + '.' + el.className + ': ' + el.textContent.slice(0, 60));
}
const names = [...document.querySelectorAll('.tname')].map(e => e.textContent);
document.body.setAttribute('data-probe', JSON.stringify(
  {overflow: document.documentElement.scrollWidth - vw, clipped: clipped, names: names}));
</script>"""


def layout_report() -> dict[str, Any]:
    """A report with a long table name, a long pipeline name and a long error."""
    now = time.time()

    def table(label: str, state: str, error: str | None) -> dict[str, Any]:
        source, name = label.split(".", 1)
        return {"table": label, "source": source, "name": name, "target": name,
                "freshness_seconds": 12.0, "freshness_human": "12.0s", "newest_cursor": None,
                "last_success": now - 30, "last_success_human": "30.0s ago",
                "last_error": error, "last_error_at": now - 5 if error else None,
                "rows_changed": 1_234_567, "rows_reread": 89, "rows_loaded": 1_234_656,
                "rows_quarantined": 3, "open_quarantine_batches": 1, "page_size": 500,
                "breaker": "open" if error else "closed", "failing_batches": 0,
                "state": state}

    error = ("cannot connect to warehouse_north_region_store_0042 at db-north-42.example.internal"
             ":5432: connection refused after 5 attempts; " * 3)
    return {"pipeline": "retail_pipeline_for_all_northern_and_western_region_stores",
            "at": now, "queue_depth": 3, "queue_capacity": 64, "queue_oldest_seconds": 1.5,
            "pending_batches": 3, "pending_rows": 1500,
            "tables": [table(LONG_TABLE, "source down", error),
                       table("store_001.sales", "ok", None)],
            "runs": [{"run_id": 7, "command": "run", "started_at": now - 60,
                      "ended_at": now - 58, "outcome": "error", "batches": 4, "rows": 812,
                      "error": error}],
            "reconcile": []}


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)],
                         ids=["desktop", "phone"])
def test_page_layout_nothing_overflows_and_names_are_whole(
        tmp_path: Path, width: int, height: int) -> None:
    binary = chromium_binary()
    page = tmp_path / "status.html"
    page.write_text(render_page(layout_report(), {}).replace("</body>", PROBE + "</body>"))
    shot = tmp_path / f"status_{width}x{height}.png"  # kept with the test's artifacts

    def browse(profile: str, *mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / profile}", f"--window-size={width},{height}",
             "--hide-scrollbars", "--run-all-compositor-stages-before-draw",
             "--virtual-time-budget=1000", *mode, page.as_uri()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    dump, snap = browse("p1", "--dump-dom"), browse("p2", f"--screenshot={shot}")
    dom, err = dump.communicate(timeout=60)
    _, snap_err = snap.communicate(timeout=60)
    assert dump.returncode == 0 and snap.returncode == 0, err[-2000:] + snap_err[-2000:]
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found is not None, dom[-2000:]
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["overflow"] <= 0, probe  # the page never scrolls sideways
    assert probe["clipped"] == [], probe  # no box hides part of its text
    assert probe["names"] == [LONG_TABLE, "store_001.sales"], probe  # whole names
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
