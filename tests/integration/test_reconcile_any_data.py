"""`steadyflow reconcile` agrees with an independent oracle on tables of every type.

Per source (PostgreSQL, MariaDB, SQLite) and warehouse (DuckDB, PostgreSQL), one table with a
CHAR(n) column, json and jsonb (PostgreSQL), a uuid, an exact decimal, floats (NaN and the
infinities where the engine stores them), a date, a non-cursor timestamp (on SQLite text in
every spelling: ' ' or 'T', fractions of any width, 'Z', '+00:00', '+02:00') and text, plus
rows extraction quarantines (infinity, too much decimal scale, invalid UTF-8, NUL, an epoch
in a timestamp column, a NULL in a NOT NULL column). After a clean `steadyflow run`:

1. reconcile reports no difference and those rows as quarantined;
2. the warehouse is damaged through its driver (a row deleted, one value changed in each
   column, an extra row, the checkpoint row changed) and source rows are committed behind
   the checkpoint (one valid, one invalid: it is in no quarantine, so it is missing);
   reconcile names exactly those keys;
3. `--repair` makes the warehouse equal to the source rows that fit the contract, checked
   by the oracle (tests/support/oracle.py: drivers only, no steadyflow code), and the
   invalid late row is then quarantined, not missing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pymysql
import pytest
from tests.conftest import steadyflow, write_pipeline
from tests.support.gen import Col, Table
from tests.support.oracle import canon, read_warehouse

from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

N = 40
CONTRACT: dict[str, Any] = {
    "primary_key": ["id"],
    "cursor": "updated_at",
    "columns": {
        "id": {"type": "int64", "nullable": False},
        "code": {"type": "string", "nullable": False},
        "doc": {"type": "string"},
        "js": {"type": "string"},
        "uid": {"type": "string"},
        "amount": {"type": "decimal(12,3)"},
        "ratio": {"type": "float64"},
        "day": {"type": "date"},
        "seen": {"type": "timestamp"},
        "note": {"type": "string"},
        "updated_at": {"type": "timestamp", "nullable": False},
    },
}
TABLE = Table("things", [
    Col("id", "int64", nullable=False), Col("code", "char", p=6), Col("doc", "json"),
    Col("js", "json"), Col("uid", "uuid"), Col("dec", "dec", p=12, s=3),
    Col("ratio", "float"), Col("day", "date"), Col("seen", "ts"), Col("note", "text"),
    Col("updated_at", "ts", nullable=False)], key=["id"], cursor="updated_at")
TABLE.cols[5] = Col("amount", "dec", p=12, s=3)

DDL = {
    "postgres": "CREATE TABLE things (id bigint PRIMARY KEY, code char(6), doc jsonb, js json, "
                "uid uuid, amount numeric(12,4), ratio double precision, day date, "
                "seen timestamptz, note text, updated_at timestamptz NOT NULL)",
    "mysql": "CREATE TABLE things (id BIGINT PRIMARY KEY, code CHAR(6), doc JSON, js JSON, "
             "uid CHAR(36), amount DECIMAL(12,4), ratio DOUBLE, day DATE, seen DATETIME(6), "
             "note TEXT, updated_at DATETIME(6) NOT NULL) CHARACTER SET utf8mb4",
    "sqlite": "CREATE TABLE things (id INTEGER PRIMARY KEY, code TEXT, doc TEXT, js TEXT, "
              "uid TEXT, amount TEXT, ratio REAL, day TEXT, seen TEXT, note TEXT, "
              "updated_at TEXT NOT NULL)",
}
INDEX = "CREATE INDEX things_cursor ON things (updated_at, id)"
SEEN_SPELLINGS = ["2024-03-01 12:00:00", "2024-03-01T12:00:00.5Z",
                  "2024-03-01T14:00:00.123+02:00", "2024-03-01 12:00:00.123456+00:00",
                  "2024-03-01T12:00:00.120Z", "2024-02-29 23:59:59.999999"]
FLOATS = {"postgres": [0.1, -1.5, float("nan"), float("inf"), float("-inf"), 1e300, -0.0],
          "mysql": [0.1, -1.5, 1e300, 123456789.125, -0.0],
          "sqlite": [0.1, -1.5, float("inf"), float("-inf"), 1e300, -0.0]}
JSONS = ['{"b": 1, "a": [1, 2.50, "x"]}', '[]', '{"k": "é 日本 \\u00e9"}', 'null', '3.10']


def cursor(kind: str, i: int) -> str:
    """Cursor text: 2024-03-02 plus i seconds (SQLite: one spelling, with a +02:00 offset)."""
    s = 1000 + i
    if kind == "sqlite":
        return f"2024-03-02T{2 + s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.250000+02:00"
    return f"2024-03-02 {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.25"


def row(kind: str, i: int) -> dict[str, Any]:
    seen = (SEEN_SPELLINGS[i % len(SEEN_SPELLINGS)] if kind == "sqlite"
            else f"2024-03-01 12:{i % 60:02d}:00.{i:06d}")
    return {
        "id": i, "code": ["ab", "x y", "", "abcdef", "é"][i % 5],
        "doc": JSONS[i % len(JSONS)], "js": JSONS[(i + 1) % len(JSONS)],
        "uid": f"{i:08x}-0000-4000-8000-00000000abcd",
        "amount": f"{i * 1000 + 7}.{i % 10}{i % 7}0", "ratio": FLOATS[kind][i % len(FLOATS[kind])],
        "day": f"20{i % 30 + 1:02d}-0{i % 9 + 1}-1{i % 10}", "seen": seen,
        "note": [None, "plain", "with | bar ~ tilde", "4-byte 😀", "trailing  "][i % 5],
        "updated_at": cursor(kind, i),
    }


# rows whose values extraction cannot load: quarantined, never in the warehouse
INVALID: dict[str, list[tuple[int, str, list[Any]]]] = {
    "postgres": [(7, "UPDATE things SET seen = 'infinity' WHERE id = %s", [7]),
                 (8, "UPDATE things SET amount = 1.2345 WHERE id = %s", [8]),
                 (9, "UPDATE things SET code = NULL WHERE id = %s", [9])],
    "mysql": [(8, "UPDATE things SET amount = 1.2345 WHERE id = %s", [8]),
              (9, "UPDATE things SET code = NULL WHERE id = %s", [9])],
    "sqlite": [(7, "UPDATE things SET seen = 1709294400 WHERE id = ?", [7]),
               (8, "UPDATE things SET amount = '1.2345' WHERE id = ?", [8]),
               (9, "UPDATE things SET note = CAST(x'61ff62' AS TEXT) WHERE id = ?", [9]),
               (10, "UPDATE things SET note = 'a' || char(0) || 'b' WHERE id = ?", [10])],
}
LATE_VALID, LATE_INVALID = 500, 501


# --- drivers -------------------------------------------------------------------------------
def _source_exec(kind: str, where: str) -> Callable[[str, list[Any]], None]:
    def run(sql: str, params: list[Any]) -> None:
        if kind == "postgres":
            with psycopg.connect(where, autocommit=True, options="-c TimeZone=UTC") as conn:
                conn.execute(sql.encode(), params)
        elif kind == "mysql":
            parts = urlsplit(where)
            conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                                   password="", database=parts.path.lstrip("/"),
                                   autocommit=True, charset="utf8mb4")
            with closing(conn), conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
                cur.execute(sql, params)
        else:
            with closing(sqlite3.connect(where, isolation_level=None)) as conn:
                conn.execute(sql.replace("%s", "?"), params)
    return run


def _insert(kind: str, execute: Callable[[str, list[Any]], None], values: dict[str, Any]
            ) -> None:
    mark = "?" if kind == "sqlite" else "%s"
    names = list(values)
    execute(f"INSERT INTO things ({', '.join(names)}) VALUES "
            f"({', '.join(mark for _ in names)})", list(values.values()))


def _warehouse_exec(wh: str, tmp: Path, pg_dsn: str) -> Callable[[str], None]:
    def run(sql: str) -> None:
        if wh == "duckdb":
            with closing(duckdb.connect(str(tmp / "warehouse.duckdb"))) as conn:
                conn.execute("SET TimeZone = 'UTC'")
                conn.execute(sql.replace("{t}", "main.things"))
        else:
            with psycopg.connect(pg_dsn, autocommit=True, options="-c TimeZone=UTC") as conn:
                conn.execute(sql.replace("{t}", "wh.things").encode())
    return run


def _reconcile(config: Path, *extra: str) -> dict[str, Any]:
    proc = steadyflow("reconcile", "-c", str(config), "--json", *extra, timeout=240)
    assert proc.returncode in (0, 1), proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    (table,) = report["tables"]
    assert table["error"] is None, table["error"]
    return table


def _keys(config: Path) -> dict[str, set[int]]:
    """Every differing key by kind (the CLI's report shows the first few only)."""
    with Pipeline.from_yaml(config) as pipeline:
        (report,) = reconcile(pipeline, options=Options(examples=1000))
    assert report.error is None, report.error
    return {name: {int(k[0]) for k in report.examples.get(name, [])}
            for name in ("missing", "extra", "mismatched")}


def _read_source(kind: str, where: str, invalid: set[int]) -> dict[tuple[Any, ...], Any]:
    """The source rows that fit the contract, canonical (oracle.canon), by key: the driver
    cannot even read some invalid values ('infinity', bytes that are not UTF-8)."""
    q = "`" if kind == "mysql" else '"'
    # json as its text: psycopg would load a JSON null document as None (an SQL NULL)
    cols = [q + c.name + q + ("::text" if kind == "postgres" and c.kind == "json" else "")
            for c in TABLE.cols]
    sql = (f"SELECT {', '.join(cols)} FROM things WHERE id NOT IN "
           f"({', '.join(str(k) for k in sorted(invalid))})")
    if kind == "postgres":
        with psycopg.connect(where, options="-c TimeZone=UTC") as conn:
            rows = conn.execute(sql.encode()).fetchall()
    elif kind == "mysql":
        parts = urlsplit(where)
        conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                               password="", database=parts.path.lstrip("/"), charset="utf8mb4")
        with closing(conn), conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.execute(sql)
            rows = list(cur.fetchall())
    else:
        with closing(sqlite3.connect(where)) as lite:
            rows = lite.execute(sql).fetchall()
    return {(r[0],): tuple(canon(c, v) for c, v in zip(TABLE.cols, r, strict=True))
            for r in rows}


