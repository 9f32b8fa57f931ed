"""An incremental `steadyflow run --json` builds nothing its run does not use.

As a command, an incremental run after a small change is mostly start-up (bench/NOTES.md,
#14: imports, DuckDB's open, the source's connection). Guarded here on a MariaDB source
into DuckDB, in a process of its own: no rich Console for a --json run, no module of a
source kind, warehouse or buffer the config does not name, and no system CA store loaded
for a connection whose server certificate is never checked (extract/mysql_tls.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import steadyflow, write_pipeline
from tests.integration.test_mysql_bulk_polls import insert

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# modules a MariaDB -> DuckDB incremental run has no use for (the first page of a poll is
# read by pymysql: connectorx is imported for long pages only)
UNUSED = ("rich", "connectorx", "nats", "httpx", "psycopg", "adbc_driver_manager",
          "adbc_driver_postgresql", "adbc_driver_sqlite", "pyarrow.dataset", "pyarrow.acero")

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


def test_an_incremental_json_run_loads_only_what_it_uses(tmp_path: Path,
                                                          mysql_dsn: str) -> None:
    insert(mysql_dsn, 1, 50)
    config = write_pipeline(tmp_path, [{
        "name": "store", "kind": "mysql", "dsn": mysql_dsn,
        "tables": [{"name": "sales", "contract": "sales", "warehouse_filter": {"store_id": 2}}]}])
    steadyflow("run", "-c", str(config), "--json", check=True)  # the first load
    insert(mysql_dsn, 51, 10)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(config), *UNUSED],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary, seen = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert summary["changed_rows"] == 10 and not summary["errors"]
    assert seen == {"modules": [], "ca_store_loads": 0}
