"""Load lanes keep a target's batches in their order when a group of it is refused.

A group the warehouse refuses is loaded again one batch at a time. With one connection
that happened at once, before the target's next group; the lanes (bb03e63) kept such
groups until every lane was done, so the target's later groups committed first. The
merge's version rule makes an upsert order-proof, but a repair batch's delete is not: it
removes what is there when it runs. A key the source deleted (the repair, read last,
deletes it) came back when an older batch holding it loaded after the repair.

Checked with real stores: PostgreSQL warehouse and state, batches landed and queued as
the extractor and the sweeper do; the expected table is worked out here row by row in
extraction order, and read back through psycopg.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
import yaml
from tests.support.items import CONTRACT, make_source

from steadyflow.run.pipeline import Pipeline

pytestmark = pytest.mark.integration

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def _rows(*ids: int) -> pa.Table:
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "note": pa.array([f"note {i}" for i in ids], pa.string()),
        "amount": pa.array([Decimal(f"{i}.000") for i in ids], pa.decimal128(12, 3)),
        "updated_at": pa.array([BASE + timedelta(seconds=i) for i in ids],
                               pa.timestamp("us", tz="UTC"))})


def test_a_refused_group_loads_before_its_targets_later_groups(tmp_path: Path,
                                                               pg_dsn: str) -> None:
    sources = []
    for name in ("north", "south"):
        make_source(tmp_path / f"{name}.db", 0)
        sources.append({"name": name, "kind": "sqlite", "path": f"{name}.db",
                        "tables": [{"name": "items", "contract": "items",
                                    "target": f"{name}_items"}]})
    config = {"name": "order", "state_dir": "state", "contracts": {"items": CONTRACT},
              "warehouse": {"kind": "postgres", "dsn": pg_dsn, "schema": "wh",
                            "load_lanes": 2, "group_rows": 6},
              "sources": sources}
    cfg = tmp_path / "pipeline.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(cfg) as p:
        for _, table, ref in p.config.tables():
            p.warehouse.ensure_table(ref, p.config.contract_of(table))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # id 300 fails for good
            conn.execute("ALTER TABLE wh.north_items ADD CONSTRAINT no_300 CHECK (id <> 300)")
        # north, in extraction order: ids 1-2; a batch the warehouse refuses (id 300);
        # then a repair that read id 1 as deleted at the source and carries ids 5, 6, 8.
        # The loader takes all four (it stops once 6 rows are taken); group_rows 6 cuts
        # north into [1-2, 300-301] and the repair; south goes to the other lane
        landed = [
            ("north", _rows(1, 2), None), ("north", _rows(300, 301), None),
            ("south", _rows(7), None), ("north", _rows(5, 6, 8), [[1]])]
        for source, rows, deletes in landed:
            meta = {"deletes": deletes} if deletes else None
            batch = p.landing.write(rows, source, "items", None, None,
                                    kind="repair" if deletes else "extract", meta=meta,
                                    seq=p.state.next_seq())
            p.state.record_landed(batch)
            p.buffer.put(batch)
        summary = p.load(max_failures=1)
    assert summary.loaded_batches == 3 and len(summary.failed_batches) == 1, summary.errors
    expected: dict[int, str] = {}  # the rows, batch by batch in extraction order
    for source, rows, deletes in landed:
        if source != "north":
            continue
        if 300 in rows.column("id").to_pylist():
            continue  # refused whole
        for key in deletes or []:
            expected.pop(key[0], None)
        expected |= dict(zip(rows.column("id").to_pylist(), rows.column("note").to_pylist(),
                             strict=True))
    with psycopg.connect(pg_dsn) as conn:
        north = dict(conn.execute("SELECT id, note FROM wh.north_items").fetchall())
        south = dict(conn.execute("SELECT id, note FROM wh.south_items").fetchall())
        ledger = conn.execute("SELECT count(*), count(DISTINCT batch_id) FROM "
                              "wh._steadyflow_ledger").fetchone()
    assert expected == {2: "note 2", 5: "note 5", 6: "note 6", 8: "note 8"}
    assert north == expected, f"id 1, deleted by the later repair, is back: {north}"
    assert south == {7: "note 7"}
    assert ledger == (3, 3)
