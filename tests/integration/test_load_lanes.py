"""Load lanes (run/load.py, Lanes): with a PostgreSQL warehouse the loader merges the
batches it took on `warehouse.load_lanes` connections at once, split by target, so one
target's slow or blocked transaction never holds another target's rows back.

Checked with real stores and an independent oracle (tests/support/oracle.py reads both
ends through their drivers): while another session holds a lock on one target's table,
the other target's rows become visible in the warehouse; once the lock goes, both targets
equal their sources key by key, every batch in the ledger once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import yaml
from tests.support.items import CONTRACT, TABLE, make_source
from tests.support.oracle import diff, read_source, read_warehouse

from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = pytest.mark.integration

ROWS = 600  # 3 pages of 250 per store


def _config(tmp_path: Path, dsn: str, lanes: int | None = None,
            names: tuple[str, ...] = ("north", "south")) -> Path:
    warehouse = {"kind": "postgres", "dsn": dsn, "schema": "wh"}
    if lanes is not None:
        warehouse["load_lanes"] = lanes
    sources = []
    for name in names:
        make_source(tmp_path / f"{name}.db", ROWS)
        sources.append({"name": name, "kind": "sqlite", "path": f"{name}.db",
                        "tables": [{"name": "items", "contract": "items", "page_size": 250,
                                    "target": f"{name}_items"}]})
    config = {"name": "lanes", "state_dir": "state", "warehouse": warehouse,
              "contracts": {"items": CONTRACT}, "sources": sources}
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _visible(dsn: str, target: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass(%s)", [f"wh.{target}"]).fetchone()
        if found is None or found[0] is None:
            return 0
        row = conn.execute(f"SELECT count(*) FROM wh.{target}").fetchone()
        return int(row[0]) if row else 0


def test_a_blocked_target_holds_no_other_targets_rows_back(tmp_path: Path, pg_dsn: str
                                                           ) -> None:
    cfg = _config(tmp_path, pg_dsn)
    with Pipeline.from_yaml(cfg) as p:
        extracted = p.extract()
        assert extracted.ok and extracted.extracted_batches == 6
        for _, table, ref in p.config.tables():  # the tables exist, so one can be locked
            p.warehouse.ensure_table(ref, p.config.contract_of(table))
        blocker = psycopg.connect(pg_dsn)
        try:
            blocker.execute("LOCK TABLE wh.north_items IN ACCESS EXCLUSIVE MODE")
            summary: list[RunSummary] = []
            loader = threading.Thread(target=lambda: summary.append(p.load()), daemon=True)
            loader.start()
            deadline = time.monotonic() + 10
            while _visible(pg_dsn, "south_items") < ROWS and time.monotonic() < deadline:
                time.sleep(0.05)
            south_during = _visible(pg_dsn, "south_items")
            assert loader.is_alive()  # north's transaction still waits for the lock
        finally:
            blocker.rollback()  # the lock goes: north's lane goes on
            blocker.close()
        loader.join(timeout=60)
        assert not loader.is_alive()
    assert south_during == ROWS, (
        f"{south_during} of south's {ROWS} rows visible while north's table was locked: "
        "one target's wait held the other's commit back")
    assert summary and summary[0].ok and summary[0].loaded_batches == 6
    for name in ("north", "south"):
        expected = read_source("sqlite", str(tmp_path / f"{name}.db"), TABLE)
        actual = read_warehouse("postgres", pg_dsn, "wh", replace(TABLE, name=f"{name}_items"))
        assert actual == expected, diff(expected, actual)
    with psycopg.connect(pg_dsn) as conn:
        ledger = conn.execute("SELECT count(*), count(DISTINCT batch_id) FROM "
                              "wh._steadyflow_ledger").fetchone()
    assert ledger == (6, 6)


def test_one_lane_loads_as_before(tmp_path: Path, pg_dsn: str) -> None:
    """`load_lanes: 1`: every group on one connection, the same tables."""
    cfg = _config(tmp_path, pg_dsn, lanes=1)
    with Pipeline.from_yaml(cfg) as p:
        assert p.extract().ok
        assert p.loader.lanes == []
        summary = p.load()
    assert summary.ok and summary.loaded_batches == 6
    for name in ("north", "south"):
        expected = read_source("sqlite", str(tmp_path / f"{name}.db"), TABLE)
        actual = read_warehouse("postgres", pg_dsn, "wh", replace(TABLE, name=f"{name}_items"))
        assert actual == expected, diff(expected, actual)


def test_a_refused_batch_fails_alone_while_the_other_lane_commits(tmp_path: Path,
                                                                  pg_dsn: str) -> None:
    """A lane's group that the warehouse refuses is loaded again one by one in its lane,
    before the lane's next group: the refused batch fails alone, every other batch of
    both targets loads once."""
    cfg = _config(tmp_path, pg_dsn)
    with Pipeline.from_yaml(cfg) as p:
        assert p.extract().ok
        for _, table, ref in p.config.tables():
            p.warehouse.ensure_table(ref, p.config.contract_of(table))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # north's id 300 fails for good
            conn.execute("ALTER TABLE wh.north_items ADD CONSTRAINT no_300 CHECK (id <> 300)")
        summary = p.load(max_failures=1)
    assert len(summary.failed_batches) == 1 and summary.loaded_batches == 5
    with psycopg.connect(pg_dsn) as conn:
        north = {i for i, in conn.execute("SELECT id FROM wh.north_items")}
        south = {i for i, in conn.execute("SELECT id FROM wh.south_items")}
        ledger = conn.execute("SELECT count(*), count(DISTINCT batch_id) FROM "
                              "wh._steadyflow_ledger").fetchone()
    assert south == set(range(1, ROWS + 1))
    assert north == set(range(1, 251)) | set(range(501, ROWS + 1))  # page 251-500 refused
    assert ledger == (5, 5)


def test_by_default_each_of_four_targets_has_a_lane_of_its_own(tmp_path: Path, pg_dsn: str
                                                               ) -> None:
    """The default `load_lanes` (4): with three of four targets' tables locked by another
    session, the fourth target's rows become visible. With two lanes (the default before
    session 13) the fourth shared a lane with a locked target and waited behind it, as
    every target shares a lane's transaction with the targets gathered beside it."""
    names = ("north", "south", "east", "west")
    cfg = _config(tmp_path, pg_dsn, names=names)
    with Pipeline.from_yaml(cfg) as p:
        assert p.extract().ok
        for _, table, ref in p.config.tables():
            p.warehouse.ensure_table(ref, p.config.contract_of(table))
        blocker = psycopg.connect(pg_dsn)
        try:
            for name in names[:3]:
                blocker.execute(f"LOCK TABLE wh.{name}_items IN ACCESS EXCLUSIVE MODE")
            summary: list[RunSummary] = []
            loader = threading.Thread(target=lambda: summary.append(p.load()), daemon=True)
            loader.start()
            deadline = time.monotonic() + 10
            while _visible(pg_dsn, "west_items") < ROWS and time.monotonic() < deadline:
                time.sleep(0.05)
            west_during = _visible(pg_dsn, "west_items")
            assert loader.is_alive()  # the locked targets' transactions still wait
        finally:
            blocker.rollback()
            blocker.close()
        loader.join(timeout=60)
        assert not loader.is_alive()
    assert west_during == ROWS, (
        f"{west_during} of west's {ROWS} rows visible while the other three targets' tables "
        "were locked: it waited in a lane behind a locked target")
    assert summary and summary[0].ok and summary[0].loaded_batches == 12
    for name in names:
        expected = read_source("sqlite", str(tmp_path / f"{name}.db"), TABLE)
        actual = read_warehouse("postgres", pg_dsn, "wh", replace(TABLE, name=f"{name}_items"))
        assert actual == expected, diff(expected, actual)
