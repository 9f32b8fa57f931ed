"""The embedded warehouse: one DuckDB file, one transaction per batch or group of batches.

pyarrow is imported where batches are merged as Arrow and by `query`, not at import: a
reconcile into DuckDB opens this warehouse and reads plain rows (`rows`), and without
pyarrow (and numpy) it peaks ~46 MiB lower (#15, arrow_types.py)."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from steadyflow.errors import ConfigError, FatalError, SchemaError, WarehouseUnavailable
from steadyflow.failpoints import failpoint
from steadyflow.merge.plan import (
    SEQ,
    MergePlan,
    delete_seq,
    highest_seq_sql,
    ledgered_sql,
    plan,
    refuse_missing,
    refuse_narrower,
    refuse_unloaded,
    with_seq,
)
from steadyflow.model import BatchRef, Contract, TableRef, TextEncoding
from steadyflow.observe import logs
from steadyflow.ports import Ledgered, LoadPart, Merged

if TYPE_CHECKING:
    import pyarrow as pa

log = logs.get("load")

STAGE, DELETES, REPLACED = "steadyflow_stage", "steadyflow_deletes", "steadyflow_replaced"
# (warehouse file, tombstone table) → whether the table may hold tombstones: asked once
# per target while this process holds the file (DuckDB lets one process write it), set
# when this process writes one, forgotten whenever a connection to the file opens
_TOMBS: dict[tuple[str, str], bool] = {}
DIGEST = '"_steadyflow_digest"'  # a replaced row's hash of its other values
ROW = "_steadyflow_row"  # a staged row's position, while tombstones are looked up
# The loader's DuckDB connection (config.py: WarehouseConfig memory_limit and threads),
# its defaults measured in bench/ (RESULTS.md, NOTES.md):
# - memory_limit: the buffer pool defaults to 80% of RAM and keeps the table's blocks
#   cached, so the loader's memory grew with the warehouse. A batch merge needs far less:
#   past the limit DuckDB evicts cached blocks (they are on disk) and spills large
#   operators to its temp directory instead of growing.
# - threads: one. The loader runs beside extraction (and often the source database) on the
#   same cores; DuckDB's own worker threads then only contend: inserting 2M rows in 200k
#   batches took 3.0 s wall / 3.2 s CPU with 2 threads, 1.5 s / 1.4 s with 1.
MEMORY_LIMIT = "32MB"
THREADS = 1


def quote(name: str) -> str:
    """DuckDB's identifier quoting (it exposes no quoting helper): double any quote."""
    return '"' + name.replace('"', '""') + '"'


def _create(path: Path) -> None:
    """Create a new warehouse file whole or not at all. A SIGKILL while DuckDB creates a
    file can leave one it never opens again, so it is built under a temp name and linked
    into place; if another process got there first, theirs is kept."""
    temp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    temp.unlink(missing_ok=True)
    duckdb.connect(str(temp)).close()
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class _Upsert:
    """Statements with the same result as the plan's MERGE (merge/plan.py), each cheaper.

    The rule: match on the primary key; a batch row replaces a target row whose sequence is
    NULL or not newer; a row whose key the target lacks is inserted; a batch's own
    duplicate keys collapse to their newest row first. Measured (bench/NOTES.md), DuckDB's
    MERGE costs ~5x a plain INSERT of a 200k-row batch, and for 20k scattered updates of
    a 2M-row table MERGE + commit took 0.6 s against 0.19 s for DELETE + INSERT (an UPDATE
    rewrites every touched row group at checkpoint; a delete only marks rows). So:
      * the DISTINCT ON sort is skipped when every key of the batch is unique (`unique`:
        a hash count in DuckDB, ~4 ms for 120k rows);
      * no key of the batch in the target yet (`overlap` finds none): a plain INSERT;
      * a batch whose single integer key strictly ascends (key-order pages: a first load,
        a backfill) is unique without the count, and new when no target key reaches its
        least one (`above`): the overlap's join of the whole batch is skipped;
      * otherwise DELETE the target rows the batch replaces, then INSERT the batch rows
        whose key is no longer there: what is left matching is exactly the target rows
        that are newer than the batch's, which MERGE would keep too.
    All of it runs inside the batch's one transaction, with its ledger row.
    """

    overlap: str
    # a single integer key's proof that no target key reaches the batch's least key
    # (`_least_ascending`): one probe the target's zone maps answer, not a join with it
    above: str | None
    key: str | None  # the single key column `above` compares
    unique: str
    # is any target row's extraction seq above the given one? A probe the zone maps of the
    # seq column answer (0.8 ms CPU against 3.5 for max(seq) over a 1M-row target: every
    # row group but the newest is skipped by its max)
    newer: str
    insert: dict[bool, str]  # keys unique → statement
    delete: dict[bool, str]
    insert_missing: dict[bool, str]
    # how many replaced target rows (REPLACED: the delete's keys and digests) had the
    # digest of the batch row replacing them: a lookback re-read changes nothing an
    # operator counts. Counted by DuckDB: pyarrow's Table.join loads its Acero engine,
    # ~27 MiB of RSS for the rest of the process (bench/NOTES.md)
    same: dict[bool, str]
    # each staged row (by its position, ROW) whose key has a tombstone, and whether the
    # tombstone holds it back (the row is not newer)
    tombed: str


