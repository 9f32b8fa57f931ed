"""Repair: land the differences a comparison found as batches of kind "repair".

The current source rows of missing and mismatched keys (table.py read them by key through
`SqlSource.page` and validated them; rows that fail validation and are in no quarantine go
as read, so the loader parks them) are landed as repair batches and loaded by the
ordinary `BatchLoader` (landing → manifest → loader: validate → merge + ledger, one
transaction), so repair is exactly-once like any batch; the merge keeps the later
extraction (`_steadyflow_seq`) and a repair batch's number is taken after compare read the
source, so the source's current row overwrites the warehouse's.  Extra keys are
deleted in the same transaction when the table has `mirror_deletes: true`; their keys
travel in the batch's meta (its manifest entry), so a repair batch the sweeper loads after a
crash deletes them too.  A warehouse row whose cursor is newer than the source's would win
that merge, so it is deleted first, in batches of its own.

A repair holds the table's extraction lease (repair_lease) from before it reads the source
rows until its batches are recorded, so no extractor of the table interleaves with it.
Batches landed before a failure stay in the manifest: the next run's sweep loads them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from steadyflow.config import TableConfig
from steadyflow.model import BatchRef, Contract, TableRef, encode_value
from steadyflow.observe import logs
from steadyflow.reconcile.encoding import canonical
from steadyflow.reconcile.report import Findings
from steadyflow.run.lease import hold as hold_lease
from steadyflow.run.load import BatchLoader
from steadyflow.state import Lease

if TYPE_CHECKING:
    from steadyflow.run.pipeline import Pipeline

log = logs.get("reconcile")

DELETE_CHUNK = 10_000  # keys per repair batch (they travel in the batch's manifest entry,
# meta["deletes"]: run/load.py deletes_of applies them however the batch is loaded)
# ... and at most this many bytes of them (JSON): the entry is also the batch's reference
# in the buffer, which a sweep publishes after a crash, and NATS refuses a message over
# its max_payload (1 MB by default) for good: 10,000 keys of 100 characters passed it
DELETE_BYTES = 256 * 1024


def repair_lease(pipeline: Pipeline, ref: TableRef) -> AbstractContextManager[Lease]:
    """The table's extraction lease for a repair, held from before it reads the source
    rows until its batches are recorded: a follower extracting the table meanwhile could
    otherwise land a newer version that the repair's later-numbered, older read overwrites.
    TableBusy if an extractor holds it."""
    return hold_lease(pipeline.state, ref.source, ref.table, "reconcile --repair",
                      pipeline._stop.is_set)


def load_repairs(pipeline: Pipeline, table: TableConfig, ref: TableRef, contract: Contract,
                 found: Findings, deletes: list[tuple[Any, ...]], run_id: int,
                 lease: Lease | None = None) -> dict[str, Any]:
    """Land and load `found` as repair batches, deleting `deletes` (warehouse keys) on the way.

    The caller decides which extra keys to delete (it can ask the source whether they are
    still gone); this only plans the batches and loads them.  Returns the counts that go
    into `TableReport.repair`. With `lease` (repair_lease), each batch is recorded only
    while it is still the table's lease.
    """
    pk = contract.primary_key
    added = [[c.name, c.type] for c in contract.columns if c.added]
    loader = BatchLoader(pipeline.config, pipeline.landing, pipeline.buffer,
                         pipeline.warehouse, pipeline.state,
                         pipeline.quarantine, pipeline.metrics)
    empty = contract.schema.empty_table()
    plan: list[tuple[pa.Table, list[tuple[Any, ...]]]] = []
    rows = found.rows if found.rows is not None else empty
    wanted = set(found.missing) | set(found.mismatched)
    keys_of_rows = [tuple(canonical(v, contract.column(k).type) for k, v in
                          zip(pk, vals, strict=True))
                    for vals in zip(*[rows[k].to_pylist() for k in pk], strict=True)]
    if rows.num_rows and len(wanted) < rows.num_rows:
        rows = rows.filter(pa.array([key in wanted for key in keys_of_rows]))
    upserted = set(keys_of_rows) & wanted
    # A warehouse row whose cursor is newer than the source's: the repair batch replaces
    # it anyway (its fresh extraction sequence wins the merge, whatever the cursor), so a
    # separate delete first would only open a window, and after a crash a loss, in which
    # the row is gone. Only such rows that no repair row replaces are deleted first.
    ahead = [w for k, w in found.ahead.items() if k not in upserted]
    plan += [(empty, chunk) for chunk in _delete_chunks(ahead)]
    size = max(1, table.page_size)
    row_chunks = [rows.slice(i, size) for i in range(0, rows.num_rows, size)]
    # rows that fail validation and are in no quarantine: landed as read, the loader's
    # validation parks them (their columns may be typed differently: one batch each)
    row_chunks += [t for t in found.unparked if t.num_rows]
    del_chunks = list(_delete_chunks(deletes))
    for chunk, dels in itertools.zip_longest(row_chunks, del_chunks):
        plan.append((empty if chunk is None else chunk, dels or []))
    result = {"batches": 0, "upserted": 0, "deleted": 0, "quarantined": 0,
              "deletes_skipped": 0 if table.mirror_deletes else len(found.extra)}
    for i, (chunk, dels) in enumerate(plan):
        if not chunk.num_rows and not dels:
            continue
        meta: dict[str, object] = {"reconcile_run": run_id}
        if added:  # `schema_drift: add` columns: the loader merges them too (run/load.py)
            meta["columns"] = added
        if dels:
            meta["deletes"] = [[encode_value(v) for v in key] for key in dels]
        batch = _land(pipeline, chunk, ref, meta, f"repair{run_id}.{i}")
        pipeline.state.record_landed(batch, lease=lease)
        outcome = loader.load_and_mark(batch)
        result["batches"] += 1
        if outcome.loaded:
            result["upserted"] += outcome.good_rows
            result["deleted"] += len(dels)
            result["quarantined"] += outcome.bad_rows
        log.info("repair batch loaded", extra={
            "source": ref.source, "table": ref.table, "stage": "reconcile",
            "batch_id": batch.batch_id, "rows": outcome.good_rows})
    return result


def _land(pipeline: Pipeline, rows: pa.Table, ref: TableRef, meta: dict[str, object],
          suffix: str) -> BatchRef:
    """Land one repair batch, its id (and its file's name) `<content id>.<suffix>`.

    The content id alone is not the batch's: an empty batch deleting other keys, or the
    same rows repaired again, would be taken for a duplicate. The file bears the whole id,
    as every landed file bears its batch's, so a compaction that moved the batch and was
    killed before deleting the file finds it by name (run/compact.py `_sweep`): named by
    the content id it matched no entry and was kept for ever, which gc never deletes."""
    prepared = pipeline.landing.prepare(rows, ref.source, ref.table, None, None,
                                        kind="repair", meta=meta,
                                        seq=pipeline.state.next_seq())
    batch_id = f"{prepared.ref.batch_id}.{suffix}"
    folder = prepared.ref.path.rsplit("/", 1)[0]
    named = replace(prepared.ref, batch_id=batch_id, path=f"{folder}/{batch_id}.parquet")
    return pipeline.landing.store_prepared(replace(prepared, ref=named))


def _delete_chunks(keys: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    """`keys` in runs of at most DELETE_CHUNK keys and DELETE_BYTES of their JSON (a key
    longer than that alone), each the deletes of one repair batch."""
    chunk: list[tuple[Any, ...]] = []
    size = 0
    for key in keys:
        cost = len(json.dumps([encode_value(v) for v in key])) + 1
        if chunk and (len(chunk) >= DELETE_CHUNK or size + cost > DELETE_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(key)
        size += cost
    if chunk:
        yield chunk
