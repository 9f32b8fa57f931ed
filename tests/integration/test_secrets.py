"""No `${VAR}` value ever leaves the process: a secret in every place a user can put one.

The pipeline holds a MariaDB password (wrong: an authentication error), a PostgreSQL
password (in a DSN to a closed port), an HTTP header token and an HTTP query-parameter
API key with URL-special characters. The API is a real loopback server that fails some
requests and echoes the request line and the token back in its error body, the way real
APIs do. Everything is driven through the CLI (`run`, `run --json`, `status`,
`status --json`, `quarantine list`, `serve` with `/`, `/api/status`, `/metrics`), then every
output, every log line, every file under the pipeline's directory (raw bytes), every text
column of every state table and every string and binary value of every landed Parquet file
is searched for each secret in each spelling it can take: zero hits.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.conftest import MY_HOST, MY_PORT, steadyflow, write_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FAST = {"connect_timeout": "2s", "statement_timeout": "3s", "retries": 1,
        "backoff_initial": "50ms", "backoff_max": "100ms"}


def _record(sale_id: int) -> dict[str, Any]:
    stamp = f"2024-01-01T00:00:{sale_id:02d}.000000Z"
    return {"store_id": 1, "sale_id": sale_id, "sku": f"SKU-{sale_id}", "qty": 1,
            "unit_price": "3.50", "currency": "USD", "sold_at": stamp, "updated_at": stamp}


class EchoingApi(BaseHTTPRequestHandler):
    """/v1/sales fails its first request, then serves one page; /v1/broken always fails
    with 500, /v1/rejected with 400; /v1/garbage answers 200 with a body that is not JSON.
    Every error body starts with the token header and the request line it was sent."""

    first_sales_failed = False
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _echo(self, status: int) -> None:
        token = self.headers.get("X-Api-Token", "")
        self._reply(status, f"token={token} cannot serve {self.requestline}".encode(),
                    "text/plain")

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        path = urlsplit(self.path).path
        if path == "/v1/sales":
            with self.lock:
                fail = not EchoingApi.first_sales_failed
                EchoingApi.first_sales_failed = True
            if fail:
                return self._echo(500)
            return self._reply(200, json.dumps({"data": [_record(i) for i in (1, 2, 3)],
                                                "next": None}).encode())
        if path == "/v1/broken":
            return self._echo(500)
        if path == "/v1/rejected":
            return self._echo(400)
        if path == "/v1/garbage":
            return self._reply(200, b"<html>maintenance</html>", "text/html")
        return self._echo(404)


@pytest.fixture
def api() -> Iterator[str]:
    EchoingApi.first_sales_failed = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _secrets() -> tuple[dict[str, str], list[str]]:
    """The environment of the run, and every spelling of every secret in it."""
    api_key = f"ak/{uuid.uuid4().hex}+=&?x y"  # every character a query string encodes
    token = f"tok-{uuid.uuid4().hex}"
    my_password = f"My-{uuid.uuid4().hex}-p@ss/w:rd"
    pg_password = f"Pg-{uuid.uuid4().hex}"
    env = {"API_KEY": api_key, "API_TOKEN": token, "PG_PASSWORD": pg_password,
           "MY_PASSWORD": quote(my_password, safe="")}  # a DSN needs it percent-encoded
    spellings = {s for value in (api_key, token, my_password, pg_password)
                 for s in (value, quote(value, safe=""), quote(value), quote_plus(value))}
    # the random cores alone: no fragment of a secret may be shown either
    cores = [value.split("-")[1] if "-" in value else value[3:35]
             for value in (token, my_password, pg_password)] + [api_key[3:35]]
    return env, sorted(spellings | set(cores))


def _pipeline(directory: Path, url: str) -> Path:
    def table(name: str) -> dict[str, Any]:
        return {"name": name, "contract": "sales", "endpoint": f"/v1/{name}", "page_size": 100,
                "params": {"api_key": "${API_KEY}"}, "bad_page_retries": 0}

    def store(number: int) -> list[dict[str, Any]]:  # three sources share target sales
        return [{"name": "sales", "contract": "sales", "warehouse_filter": {"store_id": number}}]

    return write_pipeline(directory, [
        {"name": "api", "kind": "http", "url": url, "resilience": FAST,
         "headers": {"X-Api-Token": "${API_TOKEN}"},
         "tables": [{**table("sales"), "warehouse_filter": {"store_id": 1}}, table("broken"),
                    table("rejected"), table("garbage")]},
        {"name": "store_my", "kind": "mysql", "resilience": {**FAST, "retries": 0},
         "tables": store(2),
         "dsn": f"mysql://sf_nobody:${{MY_PASSWORD}}@{MY_HOST}:{MY_PORT}/shop"},
        {"name": "store_pg", "kind": "postgres", "resilience": {**FAST, "retries": 0},
         "tables": store(3),
         "dsn": "postgresql://reader:${PG_PASSWORD}@127.0.0.1:1/pos"},
    ])


def _serve(config: Path, env: dict[str, str]) -> list[str]:
    """`steadyflow serve` (running the pipeline loop) and what its pages show."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "steadyflow", "--log-level", "debug", "serve", "-c",
         str(config), "--port", "0", "--run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, **env})
    pages: list[str] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving "), line
        url = line.split()[1]
        time.sleep(3)  # a cycle of the loop: errors recorded again, logged at debug
        for path in ("", "api/status", "metrics"):
            with urllib.request.urlopen(url + path, timeout=10) as resp:  # noqa: S310
                pages.append(resp.read().decode())
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    return [*pages, line, out, err]


