"""The flaky sales API must be trustworthy about its own untrustworthiness.

HTTP-source fault tests lean on this server to produce exact failures; if a knob silently did
nothing, those tests would pass for the wrong reason. So each knob is checked on a real socket
with a real httpx client (and a raw socket where httpx would hide the wire-level detail).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from steadyflow.demo.flaky_api import (
    COLUMNS,
    TS_FORMAT,
    FlakyApiServer,
    create_api_db,
    iso_utc,
    mutate,
)

pytestmark = pytest.mark.integration

ROWS = 1234
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "api.db"
    create_api_db(path, ROWS, seed=7)
    return path


@pytest.fixture
def server(db: Path):
    with FlakyApiServer(db) as srv:
        yield srv


@pytest.fixture
def client(server: FlakyApiServer):
    with httpx.Client(base_url=server.url, timeout=5) as c:
        yield c


def source_rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM sales"
                            " ORDER BY updated_at, sale_id").fetchall()
    conn.close()
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def fetch_all(client: httpx.Client, **params: Any) -> tuple[list[dict[str, Any]], list[int]]:
    """Follow `next` to the end; return all records and the page sizes."""
    records: list[dict[str, Any]] = []
    sizes: list[int] = []
    after = None
    for _ in range(100):
        page_params = {**params, **({"after": after} if after else {})}
        resp = client.get("/v1/sales", params=page_params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        records += body["data"]
        sizes.append(len(body["data"]))
        after = body["next"]
        if after is None:
            return records, sizes
    raise AssertionError("pagination never ended")


def raw_get(url: str, path: str) -> bytes:
    """Everything the server sends for one request, as bytes; b'' if it sends nothing."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def statuses(client: httpx.Client, n: int) -> list[int]:
    return [client.get("/v1/sales", params={"limit": 5}).status_code for _ in range(n)]


@pytest.mark.parametrize(("limit", "expected_sizes"), [
    (100, [100] * 12 + [34]),
    (617, [617, 617, 0]),  # exact multiple: a full last page, then an empty one with next=null
    (5000, [ROWS]),
])
def test_pagination_serves_every_row_once_in_order(
        db: Path, client: httpx.Client, limit: int, expected_sizes: list[int]) -> None:
    expected = source_rows(db)
    # The generator plants updated_at ties so the sale_id tiebreak is actually exercised.
    assert len({r["updated_at"] for r in expected}) < ROWS - 50
    records, sizes = fetch_all(client, limit=limit)
    assert sizes == expected_sizes
    assert records == expected


def test_default_limit_and_record_shape(client: httpx.Client) -> None:
    body = client.get("/v1/sales").json()
    assert len(body["data"]) == 500 and isinstance(body["next"], str)
    for rec in body["data"]:
        assert set(rec) == set(COLUMNS)
        assert TS_RE.match(rec["updated_at"]) and TS_RE.match(rec["sold_at"])
        assert rec["sold_at"] <= rec["updated_at"]
        assert re.fullmatch(r"\d+\.\d\d", rec["unit_price"])
        assert Decimal("0.50") <= Decimal(rec["unit_price"]) <= Decimal("500.00")
        assert rec["currency"] in {"USD", "EUR", "GBP"} and 1 <= rec["qty"] <= 20
        assert rec["store_id"] == 900 and isinstance(rec["sale_id"], int)