def _upsert(contract: Contract, target: str, tomb: str) -> _Upsert:
    keys = list(contract.primary_key)
    cols = ", ".join([*(quote(c.name) for c in contract.columns), quote(SEQ)])
    key_list = ", ".join(quote(k) for k in keys)
    cur = quote(contract.cursor)
    seq = quote(SEQ)
    newest = (f"(SELECT DISTINCT ON ({key_list}) * FROM {STAGE} "
              f"ORDER BY {key_list}, {cur} DESC)")
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in keys)
    src = {True: STAGE, False: newest}
    # one 64-bit hash of a row's other values on each side: the join then holds keys, seq
    # and a hash per row, not every column (a 122,880-row update batch against a 2M-row
    # table ran out of the loader's 32 MB comparing whole rows); a collision (2**-64) could
    # only count a changed row as unchanged, it never changes what is merged
    others = ", ".join(quote(c.name) for c in contract.columns if c.name not in keys)
    digest = f"hash({others})" if others else "0"
    integer = len(keys) == 1 and bool(contract.column(keys[0]).parsed_type.bits)
    return _Upsert(
        overlap=f"SELECT 1 FROM {target} AS t SEMI JOIN {STAGE} AS s ON {on} LIMIT 1",
        above=f"SELECT 1 FROM {target} WHERE {key_list} >= ? LIMIT 1" if integer else None,
        key=keys[0] if integer else None,
        newer=f"SELECT 1 FROM {target} WHERE {seq} > ? LIMIT 1",
        unique=(f"SELECT (SELECT count(*) FROM {STAGE}) = "
                f"(SELECT count(*) FROM (SELECT DISTINCT {key_list} FROM {STAGE}))"),
        insert={u: f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {src[u]} AS s"
                for u in (True, False)},
        # by rowid IN (...), not DELETE ... USING: with USING, 122,880 keys scattered over a
        # 2M-row table ran out of the loader's 32 MB (every later run failed the same batch
        # again: the table never caught up); the rowid join needs keys and rowids only
        # RETURNING the replaced rows' keys and value digests: the changed-row count then
        # compares them with the batch's (a few thousand small rows) instead of scanning
        # and hashing the whole target (~0.1 s of every warm cycle on a 2M-row table)
        delete={u: f"DELETE FROM {target} WHERE rowid IN (SELECT t.rowid FROM {target} AS t "
                   f"JOIN {src[u]} AS s ON {on} WHERE t.{seq} IS NULL OR s.{seq} >= t.{seq}) "
                   f"RETURNING {key_list}, {digest} AS {DIGEST}"
                for u in (True, False)},
        insert_missing={u: f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {src[u]} AS s "
                           f"WHERE NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {on})"
                        for u in (True, False)},
        same={u: f"SELECT count(*) FROM {REPLACED} JOIN (SELECT {key_list}, {digest} AS "
                 f"{DIGEST} FROM {src[u]} AS s) USING ({key_list}, {DIGEST})"
              for u in (True, False)},
        # a join, not NOT EXISTS: 1.6 ms of CPU against 2.9 (2,000 rows, 100 tombstones)
        tombed=(f"SELECT s.{quote(ROW)}, d.{seq} >= s.{seq} FROM {STAGE} AS s JOIN {tomb} "
                f"AS d ON " + " AND ".join(f"d.{quote(k)} = s.{quote(k)}" for k in keys)),
    )


