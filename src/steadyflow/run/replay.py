"""Re-processing what is already landed: whole batches, or quarantined rows after a fix.

Both go through the normal load path, so the ledger keeps them exactly-once: a replayed
quarantine batch gets an id derived from its parked batch and the rows that now pass.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pyarrow.compute as pc

from steadyflow.errors import ConfigError
from steadyflow.extract.http import is_raw_page
from steadyflow.land.parquet import REPLAY_OF
from steadyflow.run.extract import replay_pages
from steadyflow.run.load import table_owner
from steadyflow.run.pipeline import Pipeline


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
    rows = 0
    for ref in refs:
        assert ref is not None
        # a new id, so the ledger applies it again; `replay_of` names its manifest entry,
        # where LandingZone.read finds the batch if `compact` moved it since `refs` was read
        again = replace(ref, batch_id=f"{ref.batch_id}.replay{stamp}",
                        meta={**ref.meta, REPLAY_OF: ref.batch_id})
        outcome = loader.process(again)
        rows += outcome.good_rows
    return {"batches": len(refs), "rows": rows}


def replay_quarantine(pipeline: Pipeline, batch_ids: list[str],
                      records_path: str | None = None) -> dict[str, Any]:
    """Replay parked rows (re-validated) and parked raw HTTP pages (re-parsed)."""
    loaded = still_bad = batches = 0
    loader = pipeline.loader
    # as the loader validates: a row replay let through that the loader parks again
    # (a character the warehouse's encoding lacks) was counted neither loaded nor still bad
    encoding = pipeline.warehouse.text_encoding()
    for item in pipeline.state.quarantined("open"):
        if (batch_ids and item["batch_id"] not in batch_ids) or is_raw_page(item["path"]):
            continue
        _, table_cfg, _ = pipeline.config.table(item["source"], item["table"])
        contract = pipeline.config.contract_of(table_cfg)
        raw, verdict = pipeline.quarantine.replayable(
            item["path"], contract, encoding,
            table_owner(pipeline.config, item["source"], item["table"], contract))
        good_mask_rows = verdict.good.num_rows
        if good_mask_rows:
            passing = raw.filter(pc.invert(verdict.bad_mask))
            batch = pipeline.landing.write(passing, item["source"], item["table"], None, None,
                                           kind="replay", meta={"of": item["batch_id"]},
                                           seq=_seq_of(pipeline, item["batch_id"]))
            pipeline.state.record_landed(batch)
            outcome = loader.load_and_mark(batch)
            loaded += outcome.good_rows if outcome.loaded else 0
        still_bad += verdict.bad.num_rows
        pipeline.state.mark_quarantine_replayed(item["batch_id"], good_mask_rows,
                                                verdict.bad.num_rows)
        batches += 1
    pages = replay_pages(pipeline, batch_ids, records_path)
    result: dict[str, Any] = {
        "batches": batches + pages["pages"], "loaded_rows": loaded + pages["loaded_rows"],
        "still_quarantined": still_bad + pages["still_quarantined"]}
    if pages["reasons"]:
        result["page_reasons"] = pages["reasons"]
    return result


def _seq_of(pipeline: Pipeline, batch_id: str) -> int:
    """Replayed rows keep the extraction order of the batch they came from, so a newer
    version of the same row, extracted since, still wins the merge."""
    original = pipeline.state.batch(batch_id)
    return original.seq if original is not None else 0
