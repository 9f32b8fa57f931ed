"""A large table's first load, split into primary-key ranges that threads and workers read
in parallel (`steadyflow worker`, or `max_concurrent_queries` threads of one process).

The table's extractor (run/extract.py TableExtractor.backfill), under the table's lease,
notes the cursor position P the load will hand over at, then `split`s the key space into
ranges of about `chunk_rows()` rows and records them with P (state: plan_backfill). The
table's lease is then released and each range is a unit of its own (`read_chunks`): leased
with its own generation (state: claim_chunk), read in key order between its bounds, each
page landed and published and then the range's key position moved, both fenced by the
range's lease, so a reader that stalls past it records nothing more; a crash resumes the
range after its last landed page, and a finished range is never read again. Only when
every range is done does the checkpoint become P (state: finish_backfill, under the
table's lease again), and the cursor pass from P catches every change made meanwhile
(the argument: docs/architecture.md, "A partitioned first load").
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pyarrow as pa

from steadyflow.errors import ExtractionFenced, LoadCut
from steadyflow.extract.dialects import OutOfRange
from steadyflow.extract.sql import SqlSource
from steadyflow.failpoints import failpoint
from steadyflow.model import BatchRef, Contract, Watermark
from steadyflow.observe import logs
from steadyflow.run.extract import TableExtractor, open_source
from steadyflow.run.lease import lease_seconds, new_holder
from steadyflow.state import ChunkLease

log = logs.get("extract")

# Rows per key range. A table with fewer rows than two ranges is read in one piece, as
# before (TableExtractor.backfill); so is any table when one reader would read every range
# in turn (`readers_share`). STEADYFLOW_BACKFILL_CHUNK_ROWS overrides both (tests split
# small tables with one reader); 0 never splits.
CHUNK_ROWS = 250_000
# How often a reader with nothing to claim looks again while other readers hold ranges.
IDLE_POLL = 0.5


def chunk_rows(extractor: TableExtractor | None = None) -> int:
    """Rows per key range of `extractor`'s first load; 0: read it in one piece."""
    value = os.environ.get("STEADYFLOW_BACKFILL_CHUNK_ROWS")
    if value:
        return max(0, int(value))
    if extractor is not None and not readers_share(extractor):
        return 0
    return CHUNK_ROWS


def readers_share(extractor: TableExtractor) -> bool:
    """Would ranges be read side by side: by several threads of this process
    (`max_concurrent_queries`), or by workers (`steadyflow worker`, this one included:
    each registers in the state)? With one reader the split buys nothing and costs its
    walk over the key index before the first page (0.9-2.6 s per 1M rows on MariaDB,
    bench/NOTES.md), a short page at each range's end, and a read-ahead restarted per
    range; the one-piece load resumes after its last landed page just the same."""
    if extractor.source.resilience.max_concurrent_queries > 1:
        return True
    try:
        return any(w["status"] == "running" for w in extractor.state.workers())
    except Exception:  # noqa: BLE001 - a state that cannot tell: split, as before
        return True


def key_contract(contract: Contract) -> Contract:
    """The primary key's columns alone, in key order: the view boundaries are read in."""
    key = contract.primary_key
    return Contract(columns=tuple(contract.column(k) for k in key), primary_key=key,
                    cursor=key[0])