def _state_texts(db_path: Path) -> list[str]:
    """Every text value of every table in the state store."""
    texts = []
    with closing(sqlite3.connect(db_path)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for name in tables:
            for row in db.execute(f'SELECT * FROM "{name}"'):  # noqa: S608 - own schema
                texts += [v if isinstance(v, str) else v.decode("latin-1") for v in row
                          if isinstance(v, str | bytes)]
    return texts


def _parquet_texts(root: Path) -> list[str]:
    """Every string and binary value of every Parquet file under root."""
    texts = []
    for path in root.rglob("*.parquet"):
        table = pq.read_table(path)
        for column in table.columns:
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                texts += [v for v in column.to_pylist() if v is not None]
            elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
                texts += [v.decode("latin-1") for v in column.to_pylist() if v is not None]
    return texts


def test_no_secret_reaches_any_output_log_state_or_landed_file(tmp_path: Path,
                                                               api: str) -> None:
    env, secrets = _secrets()
    config = _pipeline(tmp_path, api)
    outputs: list[str] = []
    for args in (["run", "-c", str(config)], ["run", "-c", str(config), "--json"],
                 ["status", "-c", str(config)], ["status", "-c", str(config), "--json"],
                 ["quarantine", "list", "-c", str(config), "--json"]):
        proc = steadyflow("--log-level", "debug", *args, env=env, timeout=90)
        outputs += [proc.stdout, proc.stderr]
    outputs += _serve(config, env)

    # the failures were real, and what the API echoed was shown with its secrets masked
    run_err = outputs[1]
    assert "Access denied for user 'sf_nobody'" in run_err
    assert "Connection refused" in run_err
    assert "HTTP 500" in run_err and "HTTP 400" in run_err
    assert any(line.startswith("{") for line in run_err.splitlines())  # debug JSON logs
    state = _state_texts(tmp_path / "state" / "state.db")
    assert any("token=***" in text for text in state), state
    assert any("api_key=***" in text for text in state), state
    landed = _parquet_texts(tmp_path / "landing")
    assert any("api_key=***" in text for text in landed), landed  # raw pages' request
    report = json.loads(outputs[6])
    assert {t["table"]: t["state"] for t in report["tables"]}["api.sales"] == "ok"

    files = [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    for text in [*outputs, *state, *landed, *files]:
        for secret in secrets:
            assert secret not in text, f"secret {secret!r} leaked into: {text[:3000]}"
