"""Observability end to end: what an operator sees while a source degrades and dies.

- `steadyflow serve` runs a real pipeline against PostgreSQL through the fault proxy; the
  test scrapes /metrics while the source is healthy, slow, then cut, and checks the
  freshness gauge grows and the breaker gauge flips to 2 (open).  The scraped series are
  then replayed through the real alert rules with `promtool test rules` (one scrape = one
  minute of rule-evaluation time), so the alerts are proven against data the exporter
  really produced, not hand-written numbers.
- A restarted server reports the true freshness from state, not "no data".
- No password reaches a log line, stdout, stderr, a stored error or the status endpoints,
  even at --log-level debug and on authentication failures.
- `extract --dry-run` and `load --dry-run` print the plan and change nothing.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import duckdb
import psycopg
import pymysql
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import (
    MY_HOST,
    MY_PORT,
    PG_HOST,
    PG_PORT,
    require_tool,
    steadyflow,
    write_pipeline,
)
from tests.support.faultproxy import FaultProxy

from steadyflow.demo.stores import COLUMNS, create_stores, format_ts
from steadyflow.observe.web import start_server
from steadyflow.run import pipeline as pipeline_module
from steadyflow.run.pipeline import Pipeline

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
FAST_RESILIENCE = {"breaker_failures": 2, "breaker_reset": "2s", "retries": 1,
                   "connect_timeout": "2s", "statement_timeout": "2s",
                   "backoff_initial": "0.1s", "backoff_max": "0.5s"}
PG_SALES = """
CREATE TABLE sales (store_id bigint NOT NULL, sale_id bigint NOT NULL, sku text NOT NULL,
  qty bigint, unit_price numeric(12,2), currency text, sold_at timestamptz,
  updated_at timestamptz NOT NULL, PRIMARY KEY (store_id, sale_id));
CREATE INDEX ON sales (updated_at, store_id, sale_id);
"""


# --- helpers --------------------------------------------------------------------------------

def promtool_binary() -> str:
    return require_tool("promtool", "prometheus")


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
        return str(resp.read().decode())


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}, without the `pipeline` label that
    every series carries (one pipeline per test)."""
    out = {}
    for family in text_string_to_metric_families(fetch(url + "metrics")):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "pipeline"}
            out[(s.name, tuple(sorted(labels.items())))] = s.value
    return out


