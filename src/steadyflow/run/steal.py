"""Work stealing of first loads: an extraction slot with nothing waiting takes the far part
of a key range another reader is in the middle of, so the tail of a backfill is shared
instead of left to one reader per table (bench/scale.py: 20 tables on 8 slots left the
last round half idle; one huge table dominated a backfill's end).

A reader of a first load is either the table's one-piece load (run/extract.py
TableExtractor.backfill, under the table's lease) or a key range of it (run/backfill.py,
under the range's lease). Each records its last landed key and reads up to a bound (the
table's end for a one-piece load, until cut). A stealer (`steal`):
1. reads the readers in progress from the state (StateStore.first_loads: a lease held
   now by a live holder);
2. for one of them, asks the source how many keys remain after its recorded key up to its
   bound (the table's last key for a one-piece load, read now: after the load noted its
   end), counting at most COUNT_CAP; fewer than MIN_PAGES of its pages are not worth a
   range of their own;
3. picks the cut key `mid` inside the database, as split() does: the key `keep` places
   after the recorded key (half of what remains; COUNT_CAP / 2 when more remain than it
   counted, so the stolen part is the larger and is cut again by the next idle slot);
4. in one state transaction (StateStore.cut), only if the reader has neither recorded a
   page nor been cut since step 1: sets the reader's bound to `mid`, bumps the cut count on
   the reader's own lease row, and adds the range (mid, bound] leased to the stealer;
5. reads that range as any key range (run/backfill.py _read_one), then offers to end the
   load (the table's lease; whoever reads last ends it, as a split load's).

The reader learns of the cut when it next records: its fence (LoadLease, ChunkLease)
checks the cut count in the statement that renews its lease, so the page in hand, read
against the old bound, is refused (LoadCut: it may hold keys past `mid`) and the reader
reads on from its last recorded key up to `mid`. Nothing past `mid` is recorded by it
after the cut, and the keys up to it stay its own: every key up to the old bound is in
exactly one range. The checkpoint moves only once every range is done (finish_backfill),
so the argument of docs/architecture.md "A partitioned first load" holds unchanged.

Where it runs: `Pipeline.extract` gives each slot with no table left to start a stealer
(`steal_until_done`): among workers (`steadyflow worker`), or in one process when a
source allows several queries at once (`max_concurrent_queries`). A plain run with the
default of one query per source never steals: its path, and its round trips, are as
before.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from steadyflow.extract.sql import SqlSource
from steadyflow.observe import logs
from steadyflow.run import backfill as chunked
from steadyflow.run.extract import ExtractResult, TableExtractor, TableMemory, open_source
from steadyflow.run.lease import lease_seconds, new_holder
from steadyflow.state import ChunkLease, Reader

if TYPE_CHECKING:
    from steadyflow.run.pipeline import Pipeline

log = logs.get("extract")

# a reader's remaining keys worth a cut: at least this many of its pages (the reader keeps
# half, two pages at least: its page in hand and the one read ahead are not wasted)
MIN_PAGES = 4
# the most keys a stealer counts (one index-only scan in the source): past it, the reader
# keeps COUNT_CAP / 2 and the stealer takes the rest, cut again by the next idle slot
COUNT_CAP = 200_000
# cuts tried on one look at a reader that keeps recording pages meanwhile
CUT_TRIES = 3
# how long an idle slot waits for a first load to become stealable (a table whose lease
# was just taken notes its end before its reader is listed), and how often it looks
PATIENCE = 3.0
LOOK_EVERY = 0.1


def enabled(pipeline: Pipeline) -> bool:
    """Steal here? Among workers, or when a source of this process allows several
    queries at once (then its other readers may be this process's own threads)."""
    return bool(pipeline.shared) or any(
        s.resilience.max_concurrent_queries > 1 for s in pipeline.config.sources)


def steal_until_done(pipeline: Pipeline, put_timeout: float | None,
                     starting: Callable[[], bool] = lambda: False,
                     tables: list[tuple[Any, Any, Any]] | None = None
                     ) -> list[tuple[Any, ExtractResult | BaseException]]:
    """An extraction slot's work once no table is left to start: steal ranges until no
    reader is worth a cut. `tables`: the jobs this extraction was asked for (None: every
    table of the config). `starting`: this process's own tables are still being read
    (one may be about to list its reader). Returns each stolen table's result, as
    extract_table does."""
    results: list[tuple[Any, ExtractResult | BaseException]] = []
    waited_since: float | None = None
    while not pipeline._stopping():
        try:
            outcome = steal_once(pipeline, put_timeout, starting, tables)
        except Exception as exc:  # noqa: BLE001 - a range left unread is its load's to read
            # (released, or its lease expires: the load ends only once every range is read)
            log.warning("stealing stopped: %s", exc, extra={"stage": "extract"})
            return results
        if outcome is None:
            return results
        if outcome == "wait":
            waited_since = waited_since or time.monotonic()
            if time.monotonic() - waited_since > PATIENCE:
                return results
            time.sleep(LOOK_EVERY)
            continue
        waited_since = None
        results.append(outcome)
    return results


def steal_once(pipeline: Pipeline, put_timeout: float | None,
               starting: Callable[[], bool] = lambda: False,
               tables: list[tuple[Any, Any, Any]] | None = None) -> Any:
    """One steal: (ref, result) of the range read; "wait" when no first load is listed
    yet while one may start (`starting`, or a table's lease held with no checkpoint);
    None when nothing is left to steal."""
    # only the tables this extraction was asked for (`extract --table`): another table's
    # load, another process's, is not this command's to read
    jobs = {(ref.source, ref.table): (s, t, ref)
            for s, t, ref in (pipeline.config.tables() if tables is None else tables)}
    me = new_holder().rsplit(":", 1)[0] + ":"
    readers = [r for r in pipeline.state.first_loads() if (r.source, r.table) in jobs
               and (not r.holder.startswith(me) or
                    jobs[(r.source, r.table)][0].resilience.max_concurrent_queries > 1)]
    if not readers:
        if starting() or _starting(pipeline, jobs):
            return "wait"
        log.debug("nothing to steal: no first load being read", extra={"stage": "extract"})
        return None
    random.shuffle(readers)
    readers.sort(key=lambda r: r.cuts)  # an uncut reader has the most left, likely
    for reader in readers:
        job = jobs[(reader.source, reader.table)]
        got = _steal_from(pipeline, job, reader, put_timeout)
        if got is not None:
            return got
    log.info("nothing to steal: %d reader(s) of first loads, none cut (fewer than %d "
             "pages left, or it moved on)", len(readers), MIN_PAGES,
             extra={"stage": "extract"})
    return None


def _starting(pipeline: Pipeline, jobs: dict[tuple[str, str], Any]) -> bool:
    """Is a first load of one of `jobs` about to list its reader: its table's lease held
    (by anyone) and no checkpoint yet?"""
    held = {(lease["source"], lease["table"]) for lease in pipeline.state.leases()
            if lease["chunk"] is None}
    return any(pipeline.state.checkpoint(*key) is None for key in held if key in jobs)


def _steal_from(pipeline: Pipeline, job: tuple[Any, Any, Any], reader: Reader,
                put_timeout: float | None) -> tuple[Any, ExtractResult] | None:
    """Cut `reader` if enough remains and read the stolen range; None if it was not cut."""
    s, t, ref = job
    extractor = TableExtractor(
        s, t, ref, pipeline.config.contract_of(t), pipeline.landing, pipeline.buffer,
        pipeline.state, pipeline.guards[s.name], pipeline.metrics,
        should_stop=pipeline._stopping,
        memory=pipeline._memory.setdefault(ref.label, TableMemory()), put_timeout=put_timeout)
    # the table's kept connection when this process has one, and kept after (its end
    # offered below, and its polls, use it): a store dialled per look cost 30 more
    # connections per 4-worker bench run (bench/NOTES.md, session 15)
    db = pipeline._open_sources.pop(ref.label, None) or open_source(s)
    keep = False
    try:
        assert isinstance(db, SqlSource)  # a first load in key order is a SQL table's
        # the source's cap on queries, but neither its retries nor its breaker: a store
        # this host cannot reach (another worker's reader reaches it) is not worth a
        # wait, and is no failure of the table's (status would show its source down)
        with extractor.guard.slots:
            extra = db.probe(ref.table, extractor.contract)
        # the columns the table's reader extracts: with `schema_drift: add`, the configured
        # contract's and the source's own (its run probed them as this does); without,
        # the stolen rows landed with no value for them (NULL in the warehouse, or a load
        # refusing them once the column was added), every command ok
        extractor.schema_drift(extra or [], db)
        with extractor.guard.slots:
            lease = steal(extractor, db, reader)
        keep = not pipeline._stopping()
        if lease is None:
            return None
        keep = False
        log.info("took key range %d of the first load (the far part of %s)", lease.chunk,
                 "its one-piece read" if reader.chunk is None else f"range {reader.chunk}",
                 extra=extractor._extra(chunk=lease.chunk))
        chunked._read_one(extractor, db, lease)
        keep = not pipeline._stopping()
    finally:
        # not while this process's own reader of the table runs: it keeps its own at its
        # end, over this one
        if keep and ref.label not in pipeline._open_sources and \
                not reader.holder.startswith(new_holder().rsplit(":", 1)[0] + ":"):
            pipeline._open_sources[ref.label] = db
        else:
            db.close()
    result = extractor.result
    if pipeline.shared:  # the reader that ends last ends the load: offer (the lease is
        _, ended = pipeline.extract_table(job, put_timeout=put_timeout)  # not waited for)
        if isinstance(ended, ExtractResult):
            result.batches += ended.batches
            result.rows += ended.rows
            result.quarantined += ended.quarantined
    return ref, result


def steal(extractor: TableExtractor, db: SqlSource, reader: Reader) -> ChunkLease | None:
    """Steps 2-4 of the module docstring: the cut, when worth one; the stolen range's
    lease, or None (too little left, or the reader moved or was cut meanwhile)."""
    table = extractor.ref.table
    keys = chunked.key_contract(extractor.contract)
    start = reader.after or reader.low
    high = reader.high or chunked.last_key(db, table, keys)
    if high is None:
        return None
    query, params = db.page_query(table, keys, start, None, COUNT_CAP, upto=high)
    left = int(db._execute(table, f"SELECT count(*) FROM ({query}) AS remaining",
                           params)[0][0])
    if left < MIN_PAGES * max(1, extractor.table.page_size):
        return None
    keep = left // 2 if left < COUNT_CAP else COUNT_CAP // 2
    query, params = db.page_query(table, keys, start, None, 1, upto=high)
    hit = db._execute(table, f"{query} OFFSET {keep - 1}", params)
    if not hit:
        return None
    mid = chunked._position(db, table, keys, hit[0])
    if mid == high:
        return None
    holder = new_holder()
    for _ in range(CUT_TRIES):
        lease = extractor.state.cut(reader, mid, high, holder, lease_seconds())
        if lease is not None:
            return lease
        # the reader recorded a page meanwhile (every page, on a busy host, may come
        # sooner than this count): cut still, while its new position is before `mid`
        now = [r for r in extractor.state.first_loads(reader.source, reader.table)
               if (r.chunk, r.holder, r.cuts) == (reader.chunk, reader.holder, reader.cuts)]
        if not now:
            return None  # cut by another, ended, or taken over
        reader = now[0]
        query, params = db.page_query(table, keys, reader.after or reader.low, None, 1,
                                      upto=mid)
        if not db._execute(table, query, params):
            return None  # it has passed `mid`
    return None