def _oracle_equal(kind: str, where: str, wh: str, wh_where: str, invalid: set[int]) -> None:
    source = _read_source(kind, where, invalid)
    warehouse = read_warehouse(wh, wh_where, "main" if wh == "duckdb" else "wh", TABLE)
    missing = sorted(k for k in source if k not in warehouse)
    extra = sorted(k for k in warehouse if k not in source)
    changed = sorted(k for k in source if k in warehouse and source[k] != warehouse[k])
    assert not (missing or extra or changed), (
        f"missing {missing}, extra {extra}, mismatched {changed}: "
        + "; ".join(f"{k}: {source[k]} != {warehouse[k]}" for k in changed[:3]))


# --- the test ------------------------------------------------------------------------------
@pytest.mark.parametrize("wh", ["duckdb", "postgres"])
@pytest.mark.parametrize("kind", ["postgres", "mysql", "sqlite"])
def test_reconcile_agrees_with_the_oracle_on_every_type(
        kind: str, wh: str, tmp_path: Path, pg_dsn: str, mysql_dsn: str) -> None:
    where = {"postgres": pg_dsn, "mysql": mysql_dsn, "sqlite": str(tmp_path / "src.db")}[kind]
    execute = _source_exec(kind, where)
    execute(DDL[kind], [])
    execute(INDEX, [])
    for i in range(1, N + 1):
        _insert(kind, execute, row(kind, i))
    for _, sql, params in INVALID[kind]:
        execute(sql, params)
    invalid = {k for k, _, _ in INVALID[kind]}
    source: dict[str, Any] = {"name": "src", "kind": kind, "tables": [
        {"name": "things", "contract": "things", "page_size": 7, "mirror_deletes": True}]}
    source.update({"path": "src.db"} if kind == "sqlite" else {"dsn": where})
    config = write_pipeline(
        tmp_path, [source], contracts={"things": CONTRACT},
        warehouse=({"kind": "duckdb", "path": "warehouse.duckdb"} if wh == "duckdb"
                   else {"kind": "postgres", "dsn": pg_dsn, "schema": "wh"}))
    wh_where = str(tmp_path / "warehouse.duckdb") if wh == "duckdb" else pg_dsn

    steadyflow("run", "-c", str(config), check=True, timeout=240)
    _oracle_equal(kind, where, wh, wh_where, invalid)
    clean = _reconcile(config)
    assert (clean["missing"], clean["extra"], clean["mismatched"]) == (0, 0, 0), clean
    assert clean["quarantined"] == len(invalid), clean
    assert clean["in_flight"] == 0 and clean["rows_compared"] == N - len(invalid), clean

    damage = _warehouse_exec(wh, tmp_path, pg_dsn)
    damage("DELETE FROM {t} WHERE id = 20")
    changes = {21: "code = 'zz'", 22: "doc = '{\"a\": 2}'", 23: "js = '[1]'",
               24: "uid = '00000000-0000-0000-0000-000000000000'",
               25: "amount = amount + 0.001", 26: "ratio = 2.5", 27: "day = day + 1",
               28: "seen = seen + INTERVAL '1 second'", 29: "note = 'changed'",
               30: "updated_at = updated_at - INTERVAL '1 second'",
               31: "updated_at = updated_at + INTERVAL '1 day'",  # ahead of the source
               N: "note = 'the checkpoint row'"}
    for key, change in changes.items():
        damage(f"UPDATE {{t}} SET {change} WHERE id = {key}")
    names = "code, doc, js, uid, amount, ratio, day, seen, note, updated_at"
    damage(f"INSERT INTO {{t}} (id, {names}) SELECT 1000, {names} FROM {{t}} WHERE id = 11")
    # committed behind the checkpoint (no lookback): extraction will never read them
    _insert(kind, execute, {**row(kind, 12), "id": LATE_VALID})
    _insert(kind, execute, {**row(kind, 13), "id": LATE_INVALID, "amount": "2.0001"})

    found = _reconcile(config)
    assert (found["missing"], found["extra"], found["mismatched"]) == (3, 1, len(changes))
    assert found["quarantined"] == len(invalid) and found["in_flight"] == 0, found
    assert _keys(config) == {"missing": {20, LATE_VALID, LATE_INVALID}, "extra": {1000},
                             "mismatched": set(changes)}

    repaired = _reconcile(config, "--repair")
    after = repaired["after"]
    assert (after["missing"], after["extra"], after["mismatched"]) == (0, 0, 0), repaired
    assert after["quarantined"] == len(invalid) + 1, after  # the late invalid row, parked
    _oracle_equal(kind, where, wh, wh_where, invalid | {LATE_INVALID})
    again = _reconcile(config)
    assert (again["missing"], again["extra"], again["mismatched"]) == (0, 0, 0), again
