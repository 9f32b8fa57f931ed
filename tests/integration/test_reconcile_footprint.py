"""What a reconcile process loads: into a PostgreSQL warehouse, not duckdb; for an
unchanged table, into either warehouse, not pyarrow (nor numpy) either.

Peak RSS counts against reconcile (#15: within reladiff's + 50 MiB); importing duckdb adds
~18 MiB on top of pyarrow and psycopg, and a PostgreSQL source with a PostgreSQL warehouse
never needs it. Here: the
real CLI in a child process with `-X importtime` (every module the process imported, one
line each), clean then with a changed row found and repaired, and no duckdb among them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import psycopg
import pytest
from tests.conftest import steadyflow, write_pipeline
from tests.integration.test_reconcile_shared_hash import _config, _source

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _modules(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI; its exit and the top-level names of the modules it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "steadyflow", *args],
                          capture_output=True, text=True, timeout=100, env={**os.environ})
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc, names


def test_a_postgresql_to_postgresql_reconcile_never_imports_duckdb(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str) -> None:
    _source(pg_dsn, n=200)
    config = str(_config(tmp_path, pg_dsn, pg_warehouse_dsn))
    steadyflow("run", "-c", config, check=True)
    clean, imported = _modules("reconcile", "--json", "-c", config)
    assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
    assert '"clean": true' in clean.stdout
    assert "psycopg" in imported and "steadyflow" in imported  # the log is read right
    assert "duckdb" not in imported
    with psycopg.connect(pg_warehouse_dsn, autocommit=True) as wh:
        wh.execute("UPDATE wh.sales SET qty = qty + 1 WHERE sale_id = 17")
    fixed, imported = _modules("reconcile", "--repair", "--json", "-c", config)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr[-3000:]
    assert '"mismatched": 1' in fixed.stdout and '"upserted": 1' in fixed.stdout, fixed.stdout
    assert "duckdb" not in imported


def test_an_unchanged_table_reconciled_into_postgresql_never_imports_pyarrow(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str) -> None:
    """pyarrow (with numpy where installed) is ~80 MiB of peak RSS (bench/RECONCILE.md):
    comparing bucket checksums moves no rows as Arrow, so an unchanged table's reconcile
    must not load it. Rows that differ are read, validated and repaired through Arrow as
    before: the repair still finds and fixes a changed row."""
    _source(pg_dsn, n=200)
    config = str(_config(tmp_path, pg_dsn, pg_warehouse_dsn))
    steadyflow("run", "-c", config, check=True)
    clean, imported = _modules("reconcile", "--json", "-c", config)
    assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
    assert '"clean": true' in clean.stdout and '"rows_compared": 200' in clean.stdout
    assert "psycopg" in imported and "steadyflow" in imported  # the log is read right
    assert not {"pyarrow", "numpy", "duckdb"} & imported, {"pyarrow", "numpy", "duckdb"} & imported
    with psycopg.connect(pg_warehouse_dsn, autocommit=True) as wh:
        wh.execute("DELETE FROM wh.sales WHERE sale_id = 42")
    fixed, imported = _modules("reconcile", "--repair", "--json", "-c", config)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr[-3000:]
    assert '"missing": 1' in fixed.stdout and '"upserted": 1' in fixed.stdout, fixed.stdout
    assert "pyarrow" in imported  # the row was read and loaded as Arrow
    again, imported = _modules("reconcile", "--json", "-c", config)
    assert again.returncode == 0 and '"clean": true' in again.stdout, again.stdout
    assert "pyarrow" not in imported
    with psycopg.connect(pg_warehouse_dsn, autocommit=True) as wh:
        assert wh.execute("SELECT count(*) FROM wh.sales WHERE sale_id = 42").fetchone() == (1,)


def test_an_unchanged_table_reconciled_into_duckdb_never_imports_pyarrow(
        tmp_path: Path, pg_dsn: str) -> None:
    """The same for a DuckDB warehouse (#15: its reconcile peaked ~55 MiB above
    reladiff's + 50): the bucket checksums and keys are read with DuckDB's own fetch, not
    through Arrow. A deleted row is still found, read and repaired."""
    _source(pg_dsn, n=200)
    path = tmp_path / "wh.duckdb"
    table = {"name": "sales", "contract": "sales", "page_size": 200}
    config = str(write_pipeline(tmp_path, [{"name": "pg", "kind": "postgres", "dsn": pg_dsn,
                                            "tables": [table]}],
                                warehouse={"kind": "duckdb", "path": str(path)}))
    steadyflow("run", "-c", config, check=True)
    clean, imported = _modules("reconcile", "--json", "-c", config)
    assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
    assert '"clean": true' in clean.stdout and '"rows_compared": 200' in clean.stdout
    assert "duckdb" in imported and "steadyflow" in imported  # the log is read right
    assert not {"pyarrow", "numpy"} & imported, {"pyarrow", "numpy"} & imported
    with duckdb.connect(str(path)) as wh:
        wh.execute("DELETE FROM sales WHERE sale_id = 42")
    fixed, imported = _modules("reconcile", "--repair", "--json", "-c", config)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr[-3000:]
    assert '"missing": 1' in fixed.stdout and '"upserted": 1' in fixed.stdout, fixed.stdout
    assert "pyarrow" in imported  # the row was read and loaded as Arrow
    again, imported = _modules("reconcile", "--json", "-c", config)
    assert again.returncode == 0 and '"clean": true' in again.stdout, again.stdout
    assert "pyarrow" not in imported
    with duckdb.connect(str(path), read_only=True) as wh:
        assert wh.execute("SELECT count(*) FROM sales WHERE sale_id = 42").fetchone() == (1,)
