"""A MariaDB FLOAT column read as a number loads the float it holds, not its printed text.

MariaDB's text protocol prints a FLOAT to six significant digits (or to its D decimals for
FLOAT(M,D)), which is not the value stored: 1234.567 (stored 1234.5670166015625) loaded
as 1234.57, 123456.78 as 123457.0, 16777217 (stored 16777216) as 16777200, every run ok,
into both warehouses. The oracle is the IEEE single-precision value itself
(struct), and MariaDB's own CAST(... AS DOUBLE) read through pymysql.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from tests.support.sql_exec import execute

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VALUES = [1234.567, 123456.78, 16777217.0, 0.1, -3.4028234e38, 1.17549435e-38, 0.0, 7.0,
          99999.9999]


def single(value: float) -> float:
    """The float a single-precision column holds for `value` (round to nearest)."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"])
def test_a_float_column_loads_the_float_it_holds(tmp_path: Path, mysql_dsn: str,
                                                 request: pytest.FixtureRequest,
                                                 warehouse: str) -> None:
    execute("mysql", mysql_dsn,
            "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, f FLOAT, g FLOAT(10,4) UNSIGNED, "
            "n FLOAT)",
            *[f"INSERT INTO t VALUES ({i}, {v!r}, {abs(v) % 1e6!r}, {round(abs(v)) % 10**9!r})"
              for i, v in enumerate(VALUES)])
    stored = {r[0]: r[1:] for r in execute(
        "mysql", mysql_dsn, "SELECT id, CAST(f AS DOUBLE), CAST(g AS DOUBLE), "
                            "CAST(n AS DOUBLE) FROM t")}
    for i, v in enumerate(VALUES):  # MariaDB's own widening is the single-precision value
        assert stored[i][0] == single(v)
    where = (request.getfixturevalue("pg_warehouse_dsn") if warehouse == "postgres"
             else str(tmp_path / "wh.duckdb"))
    raw: dict[str, Any] = {
        "name": "floats", "state_dir": str(tmp_path / "state"),
        "landing": {"path": str(tmp_path / "landing")},
        "warehouse": ({"kind": "postgres", "dsn": where, "schema": "public"}
                      if warehouse == "postgres"
                      else {"kind": "duckdb", "path": where, "schema": "main"}),
        "contracts": {"c": {"primary_key": ["id"], "cursor": "id", "columns": {
            "id": {"type": "int64", "nullable": False}, "f": {"type": "float64"},
            "g": {"type": "float64"}, "n": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": "mysql", "dsn": mysql_dsn,
                     "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "page_size": 4}]}]}
    with Pipeline(parse_config(raw)) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.ok and summary.quarantined_rows == 0, summary.errors
    sql = "SELECT id, f, g, n FROM t ORDER BY id"
    if warehouse == "postgres":
        with psycopg.connect(where) as conn:
            loaded = {r[0]: r[1:] for r in conn.execute(sql).fetchall()}
    else:
        with duckdb.connect(where, read_only=True) as conn:
            loaded = {r[0]: r[1:] for r in conn.sql(sql).fetchall()}
    want = {i: (s[0], s[1], int(s[2])) for i, s in stored.items()}
    assert loaded == want


def test_a_float_read_as_a_decimal_is_refused_naming_it(tmp_path: Path, mysql_dsn: str) -> None:
    """A decimal contract promises exact values; MariaDB's six digits of a FLOAT are not
    (1234.567 loaded as 1234.57, run ok). FLOAT(M,D), printed to its D decimals, loads."""
    execute("mysql", mysql_dsn,
            "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, f FLOAT, g FLOAT(10,3))",
            "INSERT INTO t VALUES (1, 1234.567, 1234.567), (2, 123456.78, 2.5)")

    def run(column: str) -> Any:
        raw: dict[str, Any] = {
            "name": "floats", "state_dir": str(tmp_path / column / "state"),
            "landing": {"path": str(tmp_path / column / "landing")},
            "warehouse": {"kind": "duckdb", "path": str(tmp_path / column / "wh.duckdb"),
                          "schema": "main"},
            "contracts": {"c": {"primary_key": ["id"], "cursor": "id", "columns": {
                "id": {"type": "int64", "nullable": False},
                column: {"type": "decimal(12,3)"}}}},
            "sources": [{"name": "s", "kind": "mysql", "dsn": mysql_dsn,
                         "resilience": {"retries": 0},
                         "tables": [{"name": "t", "contract": "c"}]}]}
        with Pipeline(parse_config(raw)) as p:
            return p.run_once(raise_on_error=False)

    refused = run("f")
    assert not refused.ok and refused.loaded_rows == 0
    assert any("column f" in e and "six significant digits" in e for e in refused.errors), \
        refused.errors
    loaded = run("g")
    assert loaded.ok and loaded.loaded_rows == 2, loaded.errors
    with duckdb.connect(str(tmp_path / "g" / "wh.duckdb"), read_only=True) as conn:
        got = conn.sql("SELECT id, g FROM t ORDER BY id").fetchall()
    assert [(i, str(v)) for i, v in got] == [(1, "1234.567"), (2, "2.500")]
