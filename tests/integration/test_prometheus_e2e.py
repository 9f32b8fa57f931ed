"""The shipped alert rules against a real Prometheus server scraping two live pipelines.

Issue 13: with the old rules a pipeline stopped among several never fired SteadyflowDown
(`absent(steadyflow_up)` was false while any pipeline reported), and an idle source (no new
rows, so a growing "age") fired SteadyflowTableStale while the pipeline was healthy.

Two `steadyflow run --follow --serve` processes ("stores" and "erp") load a small SQLite
table whose newest row is an hour old, so each is caught up and then idle, with a
freshness far past the 15 min threshold. Prometheus (Debian's `prometheus` binary) scrapes
both every second and evaluates deploy/prometheus/alerts.yml with its expressions as
shipped and only the `for:` durations shortened. "stores" is then killed (SIGKILL: no
graceful `steadyflow_up 0`), and the alerts are read back through the HTTP API: Down fires
for "stores" alone, and no stale alert fires for the idle "erp".
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import require_tool, write_pipeline

from steadyflow.demo.stores import COLUMNS, SCHEMA, format_ts

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
        return str(resp.read().decode())


def wait_for(check: Callable[[], Any], seconds: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + seconds
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:  # not listening yet
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}; last: {last!r}")


def old_store(path: Path, rows: int = 50) -> None:
    """A store whose newest row is an hour old: after the first load there is nothing new."""
    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    with closing(sqlite3.connect(path)) as db:
        db.execute(SCHEMA[0])
        db.executemany(
            f"INSERT INTO sales ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            [(1, i, f"SKU-{i}", 1, "9.99", "EUR", format_ts(newest - timedelta(minutes=rows - i)),
              format_ts(newest - timedelta(minutes=rows - i))) for i in range(1, rows + 1)])
        db.execute(SCHEMA[1])
        db.commit()


def short_for(rules: dict[str, Any]) -> dict[str, Any]:
    """The shipped rules with every `for:` at 2 s: same expressions, test-sized waits."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    return rules


def start_pipeline(root: Path, name: str, port: int) -> subprocess.Popen[bytes]:
    root.mkdir()
    old_store(root / "store.db")
    config = write_pipeline(root, [{
        "name": "shop", "kind": "sqlite", "path": str(root / "store.db"),
        "tables": [{"name": "sales", "contract": "sales"}]}],
        name=name, run={"interval": "0.5s"})
    with (root / "steadyflow.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "steadyflow", "run", "-c", str(config), "--follow",
             "--serve", f"127.0.0.1:{port}"], cwd=root, stdout=log, stderr=subprocess.STDOUT)


def alerts(prom: str) -> list[dict[str, Any]]:
    data = json.loads(get(f"{prom}/api/v1/alerts"))
    return [a for a in data["data"]["alerts"] if a["labels"]["alertname"].startswith("Steadyflow")]


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    data = json.loads(get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}"))
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_down_fires_for_the_dead_pipeline_alone_and_an_idle_one_is_not_stale(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    prometheus = require_tool("prometheus", "prometheus")
    ports = {"stores": free_port(), "erp": free_port()}
    for name, port in ports.items():
        procs.append(start_pipeline(tmp_path / name, name, port))
    stores, _ = procs

    # both caught up: every row loaded, lag 0, and (old rows, nothing new) freshness > 900 s
    def caught_up(port: int) -> bool:
        text = get(f"http://127.0.0.1:{port}/metrics")
        return ('steadyflow_rows_total{pipeline="' in text and
                any(line.startswith("steadyflow_last_poll_success_timestamp_seconds")
                    for line in text.splitlines()) and
                any(line.startswith("steadyflow_loaded_cursor_timestamp_seconds")
                    for line in text.splitlines()))
    for port in ports.values():
        wait_for(lambda p=port: caught_up(p), 30, f"the pipeline on {port} to load")

    prom_port = free_port()
    rules = tmp_path / "alerts.yml"
    rules.write_text(yaml.safe_dump(short_for(yaml.safe_load(ALERTS.read_text()))))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "steadyflow", "static_configs": [
            {"targets": [f"127.0.0.1:{p}" for p in ports.values()]}]}],
    }))
    with (tmp_path / "prometheus.log").open("wb") as prom_log:
        procs.append(subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            cwd=tmp_path, stdout=prom_log, stderr=subprocess.STDOUT))
    prom = f"http://127.0.0.1:{prom_port}"
    wait_for(lambda: "Ready" in get(f"{prom}/-/ready"), 20, "Prometheus to be ready")

    # both scraped and healthy for a few evaluations: no alert at all (idle is not stale)
    wait_for(lambda: len(query(prom, 'count_over_time(steadyflow_up[1m]) >= 4')) == 2, 20,
             "four scrapes of both pipelines")
    lag = {r["metric"]["pipeline"]: float(r["value"][1])
           for r in query(prom, "steadyflow_lag_seconds")}
    fresh = {r["metric"]["pipeline"]: float(r["value"][1])
             for r in query(prom, "steadyflow_freshness_seconds")}
    assert lag == {"stores": 0.0, "erp": 0.0}, lag
    # lag is 0 because the polls saw the newest row and it is loaded (not for lack of data)
    high = {r["metric"]["pipeline"]: float(r["value"][1])
            for r in query(prom, "steadyflow_source_cursor_timestamp_seconds")}
    loaded = {r["metric"]["pipeline"]: float(r["value"][1])
              for r in query(prom, "steadyflow_loaded_cursor_timestamp_seconds")}
    assert high == loaded and len(high) == 2, (high, loaded)
    nbytes = query(prom, 'sum by (stage) (steadyflow_bytes_total{pipeline="erp"}) > 0')
    assert {r["metric"]["stage"] for r in nbytes} == {"extract", "land", "transform", "load"}
    assert min(fresh.values()) > 3000, fresh  # old data: the age-based rule would fire
    assert alerts(prom) == []

    stores.kill()  # no graceful stop: the series just vanish
    stores.wait(10)
    killed = time.monotonic()

    def down_firing() -> list[dict[str, Any]]:
        return [a for a in alerts(prom)
                if a["labels"]["alertname"] == "SteadyflowDown" and a["state"] == "firing"]
    firing = wait_for(down_firing, 30, "SteadyflowDown to fire")
    assert [a["labels"].get("pipeline") for a in firing] == ["stores"], firing
    assert firing[0]["labels"]["instance"] == f"127.0.0.1:{ports['stores']}"
    time.sleep(3)  # a few more evaluations: still only the dead one, and nothing is stale
    active = alerts(prom)
    assert {(a["labels"]["alertname"], a["labels"].get("pipeline")) for a in active} == {
        ("SteadyflowDown", "stores")}, active
    assert time.monotonic() - killed < 30