def _least_ascending(rows: pa.Table, key: str | None) -> int | None:
    """The least key of a batch whose integer key column strictly ascends, else None.

    Strictly ascending integers are distinct, so such a batch needs no uniqueness count;
    key-order pages (a first load, a backfill) are read this way. Checked here, in Arrow
    (~0.2 ms per 122,880 keys), never assumed from how the batch was read."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if key is None or rows.num_rows == 0:
        return None
    column = rows.column(key)
    if column.null_count or not pa.types.is_integer(column.type):
        return None
    keys = column.combine_chunks()
    if len(keys) > 1 and not pc.all(pc.greater(keys[1:], keys[:-1])).as_py():
        return None
    least = keys[0].as_py()
    return least if isinstance(least, int) else None


def _unique(c: duckdb.DuckDBPyConnection, u: _Upsert, rows: pa.Table,
            keys: Sequence[str]) -> bool:
    """Whether no key repeats among the staged `rows` (registered as STAGE).

    A one-column key whose type compares alike in Arrow and DuckDB is counted in Arrow
    (NULLs are one value in both, as in DISTINCT): ~15 us for a 250-row batch, where
    DuckDB's statement over the registered stage costs ~0.7 ms, a tenth of a small
    batch's load. Other keys ask DuckDB (`_Upsert.unique`): Arrow's group_by over
    several columns would load Acero, ~27 MiB of RSS kept for good (bench/NOTES.md)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # key types whose equality Arrow and DuckDB share exactly (floats do not: -0.0 and NaN)
    exact_keys = (pa.types.is_integer, pa.types.is_string, pa.types.is_large_string,
                  pa.types.is_binary, pa.types.is_large_binary, pa.types.is_decimal,
                  pa.types.is_date, pa.types.is_timestamp, pa.types.is_boolean)
    if len(keys) == 1 and rows.schema.get_field_index(keys[0]) >= 0 and any(
            exact(rows.schema.field(keys[0]).type) for exact in exact_keys):
        distinct = pc.count_distinct(rows.column(keys[0]), mode="all").as_py()
        return bool(distinct == rows.num_rows)
    return bool((c.execute(u.unique).fetchone() or (False,))[0])


def _arrow(result: duckdb.DuckDBPyConnection) -> pa.Table:
    """A statement's result rows as Arrow. DuckDB warns that this copies them; these are a
    batch's keys and digests at most, and a RETURNING result has no lazy relation form."""
    import pyarrow as pa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = result.to_arrow_table()
    return table if table is not None else pa.table({})


# the DuckDB types whose values its fetchall returns of the type and value Arrow's
# to_pylist gives (checked for each by tests/unit/test_duckdb_rows.py); a HUGEINT too,
# once made a Decimal (Arrow reads it as decimal128(38, 0))
_PLAIN = frozenset({"boolean", "tinyint", "smallint", "integer", "bigint", "utinyint",
                    "usmallint", "uinteger", "ubigint", "hugeint", "float", "double",
                    "decimal", "varchar", "blob", "date", "timestamp", "null"})


def _count(result: duckdb.DuckDBPyConnection) -> int:
    """The row count DuckDB returns for an INSERT, DELETE or SELECT count(*)."""
    row = result.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