def split(db: SqlSource, table: str, contract: Contract, rows: int
          ) -> list[tuple[Watermark | None, Watermark]]:
    """Key ranges [(after, upto], ...] of about `rows` rows each, covering every key up to
    the table's last one; [] for an empty table, one range when it is smaller than two.

    The boundaries are keys of real rows, found by walking the key's index: the key
    `rows` places after the previous boundary (LIMIT 1 OFFSET rows-1), compared by the
    database in the key's own types and collation, exactly as the pages' keyset
    predicates compare. So any key splits: integers, text, composite keys, keys packed
    in a few values or spread over a huge range, and the ranges hold equal row counts at
    planning time. The walk costs one index-only pass over the key, inside the database
    (no row leaves it but one per range); the last range ends at the last key seen
    first, so the walk ends even while rows are added (they have cursors past the
    load's noted position: the cursor pass reads them).
    """
    keys = key_contract(contract)
    last = last_key(db, table, keys)
    if last is None:
        return []
    bounds: list[tuple[Watermark | None, Watermark]] = []
    low: Watermark | None = None
    while rows > 0:
        query, params = db.page_query(table, keys, low, None, 1, upto=last)
        hit = db._execute(table, f"{query} OFFSET {int(rows) - 1}", params)
        if not hit:
            break
        bound = _position(db, table, keys, hit[0])
        if bound == last:
            break
        bounds.append((low, bound))
        low = bound
    bounds.append((low, last))
    return bounds


def last_key(db: SqlSource, table: str, keys: Contract) -> Watermark | None:
    """The table's last key (`keys`: key_contract's), None when it is empty: one index
    probe, in the key's own types and collation."""
    d = db.dialect
    declared = db.select_types(table)
    cols = ", ".join(d.select_expr(c.name, c.parsed_type, declared.get(c.name.lower(), ""))
                     for c in keys.columns)
    found = db._execute(table, f"SELECT {cols} FROM {d.ident(table)}"
                               f"{db._order_by(table, keys.order_by, desc=True)} LIMIT 1", [])
    return _position(db, table, keys, found[0]) if found else None


def _position(db: SqlSource, table: str, keys: Contract, row: Any) -> Watermark:
    """A range boundary, a key the pages compare with: a PostgreSQL 'infinity' (no path
    holds it, none can send it back) is refused naming its column, not stored."""
    values = [db.dialect.position_value(v, c.parsed_type)
              for v, c in zip(row, keys.columns, strict=True)]
    for c, value in zip(keys.columns, values, strict=True):
        if isinstance(value, OutOfRange):
            raise db._unorderable(table, c.name, value)
    return Watermark(cursor=values[0], key=tuple(values[1:]))


def read_chunks(extractor: TableExtractor, db: SqlSource, wait: bool) -> None:
    """Read key ranges of the table's load until none is left to claim: on up to
    `max_concurrent_queries` threads (each its own connection; the source's guard caps
    their queries too). With `wait` (one process running the pipeline), ranges other
    readers hold are waited for, and taken over if their holder dies or stalls, so the
    load ends in this run; without (a worker), they are left to their holders."""
    pending = [c for c in extractor.state.backfill_chunks(extractor.ref.source,
                                                          extractor.ref.table)
               if c.status != "done"]
    threads = max(1, min(extractor.source.resilience.max_concurrent_queries, len(pending)))
    log.info("initial load in %d key ranges (%d left), %d reader thread(s)",
             len(extractor.state.backfill_chunks(extractor.ref.source, extractor.ref.table)),
             len(pending), threads, extra=extractor._extra())
    if threads == 1:
        _claim_and_read(extractor, db, wait)
        return

    def reader(first: bool) -> None:
        own = db if first else open_source(extractor.source)
        try:
            assert isinstance(own, SqlSource)  # the same kind as `db`
            _claim_and_read(extractor, own, wait)
        finally:
            if not first:
                own.close()

    with ThreadPoolExecutor(threads, thread_name_prefix=f"chunks-{extractor.ref.table}"
                            ) as pool:
        futures = [pool.submit(reader, i == 0) for i in range(threads)]
        for future in futures:
            future.result()


def _claim_and_read(extractor: TableExtractor, db: SqlSource, wait: bool) -> None:
    state, ref = extractor.state, extractor.ref
    holder = new_holder()
    while not extractor.should_stop():
        lease = state.claim_chunk(ref.source, ref.table, holder, lease_seconds())
        if lease is None:
            chunks = state.backfill_chunks(ref.source, ref.table)
            if not wait or all(c.status == "done" for c in chunks):
                return
            time.sleep(IDLE_POLL)
            continue
        _read_one(extractor, db, lease)


