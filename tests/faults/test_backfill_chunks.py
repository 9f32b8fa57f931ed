"""A large table's first load is split into primary-key ranges (run/backfill.py), each leased
and read on its own, and the checkpoint is set to the cursor position noted before the load
only once every range is read.

The tables have a cursor that runs opposite to the key (as in test_initial_load.py) and
even keys only, so a row can be added inside any range. Each test ends with the warehouse
equal to the source row for row by the independent oracle (`compare_target`):

- rows updated behind and ahead of the read position (in a read range, in the range being
  read, in a range not read yet), rows added in a read range, a range not read yet and past
  the last range, and rows deleted in a range not read yet, while the load runs, on real
  PostgreSQL and MariaDB, with two reader threads; a row deleted in a read range is the one
  change a cursor cannot see, and `reconcile --repair` (mirror_deletes) removes it;
- ranges of one table are read on two threads of one process;
- a SIGKILL mid-load resumes range by range: the ranges read before it are not read again;
- a reader SIGSTOPped past its range's lease records nothing once another took it over;
- two `steadyflow worker` processes split the ranges between them;
- a text key in a collation that is not byte order (PostgreSQL ICU, MariaDB's default)
  splits into ranges that cover every key once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.conftest import steadyflow, write_pipeline
from tests.faults.test_initial_load import batches, execute
from tests.faults.test_initial_load import seed as seed_sales
from tests.faults.test_network import (
    assert_warehouse_equals_sources,
    mysql_connect,
    open_pipeline,
    sql_source,
)

from steadyflow.config import load_config
from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]

ROWS = 5_000  # keys (1, 2), (1, 4), ... (1, 10000)
CHUNK = "1000"  # rows per key range: five ranges
LATER = "2027-01-01 00:00:00"  # past every seeded cursor: a change made "now"


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEADYFLOW_BACKFILL_CHUNK_ROWS", CHUNK)


def seed(kind: str, dsn: str, rows: int = ROWS) -> None:
    """sales keyed (1, 2g) for g in 1..rows, the cursor descending as the key ascends."""
    seed_sales(kind, dsn, rows, step=2)


def new_row(store: int, sale: int) -> str:
    return f"({store}, {sale}, 'SKU-NEW', 3, 1.50, 'EUR', '{LATER}', '{LATER}')"


def keyed(directory: Path) -> list[dict[str, Any]]:
    """The landed pages of the load's key ranges, in landing order."""
    return [b for b in batches(directory) if "chunk" in b["meta"]]


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_changes_during_a_split_load_are_caught_by_the_cursor_pass(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    dsn = request.getfixturevalue("pg_dsn" if kind == "postgres" else "mysql_dsn")
    seed(kind, dsn)
    source = sql_source("s", kind, dsn, page_size=400)
    del source["tables"][0]["warehouse_filter"]  # the only table of its target
    source["tables"][0]["mirror_deletes"] = True
    with open_pipeline(tmp_path, [source]) as pipeline:
        state = pipeline.state
        advance = state.advance_chunk
        seen: list[tuple[int, str]] = []

        def meanwhile(lease: Any, after: Any, rows: int) -> None:
            advance(lease, after, rows)
            seen.append((lease.chunk, after.to_json()))
            if len(seen) != 4:
                return
            # one reader: range 0 (keys 2..2000) is read, range 1 (2002..4000) is read up
            # to key 2800, ranges 2..4 (..6000, ..8000, ..10000) are not read yet
            execute(kind, dsn,
                    # updated: in range 0, in range 1 behind and ahead of the position,
                    # in range 4
                    f"UPDATE sales SET qty = qty + 100, updated_at = '{LATER}' "
                    "WHERE sale_id IN (10, 2100, 3900, 9990)",
                    # added: in range 0, in range 1 ahead, in range 3, past the last range
                    f"INSERT INTO sales VALUES {new_row(1, 11)}, {new_row(1, 3001)}, "
                    f"{new_row(1, 7001)}, {new_row(1, 20000)}",
                    # deleted: in range 4 (not read yet), and in ranges 0 and 1 behind the
                    # position (read already)
                    "DELETE FROM sales WHERE sale_id IN (9000, 20, 2400)")

        state.advance_chunk = meanwhile  # type: ignore[method-assign]
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        assert seen[3][0] == 1 and '2800' in seen[3][1], seen
        chunks = state.backfill_chunks("s", "sales")
        assert [c.status for c in chunks] == ["done"] * 5
        # ranges read after the writes hold what the writes left: range 3 its new row,
        # range 4 one row less; range 1 its new row unless its next page was read ahead
        # before the writes (then only the cursor pass brings it)
        rows = [c.rows for c in chunks]
        assert rows[0] == 1000 and rows[1] in (1000, 1001) and rows[2:] == [1000, 1001, 999]
        assert state.backfill("s", "sales") is None
        checkpoint = state.checkpoint("s", "sales")
        assert checkpoint is not None and str(checkpoint.cursor).startswith("2027-01-01")
        qty = pipeline.warehouse.query(  # type: ignore[attr-defined]
            "SELECT qty FROM main.sales WHERE sale_id IN (10, 2100, 3900, 9990)")
        assert qty.num_rows == 4 and all(q > 100 for q in qty.column("qty").to_pylist())
        # the rows deleted behind the position are still in the warehouse: no cursor sees
        # a delete. Reconciliation finds them and (mirror_deletes) removes them.
        with pytest.raises(AssertionError):
            assert_warehouse_equals_sources(pipeline)
        reports = reconcile(pipeline, options=Options(repair=True))
        assert [r.error for r in reports] == [None]
        assert_warehouse_equals_sources(pipeline, ROWS + 1)
    pages = keyed(tmp_path)
    assert [b["meta"]["chunk"] for b in pages] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert all(b["meta"]["order"] == "key" for b in pages)


def test_ranges_of_one_table_are_read_on_several_threads(
        tmp_path: Path, pg_dsn: str) -> None:
    seed("postgres", pg_dsn)
    source = sql_source("s", "postgres", pg_dsn, page_size=250, max_concurrent_queries=2)
    with open_pipeline(tmp_path, [source]) as pipeline:
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        chunks = pipeline.state.backfill_chunks("s", "sales")
        # the five planned ranges, and the far parts idle slots cut off them (run/steal.py)
        assert [c.low.key if c.low else None for c in chunks[:5]] == [
            None, (2000,), (4000,), (6000,), (8000,)]
        assert all(c.status == "done" for c in chunks)
        assert sum(c.rows for c in chunks) == ROWS  # each row read once
        assert len({c.holder for c in chunks}) >= 2  # each thread has a holder of its own
        assert_warehouse_equals_sources(pipeline, ROWS)


def test_a_kill_mid_load_resumes_range_by_range(tmp_path: Path, pg_dsn: str) -> None:
    seed("postgres", pg_dsn)
    cfg = write_pipeline(tmp_path, [sql_source("s", "postgres", pg_dsn, page_size=400)])
    env = {"STEADYFLOW_BACKFILL_CHUNK_ROWS": CHUNK}
    # one reader: ranges 0 and 1 are three pages each (400, 400, 200); the 7th publish is
    # range 2's first page, killed after its enqueue, before its position moved
    proc = steadyflow("run", "-c", str(cfg),
                      env={**env, "STEADYFLOW_FAILPOINT": "extract.after_enqueue:7"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Pipeline(load_config(cfg)) as pipeline:
        chunks = pipeline.state.backfill_chunks("s", "sales")
        assert [(c.status, c.rows) for c in chunks] == [
            ("done", 1000), ("done", 1000), ("pending", 0), ("pending", 0), ("pending", 0)]
        assert pipeline.state.checkpoint("s", "sales") is None
    before = keyed(tmp_path)
    assert [b["meta"]["chunk"] for b in before] == [0, 0, 0, 1, 1, 1, 2]

    proc = steadyflow("run", "-c", str(cfg), "--json", check=True,
                      env={**env, "STEADYFLOW_FAILPOINT": ""})
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # ranges 2..4 only (range 2's first page again: the same content, the same batch)
    assert summary["extracted_rows"] == 3_000
    after = keyed(tmp_path)
    assert [b["meta"]["chunk"] for b in after[len(before):]] == [2, 2, 3, 3, 3, 4, 4, 4]
    with Pipeline(load_config(cfg)) as pipeline:
        assert [(c.status, c.rows) for c in pipeline.state.backfill_chunks("s", "sales")] \
            == [("done", 1000)] * 5
        assert pipeline.state.checkpoint("s", "sales") is not None
        assert_warehouse_equals_sources(pipeline, ROWS)
        ledger = pipeline.warehouse.query(  # type: ignore[attr-defined]
            "SELECT batch_id, count(*) AS n FROM main._steadyflow_ledger GROUP BY 1")
        assert set(ledger.column("n").to_pylist()) == {1}
        assert ledger.num_rows == len({b["batch_id"] for b in batches(tmp_path)})


def test_two_worker_processes_split_the_ranges(tmp_path: Path, pg_dsn: str) -> None:
    seed("postgres", pg_dsn, 10_000)
    source = sql_source("s", "postgres", pg_dsn, page_size=250)
    cfg = write_pipeline(tmp_path, [source], warehouse={
        "kind": "postgres", "dsn": pg_dsn, "schema": "wh"}, run={"interval": 0.5})
    env = {**os.environ, "STEADYFLOW_BACKFILL_CHUNK_ROWS": "500", "STEADYFLOW_FAILPOINT":
           "extract.after_enqueue:1:sleep0.05"}  # a page takes a while: both get ranges
    logs = [(tmp_path / f"w{i}.log").open("w") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "steadyflow", "--log-level", "info",
                               "worker", "-c", str(cfg)], stdout=out,
                              stderr=subprocess.STDOUT, env=env) for out in logs]
    try:
        with Pipeline(load_config(cfg)) as pipeline:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if pipeline.state.checkpoint("s", "sales") is not None and \
                        not pipeline.state.pending_batches():
                    break
                time.sleep(0.5)
            chunks = pipeline.state.backfill_chunks("s", "sales")
            assert len(chunks) == 20 and all(c.status == "done" for c in chunks), chunks
            assert sum(c.rows for c in chunks) == 10_000
            readers = {str(c.holder).split(":")[1] for c in chunks}
            assert readers == {str(p.pid) for p in procs}, chunks
            assert_warehouse_equals_sources(pipeline, 10_000)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        for out in logs:
            out.close()


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_range_reader_stalled_past_its_lease_records_nothing(
        tmp_path: Path, pg_dsn: str) -> None:
    seed("postgres", pg_dsn)
    # a range is one page (1000 rows < 1001: no read-ahead thread, which takes a sequence
    # number in a state transaction, can be stopped inside it and lock the SQLite state)
    cfg = write_pipeline(tmp_path, [sql_source("s", "postgres", pg_dsn, page_size=1001)])
    lease = 2.0
    env = {"STEADYFLOW_BACKFILL_CHUNK_ROWS": CHUNK, "STEADYFLOW_EXTRACT_LEASE": str(lease)}
    # A reads range 1 (keys 2002..4000), then stops just before landing it
    stale = subprocess.Popen(
        [sys.executable, "-m", "steadyflow", "extract", "-c", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env, "STEADYFLOW_FAILPOINT": "extract.before_land:2:SIGSTOP"})
    try:
        deadline = time.monotonic() + 60
        while not stopped(stale.pid):
            assert stale.poll() is None, stale.communicate()
            assert time.monotonic() < deadline, "the reader never reached its failpoint"
            time.sleep(0.05)
        time.sleep(lease + 1.0)  # past its range's lease
        # a row of that range changes: A's page is now stale, and a batch of its own
        execute("postgres", pg_dsn, f"UPDATE sales SET qty = qty + 100, updated_at = "
                                    f"'{LATER}' WHERE sale_id = 2100")
        # B takes range 1 over (and the rest), ends the load and loads it
        takeover = steadyflow("run", "-c", str(cfg), env={**env, "STEADYFLOW_FAILPOINT": ""})
        assert takeover.returncode == 0, takeover.stdout + takeover.stderr
        landed = batches(tmp_path)
    finally:
        stale.send_signal(signal.SIGCONT)
    out, err = stale.communicate(timeout=120)
    assert "lost its lease on chunk 1" in out + err, out + err
    assert batches(tmp_path) == landed  # A's page was never recorded
    with Pipeline(load_config(cfg)) as pipeline:
        chunks = pipeline.state.backfill_chunks("s", "sales")
        assert [(c.status, c.rows, c.generation) for c in chunks] == [
            ("done", 1000, 1), ("done", 1000, 2), ("done", 1000, 1), ("done", 1000, 1),
            ("done", 1000, 1)]
        assert pipeline.run_once().ok
        assert_warehouse_equals_sources(pipeline, ROWS)
        qty = pipeline.warehouse.query(  # type: ignore[attr-defined]
            "SELECT qty FROM main.sales WHERE sale_id = 2100")
        assert qty.column("qty").to_pylist()[0] > 100


CODES: dict[str, Any] = {
    "primary_key": ["code", "n"], "cursor": "updated_at",
    "columns": {"code": {"type": "string", "nullable": False},
                "n": {"type": "int64", "nullable": False},
                "val": {"type": "string"},
                "updated_at": {"type": "timestamp", "nullable": False}}}
WORDS = ["apple", "Apple", "APPLE", "banana", "Banana", "éclair", "Éclair", "eclair", "zebra",
         "Zebra", "ångström", "Ähre", "aa", "ab", "Ab", "ß", "ss", "中文", "😀x", "x"]


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_text_key_in_a_collation_that_is_not_byte_order_splits(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """(code, n) with codes that a case- and accent-aware collation (PostgreSQL ICU, the
    MariaDB default) orders unlike their bytes: the boundaries are compared by the
    database, so the ranges still cover every key once."""
    from tests.support.gen import Col, Table
    from tests.support.oracle import read_source, read_warehouse

    dsn = request.getfixturevalue("pg_dsn" if kind == "postgres" else "mysql_dsn")
    rows = [(f"{WORDS[i % len(WORDS)]}{i % 7}", i, f"v{i}") for i in range(3_000)]
    if kind == "postgres":
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute('CREATE TABLE codes (code text COLLATE "und-x-icu" NOT NULL, '
                         "n bigint NOT NULL, val text, updated_at timestamptz NOT NULL "
                         "DEFAULT now(), PRIMARY KEY (code, n))")
            conn.execute("CREATE INDEX codes_cursor ON codes (updated_at, code, n)")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO codes (code, n, val) VALUES (%s, %s, %s)", rows)
    else:
        with mysql_connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE codes (code VARCHAR(40) CHARACTER SET utf8mb4 NOT NULL,"
                        " n BIGINT NOT NULL, val TEXT, updated_at DATETIME(6) NOT NULL "
                        "DEFAULT NOW(6), PRIMARY KEY (code, n), "
                        "KEY codes_cursor (updated_at, code, n))")
            cur.executemany("INSERT INTO codes (code, n, val) VALUES (%s, %s, %s)", rows)
    source = {"name": "s", "kind": kind, "dsn": dsn, "tables": [
        {"name": "codes", "contract": "codes", "target": "codes", "page_size": 200}]}
    with open_pipeline(tmp_path, [source], contracts={"codes": CODES}) as pipeline:
        assert pipeline.run_once().ok
        chunks = pipeline.state.backfill_chunks("s", "codes")
        assert [(c.status, c.rows) for c in chunks] == [("done", 1000)] * 3
        schema = pipeline.config.warehouse.schema_
    table = Table("codes", [Col("code", "text"), Col("n", "int64"), Col("val", "text"),
                            Col("updated_at", "ts")], ["code", "n"], "updated_at")
    expected = read_source(kind, dsn, table)
    assert len(expected) == 3_000
    assert read_warehouse("duckdb", str(tmp_path / "warehouse.duckdb"), schema,
                          table) == expected
