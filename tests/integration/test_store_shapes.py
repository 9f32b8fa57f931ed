"""Adversarial review: source column shapes a store declares that the contract reads as
something else, run through steadyflow for real and compared with an independent read.

MariaDB BIT(1) declared bool (the classic MySQL boolean): both drivers hand it over as
bytes (b'\\x01'), so every row went to quarantine as "not a valid bool", and a BIT column
declared int64 likewise. A BIT column read as a number is now selected as its number on
every read path (pymysql pages, connectorx pages, reconcile's pages), and reconcile finds
the loaded table clean.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pymysql
import pytest

from steadyflow.config import parse_config
from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def config(tmp: Path, source: dict[str, Any], contract: dict[str, Any],
           **table: Any) -> dict[str, Any]:
    return {"name": "shapes", "contracts": {"c": contract},
            "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "landing")},
            "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"),
                          "schema": "main"},
            "sources": [{"name": "s", **source, "resilience": {"retries": 0},
                         "tables": [{"name": "t", "contract": "c", "page_size": 2,
                                     **table}]}]}


def run(raw: dict[str, Any]) -> RunSummary:
    with Pipeline(parse_config(raw)) as p:
        return p.run_once(raise_on_error=False)


def warehouse(tmp: Path, columns: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return con.sql(f"SELECT {columns} FROM main.t ORDER BY 1").fetchall()


def mysql(dsn: str, *statements: str) -> list[tuple[Any, ...]]:
    parts = urlsplit(dsn)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                           password="", database=parts.path.lstrip("/"), autocommit=True)
    with closing(conn), conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
        return list(cur.fetchall())


def test_mariadb_bit_read_as_bool_and_int(tmp_path: Path, mysql_dsn: str) -> None:
    """BIT(1) declared bool and BIT(8) declared int64, NULL and both values; the first load
    reads pages in key order by connectorx, the rows written after it by pymysql."""
    mysql(mysql_dsn,
          "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL, b bit(1), n bit(8), "
          "INDEX t_v (v, id))",
          "INSERT INTO t VALUES (1, 1, b'1', b'101'), (2, 2, b'0', b'0'), "
          "(3, 3, NULL, NULL), (4, 4, b'1', b'11111111'), (5, 5, b'0', b'1')")
    contract = {"primary_key": ["id"], "cursor": "v",
                "columns": {"id": {"type": "int64", "nullable": False},
                            "v": {"type": "int64", "nullable": False},
                            "b": {"type": "bool"}, "n": {"type": "int64"}}}
    raw = config(tmp_path, {"kind": "mysql", "dsn": mysql_dsn}, contract)
    first = run(raw)
    assert first.ok and first.quarantined_rows == 0, first
    mysql(mysql_dsn, "INSERT INTO t VALUES (6, 6, b'1', b'10'), (7, 7, NULL, b'0')",
          "UPDATE t SET v = 8, b = b'0' WHERE id = 1")
    again = run(raw)
    assert again.ok and again.quarantined_rows == 0, again
    # the independent read: the bits as numbers, through the driver
    source = [(i, None if b is None else bool(b), n)
              for i, b, n in mysql(mysql_dsn, "SELECT id, b + 0, n + 0 FROM t ORDER BY id")]
    assert warehouse(tmp_path, "id, b, n") == source
    assert [r[1] for r in source] == [False, False, None, True, False, True, None]
    with Pipeline(parse_config(raw)) as p:
        (report,) = reconcile(p, ["s.t"], Options())
    assert report.error is None and report.differences == 0, report.to_dict()
    assert report.quarantined == 0 and report.rows_compared == 7, report.to_dict()
