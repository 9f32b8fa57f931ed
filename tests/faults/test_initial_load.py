"""The first run of a table reads it in primary-key order, then hands over to the cursor.

The tables here have a cursor that runs *opposite* to the key, so reading in key order and
reading in cursor order visit rows in reverse of each other: a hand-over that lost track of
either order would show as missing rows. Each test ends with the warehouse equal to the
source row for row (`compare_target`: missing == extra == duplicates == mismatched == 0):

- rows changed, added behind and ahead of the load's key position while it runs, on real
  PostgreSQL and MariaDB, are all in the warehouse after the same run;
- a SIGKILL in the middle of the load resumes after the last landed page (not from the
  start), and every batch is in the ledger once;
- `initial_load: cursor` keeps the cursor order for the first run too.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tests.conftest import steadyflow, write_pipeline
from tests.faults.test_network import (
    assert_warehouse_equals_sources,
    mysql_connect,
    open_pipeline,
    sql_source,
)

from steadyflow.config import load_config
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]

ROWS = 5_000
LATER = "2027-01-01 00:00:00"  # past every seeded cursor value: a change made "now"


def seed(kind: str, dsn: str, rows: int = ROWS, step: int = 1) -> None:
    """sales keyed (1, step * g) for g in 1..rows, the cursor descending as the key ascends
    (ties of 3)."""
    ts = "TIMESTAMP '2026-01-01 00:00:00' + INTERVAL ((%d - seq) DIV 3) SECOND"
    if kind == "postgres":
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("""CREATE TABLE sales (store_id bigint NOT NULL,
                sale_id bigint NOT NULL, sku text NOT NULL, qty bigint, unit_price numeric(12,2),
                currency text, sold_at timestamptz, updated_at timestamptz NOT NULL,
                PRIMARY KEY (store_id, sale_id))""")
            conn.execute("CREATE INDEX sales_cursor ON sales (updated_at, store_id, sale_id)")
            conn.execute(f"""INSERT INTO sales SELECT 1, {step} * g, 'SKU-' || g, 1 + g % 7,
                (g % 1000) / 8.0, 'EUR', ts, ts FROM generate_series(1, {rows}) g,
                LATERAL (SELECT timestamptz '2026-01-01 00:00:00+00'
                         + (({rows} - g) / 3) * interval '1 second' AS ts) t""")
        return
    with mysql_connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("""CREATE TABLE sales (store_id BIGINT NOT NULL, sale_id BIGINT NOT NULL,
            sku VARCHAR(40) NOT NULL, qty BIGINT, unit_price DECIMAL(12,2), currency VARCHAR(3),
            sold_at DATETIME(6), updated_at DATETIME(6) NOT NULL,
            PRIMARY KEY (store_id, sale_id), KEY sales_cursor (updated_at, store_id, sale_id))""")
        cur.execute(f"""INSERT INTO sales SELECT 1, {step} * g, CONCAT('SKU-', g), 1 + g % 7,
            (g % 1000) / 8, 'EUR', ts, ts FROM (SELECT seq AS g, {ts % rows} AS ts
            FROM seq_1_to_{rows}) x""")


def execute(kind: str, dsn: str, *statements: str) -> None:
    if kind == "postgres":
        with psycopg.connect(dsn, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql)  # type: ignore[arg-type]
        return
    with mysql_connect(dsn) as conn, conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)


def batches(directory: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(directory / "state" / "state.db")) as db:
        return [json.loads(ref) for ref, in db.execute(
            "SELECT ref FROM manifest ORDER BY landed_at, rowid")]


def backfills(directory: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(directory / "state" / "state.db")) as db:
        return db.execute("SELECT source, tbl, after FROM backfills").fetchall()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_changes_made_during_the_key_order_load_reach_the_warehouse_in_the_same_run(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    dsn = request.getfixturevalue("pg_dsn" if kind == "postgres" else "mysql_dsn")
    seed(kind, dsn)
    source = sql_source("s", kind, dsn, page_size=1_000)
    # the only table of its target: no warehouse_filter, so the row added behind the load's
    # position may carry another store_id (0) and is this table's like any other
    del source["tables"][0]["warehouse_filter"]
    with open_pipeline(tmp_path, [source]) as pipeline:
        advance = pipeline.state.advance_backfill
        positions: list[Any] = []

        def meanwhile(source: str, table: str, after: Any, **lease: Any) -> None:
            advance(source, table, after, **lease)
            positions.append(after.as_tuple())
            if len(positions) == 2:  # keys 1..2000 landed, 2001..5000 not yet
                execute(kind, dsn,
                        # changed behind the load's position, and ahead of it
                        f"UPDATE sales SET qty = qty + 100, updated_at = '{LATER}' "
                        "WHERE sale_id IN (10, 4990)",
                        # added behind it (a key below every landed one), and ahead of it
                        "INSERT INTO sales VALUES (0, 7, 'SKU-NEW', 3, 1.50, 'EUR', "
                        f"'{LATER}', '{LATER}'), (1, 9000, 'SKU-NEW', 4, 2.50, 'EUR', "
                        f"'{LATER}', '{LATER}')")

        pipeline.state.advance_backfill = meanwhile  # type: ignore[method-assign]
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        assert positions[:2] == [(1, 1000), (1, 2000)]  # landed in key order
        assert_warehouse_equals_sources(pipeline, ROWS + 2)
        qty = pipeline.warehouse.query(  # type: ignore[attr-defined]
            "SELECT sale_id, qty FROM main.sales WHERE sale_id IN (10, 4990) ORDER BY 1")
        assert [q > 100 for q in qty.column("qty").to_pylist()] == [True, True]
        checkpoint = pipeline.state.checkpoint("s", "sales")
        assert checkpoint is not None and str(checkpoint.cursor).startswith("2027-01-01")
    landed = batches(tmp_path)
    keyed = [b for b in landed if b["meta"].get("order") == "key"]
    # the key-order pages hold the seeded rows and the row added ahead of the position
    # (key 9000, a sixth page); the row added behind it came with the cursor pass
    assert len(keyed) == 6 and sum(b["rows"] for b in keyed) == ROWS + 1
    assert all(b["meta"].get("order") is None for b in landed[len(keyed):])  # then cursor
    assert backfills(tmp_path) == []


def test_a_kill_mid_load_resumes_after_the_last_landed_page(
        tmp_path: Path, pg_dsn: str) -> None:
    seed("postgres", pg_dsn)
    # pages stay 1,000 rows: FAST's 2 s statement timeout halves a page that took over 1 s,
    # which a busy machine (parallel test workers) reaches, and a 500-row page 2 moved the
    # resume point (3,500 rows read again); 60 s allows 15 s a page
    source = sql_source("s", "postgres", pg_dsn, page_size=1_000, statement_timeout=60)
    cfg = write_pipeline(tmp_path, [source])
    proc = steadyflow("run", "-c", str(cfg),
                      env={"STEADYFLOW_FAILPOINT": "extract.after_enqueue:3"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [(s, t) for s, t, _ in backfills(tmp_path)] == [("s", "sales")]
    before = len(batches(tmp_path))
    assert before == 3

    proc = steadyflow("run", "-c", str(cfg), "--json", env={"STEADYFLOW_FAILPOINT": ""},
                      check=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    landed = batches(tmp_path)
    # page 3 was published but its position not recorded: it is read again (the same
    # content, so the same batch id: not a new batch), then pages 4 and 5; nothing changed
    # at the source, so the cursor pass after them (lookback 0) finds nothing
    assert summary["extracted_rows"] == 3_000  # resumed, not started over
    assert [b["meta"].get("order") for b in landed[before:]] == ["key", "key"]
    assert backfills(tmp_path) == []
    with Pipeline(load_config(cfg)) as pipeline:
        assert_warehouse_equals_sources(pipeline, ROWS)
        ledger = pipeline.warehouse.query(  # type: ignore[attr-defined]
            "SELECT batch_id, count(*) AS n FROM main._steadyflow_ledger GROUP BY 1")
        assert set(ledger.column("n").to_pylist()) == {1}
        assert ledger.num_rows == len({b["batch_id"] for b in landed})


def test_initial_load_cursor_reads_the_first_run_by_cursor(
        tmp_path: Path, pg_dsn: str) -> None:
    seed("postgres", pg_dsn, 2_500)
    source = sql_source("s", "postgres", pg_dsn, page_size=1_000)
    source["tables"][0]["initial_load"] = "cursor"
    with open_pipeline(tmp_path, [source]) as pipeline:
        assert pipeline.run_once().ok
        assert_warehouse_equals_sources(pipeline, 2_500)
    landed = batches(tmp_path)
    assert len(landed) == 3 and all(b["meta"].get("order") is None for b in landed)
    # cursor order: the first page holds the highest keys (the cursor descends as they rise)
    first = pq.read_table(tmp_path / "landing" / landed[0]["path"]).column("sale_id")
    assert pc.min(first).as_py() > 1_000 and pc.max(first).as_py() == 2_500
