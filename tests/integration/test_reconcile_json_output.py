"""`reconcile --json` prints the keys it found as they are.

The JSON went through rich's console, whose markup read "[abc]" and "[red]" in a key as
style tags and dropped them (the report named keys the table does not have), and a key
holding "[/b]" failed the command with rich's MarkupError after the comparison was done
and recorded. The process also no longer imports rich for that one line.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEYS = ["[abc]", "[red]x", "a[/b]", "[bold]y[/bold]", "plain"]


def _cli(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The real CLI in a child process; its result and the modules it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "steadyflow", *args],
                          capture_output=True, text=True, timeout=100, env={**os.environ})
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc, names


def test_keys_with_brackets_are_reported_as_they_are(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (k TEXT NOT NULL PRIMARY KEY, c INTEGER NOT NULL, v INT)")
        con.execute("CREATE INDEX i ON t (c, k)")
        con.executemany("INSERT INTO t VALUES (?, ?, ?)",
                        [(k, i, i * 10) for i, k in enumerate(KEYS)])
    wh = tmp_path / "wh.duckdb"
    config = tmp_path / "pipeline.yml"
    config.write_text(yaml.safe_dump({
        "name": "jsonkeys", "state_dir": str(tmp_path / "state"),
        "landing": {"path": str(tmp_path / "l")},
        "warehouse": {"kind": "duckdb", "path": str(wh), "schema": "main"},
        "contracts": {"c": {"primary_key": ["k"], "cursor": "c", "columns": {
            "k": {"type": "string", "nullable": False},
            "c": {"type": "int64", "nullable": False}, "v": {"type": "int64"}}}},
        "sources": [{"name": "s", "kind": "sqlite", "path": str(db),
                     "tables": [{"name": "t", "contract": "c"}]}]}))
    loaded, _ = _cli("run", "-c", str(config))
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr[-3000:]

    clean, imported = _cli("reconcile", "--json", "-c", str(config))
    assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
    assert json.loads(clean.stdout)["clean"] is True
    assert "steadyflow" in imported and "rich" not in imported

    with duckdb.connect(str(wh)) as con:
        con.execute("DELETE FROM main.t")
        rest = con.execute("SELECT count(*) FROM main.t").fetchone()
    assert rest == (0,)
    found, _ = _cli("reconcile", "--json", "--examples", "10", "-c", str(config))
    assert found.returncode == 1, found.stdout + found.stderr[-3000:]
    (table,) = json.loads(found.stdout)["tables"]
    assert table["missing"] == len(KEYS)
    assert sorted(k for (k,) in table["examples"]["missing"]) == sorted(KEYS)
