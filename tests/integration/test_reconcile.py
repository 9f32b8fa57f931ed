"""Acceptance for `steadyflow reconcile`: real PostgreSQL, MariaDB and SQLite sources feeding one
`sales` table in a DuckDB or PostgreSQL warehouse.

Load with the pipeline; a first reconcile is clean (with rows at every source that fail
validation and sit in quarantine). Then, per source: delete a warehouse row, corrupt two
warehouse values, push one warehouse cursor a day ahead, insert an extra warehouse row,
hard-delete a source row, change a source row without touching its cursor. Reconcile must
name exactly those keys; --repair fixes them through repair batches; reconciling again
reports zero, and an independent row-by-row comparison agrees.

Also: the canonical checksum is the same on all four engines for the same awkward rows.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pymysql
import pytest
from tests.conftest import steadyflow, write_pipeline
from tests.support.reconcile_data import (
    DDL,
    NAMES,
    duckdb_run,
    fingerprint,
    reference_hashes,
    rows,
    side,
    sqlite_run,
    stored,
)

from steadyflow.reconcile.compare import compare_target
from steadyflow.reconcile.runner import Options, TableReport, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

N = 1_200
BASE = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
COLUMNS = ("store_id", "sale_id", "sku", "qty", "unit_price", "currency", "sold_at",
           "updated_at")
Exec = Callable[[str, list[tuple[Any, ...]] | None], list[tuple[Any, ...]]]


# --- the four engines agree ------------------------------------------------------------------
def _mysql_conn(dsn: str) -> pymysql.connections.Connection[Any]:
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                           database=dsn.rsplit("/", 1)[1], autocommit=True, charset="utf8mb4")
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
    return conn


def test_checksums_are_equal_on_all_four_engines(pg_dsn: str, mysql_dsn: str) -> None:
    data = rows()
    marks = ", ".join(["%s"] * len(NAMES))
    with psycopg.connect(pg_dsn, autocommit=True, options="-c TimeZone=UTC") as pg:
        pg.execute(DDL["postgres"])
        with pg.cursor() as cur:
            cur.executemany(f"INSERT INTO awkward VALUES ({marks})",
                            [stored("postgres", r) for r in data])

        def pg_run(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
            return pg.execute(sql.encode(), params).fetchall()

        pg_print = fingerprint(side("postgres", pg_run))
    my = _mysql_conn(mysql_dsn)
    try:
        with my.cursor() as cur:
            cur.execute(DDL["mysql"])
            cur.executemany(f"INSERT INTO awkward VALUES ({marks})",
                            [stored("mysql", r) for r in data])

        def my_run(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
            with my.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())

        my_print = fingerprint(side("mysql", my_run))
    finally:
        my.close()
    q = ", ".join("?" * len(NAMES))
    with closing(sqlite3.connect(":memory:")) as lite, duckdb.connect() as duck:
        lite.execute(DDL["sqlite"])
        lite.executemany(f"INSERT INTO awkward VALUES ({q})", [stored("sqlite", r) for r in data])
        duck.execute(DDL["duckdb"])
        duck.executemany(f"INSERT INTO awkward VALUES ({q})", [stored("duckdb", r) for r in data])
        lite_print = fingerprint(side("sqlite", sqlite_run(lite)))
        duck_print = fingerprint(side("duckdb", duckdb_run(duck)))
    reference = reference_hashes(data)
    for name, (aggs, hashes) in {"postgres": pg_print, "mariadb": my_print,
                                 "sqlite": lite_print, "duckdb": duck_print}.items():
        assert hashes == reference, name
        assert aggs == duck_print[0], name


# --- three sources, one warehouse table --------------------------------------------------------
def sale(store: int, i: int) -> tuple[Any, ...]:
    cursor = BASE + timedelta(seconds=i // 2, microseconds=7 * (i % 2))  # pairs ~share a second
    return (store, i, f"SKU-{(i * 7919) % 100_000:05d}", 1 + i % 9,
            Decimal(100 + (i * 37) % 90_000) / 100, ("USD", "EUR", "GBP")[i % 3],
            None if i % 13 == 0 else cursor - timedelta(minutes=5), cursor)


def _pg(dsn: str) -> Exec:
    def execute(sql: str, params: list[tuple[Any, ...]] | None) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn, autocommit=True, options="-c TimeZone=UTC") as conn, \
                conn.cursor() as cur:
            if params is None:
                cur.execute(sql.encode())
            else:
                cur.executemany(sql.encode(), params)
            return cur.fetchall() if cur.description else []
    return execute


def _my(dsn: str) -> Exec:
    def execute(sql: str, params: list[tuple[Any, ...]] | None) -> list[tuple[Any, ...]]:
        conn = _mysql_conn(dsn)
        try:
            with conn.cursor() as cur:
                if params is None:
                    cur.execute(sql)
                else:
                    cur.executemany(sql, [tuple(
                        v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime)
                        else v for v in p) for p in params])
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()
    return execute


def _lite(path: Path) -> Exec:
    def execute(sql: str, params: list[tuple[Any, ...]] | None) -> list[tuple[Any, ...]]:
        sql = sql.replace("%s", "?")
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            if params is None:
                return conn.execute(sql).fetchall()
            conn.execute("BEGIN")  # one transaction, not one fsync per row
            conn.executemany(sql, [tuple(
                v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else
                str(v) if isinstance(v, Decimal) else v for v in p) for p in params])
            conn.execute("COMMIT")
            return []
    return execute


CREATE = {
    "postgres": "CREATE TABLE sales (store_id bigint NOT NULL, sale_id bigint NOT NULL, sku text "
                "NOT NULL, qty bigint, unit_price numeric(12,2), currency text, sold_at "
                "timestamptz, updated_at timestamptz NOT NULL, PRIMARY KEY (store_id, sale_id))",
    "mysql": "CREATE TABLE sales (store_id BIGINT NOT NULL, sale_id BIGINT NOT NULL, sku "
             "VARCHAR(32) NOT NULL, qty BIGINT, unit_price DECIMAL(12,2), currency VARCHAR(3), "
             "sold_at DATETIME(6) NULL, updated_at DATETIME(6) NOT NULL, "
             "PRIMARY KEY (store_id, sale_id))",
    "sqlite": "CREATE TABLE sales (store_id INTEGER NOT NULL, sale_id INTEGER NOT NULL, sku TEXT "
              "NOT NULL, qty INTEGER, unit_price TEXT, currency TEXT, sold_at TEXT, "
              "updated_at TEXT NOT NULL, PRIMARY KEY (store_id, sale_id))",
}
# rows each source holds that validation rejects (they go to quarantine, never to the warehouse)
INVALID = {
    "postgres": ["UPDATE sales SET qty = 0 WHERE sale_id = 7",
                 "UPDATE sales SET currency = 'XXX' WHERE sale_id = 8"],
    "mysql": ["UPDATE sales SET unit_price = -5 WHERE sale_id = 7",
              "UPDATE sales SET currency = 'usd' WHERE sale_id = 8"],  # case matters
    "sqlite": ["UPDATE sales SET qty = 'abc' WHERE sale_id = 7",
               "UPDATE sales SET sold_at = 'yesterday' WHERE sale_id = 8"],
}
INDEX = "CREATE INDEX sales_cursor ON sales (updated_at, store_id, sale_id)"
STORES = {"postgres": 1, "mysql": 2, "sqlite": 3}


@pytest.fixture(params=["duckdb", "postgres"])
def setup(request: pytest.FixtureRequest, tmp_path: Path, pg_dsn: str, mysql_dsn: str
          ) -> Iterator[tuple[Path, dict[str, Exec], Exec]]:
    """(config path, per-kind source executors, warehouse executor) after creating the data."""
    sources = {"postgres": _pg(pg_dsn), "mysql": _my(mysql_dsn),
               "sqlite": _lite(tmp_path / "store3.db")}
    for kind, execute in sources.items():
        execute(CREATE[kind], None)
        execute(f"INSERT INTO sales ({', '.join(COLUMNS)}) VALUES "
                f"({', '.join(['%s'] * len(COLUMNS))})", [sale(STORES[kind], i)
                                                           for i in range(1, N + 1)])
        for stmt in [*INVALID[kind], INDEX]:
            execute(stmt, None)
    table = {"name": "sales", "contract": "sales", "page_size": 500, "mirror_deletes": True}
    config = write_pipeline(tmp_path, [
        {"name": "store1", "kind": "postgres", "dsn": pg_dsn,
         "tables": [{**table, "warehouse_filter": {"store_id": 1}}]},
        {"name": "store2", "kind": "mysql", "dsn": mysql_dsn,
         "tables": [{**table, "warehouse_filter": {"store_id": 2}}]},
        {"name": "store3", "kind": "sqlite", "path": "store3.db",
         "tables": [{**table, "warehouse_filter": {"store_id": 3}}]},
    ], warehouse=({"kind": "duckdb", "path": "warehouse.duckdb"} if request.param == "duckdb"
                  else {"kind": "postgres", "dsn": pg_dsn, "schema": "wh"}))
    yield config, sources, _pg(pg_dsn)


def _wh_exec(pipeline: Pipeline, pg: Exec) -> Callable[[str], None]:
    """Run a statement against the warehouse behind the pipeline's back."""
    if pipeline.config.warehouse.kind == "duckdb":
        wh = pipeline.warehouse

        def duck(sql: str) -> None:
            with wh._lock:  # type: ignore[attr-defined]
                wh._conn.execute(sql.replace("{t}", "main.sales"))  # type: ignore[attr-defined]
        return duck
    return lambda sql: pg(sql.replace("{t}", "wh.sales"), None) and None


