"""Re-processing what is already landed: whole batches, or quarantined rows after a fix.

Both go through the normal load path, so the ledger keeps them exactly-once: a replayed
quarantine batch gets an id derived from its parked batch and the rows that now pass.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any

import pyarrow.compute as pc

from steadyflow.errors import ConfigError
from steadyflow.extract.http import is_raw_page
from steadyflow.land.parquet import REPLAY_OF
from steadyflow.model import BatchRef, Contract
from steadyflow.run.extract import replay_pages
from steadyflow.run.load import table_owner
from steadyflow.run.pipeline import Pipeline
from steadyflow.validate.rules import REASON

# the id `replay_batches` gives a batch it applies again: '<batch id>.replay<ms>'
_REPLAYED = re.compile(r"^(?P<batch>.+)\.replay\d+$")


def replay_batches(pipeline: Pipeline, batch_ids: list[str],
                   table: str | None = None) -> dict[str, Any]:
    """Apply landed batches again (e.g. after a warehouse restore). The merge rule (newer
    cursor wins) makes re-applying an older batch harmless."""
    refs = [pipeline.state.batch(b) for b in batch_ids]
    missing = [b for b, r in zip(batch_ids, refs, strict=True) if r is None]
    if missing:
        raise ConfigError(f"unknown batch id(s): {', '.join(missing)}")
    if table:
        source, _, name = table.partition(".")
        pipeline.config.table(source, name)  # a name that is no table is refused
        # every entry whose file is kept, oldest first (a 'gone' one's file was gc'd): not
        # the newest million entries of the history, which left the oldest kept ones out
        refs += [ref for ref, _ in pipeline.state.landed_batches(source, name)]
    loader = pipeline.loader
    stamp = int(time.time() * 1000)
    rows = changed = 0
    for ref in refs:
        assert ref is not None
        # a new id, so the ledger applies it again; `replay_of` names its manifest entry,
        # where LandingZone.read finds the batch if `compact` moved it since `refs` was read
        again = replace(ref, batch_id=_replay_id(ref.batch_id, stamp),
                        meta={**ref.meta, REPLAY_OF: ref.batch_id})
        outcome = loader.process(again)
        rows += outcome.good_rows
        changed += outcome.changed_rows
    return {"batches": len(refs), "rows": rows, "changed_rows": changed}


def replay_quarantine(pipeline: Pipeline, batch_ids: list[str],
                      records_path: str | None = None) -> dict[str, Any]:
    """Replay parked rows (re-validated) and parked raw HTTP pages (re-parsed).

    `loaded_rows` went to the merge; of them `changed_rows` inserted or changed a
    warehouse row: a replayed version older than the one loaded since loses the merge, and
    reported loaded alone it read as if the old version were in the warehouse."""
    loaded = changed = still_bad = batches = 0
    loader = pipeline.loader
    # as the loader validates: a row replay let through that the loader parks again
    # (a character the warehouse's encoding lacks) was counted neither loaded nor still bad
    encoding = pipeline.warehouse.text_encoding()
    open_items = pipeline.state.quarantined("open")
    unknown = sorted(set(batch_ids) - {item["batch_id"] for item in open_items})
    if unknown:  # a mistyped or closed id replayed nothing and said so only by a 0
        raise ConfigError(f"no open quarantined batch {', '.join(unknown)}; nothing replayed",
                          stage="replay",
                          hint="`steadyflow quarantine list` shows the open ones (--all: "
                               "those replayed or resolved too)")
    items = [item for item in open_items
             if not (batch_ids and item["batch_id"] not in batch_ids)
             and not is_raw_page(item["path"])]
    contracts = {item["batch_id"]: _parked_contract(pipeline, item) for item in items}
    _refuse_missing_columns(pipeline, items, contracts)
    for item in items:
        contract, original, added = contracts[item["batch_id"]]
        raw, verdict = pipeline.quarantine.replayable(
            item["path"], contract, encoding,
            table_owner(pipeline.config, item["source"], item["table"], contract))
        good_mask_rows = verdict.good.num_rows
        if good_mask_rows:
            passing = raw.filter(pc.invert(verdict.bad_mask))
            batch = pipeline.landing.write(
                passing, item["source"], item["table"], None, None, kind="replay",
                meta={"of": item["batch_id"], **({"columns": added} if added else {})},
                seq=original.seq if original is not None else 0)
            pipeline.state.record_landed(batch)
            outcome = loader.load_and_mark(batch)
            loaded += outcome.good_rows if outcome.loaded else 0
            changed += outcome.changed_rows
        still_bad += verdict.bad.num_rows
        pipeline.state.mark_quarantine_replayed(item["batch_id"], good_mask_rows,
                                                verdict.bad.num_rows)
        batches += 1
    pages = replay_pages(pipeline, batch_ids, records_path)
    result: dict[str, Any] = {
        "batches": batches + pages["pages"], "loaded_rows": loaded + pages["loaded_rows"],
        "changed_rows": changed + pages["changed_rows"],
        "still_quarantined": still_bad + pages["still_quarantined"]}
    if pages["reasons"]:
        result["page_reasons"] = pages["reasons"]
    return result


def _replay_id(batch_id: str, stamp: int) -> str:
    return f"{batch_id}.replay{stamp}"


def _original(pipeline: Pipeline, batch_id: str) -> BatchRef | None:
    """The manifest entry of the batch whose rows an item parked: the batch itself, or,
    for rows parked while `replay_batches` applied a batch again (its id names the batch,
    and has no manifest entry of its own), that batch. Replayed rows keep its extraction
    order (a newer version of the row, extracted since, still wins the merge, and a
    replayed row still wins over the older ones) and its `schema_drift: add` columns.
    Without it the rows loaded with number 0: below every version the warehouse held."""
    original = pipeline.state.batch(batch_id)
    replayed = _REPLAYED.match(batch_id)
    if original is None and replayed:
        original = pipeline.state.batch(replayed["batch"])
    return original


def _parked_contract(pipeline: Pipeline, item: dict[str, Any]
                     ) -> tuple[Contract, BatchRef | None, list[Any] | None]:
    """(contract, parked batch, its added columns) an item's rows are validated and
    loaded under: the table's contract plus the columns `schema_drift: add` extracted with
    the batch that parked them (as the loader validated that batch), those the table's
    newest extraction still brings. Without them the replayed batch lost their values,
    and the load refused it for good (the warehouse table holds the added columns), naming
    a DROP COLUMN as the fix; every later run failed on it. A column dropped at the source
    since (and from the warehouse, as the load's refusal then asks) is not added back."""
    _, table_cfg, _ = pipeline.config.table(item["source"], item["table"])
    original = _original(pipeline, item["batch_id"])
    added = _still_added(pipeline, original)
    return pipeline.config.contract_of(table_cfg).with_added(added), original, added


def _still_added(pipeline: Pipeline, original: BatchRef | None,
                 newest: int = 100) -> list[Any] | None:
    """`original`'s `schema_drift: add` columns that the newest extraction of its table
    (among its `newest` latest batches) brings too; all of them if none is newer."""
    added = original.meta.get("columns") if original is not None else None
    if original is None or not added:
        return None
    for row in pipeline.state.batches(original.source, original.table, newest):
        ref = BatchRef.from_json(row["ref"])
        if ref.kind != "extract":
            continue
        if ref.batch_id == original.batch_id or ref.landed_at <= original.landed_at:
            break
        brings = {str(name).lower() for name, _ in ref.meta.get("columns") or ()}
        return [column for column in added if str(column[0]).lower() in brings] or None
    return list(added)


def _refuse_missing_columns(pipeline: Pipeline, items: list[dict[str, Any]],
                            contracts: dict[str, tuple[Contract, BatchRef | None,
                                                       list[Any] | None]]) -> None:
    """Refuse, before anything is replayed, items whose parked rows lack a column the
    contract has now (added or renamed since they were parked): their value of it was
    never read, so it cannot be loaded; NULL would be a value the source does not hold.
    It failed on Arrow's KeyError, naming neither the batch nor the way out."""
    lacking = []
    for item in items:
        contract, _, _ = contracts[item["batch_id"]]
        names = set(pipeline.quarantine.rows(item["path"]).column_names) - {REASON}
        missing = [name for name in contract.names if name not in names]
        if missing:
            lacking.append(f"{item['batch_id']} ({item['source']}.{item['table']}: "
                           f"{', '.join(missing)})")
    if lacking:
        raise ConfigError(
            "quarantined rows lack column(s) the contract has now, so their values of "
            f"them were never read: {'; '.join(lacking)}; nothing replayed",
            stage="replay",
            hint="replay the other batches with --batch ID; close these with `steadyflow "
                 "quarantine resolve --batch ID` and read the rows again from the source "
                 "(`steadyflow reset --table SOURCE.TABLE`), or put the old column name back")
