"""No fixed waits in a cycle's path: `run_once` ends when its last batch is loaded.

A warm `run --follow`-style cycle after a 1% update is ~0.15 s on a quiet machine
(bench/NOTES.md, #14); the loader used to look for one more batch for 20 ms after the
extraction had ended, although every batch that extraction landed was queued by then.
Observed on the real SQLite buffer (each `get` and the wait it was given, recorded
around the real method), never timed.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import pytest

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _source(path: Path, rows: range) -> None:
    with closing(sqlite3.connect(path)) as c:
        c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        c.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", [(i, i) for i in rows])
        c.commit()


def _pipeline(tmp_path: Path) -> Pipeline:
    raw: dict[str, Any] = {
        "name": "n", "base_dir": str(tmp_path), "state_dir": "state",
        "landing": {"path": "landing"}, "warehouse": {"kind": "duckdb", "path": "wh.duckdb"},
        "contracts": {"t": {"primary_key": ["id"], "cursor": "v", "columns": {
            "id": {"type": "int64", "nullable": False},
            "v": {"type": "int64", "nullable": False}}}},
        "sources": [{"name": "s", "kind": "sqlite", "path": str(tmp_path / "s.db"),
                     "tables": [{"name": "t", "contract": "t", "lookback": 0}]}]}
    return Pipeline(parse_config(raw))


def test_the_cycle_ends_without_waiting_for_a_batch_after_its_extraction(
        tmp_path: Path) -> None:
    _source(tmp_path / "s.db", range(1, 201))
    with _pipeline(tmp_path) as p:
        p.run_once()
        gets: list[tuple[float, bool]] = []  # (wait asked, found a batch)
        real_get = p.buffer.get

        def recorded(wait: float = 0.0) -> Any:
            delivery = real_get(wait)
            gets.append((wait, delivery is not None))
            return delivery

        p.buffer.get = recorded  # type: ignore[method-assign]
        for cycle in range(3):
            _source(tmp_path / "s.db", range(1000 + 10 * cycle, 1010 + 10 * cycle))
            gets.clear()
            summary = p.run_once()
            assert summary.loaded_rows == 10
            assert any(found for _, found in gets)
            # the look that ends the cycle found the buffer empty without pausing
            assert gets[-1] == (0.0, False), gets
    with closing(duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)) as wh:
        loaded = wh.execute("SELECT count(*), sum(id), sum(v) FROM main.t").fetchone()
    with closing(sqlite3.connect(tmp_path / "s.db")) as src:
        assert loaded == src.execute("SELECT count(*), sum(id), sum(v) FROM t").fetchone()
