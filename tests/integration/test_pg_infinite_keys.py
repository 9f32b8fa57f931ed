"""PostgreSQL keys holding values outside what a warehouse holds: 'infinity' / '-infinity'
dates and times, numeric 'NaN' / 'Infinity' / '-Infinity'. Each is either loaded-or-
quarantined with its reason (numbers: Decimal holds them, so a page can end on one and the
next page continues after it) or refused before any page, naming table, column and fix
(times: no path holds them, so no page can continue after one). Never a silent loss,
never a stuck table without its column named. The first load split into key ranges
(run/backfill.py) takes its range ends from the same keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODES = ["key", "key split", "cursor"]


def pipeline(tmp: Path, dsn: str, key_type: str, mode: str,
             monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    if mode == "key split":
        monkeypatch.setenv("STEADYFLOW_BACKFILL_CHUNK_ROWS", "2")
    return {
        "name": "inf", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": ["a", "k"], "cursor": "a", "columns": {
            "a": {"type": "int64", "nullable": False},
            "k": {"type": key_type, "nullable": False}, "v": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": "postgres", "dsn": dsn,
                     "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "page_size": 2,
                                 "min_page_size": 1, "initial_load": mode.split()[0]}]}]}


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def warehouse_v(tmp: Path) -> list[int]:
    with duckdb.connect(str(tmp / "wh.duckdb")) as con:
        [(exists,)] = con.sql("SELECT count(*) FROM information_schema.tables "
                              "WHERE table_name = 't'").fetchall()
        if not exists:
            return []
        return sorted(int(r[0]) for r in con.sql("SELECT v FROM main.t").fetchall())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stored", ["infinity", "-infinity"])
def test_an_infinite_time_in_a_later_key_column_is_refused_before_any_page(
        tmp_path: Path, pg_dsn: str, mode: str, stored: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the cursor and the key's first column were looked at: an 'infinity' in the
    key's second column ended a key range (the split stored it: "Object of type
    OutOfRange is not JSON serializable") or a cursor pass ("a keyset page ended on a
    date/time that ...", naming no column), every run, the table stuck."""
    execute(pg_dsn, "CREATE TABLE t (a int, k timestamptz, v int, PRIMARY KEY (a, k))",
            "INSERT INTO t SELECT a, '2024-01-01'::timestamptz + g * interval '1 day', "
            "10 * a + g FROM generate_series(1, 3) a, generate_series(1, 3) g",
            f"INSERT INTO t VALUES (2, '{stored}', 99)")
    raw = pipeline(tmp_path, pg_dsn, "timestamp", mode, monkeypatch)
    with Pipeline(parse_config(raw)) as p:
        summary = p.run_once(raise_on_error=False)
    assert not summary.ok
    [error] = summary.errors
    assert f"k holds '{stored}' is outside 0001..9999" in error, error
    assert "table=t" in error and "UPDATE t SET k = ... WHERE k < '0001-01-01'" in error
    assert warehouse_v(tmp_path) == []  # refused at the probe: no page read before it


@pytest.mark.parametrize("mode", MODES)
def test_numeric_nan_and_infinities_in_a_key_are_quarantined_and_paged_past(
        tmp_path: Path, pg_dsn: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A numeric key holding NaN, Infinity or -Infinity: no decimal(p,s) holds them, so
    their rows are quarantined with the reason; pages and key ranges end on them (Decimal
    holds them, PostgreSQL compares them) and every other row is loaded."""
    execute(pg_dsn, "CREATE TABLE t (a int, k numeric, v int, PRIMARY KEY (a, k))",
            "INSERT INTO t SELECT a, g, 10 * a + g FROM generate_series(1, 3) a, "
            "generate_series(1, 3) g",
            "INSERT INTO t VALUES (1, 'NaN', 91), (2, 'Infinity', 92), (2, '-Infinity', 93), "
            "(3, 'NaN', 94), (3, 'Infinity', 95)")
    raw = pipeline(tmp_path, pg_dsn, "decimal(10,0)", mode, monkeypatch)
    with Pipeline(parse_config(raw)) as p:
        summary = p.run_once(raise_on_error=False)
        assert summary.ok, summary.errors
        parked = p.state.quarantined("open")
        reasons: dict[str, int] = {}
        parked_v: list[int] = []
        for q in parked:
            for reason, n in p.quarantine.reasons_of(q["path"]).items():
                reasons[reason] = reasons.get(reason, 0) + n
            parked_v += [int(v) for v in p.quarantine.rows(q["path"]).column("v").to_pylist()]
    assert warehouse_v(tmp_path) == [10 * a + g for a in (1, 2, 3) for g in (1, 2, 3)]
    assert sorted(parked_v) == [91, 92, 93, 94, 95]
    assert sum(reasons.values()) == 5 and all(r.startswith("k: ") for r in reasons), reasons