def _by_table(reports: list[TableReport]) -> dict[str, TableReport]:
    return {r.source: r for r in reports}


def _keys(report: TableReport, name: str) -> set[int]:
    return {k[1] for k in report.examples.get(name, [])}


def test_reconcile_finds_each_difference_exactly_and_repair_fixes_it(
        setup: tuple[Path, dict[str, Exec], Exec]) -> None:
    config, sources, pg = setup
    with Pipeline.from_yaml(config) as pipeline:
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        assert summary.quarantined_rows == 6

        clean = _by_table(reconcile(pipeline))
        # PostgreSQL (15) to PostgreSQL shares the server's record hash; every other pair md5
        shared = {"store1": pipeline.config.warehouse.kind == "postgres"}
        for name, r in clean.items():
            assert r.error is None, r.error
            assert r.hash == ("hash_record_extended" if shared.get(name) else "md5"), name
            assert (r.missing, r.extra, r.mismatched, r.duplicates) == (0, 0, 0, 0), name
            assert r.quarantined == 2, name  # the invalid rows: expected in quarantine
            assert r.rows_compared == r.warehouse_rows == N - 2  # 2 invalid (and the
            # checkpoint row is compared: nothing is in flight)
            assert r.buckets > 1 and r.leaves == 0 and r.leaf_rows == 0  # aggregates only

        wh = _wh_exec(pipeline, pg)
        for kind, execute in sources.items():
            store = STORES[kind]
            wh(f"DELETE FROM {{t}} WHERE store_id = {store} AND sale_id = 100")
            wh(f"UPDATE {{t}} SET qty = qty + 1000 WHERE store_id = {store} AND sale_id = 200")
            wh(f"UPDATE {{t}} SET unit_price = unit_price + 0.01 "
               f"WHERE store_id = {store} AND sale_id = 250")
            wh(f"UPDATE {{t}} SET updated_at = updated_at + INTERVAL 1 DAY "
               f"WHERE store_id = {store} AND sale_id = 500".replace(
                   "INTERVAL 1 DAY", "INTERVAL '1 day'"))
            wh(f"INSERT INTO {{t}} (store_id, sale_id, sku, qty, unit_price, currency, "
               f"sold_at, updated_at) SELECT store_id, 5000, sku, qty, unit_price, currency, "
               f"sold_at, updated_at FROM {{t}} WHERE store_id = {store} AND sale_id = 10")
            execute("DELETE FROM sales WHERE sale_id = 300", None)
            execute("UPDATE sales SET sku = 'changed' WHERE sale_id = 400", None)  # same cursor

        found = _by_table(reconcile(pipeline))
        for name, r in found.items():
            assert r.error is None, r.error
            assert r.hash == ("hash_record_extended" if shared.get(name) else "md5"), name
            assert (r.missing, r.extra, r.mismatched) == (1, 2, 4), (name, r.examples)
            assert _keys(r, "missing") == {100}
            assert _keys(r, "extra") == {300, 5000}
            assert _keys(r, "mismatched") == {200, 250, 400, 500}
            assert r.quarantined == 2
        history = {h["source"]: h for h in pipeline.state.last_reconcile()}
        assert history["store2"]["missing"] == 1 and history["store2"]["extra"] == 2
        assert pipeline.metrics.value("steadyflow_reconcile_mismatched_rows", source="store3",
                                      table="sales") == 4

        repaired = _by_table(reconcile(pipeline, options=Options(repair=True)))
        for name, r in repaired.items():
            assert r.repair is not None and r.after is not None, name
            assert r.repair["upserted"] == 5  # 1 missing + 4 mismatched, current source rows
            # 2 extra; the warehouse row that was ahead is replaced by its repair row (the
            # later sequence wins), never deleted first: no window in which it is gone
            assert r.repair["deleted"] == 2
            a = r.after
            assert (a.missing, a.extra, a.mismatched, a.duplicates) == (0, 0, 0, 0), name
            assert r.clean
        for h in pipeline.state.last_reconcile():
            assert (h["missing"], h["extra"], h["mismatched"]) == (0, 0, 0)
        assert pipeline.metrics.value("steadyflow_reconcile_extra_rows", source="store1",
                                      table="sales") == 0
        repair_batches = [b for b in pipeline.state.batches(limit=10_000)
                          if json.loads(b["ref"])["kind"] == "repair"]
        assert repair_batches and all(b["status"] == "loaded" for b in repair_batches)
        assert all(pipeline.warehouse.is_loaded(b["batch_id"]) for b in repair_batches)

        again = reconcile(pipeline)
        assert all(r.clean and r.leaves == 0 for r in again)
        assert pipeline.run_once().ok  # the pipeline goes on as before
        rows = pipeline.warehouse.query(  # type: ignore[attr-defined]
            f"SELECT * FROM {'main' if pipeline.config.warehouse.kind == 'duckdb' else 'wh'}"
            ".sales")
    independent = compare_target(pipeline.config, "sales", rows)
    assert independent.clean, independent.examples
    assert independent.quarantined == 6

    if pipeline.config.warehouse.kind == "duckdb":  # the CLI, once, in its own process
        proc = steadyflow("reconcile", "-c", str(config), "--table", "store3.sales", "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["clean"] and [t["source"] for t in report["tables"]] == ["store3"]


def test_a_table_that_cannot_be_compared_exits_2_not_differences(tmp_path: Path) -> None:
    """Its differences are unknown: exit 2 and 'not compared', never 'DIFFERENCES remain'
    with exit 1 (what an operator would read as a found discrepancy)."""
    db = tmp_path / "store.db"
    sqlite3.connect(db).close()  # an empty file: the configured table does not exist
    path = write_pipeline(tmp_path, [{"name": "gone", "kind": "sqlite", "path": str(db),
                                      "tables": [{"name": "sales", "contract": "sales"}]}])
    proc = steadyflow("reconcile", "-c", str(path))
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "ERROR: not compared: gone.sales" in proc.stdout
    assert "DIFFERENCES" not in proc.stdout
