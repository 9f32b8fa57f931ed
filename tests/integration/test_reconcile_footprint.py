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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _warehouse(kind: str, tmp_path: Path, pg_dsn: str, request: pytest.FixtureRequest
               ) -> tuple[str, str, Callable[[str], list[Any]]]:
    """(the pipeline's config path, its warehouse table, a statement run on it through
    the warehouse's own driver) for a PostgreSQL source of 200 rows, run once."""
    _source(pg_dsn, n=200)
    if kind == "postgres":
        wh_dsn = str(request.getfixturevalue("pg_warehouse_dsn"))
        config = str(_config(tmp_path, pg_dsn, wh_dsn))

        def sql(statement: str) -> list[Any]:
            with psycopg.connect(wh_dsn, autocommit=True) as wh:
                cur = wh.execute(statement)
                return cur.fetchall() if cur.description else []

        target = "wh.sales"
    else:
        path = tmp_path / "wh.duckdb"
        table = {"name": "sales", "contract": "sales", "page_size": 200}
        config = str(write_pipeline(tmp_path, [{"name": "pg", "kind": "postgres",
                                                "dsn": pg_dsn, "tables": [table]}],
                                    warehouse={"kind": "duckdb", "path": str(path)}))

        def sql(statement: str) -> list[Any]:
            with duckdb.connect(str(path)) as wh:
                return wh.execute(statement).fetchall()

        target = "sales"
    steadyflow("run", "-c", config, check=True)
    return config, target, sql


def test_a_postgresql_to_postgresql_reconcile_never_imports_duckdb(
        tmp_path: Path, pg_dsn: str, request: pytest.FixtureRequest) -> None:
    config, target, sql = _warehouse("postgres", tmp_path, pg_dsn, request)
    clean, imported = _modules("reconcile", "--json", "-c", config)
    assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
    assert '"clean": true' in clean.stdout
    assert "psycopg" in imported and "steadyflow" in imported  # the log is read right
    assert "duckdb" not in imported
    sql(f"UPDATE {target} SET qty = qty + 1 WHERE sale_id = 17")
    fixed, imported = _modules("reconcile", "--repair", "--json", "-c", config)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr[-3000:]
    assert '"mismatched": 1' in fixed.stdout and '"upserted": 1' in fixed.stdout, fixed.stdout
    assert "duckdb" not in imported


# warehouse kind -> (its driver, which the reconcile imports, and what it must not import
# for an unchanged table)
UNCHANGED = {"postgres": ("psycopg", {"pyarrow", "numpy", "duckdb"}),
             "duckdb": ("duckdb", {"pyarrow", "numpy"})}


@pytest.mark.parametrize("kind", sorted(UNCHANGED))
def test_an_unchanged_table_reconciled_never_imports_pyarrow(
        tmp_path: Path, pg_dsn: str, request: pytest.FixtureRequest, kind: str) -> None:
    """pyarrow (with numpy where installed) is ~80 MiB of peak RSS (bench/RECONCILE.md;
    #15: DuckDB's reconcile peaked ~55 MiB above reladiff's + 50): comparing bucket
    checksums moves no rows as Arrow (DuckDB's checksums and keys are read with its own
    fetch), so an unchanged table's reconcile must not load it. Rows that differ are read,
    validated and repaired through Arrow as before: the repair still finds and fixes a
    deleted row."""
    config, target, sql = _warehouse(kind, tmp_path, pg_dsn, request)
    driver, unwanted = UNCHANGED[kind]
    clean, imported = _modules("reconcile", "--json", "-c", config)
    assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
    assert '"clean": true' in clean.stdout and '"rows_compared": 200' in clean.stdout
    assert driver in imported and "steadyflow" in imported  # the log is read right
    assert not unwanted & imported, unwanted & imported
    sql(f"DELETE FROM {target} WHERE sale_id = 42")
    fixed, imported = _modules("reconcile", "--repair", "--json", "-c", config)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr[-3000:]
    assert '"missing": 1' in fixed.stdout and '"upserted": 1' in fixed.stdout, fixed.stdout
    assert "pyarrow" in imported  # the row was read and loaded as Arrow
    again, imported = _modules("reconcile", "--json", "-c", config)
    assert again.returncode == 0 and '"clean": true' in again.stdout, again.stdout
    assert "pyarrow" not in imported
    assert sql(f"SELECT count(*) FROM {target} WHERE sale_id = 42") == [(1,)]
