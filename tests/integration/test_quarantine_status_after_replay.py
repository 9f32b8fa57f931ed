"""What `status --json` and the status page say about quarantined rows as replays let
them through: the rows the open entries still hold, beside every row quarantined so far.
The truth is read from the parked Parquet files (pyarrow) and the state file (sqlite3)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from tests.conftest import steadyflow

from steadyflow.observe.page import render_page
from steadyflow.observe.status import collect
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _config(tmp: Path, where: str, allowed: list[str]) -> Path:
    postgres = where.startswith("postgresql://")
    config = tmp / "pipeline.yml"
    config.write_text(yaml.safe_dump({
        "name": "held", "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "l")},
        "warehouse": ({"kind": "postgres", "dsn": where, "schema": "public"} if postgres
                      else {"kind": "duckdb", "path": where, "schema": "main"}),
        "contracts": {"c": {"primary_key": ["id"], "cursor": "id", "columns": {
            "id": {"type": "int64", "nullable": False},
            "v": {"type": "string", "allowed": allowed}}}},
        "sources": [{"name": "s", "kind": "sqlite", "path": str(tmp / "s.db"),
                     "tables": [{"name": "t", "contract": "c"}]}]}, sort_keys=False))
    return config


def _truth(tmp: Path, allowed: list[str]) -> tuple[int, int]:
    """(rows the open entries hold that `allowed` still refuses, open entries)."""
    with closing(sqlite3.connect(tmp / "state" / "state.db")) as conn:
        paths = [row[0] for row in conn.execute(
            "SELECT path FROM quarantine WHERE status = 'open'")]
    held = sum(1 for path in paths for value in
               pq.read_table(tmp / "l" / path).column("v").to_pylist() if value not in allowed)
    return held, len(paths)


def _status(config: Path) -> dict[str, Any]:
    proc = steadyflow("status", "-c", str(config), "--json")
    [table] = json.loads(proc.stdout)["tables"]
    return table


def _card(config: Path) -> str:
    with Pipeline.from_yaml(config) as pipeline:
        page = render_page(collect(pipeline), {})
    start = page.index('<div class="k">quarantined</div>')
    return page[start:page.index("</div></div>", start)]


def test_status_counts_the_rows_quarantine_still_holds_after_each_replay(
        tmp_path: Path, where: str) -> None:
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)",
                         [(1, "a"), (2, "x"), (3, "x"), (4, "y")])
        conn.commit()
    allowed = ["a"]
    config = _config(tmp_path, where, allowed)
    steadyflow("run", "-c", str(config), check=True)
    assert _truth(tmp_path, allowed) == (3, 1)
    table = _status(config)
    assert (table["rows_quarantined"], table["rows_in_quarantine"],
            table["open_quarantine_batches"]) == (3, 3, 1)

    for allowed, held, entries in ((["a", "x"], 1, 1), (["a", "x", "y"], 0, 0)):
        config = _config(tmp_path, where, allowed)
        steadyflow("quarantine", "replay", "-c", str(config), check=True)
        assert _truth(tmp_path, allowed) == (held, entries)
        table = _status(config)
        # the replayed rows were quarantined once and are loaded now; the rest are held
        assert (table["rows_quarantined"], table["rows_in_quarantine"],
                table["open_quarantine_batches"], table["rows_changed"]) == (
            3, held, entries, 4 - held), table
        card = _card(config)
        assert f'<div class="v">{held}</div>' in card, card
        assert f"rows in {entries} open batches; 3 quarantined in all" in card, card
