"""Adversarial review (issue 10): PostgreSQL tables shaped the way real applications make
them, into a DuckDB and a PostgreSQL warehouse, each end read through its own driver."""

from __future__ import annotations

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
