"""Load lanes on a fresh PostgreSQL warehouse: the first run creates the schema, the ledger
and every target while two lanes load two targets at once.

Two sessions running `CREATE SCHEMA IF NOT EXISTS` (or `CREATE TABLE IF NOT EXISTS` of the
ledger) at the same moment collide on the catalog's unique index; under the per-target
advisory lock alone, the lane that lost failed its batch for good (a one-batch group has
no one-by-one retry), so the first run of a two-table pipeline ended with a failed batch.
Checked with real stores and an independent oracle (tests/support/oracle.py): each fresh
schema's run loads both batches and both targets equal their sources key by key.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import yaml
from tests.support.items import CONTRACT, TABLE, make_source
from tests.support.oracle import diff, read_source, read_warehouse

from steadyflow.run.pipeline import Pipeline

pytestmark = pytest.mark.integration

ROWS = 40  # one page per source: each lane's group is one batch
RUNS = 3  # fresh schemas: the collision is a race (it lost 6 of 6 runs on lead's src)


def _config(directory: Path, dsn: str, schema: str) -> Path:
    directory.mkdir()
    sources = []
    for name in ("north", "south"):
        make_source(directory / f"{name}.db", ROWS)
        sources.append({"name": name, "kind": "sqlite", "path": f"{name}.db",
                        "tables": [{"name": "items", "contract": "items", "page_size": 250,
                                    "target": f"{name}_items"}]})
    config = {"name": "fresh", "state_dir": "state",
              "warehouse": {"kind": "postgres", "dsn": dsn, "schema": schema,
                            "load_lanes": 2},
              "contracts": {"items": CONTRACT}, "sources": sources}
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_two_lanes_create_a_fresh_schema_without_failing_a_batch(tmp_path: Path,
                                                                 pg_dsn: str) -> None:
    for run in range(RUNS):
        schema = f"fresh{run}"
        cfg = _config(tmp_path / schema, pg_dsn, schema)
        with Pipeline.from_yaml(cfg) as p:
            assert p.extract().ok
            assert len(p.loader.lanes) == 1  # two connections: this one and the lane's
            summary = p.load(max_failures=1)
        assert summary.ok and summary.loaded_batches == 2, (schema, summary.errors)
        for name in ("north", "south"):
            expected = read_source("sqlite", str(tmp_path / schema / f"{name}.db"), TABLE)
            actual = read_warehouse("postgres", pg_dsn, schema,
                                    replace(TABLE, name=f"{name}_items"))
            assert actual == expected, diff(expected, actual)
        with psycopg.connect(pg_dsn) as conn:
            ledger = conn.execute(f"SELECT count(*), count(DISTINCT batch_id) FROM "
                                  f"{schema}._steadyflow_ledger").fetchone()
        assert ledger == (2, 2)
