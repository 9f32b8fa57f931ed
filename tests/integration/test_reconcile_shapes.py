"""`steadyflow reconcile` on every table shape, shrunk from the generated suite
(tests/generated/test_sql_generated.py), judged by the same independent oracle.

Each case: a source table of one shape, one `steadyflow run`, then
  1. reconcile reports nothing (the oracle finds the ends equal);
  2. one warehouse row is deleted through its driver: reconcile reports exactly one
     `missing` row, and `--repair` makes the ends equal again (judged by the oracle).

Regressions:
  - keys without an integer column (text of any collation, uuid, numeric(p,0), composite)
    with a date or decimal cursor were refused ("reconcile buckets by an integer primary-key
    column or by a timestamp/integer cursor; this table has neither"); `--by key` on them
    buckets by the key's hash;
  - an int64 key or cursor at -2**63 / 2**63-1: the bucket arithmetic `k - min` overflowed
    (MariaDB "BIGINT value is out of range", reported as a connection problem; PostgreSQL
    and DuckDB overflow errors; SQLite silently turned it into a float);
  - with a lookback, a warehouse row lost inside it was called "in flight", never missing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from tests.support import gen, oracle
from tests.support.gen import Col, Table
from tests.support.source_db import SourceDb

from steadyflow.config import parse_config
from steadyflow.reconcile.runner import Options, TableReport, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

I64 = (-(2 ** 63), 2 ** 63 - 1)
BASE = datetime(2024, 3, 1, 12, tzinfo=UTC)
Row = dict[str, Any]


def _text_key(source: str) -> Col:
    """Text keys whose byte order is not their collation order on PostgreSQL."""
    return Col("k0", "text", nullable=False, collate="en-x-icu" if source == "postgres" else None)


def _texts(source: str, n: int) -> list[str]:
    if source == "mysql":  # case-insensitive keys there: distinct under that equality
        return [f"key-{i:02d}" for i in range(n)]
    return [("Z", "a", "é", "B", "ß", "a b", "🎉", "10", "9", "-")[i % 10] + str(i // 10)
            for i in range(n)]


def _rows(n: int, cursor: Callable[[int], Any], **keys: Callable[[int], Any]) -> list[Row]:
    return [{**{k: f(i) for k, f in keys.items()}, "cur": cursor(i),
             "v0": None if i % 4 == 0 else i * 7} for i in range(n)]


def text_key_date_cursor(source: str) -> tuple[Table, list[Row]]:
    texts = _texts(source, 12)
    table = Table("shape", [_text_key(source), Col("cur", "date", nullable=False),
                            Col("v0", "int64")], ["k0"], "cur")
    return table, _rows(12, lambda i: date(2024, 3, 1) + timedelta(days=i // 3),
                        k0=lambda i: texts[i])


def uuid_key_decimal_cursor(source: str) -> tuple[Table, list[Row]]:
    """uuid on PostgreSQL (text elsewhere: their uuids are text), decimal(12,0) cursor."""
    kind = "uuid" if source == "postgres" else "text"
    table = Table("shape", [Col("k0", kind, nullable=False),
                            Col("cur", "dec", p=12, s=0, nullable=False), Col("v0", "int64")],
                  ["k0"], "cur")
    return table, _rows(12, lambda i: Decimal(1000 + i // 2),
                        k0=lambda i: f"{i:08x}-0000-4000-8000-{i * 977:012x}")


def composite_key_decimal_cursor(source: str) -> tuple[Table, list[Row]]:
    """(text, numeric(10,0), int32) key, decimal(12,2) cursor with ties."""
    texts = _texts(source, 3)
    table = Table("shape", [_text_key(source), Col("k1", "dec", p=10, s=0, nullable=False),
                            Col("k2", "int32", nullable=False),
                            Col("cur", "dec", p=12, s=2, nullable=False), Col("v0", "int64")],
                  ["k0", "k1", "k2"], "cur")
    return table, _rows(12, lambda i: Decimal(100_000 + i // 3).scaleb(-2),
                        k0=lambda i: texts[i % 3], k1=lambda i: Decimal(-i * 10 ** 8 - 1),
                        k2=lambda i: 2 ** 31 - 1 - i % 2)


def int64_key_at_extremes(source: str) -> tuple[Table, list[Row]]:
    keys = [I64[0], I64[0] + 1, -1, 0, 1, I64[1] - 1, I64[1]]
    table = Table("shape", [Col("k0", "int64", nullable=False),
                            Col("cur", "ts", nullable=False), Col("v0", "int64")], ["k0"], "cur")
    return table, _rows(len(keys), lambda i: BASE + timedelta(seconds=i),
                        k0=lambda i: keys[i])


def int64_cursor_at_extremes(source: str) -> tuple[Table, list[Row]]:
    """Text keys, so the int64 cursor is the bucket dimension (then the key's hash)."""
    texts = _texts(source, 7)
    cursors = [I64[0], I64[0], -5, 0, 7, I64[1], I64[1]]
    table = Table("shape", [_text_key(source), Col("cur", "int64", nullable=False),
                            Col("v0", "int64")], ["k0"], "cur")
    return table, _rows(len(cursors), lambda i: cursors[i], k0=lambda i: texts[i])


SHAPES = {f.__name__: f for f in (text_key_date_cursor, uuid_key_decimal_cursor,
                                  composite_key_decimal_cursor, int64_key_at_extremes,
                                  int64_cursor_at_extremes)}


class Case:
    """A source table of one shape, a pipeline into one warehouse, and the oracle's view."""

    def __init__(self, tmp: Path, source: str, where: str, wh: str, wh_where: str,
                 table: Table, rows: list[Row], lookback: float = 0.0) -> None:
        self.tmp, self.table = tmp, table
        self.source, self.where = source, where
        self.wh = wh
        self.wh_where = wh_where if wh == "postgres" else str(tmp / "wh.duckdb")
        self.db = SourceDb(source, where)
        self.db.execute([(s, []) for s in gen.ddl(table, source)])
        self.db.insert(table, rows)
        self.raw = self._config(lookback)

    def _config(self, lookback: float) -> dict[str, Any]:
        t = self.table
        columns = {c.name: {"type": c.contract_type, "nullable": c.nullable} for c in t.cols}
        location = {"path": self.where} if self.source == "sqlite" else {"dsn": self.where}
        return {
            "name": "shapes", "base_dir": str(self.tmp), "state_dir": str(self.tmp / "state"),
            "landing": {"path": str(self.tmp / "landing")},
            "warehouse": {"kind": "duckdb", "path": self.wh_where, "schema": "w"}
            if self.wh == "duckdb" else {"kind": "postgres", "dsn": self.wh_where,
                                         "schema": "w"},
            "contracts": {t.name: {"primary_key": t.key, "cursor": t.cursor,
                                   "columns": columns}},
            "sources": [{"name": "src", "kind": self.source, **location,
                         "resilience": {"retries": 0},
                         "tables": [{"name": t.name, "contract": t.name, "page_size": 3,
                                     "lookback": lookback}]}],
        }

    def run(self) -> None:
        with Pipeline(parse_config(self.raw)) as pipeline:
            summary = pipeline.run_once()
        assert summary.ok and not summary.errors, summary

    def reconcile(self, **options: Any) -> TableReport:
        with Pipeline(parse_config(self.raw)) as pipeline:
            (report,) = reconcile(pipeline, [self.table.name], Options(**options))
        return report

    def problem(self) -> str:
        return oracle.diff(oracle.read_source(self.source, self.where, self.table),
                           oracle.read_warehouse(self.wh, self.wh_where, "w", self.table))

    def delete_one(self, index: int) -> None:
        """Delete one warehouse row through the driver (as an outside mishap would)."""
        rows = oracle.read_warehouse(self.wh, self.wh_where, "w", self.table)
        key = sorted(rows, key=repr)[index]
        t = self.table
        mark = "%s" if self.wh == "postgres" else "?"
        where = " AND ".join(f'"{k}" = {mark}' for k in t.key)
        params = [oracle.raw_key_value(t.col(k), v) for k, v in zip(t.key, key, strict=True)]
        sql = f'DELETE FROM "w"."{t.name}" WHERE {where}'
        if self.wh == "postgres":
            with psycopg.connect(self.wh_where) as conn:
                assert conn.execute(sql.encode(), params).rowcount == 1
        else:
            with duckdb.connect(self.wh_where) as conn:
                conn.execute(sql, params)


def _where(source: str, request: pytest.FixtureRequest, tmp: Path) -> str:
    if source == "sqlite":
        return str(tmp / "source.db")
    return str(request.getfixturevalue("pg_dsn" if source == "postgres" else "mysql_dsn"))


def agrees_with_the_oracle(case: Case, **options: Any) -> None:
    case.run()
    assert not case.problem()
    report = case.reconcile(**options)
    assert report.error is None and report.differences == 0, report.to_dict()
    assert report.rows_compared == len(oracle.read_source(case.source, case.where, case.table))
    for index in (0, -1):  # the first and the last key, wherever they sort
        case.delete_one(index)
        report = case.reconcile(repair=True, **options)
        assert report.error is None, report.error
        assert (report.missing, report.differences) == (1, 1), report.to_dict()
        assert not case.problem()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("source", ["postgres", "mysql", "sqlite"])
def test_every_shape_reconciles_into_duckdb(source: str, shape: str, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    table, rows = SHAPES[shape](source)
    agrees_with_the_oracle(Case(tmp_path, source, _where(source, request, tmp_path),
                                "duckdb", "", table, rows))


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_reconciles_into_postgres(shape: str, tmp_path: Path, pg_dsn: str,
                                              request: pytest.FixtureRequest) -> None:
    source = "mysql" if shape.startswith("int64") else "postgres"  # the warehouse's arithmetic
    table, rows = SHAPES[shape](source)
    agrees_with_the_oracle(Case(tmp_path, source, _where(source, request, tmp_path),
                                "postgres", pg_dsn, table, rows))


@pytest.mark.parametrize("source", ["postgres", "sqlite"])
def test_by_key_on_a_key_without_integers_buckets_by_its_hash(
        source: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    table, rows = composite_key_decimal_cursor(source)
    case = Case(tmp_path, source, _where(source, request, tmp_path), "duckdb", "", table, rows)
    agrees_with_the_oracle(case, by="key")
    assert case.reconcile(by="key").by == "key hash"


def test_a_row_lost_inside_the_lookback_is_missing(tmp_path: Path) -> None:
    """Every row is inside the 60 s lookback; nothing is waiting to load, so nothing is in
    flight: the lost warehouse row is missing (before, the horizon hid the whole table)."""
    texts = _texts("sqlite", 8)
    table = Table("shape", [_text_key("sqlite"), Col("cur", "ts", nullable=False),
                            Col("v0", "int64")], ["k0"], "cur")
    rows = _rows(8, lambda i: BASE + timedelta(microseconds=i), k0=lambda i: texts[i])
    case = Case(tmp_path, "sqlite", str(tmp_path / "source.db"), "duckdb", "", table, rows,
                lookback=60.0)
    agrees_with_the_oracle(case)
