"""A whole pipeline on object-store landing (S3 API: moto's server on loopback), killed with
SIGKILL mid-run and run again: the warehouse equals the source, checked by the independent
oracle (tests/support/oracle.py), every manifest entry names an object that is whole, and
the secret key appears in no output, no state and no landed file.

SQLite source -> S3 landing -> SQLite buffer -> DuckDB. The kill lands mid-PUT (the
`land.mid_write` failpoint: half the bytes written to the upload stream), between a
merge and its commit, and between landing and enqueueing.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tests.conftest import steadyflow
from tests.support.items import TABLE, make_source, write_config
from tests.support.oracle import diff, read_source, read_warehouse
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Endpoint, s3_endpoint

__all__ = ["s3_endpoint"]  # the session fixture, imported for pytest to find

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

ROWS = 3_000
PAGE = 250
ENV = {"SF_S3_ACCESS": ACCESS_KEY, "SF_S3_SECRET": SECRET_KEY}


def s3_landing(endpoint: S3Endpoint, bucket: str) -> dict[str, Any]:
    return {"url": f"s3://{bucket}/lz", "endpoint": endpoint.url, "region": REGION,
            "access_key": "${SF_S3_ACCESS}", "secret_key": "${SF_S3_SECRET}"}


def manifest(directory: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(directory / "state" / "state.db")) as db:
        return [json.loads(r[0]) for r in db.execute("SELECT ref FROM manifest")]


@pytest.mark.parametrize("point", ["land.mid_write:4", "load.after_merge:3",
                                   "extract.after_land:5"])
def test_sigkill_mid_run_on_s3_landing_loses_and_doubles_nothing(
        tmp_path: Path, s3_endpoint: S3Endpoint, point: str) -> None:
    make_source(tmp_path / "shop.db", ROWS)
    bucket = s3_endpoint.new_bucket()
    cfg = write_config(tmp_path, s3_landing(s3_endpoint, bucket), page_size=PAGE)

    killed = steadyflow("run", "-c", str(cfg), env={**ENV, "STEADYFLOW_FAILPOINT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert manifest(tmp_path), "killed before anything landed: the kill came too early"

    rerun = steadyflow("run", "-c", str(cfg), "--json", env={**ENV, "STEADYFLOW_FAILPOINT": ""})
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["errors"] == []

    expected = read_source("sqlite", str(tmp_path / "shop.db"), TABLE)
    actual = read_warehouse("duckdb", str(tmp_path / "warehouse.duckdb"), "main", TABLE)
    assert len(expected) == ROWS and diff(expected, actual) == ""

    # the landing is on the object store only, and every manifest entry names a whole object
    assert not (tmp_path / "landing").exists()
    client = s3_endpoint.client()
    for ref in manifest(tmp_path):
        with client.open_input_file(f"{bucket}/lz/{ref['path']}") as fh:
            assert pq.ParquetFile(fh).metadata.num_rows == ref["rows"]
    for text in (killed.stdout, killed.stderr, rerun.stdout, rerun.stderr,
                 (tmp_path / "state" / "state.db").read_bytes().decode("latin-1")):
        assert SECRET_KEY not in text
