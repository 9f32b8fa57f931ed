"""An incremental `steadyflow run --json` builds nothing its run does not use.

As a command, an incremental run after a small change is mostly start-up (bench/NOTES.md,
#14: imports, DuckDB's open, the source's connection). Guarded here on MariaDB and
PostgreSQL sources into DuckDB, each run in a process of its own: no rich Console for a
--json run, no driver of a source kind the config does not name (nor nats, httpx), and no
system CA store loaded for a connection whose server certificate is never checked
(extract/mysql_tls.py); no prometheus_client for metrics that no one is shown
(observe/recording.py); and no numpy for the console script's plain `run`, on either
warehouse (cli/startup.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from tests.conftest import steadyflow, write_pipeline
from tests.integration.test_mysql_bulk_polls import insert as mysql_insert

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# modules an incremental run into DuckDB has no use for, per source kind. MariaDB: the first
# page of a poll is read by pymysql (connectorx is imported for long pages only). PostgreSQL:
# ADBC's dbapi imports pyarrow.dataset (and Acero) itself
UNUSED = {
    "mysql": ("rich", "prometheus_client", "connectorx", "nats", "httpx", "psycopg",
              "adbc_driver_manager", "adbc_driver_postgresql", "adbc_driver_sqlite",
              "pyarrow.dataset", "pyarrow.acero"),
    "postgres": ("rich", "prometheus_client", "pymysql", "connectorx", "nats", "httpx",
                 "adbc_driver_sqlite"),
}

_CHILD = """
import json, ssl, sys
loads = []
load_default_certs = ssl.SSLContext.load_default_certs
def counted(self, *args, **kwargs):
    loads.append(1)
    return load_default_certs(self, *args, **kwargs)
ssl.SSLContext.load_default_certs = counted
from steadyflow.cli.main import app
try:
    app(["run", "-c", sys.argv[1], "--json"], prog_name="steadyflow")
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps({"modules": sorted(m for m in sys.argv[2:] if m in sys.modules),
                  "ca_store_loads": len(loads)}))
"""


def _insert_pg(dsn: str, first: int, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS sales (store_id bigint NOT NULL, sale_id "
                     "bigint NOT NULL, sku text NOT NULL, qty bigint, unit_price "
                     "numeric(12,2), currency text, sold_at timestamptz, updated_at "
                     "timestamptz NOT NULL, PRIMARY KEY (store_id, sale_id))")
        conn.execute("CREATE INDEX IF NOT EXISTS sales_cursor ON sales "
                     "(updated_at, store_id, sale_id)")
        conn.execute("INSERT INTO sales SELECT 2, g, 'SKU', 1, 1.25, 'EUR', NULL, "
                     "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' "
                     "FROM generate_series(%s::bigint, %s::bigint) g", (first, first + rows - 1))


@pytest.mark.parametrize("kind", ["mysql", "postgres"])
def test_an_incremental_json_run_loads_only_what_it_uses(tmp_path: Path, kind: str,
                                                          request: pytest.FixtureRequest
                                                          ) -> None:
    dsn = request.getfixturevalue("mysql_dsn" if kind == "mysql" else "pg_dsn")
    insert = mysql_insert if kind == "mysql" else _insert_pg
    insert(dsn, 1, 50)
    config = write_pipeline(tmp_path, [{
        "name": "store", "kind": kind, "dsn": dsn,
        "tables": [{"name": "sales", "contract": "sales", "warehouse_filter": {"store_id": 2}}]}])
    steadyflow("run", "-c", str(config), "--json", check=True)  # the first load
    insert(dsn, 51, 10)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(config), *UNUSED[kind]],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary, seen = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert summary["changed_rows"] == 10 and not summary["errors"]
    assert seen == {"modules": [], "ca_store_loads": 0}


def _source_totals(kind: str, dsn: str) -> tuple[int, int, str]:
    sql = "SELECT count(*), sum(qty), CAST(sum(unit_price) AS CHAR) FROM sales"
    if kind == "postgres":
        with psycopg.connect(dsn) as conn:
            row = conn.execute(sql.replace("CHAR", "text")).fetchone()
    else:
        import pymysql

        with pymysql.connect(host="127.0.0.1", user="root", password="",
                             database=dsn.rsplit("/", 1)[1]) as conn, conn.cursor() as cur:
            cur.execute(sql)
            row = cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), f"{float(row[2]):.2f}"


def _warehouse_totals(warehouse: str) -> tuple[int, int, str]:
    sql = "SELECT count(*), sum(qty), CAST(sum(unit_price) AS VARCHAR) FROM main.sales"
    if warehouse.endswith(".duckdb"):
        import duckdb

        with duckdb.connect(warehouse, read_only=True) as conn:
            row = conn.execute(sql).fetchone()
    else:
        with psycopg.connect(warehouse) as conn:
            row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), f"{float(row[2]):.2f}"


@pytest.mark.parametrize("kind,into", [("mysql", "duckdb"), ("postgres", "duckdb"),
                                       ("postgres", "postgres")])
def test_the_run_command_moves_rows_without_importing_numpy(
        tmp_path: Path, kind: str, into: str, request: pytest.FixtureRequest) -> None:
    """The console script's plain `run` keeps numpy out (cli/startup.py without_numpy: ~45
    ms of its start-up CPU where numpy is installed, as pyarrow imports it when it can); a
    first load (long pages: connectorx, ADBC) and an incremental run then move every row,
    checked at both ends through the drivers. The numpy on the path here only marks that
    its import began, then is missing (as it is in this venv)."""
    fake = tmp_path / "path" / "numpy"
    fake.mkdir(parents=True)
    marker = tmp_path / "numpy-imported"
    (fake / "__init__.py").write_text(
        f"open({str(marker)!r}, 'a').write('x')\nraise ImportError('not this numpy')\n")
    dsn = request.getfixturevalue("mysql_dsn" if kind == "mysql" else "pg_dsn")
    insert = mysql_insert if kind == "mysql" else _insert_pg
    insert(dsn, 1, 3000)
    warehouse = (str(tmp_path / "wh.duckdb") if into == "duckdb"
                 else request.getfixturevalue("pg_warehouse_dsn"))
    config = write_pipeline(tmp_path, [{
        "name": "store", "kind": kind, "dsn": dsn,
        "tables": [{"name": "sales", "contract": "sales", "page_size": 1000}]}],
        warehouse={"kind": "duckdb", "path": warehouse} if into == "duckdb"
        else {"kind": "postgres", "dsn": warehouse})
    env = {"PYTHONPATH": os.pathsep.join([str(fake.parent), *filter(None, [
        os.environ.get("PYTHONPATH")])])}
    for first, rows in ((3001, 0), (3001, 25)):
        if rows:
            insert(dsn, first, rows)
        proc = steadyflow("run", "-c", str(config), "--json", env=env, timeout=90)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not json.loads(proc.stdout.strip().splitlines()[-1])["errors"]
        assert not marker.exists(), "the run imported numpy"
        assert _warehouse_totals(warehouse) == _source_totals(kind, dsn)