class DuckdbWarehouse:
    """Merges batches into DuckDB tables and records each batch id in the load ledger."""

    def __init__(self, path: Path, schema: str = "main", memory_limit: str = MEMORY_LIMIT,
                 threads: int = THREADS) -> None:
        self.path = path
        self.schema = schema
        self.memory_limit = memory_limit
        self._lock = threading.Lock()
        # keyed by target and column set: a `schema_drift: add` column makes a new plan
        self._plans: dict[tuple[str, tuple[str, ...]], MergePlan] = {}
        self._upserts: dict[tuple[str, tuple[str, ...]], _Upsert] = {}
        self._threads = threads
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = str(path.resolve())
        self._db: duckdb.DuckDBPyConnection | None = None
        self._db = self._connect()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        for key in [k for k in _TOMBS if k[0] == self._file]:  # another process may have
            _TOMBS.pop(key, None)  # written the file since
        try:
            if not self.path.exists():
                _create(self.path)
            return duckdb.connect(str(self.path), config={"memory_limit": self.memory_limit,
                                                          "threads": self._threads})
        except (duckdb.InvalidInputException, duckdb.ParserException) as exc:
            raise ConfigError(f"warehouse: bad DuckDB setting: {exc}") from None
        except (duckdb.IOException, duckdb.FatalException) as exc:
            raise WarehouseUnavailable(f"cannot open DuckDB warehouse {self.path}: {exc}",
                                       stage="load",
                                       hint="another process may hold the file, or its "
                                            "disk is full") from None

    @property
    def _conn(self) -> duckdb.DuckDBPyConnection:
        """The connection, opened again after DuckDB invalidated the last one."""
        if self._db is None:
            self._db = self._connect()
        return self._db

    def _invalidated(self, exc: duckdb.FatalException, what: str) -> WarehouseUnavailable:
        """DuckDB invalidates its database after a fatal error (a checkpoint that could
        not write: a full disk) and refuses every later statement until it is opened
        again: the connection is dropped, so the next call opens it (and replays the
        WAL), instead of this process failing every load until it restarts."""
        with contextlib.suppress(duckdb.Error):
            if self._db is not None:
                self._db.close()
        self._db = None
        return WarehouseUnavailable(f"{what}: {str(exc).splitlines()[0][:300]}",
                                    stage="load", hint="the warehouse is opened again on "
                                    "the next attempt; check the disk under "
                                    f"{self.path.parent}")

    def _plan(self, ref: TableRef, contract: Contract) -> MergePlan:
        key = (ref.target, contract.names)
        if key not in self._plans:
            self._plans[key] = plan(contract, self.schema, ref.target, STAGE, DELETES,
                                    quote, "duckdb")
        return self._plans[key]

    def ensure_table(self, ref: TableRef, contract: Contract) -> None:
        p = self._plan(ref, contract)
        with self._lock:
            try:
                self._conn.execute(p.create_schema)
                self._conn.execute(p.create_table)
                self._conn.execute(p.add_seq)
                for stmt in p.add_columns:
                    self._conn.execute(stmt)
                self._conn.execute(p.create_ledger)
                for stmt in p.add_ledger_counts:
                    self._conn.execute(stmt)
                self._conn.execute(p.create_tomb)
                # pragma_table_info: the same names and type spellings as
                # information_schema.columns, whose first use in a process binds the whole
                # catalog (~16 ms of an incremental command's start-up, against 0.5)
                info = self._conn.execute(
                    "SELECT name, type, dflt_value IS NOT NULL FROM pragma_table_info(?)",
                    [f"{quote(self.schema)}.{quote(ref.target)}"]).fetchall()
            except duckdb.FatalException as exc:
                raise self._invalidated(exc, f"cannot create warehouse table {ref.target}"
                                        ) from None
            except duckdb.Error as exc:
                raise SchemaError(f"cannot create warehouse table {ref.target}: {exc}",
                                  stage="load", table=ref.target) from None
        declared = {str(name): str(kind) for name, kind, _ in info}
        refuse_missing(contract, declared, f"{quote(self.schema)}.{quote(ref.target)}",
                       ref.label, ref.target, quote, "duckdb")
        refuse_unloaded(contract, declared, {str(n) for n, _, d in info if d},
                        f"{quote(self.schema)}.{quote(ref.target)}", ref.label, ref.target,
                        quote)
        refuse_narrower(contract, declared, f"{quote(self.schema)}.{quote(ref.target)}",
                        ref.target, quote, "duckdb")

    def text_encoding(self) -> TextEncoding | None:
        """None: DuckDB's text is UTF-8, it holds every character."""
        return None

    def load(self, ref: TableRef, contract: Contract, batch: BatchRef, rows: pa.Table,
             deletes: pa.Table | None = None) -> Merged | None:
        """Stage, merge and ledger in ONE transaction; None if the batch was loaded before,
        else how many rows it changed."""
        return self.load_group([LoadPart(ref, contract, batch, rows, deletes)])[0]

    def load_group(self, parts: Iterable[LoadPart]) -> list[Merged | None]:
        """Each part staged, merged and put in the ledger, one after the other, in ONE
        transaction committed once (ports.Warehouse): a part's merge sees the parts before
        it, so the later extraction of a key wins inside the group as across groups. A
        group of parts already in the ledger commits nothing.

        A batch that needs more than `memory_limit` (deleting ~90k scattered rows of a
        4M-row table needs more than 32MB) is tried once more without the limit, which is
        then set back: at the limit it would fail the same way on every delivery, and the
        limit is there to bound the common case, not to refuse a large update. A group of
        several batches that runs out is refused instead (FatalError: the loader then
        loads its batches one at a time, each with that retry), so that `parts` is taken
        lazily and the group holds one batch's rows at a time, as the loader expects."""
        first: list[LoadPart] = []  # the group's only part, while it has only one
        taken = 0

        def tracked() -> Iterator[LoadPart]:
            nonlocal taken
            for part in parts:
                taken += 1
                if taken == 1:
                    first.append(part)
                else:
                    first.clear()
                yield part

        with self._lock:
            try:
                return self._load_group_once(tracked())
            except duckdb.OutOfMemoryException as exc:
                reason = str(exc).splitlines()[0][:200]
                if taken != 1:
                    raise FatalError(
                        f"a load group of {taken}+ batches needed more than memory_limit "
                        f"{self.memory_limit} ({reason}); its batches load one at a time",
                        stage="load") from None
                log.warning("a batch needed more than memory_limit %s (%s); trying it "
                            "again without the limit", self.memory_limit, reason,
                            extra={"stage": "load", "batch_id": first[0].batch.batch_id})
            c = self._conn
            try:
                c.execute("RESET memory_limit")
                return self._load_group_once(iter(first))
            except duckdb.OutOfMemoryException as exc:
                raise FatalError(f"loading a batch into DuckDB ran out of memory even "
                                 f"without memory_limit: {exc}", stage="load",
                                 batch_id=first[0].batch.batch_id) from None
            finally:
                c.execute("SET memory_limit = '" + self.memory_limit.replace("'", "''") + "'")

    def _load_group_once(self, parts: Iterator[LoadPart]) -> list[Merged | None]:
        """load_group's transaction (the caller holds the lock); DuckDB's out-of-memory
        error is raised as it is, for load_group to retry."""
        results: list[Merged | None] = []
        c = self._conn
        try:
            c.execute("BEGIN TRANSACTION")
            try:
                self._load_parts(c, parts, results)
                if all(merged is None for merged in results):
                    c.execute("ROLLBACK")
                    return results
                failpoint("load.after_merge")
                c.execute("COMMIT")
            except BaseException:
                # a COMMIT that failed ended the transaction itself (a full disk: the WAL
                # could not be written); ROLLBACK then fails, and would hide that reason
                with contextlib.suppress(duckdb.TransactionException):
                    c.execute("ROLLBACK")
                for name in (STAGE, DELETES, REPLACED):  # after the rollback: an aborted
                    with contextlib.suppress(duckdb.Error):  # transaction refuses it
                        c.unregister(name)
                raise
        except duckdb.OutOfMemoryException:
            raise
        except duckdb.FatalException as exc:
            raise self._invalidated(exc, f"committing {len(results)} batch(es) to DuckDB "
                                         "failed") from None
        except duckdb.Error as exc:  # the commit itself (a part's error names its batch)
            raise FatalError(f"committing {len(results)} batch(es) to DuckDB failed: "
                             f"{exc}", stage="load") from None
        return results

    def _load_parts(self, c: duckdb.DuckDBPyConnection, parts: Iterable[LoadPart],
                    results: list[Merged | None]) -> None:
        """Every part into the open transaction, its outcome into `results` in order.

        Consecutive new batches of one target (rows, no deletes, no tombstones in the
        target) wait and go in together
        (`_flush`): one uniqueness check, one overlap check and one INSERT for all of them
        instead of per batch, each statement's fixed cost being most of a small batch's
        merge (bench/NOTES.md). Any other part first flushes what waits, so every merge
        still sees the parts before it. What waits is held in memory: at most the group's
        rows (warehouse.group_rows).
        """
        waiting: list[tuple[int, LoadPart]] = []
        for part in parts:
            if waiting and (part.ref.target, part.contract.names) != (
                    waiting[0][1].ref.target, waiting[0][1].contract.names):
                self._flush(c, waiting, results)
                waiting = []
            loaded = self._in_ledger(c, part)
            tombs = not loaded and self._may_hold(c, part)
            if loaded:
                results.append(None)
            elif part.rows.num_rows and not tombs and (part.deletes is None
                                                       or not part.deletes.num_rows):
                results.append(None)  # decided by _flush
                waiting.append((len(results) - 1, part))
            else:
                self._flush(c, waiting, results)
                waiting = []
                results.append(self._load_part(c, part, tombs))
        self._flush(c, waiting, results)

    def _flush(self, c: duckdb.DuckDBPyConnection, waiting: list[tuple[int, LoadPart]],
               results: list[Merged | None]) -> None:
        """The waiting new batches: when their keys are unique across all of them and none
        is in the target yet, the merge rule inserts every row, so one INSERT does (each
        batch changed all its rows); otherwise each is merged in turn."""
        if len(waiting) > 1:
            import pyarrow as pa

            ref, contract = waiting[0][1].ref, waiting[0][1].contract
            try:
                rows = pa.concat_tables([with_seq(p.rows, p.batch.seq) for _, p in waiting])
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # a repair's own seq column
                rows = None
            if rows is not None:
                u = self._upsert_of(ref, contract)
                try:
                    c.register(STAGE, rows)  # unregistered here, or after a rollback
                    # fetchall: DuckDB refuses unregister while a result has rows left
                    least = _least_ascending(rows, u.key)
                    fresh = (least is not None
                             or _unique(c, u, rows, contract.primary_key)) and self._new(
                                 c, u, least)
                    if fresh:
                        c.execute(u.insert[True]).fetchall()
                    c.unregister(STAGE)
                    if fresh:
                        self._ledger(c, [(p, p.rows.num_rows, p.rows.num_rows)
                                         for _, p in waiting])
                        for i, part in waiting:
                            results[i] = Merged(part.rows.num_rows)
                        return
                except duckdb.OutOfMemoryException:  # load_group retries it
                    raise
                except duckdb.Error as exc:
                    raise FatalError(f"merge of {len(waiting)} batches into {ref.target} "
                                     f"failed: {exc}", stage="load") from None
        for i, part in waiting:
            results[i] = self._load_part(c, part)

    def _in_ledger(self, c: duckdb.DuckDBPyConnection, part: LoadPart) -> bool:
        p = self._plan(part.ref, part.contract)
        try:
            return bool(c.execute(p.ledger_check.replace("%s", "?"),
                                  [part.batch.batch_id]).fetchall())
        except duckdb.OutOfMemoryException:  # load_group retries it
            raise
        except duckdb.Error as exc:
            raise FatalError(f"ledger lookup failed: {exc}", stage="load",
                             batch_id=part.batch.batch_id) from None

    def _ledger(self, c: duckdb.DuckDBPyConnection,
                entries: Sequence[tuple[LoadPart, int, int]]) -> None:
        """The ledger rows of (part, rows, changed), in ONE statement: a DuckDB INSERT
        costs ~0.5 ms whether it writes one row or many, and a flush of new batches
        writes one per batch."""
        part = entries[0][0]
        head, values = self._plan(part.ref, part.contract).ledger_insert.rsplit(" VALUES ", 1)
        c.execute(f"{head} VALUES {', '.join([values] * len(entries))}".replace("%s", "?"),
                  [v for p, rows, changed in entries
                   for v in (p.batch.batch_id, p.batch.source, p.batch.table, p.ref.target,
                             rows, p.quarantined, changed, p.batch.seq)])

    def _may_hold(self, c: duckdb.DuckDBPyConnection, part: LoadPart) -> bool:
        """Whether the part's target may hold tombstones (`_live` then filters its rows).

        Asked of the table once per target while this process holds the file (`_TOMBS`),
        not per batch: asking costs ~0.3-0.5 ms (bench/NOTES.md), most of what a small
        batch's merge costs, and only this process can write the file meanwhile."""
        p = self._plan(part.ref, part.contract)
        key = (self._file, p.tomb)
        held = _TOMBS.get(key)
        if held is None:
            try:  # fetchall: DuckDB refuses the next statement while a result has rows left
                held = _TOMBS[key] = bool(c.execute(f"SELECT {p.tomb_any}").fetchall()[0][0])
            except duckdb.OutOfMemoryException:  # load_group retries it
                raise
            except duckdb.Error as exc:
                raise FatalError(f"tombstone lookup failed: {exc}", stage="load",
                                 batch_id=part.batch.batch_id) from None
        return held

    def _upsert_of(self, ref: TableRef, contract: Contract) -> _Upsert:
        u = self._upserts.get((ref.target, contract.names))
        if u is None:
            u = self._upserts[(ref.target, contract.names)] = _upsert(
                contract, f"{quote(self.schema)}.{quote(ref.target)}",
                self._plan(ref, contract).tomb)
        return u

    def _load_part(self, c: duckdb.DuckDBPyConnection, part: LoadPart,
                   tombs: bool = False) -> Merged:
        """One batch, not in the ledger yet (_in_ledger), inside the open transaction;
        `tombs`: its target holds tombstones (`_live`)."""
        ref, contract, batch, deletes = part.ref, part.contract, part.batch, part.deletes
        p = self._plan(ref, contract)
        rows = with_seq(part.rows, batch.seq)
        try:
            live = self._live(c, p, part, rows) if tombs and rows.num_rows else rows
            c.register(STAGE, live)  # unregistered here, or after a rollback (load_group)
            changed = self._merge(c, ref, contract, live) if live.num_rows else 0
            c.unregister(STAGE)
            if deletes is not None and deletes.num_rows:
                c.register(DELETES, deletes)
                changed += _count(c.execute(p.delete.replace("%s", "?"),
                                            [delete_seq(batch.seq)]))
                if batch.seq > 0:  # see docs/deletes.md: a batch without a seq outranks none
                    _TOMBS[(self._file, p.tomb)] = True  # kept if this rolls back: harmless
                    for stmt in p.tomb_write:
                        c.execute(stmt.replace("%s", "?"), [batch.seq]).fetchall()
                c.unregister(DELETES)
            self._ledger(c, [(part, rows.num_rows, max(0, changed))])
        except duckdb.OutOfMemoryException:  # load_group retries it
            raise
        except duckdb.Error as exc:
            raise FatalError(f"merge into {ref.target} failed: {exc}", stage="load",
                             source=batch.source, table=batch.table,
                             batch_id=batch.batch_id) from None
        return Merged(max(0, changed))

    def _live(self, c: duckdb.DuckDBPyConnection, p: MergePlan, part: LoadPart,
              rows: pa.Table) -> pa.Table:
        """`rows` (with their seq) without those a tombstone holds back (merge/plan.py
        `tomb_live`: an older extraction of a key a repair deleted), and the tombstones of
        the keys a newer extraction brings back cleared. One join of the batch with the
        tombstones finds both (a row a tombstone matches: held back if not newer); the
        clear runs only when some key came back. The rows held back are found by their
        position, so the rows that go on keep their Arrow types exactly."""
        import pyarrow as pa  # loaded already: `rows` is an Arrow table
        import pyarrow.compute as pc

        u = self._upsert_of(part.ref, part.contract)
        c.register(STAGE, rows.append_column(ROW, pa.array(range(rows.num_rows),
                                                            pa.int64())))
        matched = c.execute(u.tombed).fetchall()
        held = [row for row, old in matched if old]
        if len(held) < len(matched):
            c.execute(p.tomb_clear).fetchall()
        c.unregister(STAGE)
        if not held:
            return rows
        log.info("%d row(s) of a batch not loaded: a repair deleted their keys after this "
                 "batch's extraction (tombstones)", len(held),
                 extra={"stage": "load", "source": part.batch.source,
                        "table": part.batch.table, "batch_id": part.batch.batch_id})
        keep = pc.invert(pc.is_in(pa.array(range(rows.num_rows), pa.int64()),
                                  value_set=pa.array(held, pa.int64())))
        return rows.filter(keep)

    def _merge(self, c: duckdb.DuckDBPyConnection, ref: TableRef, contract: Contract,
               rows: pa.Table) -> int:
        """The plan's merge rule, by the cheapest statement that gives its result; returns
        the rows it changed (inserted, or replaced by other values)."""
        u = self._upsert_of(ref, contract)
        least = _least_ascending(rows, u.key)
        unique = least is not None or _unique(c, u, rows, contract.primary_key)
        if self._new(c, u, least):
            return _count(c.execute(u.insert[unique]))  # all new: the cheap path stays cheap
        replaced = _arrow(c.execute(u.delete[unique]))
        same = 0
        if replaced.num_rows:
            c.register(REPLACED, replaced)  # unregistered here, or after a rollback
            # fetchall: DuckDB refuses unregister while a result has rows left
            same = int(c.execute(u.same[unique]).fetchall()[0][0])
            c.unregister(REPLACED)
        # The delete kept only target rows newer than the batch. None is left when no
        # target row is newer at all (the usual case: a batch's seq is above every loaded
        # one; not so for a replay or a late redelivery): then every batch row goes in, and
        # the anti-join over the whole target is skipped (~40 of a warm cycle's ~100 ms
        # merge of 20k rows into 2M, bench/NOTES.md).
        import pyarrow.compute as pc

        seqs = rows.column(SEQ)
        oldest = pc.min(seqs).as_py()  # a repair batch may carry several
        fits = (seqs.null_count == 0 and oldest is not None
                and not c.execute(u.newer, [oldest]).fetchall())
        return _count(c.execute(u.insert[unique] if fits else u.insert_missing[unique])) - same

    @staticmethod
    def _new(c: duckdb.DuckDBPyConnection, u: _Upsert, least: int | None) -> bool:
        """No key of the staged batch is in the target. With an ascending integer key
        (`least`: its least key) it is enough that no target key reaches `least`: a
        probe DuckDB answers from the zone maps of the target's last row groups; an empty
        target (a first load) passes it at once. Otherwise the overlap join decides."""
        if least is not None and u.above is not None and not c.execute(
                u.above, [least]).fetchall():
            return True
        return not c.execute(u.overlap).fetchall()

    def highest_seq(self, targets: Sequence[str], above: int) -> int | None:
        """See ports.Warehouse. `above` a constant of the query: the scan skips each row
        group whose `seq` statistics lie at or below it, which in the common case is every
        one (~0.1 ms for a ledger of a million batches, docs/architecture.md)."""
        with self._lock:
            try:
                row = self._conn.execute(
                    highest_seq_sql(self.schema, quote, above).replace("%s", "?"),
                    [list(targets)]).fetchone()
            except (duckdb.CatalogException, duckdb.BinderException):
                return None  # no ledger yet, or one not given `seq` yet
            except duckdb.FatalException as exc:
                raise self._invalidated(exc, "reading the ledger's highest extraction "
                                        "number failed") from None
        return None if row is None or row[0] is None else int(row[0])

    def is_loaded(self, batch_id: str) -> bool:
        return batch_id in self.ledgered([batch_id])

    def ledgered(self, batch_ids: Sequence[str]) -> dict[str, Ledgered]:
        if not batch_ids:
            return {}
        with self._lock:
            try:
                try:
                    rows = self._conn.execute(
                        ledgered_sql(self.schema, quote).replace("%s", "?"),
                        [list(batch_ids)]).fetchall()
                except duckdb.BinderException:  # an old ledger, without the counts
                    rows = self._conn.execute(
                        ledgered_sql(self.schema, quote, counts=False).replace("%s", "?"),
                        [list(batch_ids)]).fetchall()
            except duckdb.CatalogException:
                return {}
            except duckdb.FatalException as exc:
                raise self._invalidated(exc, "ledger lookup failed") from None
        return {r[0]: Ledgered(int(r[1]), r[2], r[3]) for r in rows}

    def query(self, sql: str, params: list[object] | None = None) -> pa.Table:
        """Read access for reconciliation and the demo's comparison."""
        with self._lock:
            # sql(), not execute(): Arrow from a DB-API result copies it and warns
            return self._conn.sql(sql, params=params or None).to_arrow_table()

    def rows(self, sql: str, params: list[object] | None = None) -> list[tuple[Any, ...]]:
        """A query's rows as `query` reads them, each value of the same type and value as
        through Arrow: reconcile's warehouse side (bucket counts and checksums, keys).

        DuckDB's own fetch is used when every column is of a type it returns exactly as
        Arrow does (`_PLAIN`; a HUGEINT sum, an int there, is made the Decimal Arrow gives),
        so an unchanged table's reconcile never imports pyarrow and numpy (~46 MiB of peak
        RSS, #15). Any other result (a TIMESTAMPTZ, whose own fetch needs pytz, not a
        dependency) is read through Arrow as before."""
        with self._lock:
            result = self._conn.sql(sql, params=params or None)
            kinds = [t.id for t in result.types]
            if not _PLAIN.issuperset(kinds):
                columns = [c.to_pylist() for c in result.to_arrow_table().columns]
                return list(zip(*columns, strict=True)) if columns else []
            rows = result.fetchall()
        wide = [i for i, kind in enumerate(kinds) if kind == "hugeint"]
        if not wide:
            return rows
        return [tuple(Decimal(v) if i in wide and v is not None else v
                      for i, v in enumerate(row)) for row in rows]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
