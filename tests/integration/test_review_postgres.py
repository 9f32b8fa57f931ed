"""Adversarial review (issue 10): PostgreSQL tables shaped the way real applications make
them, into a DuckDB and a PostgreSQL warehouse, each end read through its own driver."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import psycopg
import pytest
import yaml

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["duckdb", "postgres"])
def wh(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "duckdb":
        return {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"), "schema": "main"}
    # the source's database, another schema (the source table is public.t)
    return {"kind": "postgres", "dsn": request.getfixturevalue("pg_dsn"), "schema": "wh"}


def source(dsn: str, sql: str, rows: list[tuple[Any, ...]] = ()) -> None:  # type: ignore[assignment]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)
        if rows:
            marks = ", ".join(["%s"] * len(rows[0]))
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO t VALUES ({marks})", rows)


def run(tmp: Path, dsn: str, contract: dict[str, Any], warehouse: dict[str, Any],
        page_size: int = 2, **table: Any) -> Any:
    config = {"name": "review", "contracts": {"c": contract},
              "state_dir": str(tmp / "state"), "warehouse": warehouse,
              "sources": [{"name": "p", "kind": "postgres", "dsn": dsn,
                           "tables": [{"name": "t", "contract": "c",
                                       "page_size": page_size, **table}]}]}
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(path) as p:
        return p.run_once(raise_on_error=False)


def read(warehouse: dict[str, Any], columns: list[str], times: tuple[str, ...] = ()
         ) -> list[tuple[Any, ...]]:
    """The target's rows through the warehouse's own driver; `times` as aware datetimes."""
    if warehouse["kind"] == "duckdb":
        sel = ", ".join(f'epoch_us("{c}")' if c in times else f'"{c}"' for c in columns)
        with duckdb.connect(warehouse["path"], read_only=True) as con:
            rows = con.sql(f"SELECT {sel} FROM main.t").fetchall()
        rows = [tuple(EPOCH + timedelta(microseconds=v) if c in times and v is not None
                      else v for c, v in zip(columns, r, strict=True)) for r in rows]
    else:
        sel = ", ".join(f'"{c}"' for c in columns)
        with psycopg.connect(warehouse["dsn"]) as conn:
            rows = conn.execute(f"SELECT {sel} FROM wh.t").fetchall()
        rows = [tuple(v.astimezone(UTC) if isinstance(v, datetime) else v for v in r)
                for r in rows]
    return sorted(rows, key=repr)


def test_unscaled_numeric_key_and_values(tmp_path: Path, pg_dsn: str,
                                         wh: dict[str, Any]) -> None:
    """A `numeric` column without a scale keeps the scale each value was written with:
    1.0, 1.10, 2.500 are exact values of decimal(12,2) (trailing zeros are no precision),
    so they load; 1.005 needs more scale: quarantined, never rounded; NaN too."""
    source(pg_dsn, "CREATE TABLE t (id numeric PRIMARY KEY, amount numeric, "
                   "v bigint NOT NULL); CREATE INDEX ON t (v, id)",
           [(Decimal("1.0"), Decimal("1.10"), 1), (Decimal("2.500"), Decimal("3.000"), 1),
            (Decimal("3"), Decimal("0.00000"), 2), (Decimal("4.00"), Decimal("1.005"), 2),
            (Decimal("5"), Decimal("NaN"), 3), (Decimal("-0.0"), Decimal("-7.10"), 3)])
    contract = {"primary_key": ["id"], "cursor": "v", "columns": {
        "id": {"type": "decimal(12,2)", "nullable": False},
        "amount": {"type": "decimal(12,2)"}, "v": {"type": "int64", "nullable": False}}}
    summary = run(tmp_path, pg_dsn, contract, wh, page_size=1)
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 2
    assert read(wh, ["id", "amount"]) == sorted(
        [(Decimal("1.00"), Decimal("1.10")), (Decimal("2.50"), Decimal("3.00")),
         (Decimal("3.00"), Decimal("0.00")), (Decimal("0.00"), Decimal("-7.10"))], key=repr)


def test_timestamptz_offsets_dst_and_precisions(tmp_path: Path, pg_dsn: str,
                                                wh: dict[str, Any]) -> None:
    """Cursor values written with offsets around a DST change (the same wall time twice),
    in a timestamptz(0) cursor, many ties across pages of 1: every row, exact instants."""
    base = datetime(2024, 10, 27, 0, 30, tzinfo=UTC)  # Europe/Berlin leaves DST at 01:00 UTC
    berlin = ZoneInfo("Europe/Berlin")
    rows = [(i, (base + timedelta(minutes=15 * (i // 2), milliseconds=i)).astimezone(berlin),
             (base + timedelta(minutes=15 * (i // 3))).astimezone(berlin)) for i in range(12)]
    source(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, at timestamp(3) with time zone, "
                   "v timestamptz(0) NOT NULL); CREATE INDEX ON t (v, id)", rows)
    with psycopg.connect(pg_dsn) as conn:
        want = sorted(((i, a.astimezone(UTC), v.astimezone(UTC)) for i, a, v in
                       conn.execute("SELECT id, at, v FROM t").fetchall()), key=repr)
    contract = {"primary_key": ["id"], "cursor": "v", "columns": {
        "id": {"type": "int64", "nullable": False}, "at": {"type": "timestamp"},
        "v": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, pg_dsn, contract, wh, page_size=1)
    assert summary.ok, summary.errors
    assert read(wh, ["id", "at", "v"], times=("at", "v")) == want


def _writer(dsn: str, stop: threading.Event, work: Callable[[psycopg.Connection[Any], int],
                                                           None], every: float = 0.01,
            seconds: float = 3.0) -> threading.Thread:
    """Calls `work` every `every` seconds for at most `seconds` (or until `stop`)."""
    def loop() -> None:
        end = time.monotonic() + seconds
        with psycopg.connect(dsn, autocommit=True) as conn:
            i = 0
            while not stop.is_set() and time.monotonic() < end:
                work(conn, i)
                i += 1
                time.sleep(every)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


CHANGING = {"primary_key": ["id"], "cursor": "v", "columns": {
    "id": {"type": "int64", "nullable": False}, "n": {"type": "int64"},
    "v": {"type": "timestamp", "nullable": False}}}


def _changing_table(dsn: str) -> None:
    source(dsn, "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL, "
                "v timestamptz NOT NULL DEFAULT clock_timestamp()); CREATE INDEX ON t (v, id)",
           [(i, 0, datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=i // 5))
            for i in range(300)])


def _change(conn: psycopg.Connection[Any], i: int) -> None:
    if i % 3 == 0:
        conn.execute("INSERT INTO t (id, n) VALUES (%s, 0)", (1000 + i,))
    else:  # several rows in one commit: one cursor value (ties)
        conn.execute("UPDATE t SET n = n + 1, v = clock_timestamp() WHERE id %% 97 = %s",
                     (i % 97,))


def test_rows_changed_while_a_run_pages(tmp_path: Path, pg_dsn: str,
                                        wh: dict[str, Any]) -> None:
    """Updates (cursor moves forward, ties included) and inserts while a run reads pages
    of 1 (slower than the reader): after one more run the warehouse equals the source,
    value for value, and the newest version of every row won."""
    _changing_table(pg_dsn)
    stop = threading.Event()
    thread = _writer(pg_dsn, stop, _change, every=0.05, seconds=3.0)
    try:
        first = run(tmp_path, pg_dsn, CHANGING, wh, page_size=1, initial_load="cursor")
    finally:
        stop.set()
        thread.join()
    assert first.ok, first.errors
    last = run(tmp_path, pg_dsn, CHANGING, wh, page_size=7)
    assert last.ok, last.errors
    with psycopg.connect(pg_dsn) as conn:
        want = sorted(((i, n, v.astimezone(UTC)) for i, n, v in
                       conn.execute("SELECT id, n, v FROM t").fetchall()), key=repr)
    assert read(wh, ["id", "n", "v"], times=("v",)) == want


def test_a_run_ends_while_writes_outpace_pages(tmp_path: Path, pg_dsn: str) -> None:
    """`steadyflow run` (once) must return even when the table keeps changing."""
    _changing_table(pg_dsn)
    wh = {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"), "schema": "main"}
    stop = threading.Event()
    thread = _writer(pg_dsn, stop, _change, every=0.005, seconds=45.0)
    began = time.monotonic()
    try:
        first = run(tmp_path, pg_dsn, CHANGING, wh, page_size=1, initial_load="cursor")
    finally:
        took = time.monotonic() - began
        stop.set()
        thread.join()
    assert first.ok, first.errors
    assert took < 30, f"one run took {took:.0f}s: it ended only when the writer stopped"


def test_table_renamed_mid_run_is_an_error(tmp_path: Path, pg_dsn: str,
                                           wh: dict[str, Any]) -> None:
    """The table disappears while a run pages through it: the run reports the table
    failed, never ok with part of it."""
    source(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v bigint NOT NULL); "
                   "CREATE INDEX ON t (v, id)", [(i, i) for i in range(400)])
    contract = {"primary_key": ["id"], "cursor": "v", "columns": {
        "id": {"type": "int64", "nullable": False}, "v": {"type": "int64", "nullable": False}}}
    stop = threading.Event()

    def rename(conn: psycopg.Connection[Any], i: int) -> None:
        if i == 50:  # ~0.5 s in: a few dozen pages read
            conn.execute("ALTER TABLE t RENAME TO t_old")
            stop.set()

    thread = _writer(pg_dsn, stop, rename, every=0.01, seconds=10)
    try:
        summary = run(tmp_path, pg_dsn, contract, wh, page_size=1, initial_load="cursor")
    finally:
        stop.set()
        thread.join()
    assert not summary.ok and summary.failed_tables == ["p.t"], summary
    assert "t" in summary.errors[0] and "not found" in summary.errors[0], summary.errors
