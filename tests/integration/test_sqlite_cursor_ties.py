"""A SQLite time cursor holding two spellings of one instant: '...:01' and '...:01.000' (a
whole-second CURRENT_TIMESTAMP writer beside a millisecond one), or '...:01.5' and
'...:01.50'. SQLite compares the text, in which the shorter spelling sorts first; in
(time, key) order a row tying the checkpoint's instant with a greater key comes after it.
So a row written after a run whose checkpoint was ('...:01.000', 2), stamped '...:01' with
key 10, sorted behind the checkpoint and was never read without a lookback: lost, every run
ok. Such a cursor is now refused without a lookback (extract/key_check.py), naming the fix;
with one, each run re-reads from before the checkpoint's instant and every row arrives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.support.sql_exec import execute

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def config(tmp: Path, at: str, lookback: str = "0s") -> dict[str, Any]:
    return {
        "name": "ties", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
        "contracts": {"c": {"primary_key": ["k"], "cursor": "c", "columns": {
            "k": {"type": "int64", "nullable": False},
            "c": {"type": "timestamp", "nullable": False}, "v": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": "sqlite", "path": at, "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "c", "page_size": 2,
                                 "initial_load": "cursor", "lookback": lookback}]}]}


def loaded(tmp: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return sorted(con.sql("SELECT k, v FROM main.t").fetchall())


# (the checkpoint's spelling, rows written later: ties of its instant spelled shorter,
# then a later time in the same shorter width)
CASES = [
    ("2024-01-01 00:00:01.000", ["2024-01-01 00:00:01", "2024-01-01 00:00:01.0",
                                 "2024-01-01 00:00:02"]),
    ("2024-01-01T00:00:01.50", ["2024-01-01T00:00:01.5", "2024-01-01T00:00:02.5"]),
    ("2024-01-01 00:00:01.000+02:00", ["2024-01-01 00:00:01+02:00",
                                       "2024-01-01 00:00:02+02:00"]),
]


@pytest.mark.parametrize(("checkpoint", "later"), CASES)
def test_a_tie_spelled_shorter_than_the_checkpoint_is_never_lost(
        tmp_path: Path, checkpoint: str, later: list[str]) -> None:
    at = str(tmp_path / "s.db")
    first = checkpoint[:17] + "00" + checkpoint[19:]
    execute("sqlite", at, "CREATE TABLE t (k INTEGER PRIMARY KEY, c TEXT NOT NULL, v INT)",
            "CREATE INDEX i ON t (c, k)",
            f"INSERT INTO t VALUES (1, '{first}', 1), (2, '{checkpoint}', 2)")
    with Pipeline(parse_config(config(tmp_path, at))) as p:
        assert p.run_once(raise_on_error=False).ok
        execute("sqlite", at, "INSERT INTO t VALUES " + ", ".join(
            f"({10 + i}, '{c}', {10 + i})" for i, c in enumerate(later)))
        summary = p.run_once(raise_on_error=False)
    assert summary.failed_tables == ["s.t"], summary  # not ok with the ties left behind
    assert "cursor column c (timestamp)" in summary.errors[0], summary.errors
    assert "set a lookback on this table" in summary.errors[0], summary.errors
    assert loaded(tmp_path) == [(1, 1), (2, 2)]  # the checkpoint stayed where it was
    with Pipeline(parse_config(config(tmp_path, at, lookback="1s"))) as p:  # the fix
        summary = p.run_once(raise_on_error=False)
    assert summary.ok, summary.errors
    assert loaded(tmp_path) == sorted(execute("sqlite", at, "SELECT k, v FROM t"))


def test_a_time_cursor_in_two_widths_is_refused_at_the_probe_without_a_lookback(
        tmp_path: Path) -> None:
    """A table mixing whole seconds and milliseconds from the start: refused at the first
    probe; the same table with a lookback loads every row."""
    at = str(tmp_path / "s.db")
    execute("sqlite", at, "CREATE TABLE t (k INTEGER PRIMARY KEY, c TEXT NOT NULL, v INT)",
            "INSERT INTO t VALUES (1, '2024-01-01 00:00:01', 1), "
            "(2, '2024-01-01 00:00:01.250', 2), (3, '2024-01-01 00:00:02.000', 3)")
    with Pipeline(parse_config(config(tmp_path, at))) as p:
        summary = p.run_once(raise_on_error=False)
    assert summary.failed_tables == ["s.t"], summary
    assert ("cursor column c (timestamp) spells values with no significant fraction digit "
            "in more than one width ('2024-01-01 00:00:01', '2024-01-01 00:00:02.000')"
            in summary.errors[0]), summary.errors
    with Pipeline(parse_config(config(tmp_path, at, lookback="1s"))) as p:
        assert p.run_once(raise_on_error=False).ok
    assert loaded(tmp_path) == [(1, 1), (2, 2), (3, 3)]