class ChunkReader(TableExtractor):
    """The table's extractor holding one range's lease: what it lands is recorded, and
    the range's position moved, only under that lease (state: _fence)."""

    page_rows = 0  # rows of the page being published (the range's count moves with it)

    def publish(self, rows: pa.Table, *args: Any, **kwargs: Any) -> BatchRef:
        self.page_rows = rows.num_rows
        return super().publish(rows, *args, **kwargs)


def _read_one(extractor: TableExtractor, db: SqlSource, lease: ChunkLease) -> None:
    """One range, from where its last holder stopped to its end, under its lease (renewed
    by a keeper thread; released if the read ends early, kept by its holder when done).
    A stealer may cut the range's end meanwhile (run/steal.py): the page read against the
    old end is refused (LoadCut) and the range is read on to its new end."""
    e = extractor
    reader = ChunkReader(e.source, e.table, e.ref, e.contract, e.landing, e.buffer, e.state,
                         e.guard, e.metrics, should_stop=e.should_stop)
    reader._added = list(e._added)
    reader.lease = lease
    started = time.monotonic()
    start = lease.after or lease.low
    log.info("key range %d%s: after %s up to %s", lease.chunk,
             " (resumed)" if lease.after else "", start.to_json() if start else "the start",
             lease.high.to_json() if lease.high else "the end",
             extra=e._extra(chunk=lease.chunk))
    done = threading.Event()
    keeper = threading.Thread(target=_keep, args=(e, lease, done), daemon=True,
                              name=f"chunk-{e.ref.table}-{lease.chunk}")
    keeper.start()
    finished = False
    ahead = ThreadPoolExecutor(1, thread_name_prefix=f"read-{e.ref.table}-{lease.chunk}")
    try:
        meta: dict[str, object] = {"order": "key", "chunk": lease.chunk}
        if lease.since is not None:
            meta["since"] = json.loads(lease.since)
        while True:
            bound = lease
            try:
                finished = reader._pages(
                    db, e.contract.by_key(), bound.after or bound.low, None, False, ahead,
                    partial(_advance, e, bound, reader), meta=meta, upto=bound.high)
                if finished:
                    e.state.finish_chunk(bound)
                break
            except LoadCut:
                failpoint("extract.cut")
                finished = False
                lease = reader.lease = e.state.chunk_bound(lease)
                log.info("key range %d cut by another reader: reading on up to %s",
                         lease.chunk, lease.high.to_json() if lease.high else "the end",
                         extra=e._extra(chunk=lease.chunk))
    finally:
        ahead.shutdown(wait=True, cancel_futures=True)
        done.set()
        keeper.join()
        if not finished:
            e.state.release_lease(lease)
        with _TOTALS:
            e.result.batches += reader.result.batches
            e.result.rows += reader.result.rows
    if finished:
        log.info("key range %d read: %d rows in %.1fs", lease.chunk, reader.result.rows,
                 time.monotonic() - started, extra=e._extra(chunk=lease.chunk))


def _advance(extractor: TableExtractor, lease: ChunkLease, reader: ChunkReader,
             mark: Watermark) -> None:
    extractor.state.advance_chunk(lease, mark, reader.page_rows)


_TOTALS = threading.Lock()  # the table's result is summed from several reader threads


def _keep(extractor: TableExtractor, lease: ChunkLease, done: threading.Event) -> None:
    """Renew the range's lease until `done`; stop once fenced (the reader's next durable
    step raises ExtractionFenced itself)."""
    while not done.wait(lease.seconds / 3):
        try:
            extractor.state.renew_lease(lease)
        except ExtractionFenced as exc:
            log.warning("key range lease lost: %s", exc.message,
                        extra=extractor._extra(chunk=lease.chunk))
            return
        except Exception as exc:  # noqa: BLE001 - a busy state store: next round retries
            log.warning("key range lease not renewed (retrying): %s", exc,
                        extra=extractor._extra(chunk=lease.chunk))
