"""A value read as another contract type is that value or costs its row: never another one.

Arrow's safe cast changes some values without an error: an integer 2 (or -1) read as a
bool was true, an integer past 2**53 read as a float64 was its neighbour (9007199254740993
loaded as 9007199254740992), text of a finite number past float64's range ('1e400', a
PostgreSQL numeric) was infinity and a tiny one ('1e-400') zero, hexadecimal text read as
an integer was its number ('0x1A' as 26); every run ok. The oracle
reads the source and the warehouse through their drivers: each row is in the warehouse
with the source's exact value, or in quarantine, never both, never neither.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow.parquet as pq
import pytest
from tests.support.sql_exec import execute

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# column: (PostgreSQL type, MariaDB type, contract type, source values)
COLUMNS: dict[str, tuple[str, str, str, list[str]]] = {
    "flag": ("integer", "TINYINT(1)", "bool", ["0", "1", "2", "-1"]),
    "big": ("bigint", "BIGINT", "float64",
            ["9007199254740993", "4611686018427387904", "-9223372036854775807", "7"]),
    "text_f": ("text", "VARCHAR(40)", "float64",
               ["1e400", "-1e309", "1e-400", "0.1", "inf", "0", "9007199254740993"]),
    "num_f": ("numeric", "DECIMAL(65,0)", "float64",
              ["9007199254740993", "9007199254740992", "123"]),
    "text_i": ("text", "VARCHAR(40)", "int64", ["0x1A", "-0X1a", "007", "12"]),
}


def _exact(contract: str, text: str) -> Any:
    """The value `text` is, as the contract type, or None where that type has no such value."""
    if contract == "bool":
        return {"0": False, "1": True}.get(text)
    if contract == "int64":
        return int(text) if text.isdigit() else None
    number = Decimal(text)
    if number.is_infinite():
        return float(text)
    as_float = float(text)
    return as_float if math.isfinite(as_float) and (
        Decimal(as_float) == number or number != number.to_integral_value()) and (
        as_float != 0 or number == 0) else None


def _source(kind: str, dsn: str) -> list[tuple[int, str, str]]:
    """(id, column, value text) of each row: one value a row, so a refusal costs one row.
    SQLite takes MariaDB's declared types (their affinities: INTEGER, TEXT, NUMERIC)."""
    rows = [(name, v) for name, (_, _, _, values) in COLUMNS.items() for v in values]
    at = 0 if kind == "postgres" else 1
    cols = ", ".join(f"{n} {spec[at]}" for n, spec in COLUMNS.items())
    statements = [f"CREATE TABLE t (id INT NOT NULL PRIMARY KEY, {cols})"]
    for i, (name, value) in enumerate(rows):
        statements.append(f"INSERT INTO t (id, {name}) VALUES ({i}, '{value}')")
    execute(kind, dsn, *statements)
    return [(i, name, value) for i, (name, value) in enumerate(rows)]


def _warehouse(where: str) -> dict[int, dict[str, Any]]:
    names = list(COLUMNS)
    sql = f"SELECT id, {', '.join(names)} FROM t"
    if where.startswith("postgresql://"):
        with psycopg.connect(where) as conn:
            rows = conn.execute(sql).fetchall()
    else:
        with duckdb.connect(where, read_only=True) as conn:
            rows = [tuple(r.values()) for r in conn.sql(sql).to_arrow_table().to_pylist()]
    return {r[0]: dict(zip(names, r[1:], strict=True)) for r in rows}


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"])
@pytest.mark.parametrize("kind", ["postgres", "mysql", "sqlite"])
def test_a_value_cast_to_the_contract_type_is_itself_or_costs_its_row(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str, warehouse: str) -> None:
    dsn = (str(tmp_path / "s.db") if kind == "sqlite"
           else request.getfixturevalue("pg_dsn" if kind == "postgres" else "mysql_dsn"))
    where = (request.getfixturevalue("pg_warehouse_dsn") if warehouse == "postgres"
             else str(tmp_path / "wh.duckdb"))
    rows = _source(kind, dsn)
    raw: dict[str, Any] = {
        "name": "casts", "state_dir": str(tmp_path / "state"),
        "landing": {"path": str(tmp_path / "landing")},
        "warehouse": ({"kind": "postgres", "dsn": where, "schema": "public"}
                      if warehouse == "postgres"
                      else {"kind": "duckdb", "path": where, "schema": "main"}),
        "contracts": {"c": {"primary_key": ["id"], "cursor": "id", "columns": {
            "id": {"type": "int64", "nullable": False},
            **{n: {"type": spec[2]} for n, spec in COLUMNS.items()}}}},
        "sources": [{"name": "s", "kind": kind, "resilience": {"retries": 0},
                     **({"path": dsn} if kind == "sqlite" else {"dsn": dsn}),
                     "tables": [{"name": "t", "contract": "c", "page_size": 5}]}]}
    with Pipeline(parse_config(raw)) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.ok, summary.errors
    loaded = _warehouse(where)
    parked = {int(r["id"]): r["_reason"] for f in (tmp_path / "landing").rglob("*.parquet")
              if "_quarantine" in f.parts for r in pq.read_table(f).to_pylist()}
    wrong = []
    for key, name, text in rows:
        want = _exact(COLUMNS[name][2], text)
        if want is None:
            if key not in parked or key in loaded:
                wrong.append((name, text, "loaded as", loaded.get(key, {}).get(name)))
            continue
        got = loaded.get(key, {}).get(name, "missing")
        same = (isinstance(got, float) and math.isnan(got) and math.isnan(want)) or (
            type(got) is type(want) and got == want)
        if not same or key in parked:
            wrong.append((name, text, got, parked.get(key)))
    assert wrong == []
    assert summary.quarantined_rows == len(parked) == 11
