"""A SIGKILL while two load lanes (run/load.py, Lanes) are mid-group, on a PostgreSQL
warehouse: nothing lost, nothing doubled once the pipeline runs again.

Each lane commits its own groups; marking and acking stay in the loader's thread. A kill
lands wherever the failpoint's count falls among both lanes' hits: one lane's group merged
and not committed while the other's committed, a group committed and not marked, marked
and not acked. The rerun must equal the sources key by key (tests/support/oracle.py reads
both ends through their drivers), every batch once in the ledger, every manifest entry
loaded, the table counts added once.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from tests.conftest import steadyflow
from tests.support.items import CONTRACT, TABLE, make_source
from tests.support.jetstream import NATS_URL, fresh_stream
from tests.support.oracle import diff, read_source, read_warehouse

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ROWS, PAGE = 1_200, 200  # 6 batches a source; a gather of 4 (800 rows): 2 a lane


@pytest.fixture(params=["sqlite", pytest.param("jetstream", marks=pytest.mark.exhaustive)])
def buffer(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {"kind": "sqlite"}
        return
    with fresh_stream("sf_lanes") as stream:
        yield {"kind": "jetstream", "url": NATS_URL, "stream": stream, "lease": "2s"}


def _config(directory: Path, dsn: str, buffer: dict[str, Any]) -> Path:
    sources = []
    for name in ("north", "south"):
        make_source(directory / f"{name}.db", ROWS)
        sources.append({"name": name, "kind": "sqlite", "path": f"{name}.db",
                        "tables": [{"name": "items", "contract": "items", "page_size": PAGE,
                                    "target": f"{name}_items"}]})
    config = {"name": "lanes_crash", "state_dir": "state", "buffer": buffer,
              "warehouse": {"kind": "postgres", "dsn": dsn, "schema": "wh",
                            "load_lanes": 2, "group_rows": 4 * PAGE},
              "contracts": {"items": CONTRACT}, "sources": sources}
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _state(directory: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(directory / "state" / "state.db", timeout=30)) as db:
        return db.execute(sql).fetchall()


@pytest.mark.parametrize("point", [
    "load.after_merge:3",  # a group merged, not committed; the other lane's may be
    *(pytest.param(p, marks=pytest.mark.exhaustive)  # ~10 s each: the default tier keeps one
      for p in ("load.after_commit:3", "load.after_mark:3", "load.after_ack:5"))])
def test_a_kill_amid_two_lanes_loses_and_doubles_nothing(
        tmp_path: Path, pg_dsn: str, buffer: dict[str, Any], point: str) -> None:
    cfg = _config(tmp_path, pg_dsn, buffer)
    steadyflow("extract", "-c", str(cfg), check=True)
    proc = steadyflow("run", "-c", str(cfg), env={"STEADYFLOW_FAILPOINT": point})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    steadyflow("run", "-c", str(cfg), env={"STEADYFLOW_FAILPOINT": ""}, check=True)
    for name in ("north", "south"):
        expected = read_source("sqlite", str(tmp_path / f"{name}.db"), TABLE)
        actual = read_warehouse("postgres", pg_dsn, "wh", replace(TABLE, name=f"{name}_items"))
        assert actual == expected, diff(expected, actual)
    with psycopg.connect(pg_dsn) as conn:
        ledger = {b for b, in conn.execute("SELECT batch_id FROM wh._steadyflow_ledger")}
        assert conn.execute("SELECT count(*) FROM wh._steadyflow_ledger").fetchone() == (
            len(ledger),)
    manifest = dict(_state(tmp_path, "SELECT batch_id, status FROM manifest"))
    assert set(manifest.values()) == {"loaded"}, manifest
    assert ledger == set(manifest)
    assert _state(tmp_path, "SELECT sum(rows_loaded) FROM table_health") == _state(
        tmp_path, "SELECT sum(good_rows) FROM manifest WHERE status = 'loaded'")
