"""Malformed rows are parked with their reason; the good rows of the same batch load; after a
contract change, `steadyflow quarantine replay` loads the rows that now pass exactly once and
leaves the rest parked."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import duckdb
import pytest
import yaml
from tests.conftest import steadyflow, write_pipeline

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

GOOD = 200
TS = "2024-05-01 12:00:{:02d}.{:06d}"
# sale_id -> (column, planted value, the reason the validator must give)
BAD = {
    201: ("qty", "abc", "qty: not a valid int64"),  # text in an INTEGER column
    202: ("qty", "12x", "qty: not a valid int64"),
    203: ("qty", "", "qty: not a valid int64"),
    204: ("sku", None, "sku: must not be null"),  # null in a not-null column
    205: ("sku", None, "sku: must not be null"),
    206: ("currency", "XXX", "currency: not one of USD,EUR,GBP"),  # not allowed (yet)
    207: ("currency", "XXX", "currency: not one of USD,EUR,GBP"),
    208: ("currency", "XXX", "currency: not one of USD,EUR,GBP"),
    209: ("currency", "XXX", "currency: not one of USD,EUR,GBP"),
}
FIXABLE = {k for k, (col, _, _) in BAD.items() if col == "currency"}
COLUMNS = ["store_id", "sale_id", "sku", "qty", "unit_price", "currency", "sold_at",
           "updated_at"]


def make_store(path: Path) -> None:
    rows = []
    for sale_id in range(1, GOOD + len(BAD) + 1):
        row = {"store_id": 7, "sale_id": sale_id, "sku": f"SKU-{sale_id:04d}",
               "qty": 1 + sale_id % 9, "unit_price": f"{sale_id}.25",
               "currency": ["USD", "EUR", "GBP"][sale_id % 3], "sold_at": None,
               "updated_at": TS.format(sale_id // 60, sale_id)}
        if sale_id in BAD:
            column, value, _ = BAD[sale_id]
            row[column] = value
        rows.append(tuple(row[c] for c in COLUMNS))
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE sales (store_id INTEGER NOT NULL, sale_id INTEGER NOT NULL, "
                   "sku TEXT, qty INTEGER, unit_price TEXT, currency TEXT, sold_at TEXT, "
                   "updated_at TEXT NOT NULL, PRIMARY KEY (store_id, sale_id))")
        db.executemany(f"INSERT INTO sales VALUES ({', '.join('?' * len(COLUMNS))})", rows)
        db.commit()
        # the planted values really are what the test claims (SQLite keeps 'abc' as text)
        assert db.execute("SELECT typeof(qty) FROM sales WHERE sale_id = 201").fetchone() \
            == ("text",)


def warehouse(tmp_path: Path) -> tuple[dict[int, tuple], list[str]]:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT sale_id, sku, qty, currency FROM main.sales").fetchall()
        ledger = [r[0] for r in con.execute(
            "SELECT batch_id FROM main._steadyflow_ledger").fetchall()]
    by_id = {r[0]: r[1:] for r in rows}
    assert len(by_id) == len(rows)  # no duplicate keys
    return by_id, ledger


def test_quarantine_then_replay_after_contract_change(tmp_path: Path) -> None:
    make_store(tmp_path / "store.db")
    config = write_pipeline(tmp_path, [{
        "name": "store", "kind": "sqlite", "path": "store.db",
        "tables": [{"name": "sales", "contract": "sales"}]}])

    with Pipeline.from_yaml(config) as p:
        summary = p.run_once()
        parked = p.state.quarantined("open")
        rows = p.quarantine.rows(parked[0]["path"]).to_pylist() if parked else []
    assert summary.errors == []
    assert summary.extracted_batches == 1  # good and bad rows share one batch
    assert (summary.loaded_rows, summary.quarantined_rows) == (GOOD, len(BAD))

    # each bad row is parked with its own reason; the index counts the reasons
    assert len(parked) == 1 and parked[0]["rows"] == len(BAD)
    expected: dict[str, int] = {}
    for _, _, reason in BAD.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert parked[0]["reasons"] == expected
    assert {int(r["sale_id"]): r["_reason"] for r in rows} == {
        k: reason for k, (_, _, reason) in BAD.items()}
    assert {r["qty"] for r in rows if int(r["sale_id"]) in (201, 202)} == {"abc", "12x"}

    loaded, ledger = warehouse(tmp_path)
    assert set(loaded) == set(range(1, GOOD + 1))  # every good row, no bad one
    assert len(ledger) == 1

    # the contract changes: XXX becomes a valid currency
    raw = yaml.safe_load(config.read_text())
    raw["contracts"]["sales"]["columns"]["currency"]["allowed"].append("XXX")
    config.write_text(yaml.safe_dump(raw, sort_keys=False))

    results = []
    for _ in range(2):
        proc = steadyflow("quarantine", "replay", "-c", str(config), "--json", check=True)
        results.append(json.loads(proc.stdout))
    assert results[0] == {"batches": 1, "loaded_rows": len(FIXABLE),
                          "changed_rows": len(FIXABLE),
                          "still_quarantined": len(BAD) - len(FIXABLE)}
    assert results[1] == {"batches": 1, "loaded_rows": 0,  # the second replay loads nothing
                          "changed_rows": 0, "still_quarantined": len(BAD) - len(FIXABLE)}

    loaded, ledger = warehouse(tmp_path)
    assert set(loaded) == set(range(1, GOOD + 1)) | FIXABLE
    for sale_id in FIXABLE:
        assert loaded[sale_id] == (f"SKU-{sale_id:04d}", 1 + sale_id % 9, "XXX")
    assert len(ledger) == 2  # the extract batch and ONE replay batch

    # the still-bad rows stay parked, with their reasons
    with Pipeline.from_yaml(config) as p:
        still = p.state.quarantined("open")
        reasons = p.quarantine.reasons_of(still[0]["path"]) if still else {}
    assert [q["batch_id"] for q in still] == [parked[0]["batch_id"]]
    assert still[0]["replayed_rows"] == len(FIXABLE)
    assert {k: v for k, v in reasons.items() if not k.startswith("currency")} == {
        "qty: not a valid int64": 3, "sku: must not be null": 2}


def test_a_replay_keeps_a_row_outside_the_warehouse_filter_in_quarantine(
        tmp_path: Path) -> None:
    """Replay re-validated parked rows without the table's warehouse_filter: a row of
    another store 'passed', was landed again, the loader found it outside the filter
    again but did not park it twice (its digest was parked already), and the parked item
    was marked replayed: the row was in neither the warehouse nor the open quarantine,
    while the replay said loaded_rows 0, still_quarantined 0. Replay now validates as
    the loader does."""
    from steadyflow.run.replay import replay_quarantine

    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        conn.execute("CREATE TABLE t (store_id INTEGER, id INTEGER, v TEXT, "
                     "PRIMARY KEY (store_id, id))")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(3, 1, "ok"), (4, 2, "other")])
        conn.commit()
    config = write_pipeline(
        tmp_path, [{"name": "s", "kind": "sqlite", "path": str(tmp_path / "s.db"),
                    "tables": [{"name": "t", "contract": "c",
                                "warehouse_filter": {"store_id": 3}}]}],
        {"kind": "duckdb", "path": str(tmp_path / "wh.duckdb"), "schema": "main"},
        contracts={"c": {"primary_key": ["store_id", "id"], "cursor": "id", "columns": {
            "store_id": {"type": "int64", "nullable": False},
            "id": {"type": "int64", "nullable": False}, "v": {"type": "string"}}}})
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once(raise_on_error=False).quarantined_rows == 1
        result = replay_quarantine(pipeline, [])
        parked = pipeline.state.quarantined()
    assert (result["loaded_rows"], result["still_quarantined"]) == (0, 1), result
    assert [(item["status"], item["rows"]) for item in parked] == [("open", 1)]