def sample(metrics: dict[Any, float], name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def pg_rows(first_id: int, n: int, newest: datetime) -> list[tuple[Any, ...]]:
    """n sales rows whose updated_at ends exactly at `newest` (1 ms apart)."""
    return [(1, first_id + i, f"SKU-{i:05d}", 1 + i % 5, "9.99", "EUR", newest,
             newest - timedelta(milliseconds=n - 1 - i)) for i in range(n)]


def insert_pg(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO sales VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", rows)


def start_serve(config: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`steadyflow serve --port 0` in a child process; returns it and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "steadyflow", "serve", "-c", str(config), "--port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # SIGABRT prints every thread
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    match = re.search(r"serving (http://\S+/)", line)
    if match is None:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"serve did not start: {line!r}\n{err[-3000:]}")
    return proc, match.group(1)


def stop_serve(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, then the process's exit code and stderr. A server that has not ended
    within its own 30 s bound on stopping (and the 10 s after) is hung: SIGABRT makes it
    print every thread's stack (faulthandler) into the stderr returned, so the failure
    says where it hung (seen once in CI, never reproduced: the code was -9, no output)."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tail_run(values: list[float], predicate: Any) -> int:
    """Length of the run of trailing values that satisfy `predicate`."""
    n = 0
    for v in reversed(values):
        if not predicate(v):
            break
        n += 1
    return n


def expected_annotations(alert: str, labels: dict[str, str]) -> dict[str, str]:
    """The alert's annotations from alerts.yml with {{ $labels.x }} filled in."""
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    [rule] = [r for r in rules if r.get("alert") == alert]
    return {k: re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""),
                      v) for k, v in rule["annotations"].items()}


def series_values(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


# --- (1) slow then dead source: freshness grows, breaker opens, alerts fire -----------------

@pytest.fixture
def pg_source(pg_dsn: str) -> Iterator[tuple[str, FaultProxy]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(PG_SALES)
    assert urlsplit(pg_dsn).port == PG_PORT
    with FaultProxy(PG_HOST, PG_PORT) as proxy:
        yield pg_dsn, proxy


def test_serve_shows_a_source_going_slow_then_dead(pg_source: tuple[str, FaultProxy],
                                                   tmp_path: Path) -> None:
    promtool = promtool_binary()
    direct_dsn, proxy = pg_source
    via_proxy = direct_dsn.replace(f":{PG_PORT}/", f":{proxy.port}/")
    now = datetime.now(UTC)
    insert_pg(direct_dsn, pg_rows(1, 300, now - timedelta(seconds=1200)))  # an old backlog
    config = write_pipeline(tmp_path, [{
        "name": "store_pg", "kind": "postgres", "dsn": via_proxy,
        "resilience": FAST_RESILIENCE,
        "tables": [{"name": "sales", "contract": "sales", "page_size": 1000}]}],
        run={"interval": "0.3s"})
    labels = {"source": "store_pg", "table": "sales"}
    freshness: list[float] = []
    breaker: list[float] = []
    lag: list[float] = []
    marks: dict[str, int] = {}

    def take() -> dict[Any, float]:
        m = scrape(url)
        f = sample(m, "steadyflow_freshness_seconds", **labels)
        b = sample(m, "steadyflow_breaker_state", source="store_pg")
        g = sample(m, "steadyflow_lag_seconds", **labels)
        assert f is not None and b is not None and g is not None
        freshness.append(f)
        breaker.append(b)
        lag.append(g)
        return m

    proc, url = start_serve(config, "--run")  # it runs the pipeline it shows
    try:
        # healthy: the backlog loads; the table is (correctly) stale, ~1200 s behind
        wait_until(lambda: (sample(scrape(url), "steadyflow_rows_total", stage="load",
                                   **labels) or 0) >= 300, 30, "the initial load")
        take()
        assert 1190 < freshness[-1] < 1300
        # fresher data arrives: freshness drops below the 15 min SLO
        insert_pg(direct_dsn, pg_rows(1000, 20, datetime.now(UTC) - timedelta(seconds=891)))
        wait_until(lambda: (sample(take(), "steadyflow_rows_total", stage="load",
                                   **labels) or 0) >= 320, 15, "the new rows", 0.1)
        marks["fresh"] = len(freshness) - 1
        assert freshness[-1] < 900, freshness
        # slow source: still answers within its timeouts, so the breaker stays closed
        proxy.set_latency(0.15)
        for _ in range(4):
            time.sleep(0.4)
            take()
        marks["slow_end"] = len(freshness) - 1
        assert breaker[marks["fresh"]:] == [0.0] * (len(breaker) - marks["fresh"])
        # dead source: connections are reset; the breaker must open, freshness keep growing
        proxy.cut()
        marks["cut"] = len(freshness)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.4)
            take()
            if (tail_run(breaker, lambda v: v == 2.0) >= 4
                    and tail_run(freshness, lambda v: v > 900) >= 7):
                break
        else:
            raise AssertionError(f"breaker {breaker}\nfreshness {freshness}")
        health = fetch(url + "healthz")
        status = json.loads(fetch(url + "api/status"))
    finally:
        code, err = stop_serve(proc)
    assert code == 0, err[-3000:]
    assert health == "ok\n"
    [table] = status["tables"]
    assert table["breaker"] == "open" and table["state"] == "source down"
    assert "circuit breaker open" in (table["last_error"] or "")

    after_load = freshness[marks["fresh"]:]
    assert after_load == sorted(after_load), after_load  # nothing loads: it only grows
    assert after_load[-1] - after_load[0] > 2.0
    assert breaker[:marks["cut"]] == [0.0] * marks["cut"]
    first_open = breaker.index(2.0)
    assert first_open >= marks["cut"]

    # replay the scraped series through the real alert rules
    fixture = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'steadyflow_freshness_seconds{source="store_pg",table="sales"}',
                 "values": series_values(freshness)},
                {"series": 'steadyflow_breaker_state{source="store_pg"}',
                 "values": series_values(breaker)},
                {"series": 'steadyflow_lag_seconds{source="store_pg",table="sales"}',
                 "values": series_values(lag)},
            ],
            "alert_rule_test": [
                # fresh data just loaded: not stale
                {"eval_time": f"{marks['fresh']}m", "alertname": "SteadyflowTableStale",
                 "exp_alerts": []},
                # the slow source kept the breaker closed
                {"eval_time": f"{marks['slow_end']}m", "alertname": "SteadyflowBreakerOpen",
                 "exp_alerts": []},
                # open, but not yet for 2m: pending
                {"eval_time": f"{first_open}m", "alertname": "SteadyflowBreakerOpen",
                 "exp_alerts": []},
                {"eval_time": f"{len(breaker) - 1}m", "alertname": "SteadyflowBreakerOpen",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "source": "store_pg"},
                                 "exp_annotations": expected_annotations(
                                     "SteadyflowBreakerOpen", {"source": "store_pg"})}]},
                # stale is about lag (rows seen, not loaded), not age: a dead source adds
                # no lag; SteadyflowPollFailing reports it (time-based, alerts_test.yml)
                {"eval_time": f"{len(freshness) - 1}m", "alertname": "SteadyflowTableStale",
                 "exp_alerts": []},
            ],
        }],
    }
    path = tmp_path / "scraped_alerts_test.yml"
    path.write_text(yaml.safe_dump(fixture, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{path.read_text()}"
    assert "SUCCESS" in result.stdout


# --- (2) a restarted server reports true freshness from state --------------------------------

def sqlite_pipeline(root: Path, rows: int, page_size: int = 500, **extra: Any) -> Path:
    [store] = create_stores(root / "stores", 1, rows)
    return write_pipeline(root, [{
        "name": "store_001", "kind": "sqlite", "path": str(store),
        "tables": [{"name": "sales", "contract": "sales", "page_size": page_size}]}], **extra)


def test_restarted_server_reports_true_freshness_from_state(tmp_path: Path) -> None:
    config = sqlite_pipeline(tmp_path, 300)
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once().loaded_rows > 0
        [health] = pipeline.state.health()
    time.sleep(1.0)  # the new process must not look fresher than the data is
    url, stop = start_server(config, "127.0.0.1", 0)
    try:
        metrics = scrape(url)
    finally:
        stop()
    labels = {"source": "store_001", "table": "sales"}
    assert health.newest_cursor_epoch is not None and health.last_success is not None
    fresh = sample(metrics, "steadyflow_freshness_seconds", **labels)
    assert fresh is not None
    assert abs(fresh - (time.time() - health.newest_cursor_epoch)) < 1.0
    assert fresh >= 1.0
    assert sample(metrics, "steadyflow_last_success_timestamp_seconds",
                  **labels) == pytest.approx(health.last_success, abs=1e-3)


# --- (3) no password anywhere -----------------------------------------------------------------

@pytest.fixture
def mariadb_user(mysql_dsn: str) -> Iterator[tuple[str, str, str]]:
    """A MariaDB user created `IDENTIFIED BY` a password, with a sales table to read."""
    database = urlsplit(mysql_dsn).path.lstrip("/")
    user = f"sf_{uuid.uuid4().hex[:8]}"
    password = f"Right-{uuid.uuid4().hex}"
    hosts = ("%", "localhost", "127.0.0.1")
    conn = pymysql.connect(host=MY_HOST, port=MY_PORT, user="root", password="",
                           autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE `{database}`.sales (store_id BIGINT NOT NULL, "
                    "sale_id BIGINT NOT NULL, sku VARCHAR(32) NOT NULL, qty BIGINT, "
                    "unit_price DECIMAL(12,2), currency VARCHAR(3), sold_at DATETIME(6), "
                    "updated_at DATETIME(6) NOT NULL, PRIMARY KEY (store_id, sale_id))")
        cur.execute(f"INSERT INTO `{database}`.sales VALUES (1, 1, 'SKU-1', 2, 3.50, 'USD', "
                    "NOW(6), NOW(6))")
        for host in hosts:
            cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY {conn.escape(password)}")
            cur.execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'{host}'")
    try:
        yield database, user, password
    finally:
        with conn.cursor() as cur:
            for host in hosts:
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        conn.close()


def test_passwords_never_reach_logs_output_or_stored_errors(
        mariadb_user: tuple[str, str, str], pg_dsn: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    database, user, right = mariadb_user
    core = uuid.uuid4().hex
    wrong = f"Wr0ng-{core}-p@ss/w:rd"  # URL-special characters, percent-encoded in the DSN
    pg_password = f"Pg-{uuid.uuid4().hex}"
    env = {"MY_PASSWORD": quote(wrong, safe=""), "PG_PASSWORD": pg_password}
    pg = urlsplit(pg_dsn)
    no_retry = {"retries": 0, "connect_timeout": "2s", "statement_timeout": "2s"}
    table = [{"name": "sales", "contract": "sales"}]

    def owning(store: int) -> list[dict[str, Any]]:  # three stores share the target
        return [{**table[0], "warehouse_filter": {"store_id": store}}]

    config = write_pipeline(tmp_path, [
        # wrong password: authentication fails
        {"name": "store_my", "kind": "mysql", "resilience": no_retry, "tables": owning(1),
         "dsn": f"mysql://{user}:${{MY_PASSWORD}}@{MY_HOST}:{MY_PORT}/{database}"},
        # a password in a DSN that fails: no such database
        {"name": "store_pg", "kind": "postgres", "resilience": no_retry, "tables": owning(2),
         "dsn": f"postgresql://{pg.username}:${{PG_PASSWORD}}@{pg.hostname}:{pg.port}"
                f"/no_such_db_{core[:8]}"},
        # ... and a server that is not there at all
        {"name": "store_gone", "kind": "postgres", "resilience": no_retry, "tables": owning(3),
         "dsn": "postgresql://reader:${PG_PASSWORD}@127.0.0.1:1/pos"},
    ])
    secrets = [wrong, quote(wrong, safe=""), core, pg_password]
    outputs: list[str] = []
    for args in (["run", "-c", str(config)], ["extract", "-c", str(config), "--dry-run"],
                 ["status", "-c", str(config), "--json"]):
        proc = steadyflow("--log-level", "debug", *args, env=env, timeout=60)
        outputs += [proc.stdout, proc.stderr]
    run_err = outputs[1]
    assert "authentication failed" in run_err and user in run_err  # the failure was real
    assert "no_such_db_" in run_err and "Connection refused" in run_err
    assert any(line.startswith("{") for line in run_err.splitlines())  # structured debug logs

    monkeypatch.setenv("MY_PASSWORD", env["MY_PASSWORD"])
    monkeypatch.setenv("PG_PASSWORD", pg_password)
    url, stop = start_server(config, "127.0.0.1", 0)
    try:
        for path in ("", "api/status", "metrics", "healthz"):
            outputs.append(fetch(url + path))
    finally:
        stop()
    stored = [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()
              and p.name != "pipeline.yml"]
    with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as db:
        errors = [r[0] for r in db.execute(
            "SELECT last_error FROM table_health UNION ALL SELECT error FROM runs")]
    assert len([e for e in errors if e]) >= 3
    for text in [*outputs, *stored, *map(str, errors)]:
        for secret in secrets:
            assert secret not in text, f"secret leaked into: {text[:2000]}"

    # and the right password works, also without leaking at debug level
    env_ok = {"MY_PASSWORD": quote(right, safe=""), "PG_PASSWORD": pg_password}
    (tmp_path / "ok").mkdir()
    ok_config = write_pipeline(tmp_path / "ok", [{
        "name": "store_my", "kind": "mysql", "tables": table,
        "dsn": f"mysql://{user}:${{MY_PASSWORD}}@{MY_HOST}:{MY_PORT}/{database}"}])
    proc = steadyflow("--log-level", "debug", "run", "-c", str(ok_config), "--json",
                      env=env_ok, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["loaded_rows"] == 1
    assert right not in proc.stdout + proc.stderr


# --- (4) dry runs print the plan and change nothing -------------------------------------------

def add_store_rows(store: Path, n: int) -> int:
    """Append n rows newer than every row so far; returns the largest sale_id."""
    with closing(sqlite3.connect(store)) as db:
        last, newest = db.execute("SELECT max(sale_id), max(updated_at) FROM sales").fetchone()
        first = int(last) + 1
        base = datetime.strptime(newest, "%Y-%m-%d %H:%M:%S.%f").replace(
            tzinfo=UTC) + timedelta(milliseconds=1)
        db.executemany(
            f"INSERT INTO sales ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 8)})",
            [(1, first + i, f"SKU-{i:05d}", 1, "1.00", "USD", format_ts(base),
              format_ts(base + timedelta(milliseconds=i))) for i in range(n)])
        db.commit()
        return first + n - 1


def snapshot(root: Path) -> dict[str, Any]:
    """Everything durable: state and buffer rows, warehouse rows, landed files."""
    out: dict[str, Any] = {}
    for name in ("state.db", "buffer.db"):
        with closing(sqlite3.connect(f"file:{root / 'state' / name}?mode=ro", uri=True)) as db:
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
            out[name] = {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"')))
                         for t in tables}
    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    try:
        tables = con.sql("SELECT schema_name, table_name FROM duckdb_tables() "
                         "ORDER BY ALL").fetchall()
        out["warehouse"] = {f"{s}.{t}": sorted(map(repr, con.sql(
            f'SELECT * FROM "{s}"."{t}"').to_arrow_table().to_pylist())) for s, t in tables}
    finally:
        con.close()
    landing = root / "landing"
    out["landing"] = sorted((str(p.relative_to(landing)), p.stat().st_size, p.stat().st_mtime_ns)
                            for p in landing.rglob("*") if p.is_file())
    return out


def test_dry_runs_print_the_plan_and_change_nothing(tmp_path: Path) -> None:
    config = sqlite_pipeline(tmp_path, 700, page_size=200, run={"interval": "1s"})
    store = tmp_path / "stores" / "store_001.db"
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once().ok                            # everything loaded
        add_store_rows(store, 450)
        assert pipeline.extract().extracted_rows == 450          # 3 batches wait in the buffer
    newest = add_store_rows(store, 300)                          # 2 pages not extracted yet
    with closing(sqlite3.connect(tmp_path / "state" / "state.db")) as db:
        checkpoint = json.loads(db.execute("SELECT watermark FROM checkpoints").fetchone()[0])
    before = snapshot(tmp_path)
    assert before["warehouse"] and before["landing"] and before["buffer.db"]["queue"]

    proc = steadyflow("extract", "-c", str(config), "--dry-run", check=True)
    assert re.search(r"extracted_batches: 2\b", proc.stdout), proc.stdout
    assert re.search(r"extracted_rows: 300\b", proc.stdout), proc.stdout
    plan = [json.loads(line) for line in proc.stderr.splitlines() if "would land" in line]
    assert [p["rows"] for p in plan] == [200, 100], proc.stderr
    highs = [json.loads(p["msg"].split(" up to ", 1)[1]) for p in plan]
    assert highs[-1]["key"] == [1, newest]  # the plan ends at the newest source row
    # a SQLite text cursor is kept as its stored text (fixed width: text order is time order)
    def cursor(mark: dict[str, Any]) -> str:
        value = mark["cursor"]
        return str(value["ts"] if isinstance(value, dict) else value)

    assert cursor(checkpoint) < cursor(highs[0]) < cursor(highs[1])

    proc = steadyflow("load", "-c", str(config), "--dry-run", check=True)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "3 batches, 450 rows would load", proc.stdout
    assert [int(re.search(r" (\d+) rows ", line).group(1))  # type: ignore[union-attr]
            for line in lines[:-1]] == [200, 200, 50]
    ranges = [re.search(r"cursor \((.+?) \.\. (.+?)\]", line) for line in lines[:-1]]
    assert all(ranges), lines
    bounds = [(m.group(1), m.group(2)) for m in ranges if m]
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1))  # contiguous
    data = json.loads(steadyflow("load", "-c", str(config), "--dry-run", "--json",
                                 check=True).stdout)
    assert [d["rows"] for d in data] == [200, 200, 50] and all(d["queued"] for d in data)
    assert all(d["low"] and d["high"] for d in data)
    # the buffer ends where the checkpoint is (which also names the columns it is in)
    assert data[-1]["high"] == {k: v for k, v in checkpoint.items() if k != "on"}

    assert snapshot(tmp_path) == before


def test_transform_runs_while_another_process_holds_the_duckdb_warehouse(
        tmp_path: Path) -> None:
    """`run --follow` keeps an embedded DuckDB file open (DuckDB allows one writer process);
    `transform` only reads landing, so it must work beside it."""
    config = sqlite_pipeline(tmp_path, 300, page_size=200)
    store = tmp_path / "stores" / "store_001.db"
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once().ok
        add_store_rows(store, 250)
        assert pipeline.extract().extracted_rows == 250       # 2 batches landed, not loaded
        warehouse = pipeline.config.resolve(pipeline.config.warehouse.path or "")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('holding', flush=True); time.sleep(60)", str(warehouse)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        held = steadyflow("load", "-c", str(config))            # the file really is held
        assert held.returncode != 0 and "another process may hold the file" in held.stderr
        report = json.loads(steadyflow("transform", "-c", str(config), "--json",
                                       check=True).stdout)
        assert [r["rows"] for r in report] == [200, 50]
        assert all(r["good"] == r["rows"] and r["bad"] == 0 for r in report)
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipe


def test_a_reconcile_run_by_another_process_reaches_the_served_metrics(tmp_path: Path
                                                                       ) -> None:
    """`steadyflow reconcile` from cron (docs/deploy.md) next to a server that Prometheus
    scrapes: the reconcile gauges were set in the reconcile's own process only, which exits,
    so SteadyflowReconcileDiscrepancy never fired for rows the reconcile found missing; a
    restarted `run --serve` lost them too, until its next scheduled reconcile."""
    config = sqlite_pipeline(tmp_path, 300)
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once().loaded_rows > 0  # the demo store's bad rows: quarantined
    with closing(duckdb.connect(str(tmp_path / "warehouse.duckdb"))) as wh:
        wh.execute("DELETE FROM sales WHERE sale_id IN (SELECT sale_id FROM sales "
                   "ORDER BY sale_id LIMIT 2)")  # two rows lost
    labels = {"source": "store_001", "table": "sales"}
    url, stop = start_server(config, "127.0.0.1", 0)  # serving while the reconcile runs
    try:
        assert steadyflow("reconcile", "-c", str(config)).returncode == 1  # differences
        missing = wait_until(lambda: sample(scrape(url), "steadyflow_reconcile_missing_rows",
                                            **labels), 10, "the reconcile's gauges")
        assert missing == 2
    finally:
        stop()
    url, stop = start_server(config, "127.0.0.1", 0)  # a restarted server says it at once
    try:
        metrics = scrape(url)
    finally:
        stop()
    assert sample(metrics, "steadyflow_reconcile_missing_rows", **labels) == 2
    assert sample(metrics, "steadyflow_reconcile_extra_rows", **labels) == 0
    assert sample(metrics, "steadyflow_reconcile_mismatched_rows", **labels) == 0


def test_consumer_lag_is_the_age_of_the_oldest_unloaded_batch_through_a_warehouse_outage(
        pg_warehouse_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """steadyflow_consumer_lag_seconds ('age of the oldest landed batch not yet loaded',
    SteadyflowLagGrowing) was the age of the oldest message in the buffer: a batch that
    failed for good leaves the buffer and is queued again as a new message, so through a
    warehouse outage the gauge fell back to ~15 s again and again while the oldest unloaded
    batch grew a minute old, and the age alert could not fire however long it lasted.

    The load backoff is cut to a tenth (LOAD_BACKOFF), so the batch fails for good (its
    5th failure: out of the buffer, still pending in the manifest) within ~2 s instead of
    ~31 s; the test watches it parked until it is 12 s old, instead of waiting 45 s.
    (While the warehouse is out the sweep cannot read its ledger, so the parked batch is
    queued again only once it is back.)"""
    monkeypatch.setattr(pipeline_module, "LOAD_BACKOFF", 0.05)
    labels = {"source": "store_001", "table": "sales", "stage": "load"}
    with FaultProxy(PG_HOST, PG_PORT) as proxy:
        via_proxy = pg_warehouse_dsn.replace(f":{PG_PORT}/", f":{proxy.port}/")
        config = sqlite_pipeline(tmp_path, 300, run={"interval": "0.3s"}, warehouse={
            "kind": "postgres", "dsn": via_proxy, "schema": "public"})
        with Pipeline.from_yaml(config) as pipeline:
            # the process asks the warehouse once before its first extraction number
            # (StateStore.floor_seq); from then on it is unreachable: nothing loads
            pipeline.state.floor_seq()
            proxy.cut()
            loop = threading.Thread(target=pipeline.run, kwargs={"follow": True},
                                    daemon=True)
            loop.start()
            seen: list[tuple[float, float, int]] = []  # (oldest, gauge, buffer depth)
            errors = 0.0
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and (
                        not seen or seen[-1][0] <= 12 or errors < 5):
                    time.sleep(0.5)
                    pending = pipeline.state.pending_batches()
                    gauge = pipeline.metrics.value("steadyflow_consumer_lag_seconds")
                    errors = pipeline.metrics.value("steadyflow_errors_total", **labels) or 0
                    if pending and gauge is not None:
                        oldest = time.time() - min(b.landed_at for b in pending)
                        seen.append((round(oldest, 1), round(gauge, 1),
                                     pipeline.buffer.depth()))
            finally:
                pipeline.stop()
                loop.join(60)
    assert seen and seen[-1][0] > 12 and errors >= 5, (errors, seen)
    # failed for good: out of the buffer, though not loaded, while older than 5 s
    assert sum(depth == 0 for oldest, _, depth in seen if oldest > 5) >= 5, seen
    # once the loader reported it (its first failure), never more than a second behind
    assert all(gauge >= oldest - 1.5 for oldest, gauge, _ in seen if oldest > 5), seen


def test_a_read_only_server_reports_the_last_successful_run_from_state(tmp_path: Path
                                                                       ) -> None:
    """`serve` beside a pipeline run elsewhere (from cron, or a `run --follow` without
    --serve): steadyflow_last_run_success_timestamp_seconds stayed at the server's start,
    so SteadyflowNoSuccessfulRun fired 30 min after it started on a pipeline whose runs
    all went well, and did not see runs that stopped before it started."""
    config = sqlite_pipeline(tmp_path, 300)
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once().ok
    time.sleep(1.0)
    url, stop = start_server(config, "127.0.0.1", 0)
    try:
        def last_run() -> float | None:
            return sample(scrape(url), "steadyflow_last_run_success_timestamp_seconds")

        def recorded() -> float:
            with Pipeline.from_yaml(config, view=True) as p:
                at = p.state.last_successful_run()
            assert at is not None
            return float(at)

        assert last_run() == pytest.approx(recorded(), abs=1e-3)  # before this server
        time.sleep(1.0)
        steadyflow("run", "-c", str(config), check=True)  # another process runs it
        assert wait_until(lambda: last_run() == pytest.approx(recorded(), abs=1e-3), 10,
                          "the new run's time")
    finally:
        stop()


def test_a_read_only_server_counts_the_rows_another_process_loads(tmp_path: Path) -> None:
    """`serve` beside a pipeline loading elsewhere: its row counters stayed 0 (only a
    loader in its own process moved them), so rate(steadyflow_rows_total) said nothing
    was loaded. They follow the totals the pipeline records in its state."""
    config = sqlite_pipeline(tmp_path, 300)
    url, stop = start_server(config, "127.0.0.1", 0)
    try:
        steadyflow("run", "-c", str(config), check=True)  # another process loads 300 rows
        with Pipeline.from_yaml(config, view=True) as p:
            [health] = p.state.health()
        # the demo store's generator spoils a few rows: they are quarantined
        assert health.rows_changed + health.rows_quarantined == 300, health
        assert health.rows_quarantined > 0, health

        def counted() -> tuple[float | None, float | None]:
            metrics = scrape(url)
            return (sample(metrics, "steadyflow_rows_total", source="store_001",
                           table="sales", stage="load"),
                    sample(metrics, "steadyflow_quarantined_rows_total", source="store_001",
                           table="sales"))

        truth = (health.rows_changed, health.rows_quarantined)
        assert wait_until(lambda: counted() == truth, 10, f"{truth} rows counted")
    finally:
        stop()


def test_a_table_polled_hourly_while_idle_exposes_its_pause(tmp_path: Path) -> None:
    """SteadyflowPollFailing fired 15 min after each idle poll of a table whose poll_max
    (or run.interval) is longer, on an idle, healthy table: the rule allows three of its
    pauses now (deploy/prometheus/alerts_test.yml), read from this gauge."""
    config = sqlite_pipeline(tmp_path, 10, run={"interval": "1h"})
    with Pipeline.from_yaml(config) as pipeline:
        labels = {"source": "store_001", "table": "sales"}
        assert pipeline.metrics.value("steadyflow_poll_interval_seconds", **labels) == 3600