def test_updated_since_is_inclusive_and_offset_aware(db: Path, client: httpx.Client) -> None:
    src = source_rows(db)
    pivot = src[len(src) // 2]["updated_at"]
    expected = [r for r in src if r["updated_at"] >= pivot]
    assert fetch_all(client, updated_since=pivot, limit=200)[0] == expected
    as_plus2 = datetime.strptime(pivot, TS_FORMAT).replace(tzinfo=UTC).astimezone(
        timezone(timedelta(hours=2))).isoformat()
    assert "+02:00" in as_plus2
    assert fetch_all(client, updated_since=as_plus2, limit=5000)[0] == expected
    later = iso_utc(datetime.strptime(pivot, TS_FORMAT).replace(tzinfo=UTC)
                    + timedelta(microseconds=1))
    assert fetch_all(client, updated_since=later)[0] == [r for r in src if r["updated_at"] > pivot]


@pytest.mark.parametrize("query", [
    "limit=0", "limit=5001", "limit=abc", "limit=", "limit=1&limit=2", "bogus=1",
    "after=garbage!", "after=" + base64.urlsafe_b64encode(b'"x"').decode(),
    "updated_since=yesterday", "updated_since=2024-01-01T00:00:00",  # naive: ambiguous
])
def test_bad_parameters_are_400_with_json_error(client: httpx.Client, query: str) -> None:
    resp = client.get(f"/v1/sales?{query}")
    assert resp.status_code == 400
    assert isinstance(resp.json()["error"], str)


def test_token_required_when_configured(db: Path) -> None:
    with FlakyApiServer(db, token="s3cret") as srv, httpx.Client(base_url=srv.url) as c:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
            resp = c.get("/v1/sales", headers=headers)
            assert resp.status_code == 401 and "error" in resp.json()
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert c.post("/_faults", json={"drop_every": 1}).status_code == 401
        assert srv.faults.config()["drop_every"] == 0
        ok = c.get("/v1/sales", params={"limit": 3}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(ok.json()["data"]) == 3


def test_rate_limit_every_nth_with_retry_after(server: FlakyApiServer,
                                               client: httpx.Client) -> None:
    server.faults.set(rate_limit_every=3, retry_after=7)
    resps = [client.get("/v1/sales", params={"limit": 5}) for _ in range(7)]
    assert [r.status_code for r in resps] == [200, 200, 429, 200, 200, 429, 200]
    assert resps[2].headers["Retry-After"] == "7" and "error" in resps[2].json()
    stats = server.stats()
    assert stats["by_status"] == {"200": 5, "429": 2} and stats["requests_total"] == 7
    assert [e["retry_after"] for e in stats["rate_limited"]] == [7, 7]
    assert all(e["next_request_at"] >= e["at"] for e in stats["rate_limited"])
    server.faults.set(rate_limit_every=2)  # counting restarts at every change
    assert statuses(client, 4) == [200, 429, 200, 429]


def test_rate_limit_burst_records_gap_before_next_request(server: FlakyApiServer,
                                                          client: httpx.Client) -> None:
    server.faults.set(rate_limit_burst=2)
    assert statuses(client, 2) == [429, 429]
    assert server.stats()["rate_limited"][-1]["next_request_at"] is None
    time.sleep(0.3)  # a client honouring a (scaled-down) Retry-After
    assert statuses(client, 2) == [200, 200]
    last = server.stats()["rate_limited"][-1]
    assert last["retry_after"] == 1 and 0.25 <= last["next_request_at"] - last["at"] < 5


def test_error_burst_alternates_503_500_then_recovers(server: FlakyApiServer,
                                                      client: httpx.Client) -> None:
    server.faults.set(error_burst=3)
    resps = [client.get("/v1/sales", params={"limit": 5}) for _ in range(5)]
    assert [r.status_code for r in resps] == [503, 500, 503, 200, 200]
    assert resps[0].headers["Retry-After"] == "1" and "Retry-After" not in resps[1].headers


def test_drop_closes_connection_without_any_bytes(server: FlakyApiServer,
                                                  client: httpx.Client) -> None:
    server.faults.set(drop_every=2)
    assert client.get("/v1/sales").status_code == 200
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/v1/sales")
    assert client.get("/v1/sales").status_code == 200
    assert raw_get(server.url, "/v1/sales") == b""
    assert server.stats()["dropped"] == 2


def test_truncate_sends_full_content_length_but_half_body(server: FlakyApiServer,
                                                          client: httpx.Client) -> None:
    server.faults.set(truncate_every=1)
    head, _, body = raw_get(server.url, "/v1/sales?limit=50").partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"200"
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
    assert length > 1000 and len(body) == length // 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/v1/sales")
    assert server.stats()["truncated"] == 2


def test_malformed_body_is_not_json(server: FlakyApiServer, client: httpx.Client) -> None:
    server.faults.set(malformed_every=2)
    assert client.get("/v1/sales").json()["data"]
    resp = client.get("/v1/sales")
    assert resp.status_code == 200 and resp.text.startswith("<html>")
    with pytest.raises(json.JSONDecodeError):
        resp.json()
    assert server.stats()["malformed"] == 1


def test_wrong_shape_alternates_items_and_missing_sale_id(server: FlakyApiServer,
                                                          client: httpx.Client) -> None:
    server.faults.set(wrong_shape_every=1)
    first = client.get("/v1/sales", params={"limit": 10}).json()
    assert "data" not in first and len(first["items"]) == 10
    second = client.get("/v1/sales", params={"limit": 10}).json()
    assert len(second["data"]) == 10 and all("sale_id" not in r for r in second["data"])
    assert server.stats()["wrong_shape"] == 2


def test_latency_and_jitter_delay_responses(server: FlakyApiServer,
                                            client: httpx.Client) -> None:
    server.faults.set(latency=0.3, jitter=0.1)
    start = time.monotonic()
    assert client.get("/v1/sales", params={"limit": 1}).status_code == 200
    assert 0.3 <= time.monotonic() - start < 2
    server.faults.clear()
    start = time.monotonic()
    client.get("/v1/sales", params={"limit": 1})
    assert time.monotonic() - start < 0.3


def test_faults_controllable_over_http(server: FlakyApiServer, client: httpx.Client) -> None:
    resp = client.post("/_faults", json={"error_burst": 1, "retry_after": 2})
    assert resp.status_code == 200 and resp.json()["error_burst"] == 1
    assert client.get("/v1/sales").status_code == 503
    assert client.get("/_faults").json()["error_burst"] == 0  # burst consumed
    for bad in ({"nope": 1}, {"drop_every": -1}, {"drop_every": True}, {"latency": "1"}, [1]):
        assert client.post("/_faults", json=bad).status_code == 400, bad
    assert client.post("/_faults", content=b"not json").status_code == 400
    assert server.faults.config()["retry_after"] == 2  # rejected bodies changed nothing
    assert client.post("/_faults", json={"clear": True, "malformed_every": 1}).json()[
        "retry_after"] == 1
    assert client.get("/v1/sales").text.startswith("<html>")
    stats = client.get("/_stats").json()
    assert stats == server.stats()
    assert stats["requests_total"] == 2  # control-plane calls are not counted
    assert stats["by_status"] == {"503": 1, "200": 1} and stats["malformed"] == 1
    with pytest.raises(ValueError):
        server.faults.set(bogus=1)


def test_mutate_changes_show_up_via_updated_since(db: Path, client: httpx.Client) -> None:
    before = {r["sale_id"]: r for r in source_rows(db)}
    cutoff = iso_utc(datetime.now(UTC))
    mutate(db, inserts=5, updates=7, seed=3)
    changed, _ = fetch_all(client, updated_since=cutoff)
    new_ids = [r["sale_id"] for r in changed if r["sale_id"] not in before]
    updated = [r for r in changed if r["sale_id"] in before]
    assert sorted(new_ids) == list(range(ROWS + 1, ROWS + 6)) and len(updated) == 7
    assert all(TS_RE.match(r["updated_at"]) and r["updated_at"] >= cutoff for r in changed)
    assert all(r["updated_at"] != before[r["sale_id"]]["updated_at"] for r in updated)
    everything, _ = fetch_all(client, limit=1000)
    assert len(everything) == ROWS + 5 == len({r["sale_id"] for r in everything})
    assert everything[-12:] == changed  # changed rows moved to the end of the cursor order


def test_restart_keeps_data_and_port(db: Path) -> None:
    srv = FlakyApiServer(db)
    with srv, httpx.Client(base_url=srv.url) as c:
        url, first = srv.url, c.get("/v1/sales", params={"limit": 20}).json()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/v1/sales")
    with srv, httpx.Client(base_url=srv.url) as c:
        assert srv.url == url
        assert c.get("/v1/sales", params={"limit": 20}).json() == first


def test_stop_does_not_wait_for_slow_requests(server: FlakyApiServer,
                                              client: httpx.Client) -> None:
    server.faults.set(latency=30)
    errors: list[BaseException] = []

    def slow_get() -> None:
        try:
            client.get("/v1/sales")
        except httpx.HTTPError as exc:
            errors.append(exc)

    worker = threading.Thread(target=slow_get)
    worker.start()
    deadline = time.monotonic() + 5
    while server.stats()["requests_total"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # wait until the request is inside its latency sleep
    start = time.monotonic()
    server.stop()
    worker.join(5)
    assert time.monotonic() - start < 2 and not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], httpx.RemoteProtocolError)


def test_runs_standalone_with_token_from_env(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "steadyflow.demo.flaky_api", "--db", str(tmp_path / "cli.db"),
           "--port", "0", "--rows", "42", "--token-env", "FLAKY_API_TOKEN"]
    env = {**os.environ, "FLAKY_API_TOKEN": "t0ken"}
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            url = proc.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
            with httpx.Client(base_url=url, headers={"Authorization": "Bearer t0ken"}) as c:
                records, _ = fetch_all(c, limit=5000)
            assert [r["sale_id"] for r in sorted(records, key=lambda r: r["sale_id"])] == list(
                range(1, 43))
        finally:
            proc.terminate()
            proc.communicate(timeout=5)
