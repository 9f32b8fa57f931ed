"""The server warehouse: PostgreSQL, COPY into a temp stage, one merge per batch, one
transaction per batch or group of batches.

pyarrow is imported where batches are written and read as Arrow (`_csv`, `query`), not
at import: a reconcile into PostgreSQL opens this warehouse and reads plain rows (`rows`),
and without pyarrow it peaks ~80 MiB lower (#15, arrow_types.py)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql as pgsql
from psycopg._encodings import pg2pyenc

from steadyflow.errors import FatalError, SchemaError, WarehouseUnavailable
from steadyflow.extract.dialects import dsn_password, redact
from steadyflow.failpoints import failpoint
from steadyflow.merge.plan import (
    LEDGER,
    LEDGER_ADDED,
    SEQ,
    MergePlan,
    delete_seq,
    highest_seq_sql,
    ledger_seq_index,
    ledgered_sql,
    plan,
    refuse_missing,
    refuse_narrower,
    refuse_unloaded,
    with_seq,
)
from steadyflow.model import BatchRef, Column, Contract, TableRef, TextEncoding
from steadyflow.observe import logs
from steadyflow.ports import Ledgered, LoadPart, Merged

if TYPE_CHECKING:
    import pyarrow as pa

log = logs.get("load")

STAGE, DELETES = "steadyflow_stage", "steadyflow_deletes"


def quote(name: str) -> str:
    return pgsql.Identifier(name).as_string(None)


def _csv(table: pa.Table) -> bytes:
    """Arrow → CSV in C; nulls unquoted and empty strings quoted, as COPY expects.

    Zoned timestamps are written as their UTC wall-clock time without the zone: Arrow
    formats a zoned timestamp ~20x slower than a naive one (a time zone lookup per value:
    0.7 s of a 200k-row batch's 0.75 s), and the load transaction runs with TimeZone=UTC,
    so PostgreSQL reads the same instants back into the TIMESTAMPTZ columns.

    The session asks for UTC when it connects; the server reports the session's TimeZone
    to the client after every statement that changes it (a GUC_REPORT setting: it is in
    ParameterStatus, no query needed), so `load_group` sets it for its transaction only
    when that report says otherwise (a pooler that dropped the startup options, a SET by
    another user of the connection) and pays no round trip for it otherwise.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    columns = [c.cast(pa.timestamp(c.type.unit)) if pa.types.is_timestamp(c.type) and c.type.tz
               else c for c in table.columns]
    sink = io.BytesIO()
    pacsv.write_csv(pa.Table.from_arrays(columns, names=table.column_names), sink,
                    pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return sink.getvalue()


def _stage(prefix: str, target: str, columns: Sequence[Column]) -> str:
    """The name of a session temp table shaped like `columns` of `target`.

    A temp table is created once per connection, copying its column types from the target
    it first serves; reusing one name for every target would give a second target the
    first one's shape: a column missing (the merge fails on every batch) or, worse, another
    numeric scale or type that the COPY silently coerces into (5.6789 staged as 5.68). So
    the name is a digest of the target and its staged column names and types: one stage per
    (target, column set), a `schema_drift: add` column included.
    """
    spec = "\x1f".join([target, *(f"{c.name}\x1e{c.type}" for c in columns)])
    return f"{prefix}_{hashlib.blake2b(spec.encode(), digest_size=8).hexdigest()}"


def _stages(target: str, contract: Contract) -> tuple[str, str]:
    """(rows stage, deletes stage) of `target` (schema-qualified) under `contract`."""
    keys = [contract.column(k) for k in contract.primary_key]
    return _stage(STAGE, target, contract.columns), _stage(DELETES, target, keys)


def _same(contract: Contract, target: str, stage: str, live: str | None = None) -> str | None:
    """Count the staged rows the merge would replace by equal values (lookback re-reads).

    The merge updates them (a newer extraction wins, equal or not), so its row count
    includes them; this count, taken in the same transaction before the merge, is
    subtracted. None for a table with nothing but key columns: its merge inserts new keys
    only (DO NOTHING), so every row it counts is a change. `live`: the merge's condition
    on a staged row `s` when the target holds tombstones (MergePlan.merge_live).
    """
    keys = list(contract.primary_key)
    values = [c.name for c in contract.columns if c.name not in keys]
    if not values:
        return None
    key_list = ", ".join(quote(k) for k in keys)
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in keys)
    equal = " AND ".join(f"t.{quote(c)} IS NOT DISTINCT FROM s.{quote(c)}" for c in values)
    where = f" WHERE {live}" if live else ""
    newest = (f"SELECT DISTINCT ON ({key_list}) * FROM {quote(stage)} AS s{where} "
              f"ORDER BY {key_list}, {quote(contract.cursor)} DESC")
    seq = quote(SEQ)
    return (f"SELECT count(*) FROM ({newest}) AS s JOIN {target} AS t ON {on} "
            f"WHERE (t.{seq} IS NULL OR t.{seq} <= s.{seq}) AND {equal}")


# After a batch whose keys were already in the target, this many batches go straight to the
# staged merge before a direct COPY is tried again (see PostgresWarehouse.load).
MERGE_AFTER_CONFLICT = 8
# the direct COPY's savepoint (PostgresWarehouse._copy_direct)
SAVEPOINT = "SAVEPOINT steadyflow_direct"
#: seconds a load waits for a lock another session holds (config: warehouse.lock_timeout)
LOCK_TIMEOUT = 60.0
ROLLBACK_TO = b"ROLLBACK TO SAVEPOINT steadyflow_direct"


class PostgresWarehouse:
    """Merges batches into PostgreSQL tables with a ledger row in the same transaction."""

    def __init__(self, dsn: str, schema: str = "public",
                 lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.dsn = dsn
        self.schema = schema
        self.lock_timeout = lock_timeout
        self._secrets = [s for s in [dsn_password(dsn)] if s]
        self._lock = threading.Lock()
        # keyed by target and column set: a `schema_drift: add` column makes a new plan
        self._plans: dict[tuple[str, Contract], MergePlan] = {}
        self._merge_only: dict[str, int] = {}  # target → batches left before a direct COPY
        self._conn: psycopg.Connection[Any] | None = None
        # stage tables this connection has created (a rolled-back transaction may have
        # dropped its own: cleared then), and those used by the open transaction (emptied
        # at its commit, ON COMMIT DELETE ROWS; emptied by hand if used twice in it)
        self._staged: set[str] = set()
        self._used: set[str] = set()

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                # a loader cut off mid-merge must neither hang nor, if its host is gone,
                # leave its transaction's row and ledger locks on the server for the hours
                # of default TCP keepalives (every other worker's load of those tables
                # would wait on them): keepalives both ways, a bound on unacknowledged
                # sends, and the server ends a session idle in a transaction or whose
                # client went away
                self._staged.clear()
                self._conn = psycopg.connect(
                    self.dsn, connect_timeout=5,
                    # and a lock another session holds is waited for lock_timeout at
                    # most (PostgreSQL's default waits for ever): the batch is retried
                    # and the error names the holders (_lock_timeout)
                    options="-c TimeZone=UTC -c idle_in_transaction_session_timeout=300000 "
                            f"-c lock_timeout={max(1, round(self.lock_timeout * 1000))} "
                            "-c client_connection_check_interval=10000 "
                            "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 "
                            "-c tcp_keepalives_count=3",
                    keepalives=1, keepalives_idle=30, keepalives_interval=10,
                    keepalives_count=3, tcp_user_timeout=60000,
                    # the COPY sends UTF-8; a session in the database's encoding (LATIN1)
                    # took its bytes as that encoding: 'é' stored as 'Ã©', without a word
                    client_encoding="UTF8")
            except psycopg.Error as exc:
                raise WarehouseUnavailable(
                    f"cannot connect to the PostgreSQL warehouse: "
                    f"{redact(str(exc).strip(), self._secrets)}", stage="load") from None
        return self._conn

    def _plan(self, ref: TableRef, contract: Contract) -> MergePlan:
        key = (ref.target, contract)
        if key not in self._plans:
            stage, deletes = _stages(self._target(ref), contract)
            self._plans[key] = plan(contract, self.schema, ref.target, stage, deletes, quote,
                                    "postgres")
        return self._plans[key]

    def _target(self, ref: TableRef) -> str:
        return f"{quote(self.schema)}.{quote(ref.target)}"

    def _fail(self, exc: psycopg.Error, what: str, batch: BatchRef | None = None) -> Exception:
        msg = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc),
                     self._secrets)
        if isinstance(exc, psycopg.OperationalError):
            if self._conn is not None:
                self._conn.close()
            return WarehouseUnavailable(f"{what}: {msg}", stage="load")
        return FatalError(f"{what}: {msg}", stage="load",
                          batch_id=batch.batch_id if batch else None)

    def ensure_table(self, ref: TableRef, contract: Contract) -> None:
        """The schema, the ledger and the target, each created or given a missing column.

        Two transactions, each under an advisory lock: the schema and the ledger, which
        every target shares, under the schema's key; then the target under its own. Two
        sessions creating the same object at once collide however IF NOT EXISTS reads
        (`duplicate key value violates unique constraint "pg_namespace_nspname_index"`,
        or pg_type's for the ledger): under the target's key alone, two load lanes (or
        workers) ensuring two targets of a fresh schema at once failed one of them for
        good, at every first run."""
        p = self._plan(ref, contract)
        with self._lock:
            try:
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                      [f"steadyflow:ddl:{self.schema}"])
                    self.conn.execute(p.create_schema.encode())
                    self.conn.execute(p.create_ledger.encode())
                    self._add_missing(LEDGER, zip(LEDGER_ADDED, p.add_ledger_counts,
                                                  strict=True))
                    index, create_index = ledger_seq_index(self.schema, quote)
                    # asked first: CREATE INDEX IF NOT EXISTS locks the ledger (SHARE) even
                    # when the index exists, waiting for every load in flight; built once
                    if self.conn.execute("SELECT to_regclass(%s) IS NULL",
                                         [index]).fetchone() == (True,):
                        self.conn.execute(create_index.encode())
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                      [f"steadyflow:{self.schema}.{ref.target}"])
                    # the ledger before the target (committed above), and each altered
                    # only when it lacks a column (ALTER TABLE takes its exclusive lock
                    # even then): a loader's group writes the ledger, then its targets, so
                    # holding a target while waiting for the ledger deadlocked with it;
                    # and a queued ALTER stalls every loader and every reader of the
                    # table behind a long query, at each process start
                    self.conn.execute(p.create_table.encode())
                    self.conn.execute(p.create_tomb.encode())
                    added = [c.name for c in contract.columns if c.added]
                    declared = self._add_missing(ref.target, zip((SEQ, *added),
                                                                 (p.add_seq, *p.add_columns),
                                                                 strict=True))
                    refuse_missing(contract, declared, self._target(ref), ref.label,
                                   ref.target, quote, "postgres")
                    refuse_unloaded(contract, declared, self._defaulted(ref.target),
                                    self._target(ref), ref.label, ref.target, quote)
                    refuse_narrower(contract, declared, self._target(ref), ref.target,
                                    quote, "postgres")
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError):
                    raise self._fail(exc, "warehouse unavailable") from None
                raise SchemaError(f"cannot create warehouse table {ref.target}: {exc}",
                                  stage="load", table=ref.target) from None

    def text_encoding(self) -> TextEncoding | None:
        """The database's encoding when it is not UTF-8: the session speaks UTF-8 and the
        server converts each value, refusing (with its whole batch) a character the
        database's encoding lacks. None for UTF8, and for SQL_ASCII (no conversion: any
        bytes are stored) or an encoding Python has no codec for (the load still refuses
        loudly)."""
        with self._lock:
            name = self.conn.info.parameter_status("server_encoding") or "UTF8"
        if name in ("UTF8", "SQL_ASCII"):
            return None
        try:
            return TextEncoding(name, pg2pyenc(name.encode()))
        except psycopg.NotSupportedError:
            return None

    def _defaulted(self, table: str) -> set[str]:
        """The columns of `table` with a DEFAULT (or an identity or generated value)."""
        return {str(name) for (name,) in self.conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND "
            "attnum > 0 AND NOT attisdropped AND (atthasdef OR attidentity <> '' OR "
            "attgenerated <> '')", [f"{quote(self.schema)}.{quote(table)}"]).fetchall()}

    def _add_missing(self, table: str, adds: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Run each (column, ALTER ... ADD COLUMN) whose column `table` lacks; returns the
        columns it had, each with its declared type (format_type: 'numeric(10,2)')."""
        present = dict(self.conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
            "attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            [f"{quote(self.schema)}.{quote(table)}"]).fetchall())
        for column, stmt in adds:
            if column not in present:
                self.conn.execute(stmt.encode())
        return present

    def load(self, ref: TableRef, contract: Contract, batch: BatchRef, rows: pa.Table,
             deletes: pa.Table | None = None) -> Merged | None:
        """Ledger row, rows and deletes in one transaction; None if the batch was loaded
        before, else how many rows it changed."""
        return self.load_group([LoadPart(ref, contract, batch, rows, deletes)])[0]

    def load_group(self, parts: Iterable[LoadPart]) -> list[Merged | None]:
        """Each part's ledger row, rows and deletes, one part after the other, in ONE
        transaction committed once (ports.Warehouse): a part's merge sees the parts before
        it, so the later extraction of a key wins inside the group as across groups."""
        results: list[Merged | None] = []
        with self._lock:
            conn = self.conn
            current: LoadPart | None = None  # the part an error belongs to, if any
            self._used.clear()
            try:
                with conn.transaction():
                    if conn.info.parameter_status("TimeZone") != "UTC":  # see _csv
                        conn.execute(b"SET LOCAL TimeZone TO 'UTC'")
                    loaded: list[tuple[str, int]] = []
                    for part in parts:
                        current = part
                        merged = self._load_part(conn, part)
                        results.append(merged)
                        if merged is not None and merged.changed != part.rows.num_rows:
                            loaded.append((part.batch.batch_id, merged.changed))
                    current = None
                    if loaded:  # ledger rows whose guess (every row new) was wrong
                        conn.execute(self._count_changes(len(loaded)),
                                     [v for pair in loaded for v in pair])
                    if any(merged is not None for merged in results):
                        failpoint("load.after_merge")
            except BaseException as exc:
                self._staged.clear()  # stages created by the rolled-back transaction
                if not isinstance(exc, psycopg.Error):
                    raise
                if isinstance(exc, psycopg.errors.LockNotAvailable):
                    raise self._lock_timeout(conn, current) from None
                if current is None:
                    raise self._fail(exc, f"committing {len(results)} batch(es) failed"
                                     ) from None
                raise self._fail(exc, f"merge into {current.ref.target} failed",
                                 current.batch) from None
        return results

    def _lock_timeout(self, conn: psycopg.Connection[Any], part: LoadPart | None
                      ) -> WarehouseUnavailable:
        """A load that waited lock_timeout for a lock: retryable (the holder lets go,
        the batch loads), named with the sessions holding locks on the target (or the
        ledger), so the operator knows whom to ask, where it was a silent wait for ever.
        The transaction is rolled back already; the connection stays."""
        where = self._target(part.ref) if part is not None else (
            f"{quote(self.schema)}.{quote(LEDGER)}")
        holders = ""
        try:
            with conn.transaction():
                rows = conn.execute(
                    "SELECT a.pid, string_agg(DISTINCT l.mode, ','), a.state, "
                    "round(extract(epoch FROM now() - a.xact_start)), "
                    "left(regexp_replace(a.query, '\\s+', ' ', 'g'), 120) "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.granted AND l.pid <> pg_backend_pid() AND l.relation IN "
                    "(to_regclass(%s), to_regclass(%s)) "
                    "GROUP BY a.pid, a.state, a.xact_start, a.query LIMIT 5",
                    [where, f"{quote(self.schema)}.{quote(LEDGER)}"]).fetchall()
            holders = "; ".join(f"pid {pid} ({modes}, {state}, transaction open {age}s: "
                                f"{query})" for pid, modes, state, age, query in rows)
        except psycopg.Error as exc:  # the question is a courtesy: the error stands
            log.debug("lock holders not read: %s", exc, extra={"stage": "load"})
        what = f"merge into {part.ref.target}" if part is not None else "the ledger update"
        return WarehouseUnavailable(
            redact(f"{what} waited {self.lock_timeout:g}s (warehouse.lock_timeout) for a "
                   f"lock another session holds on {where}"
                   + (f"; holding locks there: {holders}" if holders else ""),
                   self._secrets),
            stage="load", batch_id=part.batch.batch_id if part is not None else None,
            hint="the batch is retried with back-off; end or commit the session holding "
                 "the lock (pg_locks, pg_stat_activity)")

    def _load_part(self, conn: psycopg.Connection[Any], part: LoadPart) -> Merged | None:
        """One batch inside the open transaction: None if the ledger has it already."""
        ref, contract, batch, deletes = part.ref, part.contract, part.batch, part.deletes
        p = self._plan(ref, contract)
        target = self._target(ref)
        stage, delete_stage = _stages(target, contract)
        rows = with_seq(part.rows, batch.seq)
        skip = self._merge_only.get(ref.target, 0)
        direct = rows.num_rows > 0 and skip <= 0
        # the ledger row guesses that every row is new (the direct COPY's count, the
        # common case: a first load, new rows); load_group corrects the other parts' in
        # one statement before the commit, so a group of new batches pays no UPDATE, and
        # asks in the same statement whether the target holds any tombstone. The direct
        # COPY's savepoint goes in the same round trip, AFTER the ledger row (a refused
        # COPY rolls back to it, and must not take the ledger row with it): one simple
        # query of both statements, the values bound by psycopg on this side (a pipeline
        # of the two cost ~70 us more client CPU per batch, bench/NOTES.md). A target with
        # tombstones takes the staged merge; its savepoint, unused, ends with the group
        insert = ("WITH l AS (" + p.ledger_insert.replace(
            "now())", "now()) ON CONFLICT DO NOTHING RETURNING batch_id")
            + f") SELECT batch_id, {p.tomb_any} FROM l")
        values = [batch.batch_id, batch.source, batch.table, ref.target, rows.num_rows,
                  part.quarantined, rows.num_rows, batch.seq]
        if direct:
            with psycopg.ClientCursor(conn) as cur:
                cur.execute(f"{insert}; {SAVEPOINT}".encode(), values)
                inserted = cur.fetchone()  # the first statement's result
        else:
            inserted = conn.execute(insert.encode(), values).fetchone()
        if inserted is None:
            return None
        tombs = bool(inserted[1])
        if rows.num_rows and skip > 0:
            self._merge_only[ref.target] = skip - 1
        changed = 0
        if direct and not tombs and self._copy_direct(conn, ref, target, rows):
            changed = rows.num_rows  # every row new: the cheap path stays cheap
        elif rows.num_rows:
            self._copy(conn, target, stage, rows)
            if tombs:  # the staged merge without the rows tombstones hold back
                changed = self._merge(conn, p.merge_live,
                                      _same(contract, target, stage, p.live))
                self._clear(conn, p, batch, stage)
            else:
                changed = self._merge(conn, p.merge, _same(contract, target, stage))
        if deletes is not None and deletes.num_rows:
            self._copy(conn, target, delete_stage, deletes, columns=deletes.column_names)
            changed += conn.execute(p.delete.encode(), [delete_seq(batch.seq)]).rowcount
            if batch.seq > 0:  # see docs/deletes.md: a batch without a seq outranks none
                for stmt in p.tomb_write:
                    conn.execute(stmt.encode(), [batch.seq])
        return Merged(max(0, changed))

    @staticmethod
    def _clear(conn: psycopg.Connection[Any], p: MergePlan, batch: BatchRef,
               stage: str) -> None:
        """After a merge without the rows tombstones hold back (`merge_live`): clear the
        tombstones of the keys this batch brings back (a newer extraction), and log how
        many rows were held back. One round trip: the count reads the tombstones as they
        were before the clear (one snapshot)."""
        row = conn.execute(f"WITH c AS ({p.tomb_clear} RETURNING 1) SELECT count(*) "
                           f"FROM {quote(stage)} AS s WHERE NOT ({p.live})".encode()).fetchone()
        held = int(row[0]) if row else 0
        if held:
            log.info("%d row(s) of a batch not loaded: a repair deleted their keys after "
                     "this batch's extraction (tombstones)", held,
                     extra={"stage": "load", "source": batch.source, "table": batch.table,
                            "batch_id": batch.batch_id})

    def _copy_direct(self, conn: psycopg.Connection[Any], ref: TableRef, target: str,
                     rows: pa.Table) -> bool:
        """COPY the batch straight into the target when none of its keys is there yet.

        The merge rule inserts every row whose key the target lacks, so for such a batch
        (every page of a first load, new rows) a plain COPY gives the same table, without
        writing the rows twice (stage, then target) or sorting them. Whether no key is there
        is not asked in advance (that costs an index probe per row): the COPY runs after a
        savepoint (sent with the ledger row by `_load_part`), and the target's
        primary key refuses the first row whose key exists (or repeats within the batch);
        the transaction is rolled back to the savepoint and the batch takes the staged
        merge. Either way it is the same transaction as the ledger row.

        The savepoint is never released: a RELEASE would be one more round trip per batch
        and changes nothing. A savepoint left open ends with the transaction (its COPY
        commits or rolls back with the group), and ROLLBACK TO names the most recent
        savepoint of that name, so a later part's refused COPY undoes its own rows only,
        never an earlier part's (tests/integration/test_pg_load_round_trips.py).
        """
        cols = ", ".join(quote(c) for c in rows.column_names)
        try:
            with conn.cursor().copy(
                    f"COPY {target} ({cols}) FROM STDIN (FORMAT csv)".encode()) as copy:
                copy.write(_csv(rows))
        except psycopg.errors.UniqueViolation:
            conn.execute(ROLLBACK_TO)
            self._merge_only[ref.target] = MERGE_AFTER_CONFLICT
            return False
        return True

    @staticmethod
    def _merge(conn: psycopg.Connection[Any], merge: str, same: str | None) -> int:
        """The staged merge in one statement, with the count of the rows it replaces by
        equal values (`_same`) taken in the same round trip: every part of a WITH runs on
        one snapshot, so the count sees the target as it was before the merge. Returns
        the rows it changed."""
        if same is None:
            return int(conn.execute(merge.encode()).rowcount)
        row = conn.execute(f"WITH m AS ({merge} RETURNING 1) SELECT (SELECT count(*) FROM m), "
                           f"({same})".encode()).fetchone()
        assert row is not None
        return int(row[0]) - int(row[1])

    def _copy(self, conn: psycopg.Connection[Any], target: str, stage: str, rows: pa.Table,
              columns: list[str] | None = None) -> None:
        """Rows into the session's stage table of `target`: created once per connection
        (emptied at each commit), emptied here only when this transaction used it already,
        so a small batch's merge pays no CREATE or TRUNCATE round trip."""
        cols = columns or rows.column_names
        if stage not in self._staged:
            conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {quote(stage)} ON COMMIT DELETE ROWS AS "
                f"SELECT {', '.join(quote(c) for c in cols)} FROM {target} WITH NO DATA"
                .encode())
            self._staged.add(stage)  # empty: made now, or by an earlier transaction
        elif stage in self._used:
            conn.execute(f"TRUNCATE {quote(stage)}".encode())
        self._used.add(stage)
        with conn.cursor().copy(
            f"COPY {quote(stage)} ({', '.join(quote(c) for c in cols)}) FROM STDIN "
            "(FORMAT csv)".encode()) as copy:
            copy.write(_csv(rows.select(cols)))

    def _count_changes(self, n: int) -> bytes:
        """One statement that writes the changed count of `n` ledger rows of this
        transaction: a round trip per group, not per batch."""
        ledger = f"{quote(self.schema)}.{quote(LEDGER)}"
        values = ", ".join(["(%s, %s::bigint)"] * n)
        return (f"UPDATE {ledger} AS l SET changed = v.changed FROM (VALUES {values}) "
                "AS v(batch_id, changed) WHERE l.batch_id = v.batch_id").encode()

    def ledgered(self, batch_ids: Sequence[str]) -> dict[str, Ledgered]:
        if not batch_ids:
            return {}
        with self._lock:
            try:
                try:
                    with self.conn.transaction():
                        rows = self.conn.execute(ledgered_sql(self.schema, quote).encode(),
                                                 [list(batch_ids)]).fetchall()
                except psycopg.errors.UndefinedColumn:  # an old ledger, without the counts
                    with self.conn.transaction():
                        rows = self.conn.execute(
                            ledgered_sql(self.schema, quote, counts=False).encode(),
                            [list(batch_ids)]).fetchall()
            except psycopg.errors.UndefinedTable:
                return {}
            except psycopg.Error as exc:
                raise self._fail(exc, "ledger lookup failed") from None
        return {r[0]: Ledgered(int(r[1]), r[2], r[3]) for r in rows}

    def highest_seq(self, targets: Sequence[str], above: int) -> int | None:
        """See ports.Warehouse. An index range scan of the ledger's `seq` (empty in the
        common case); a ledger not made yet, or not given `seq` yet, holds none."""
        with self._lock:
            try:
                with self.conn.transaction():
                    row = self.conn.execute(
                        highest_seq_sql(self.schema, quote, above).encode(),
                        [list(targets)]).fetchone()
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                return None
            except psycopg.Error as exc:
                raise self._fail(exc, "reading the ledger's highest extraction number "
                                 "failed") from None
        return None if row is None or row[0] is None else int(row[0])

    def is_loaded(self, batch_id: str) -> bool:
        return batch_id in self.ledgered([batch_id])

    def query(self, sql: str, params: list[object] | None = None) -> pa.Table:
        import pyarrow as pa

        with self._lock, self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(sql.encode(), params or [])
            names = [d.name for d in cur.description or []]
            data = cur.fetchall()
        return pa.table({n: [r[i] for r in data] for i, n in enumerate(names)})

    def rows(self, sql: str, params: list[object] | None = None) -> list[tuple[Any, ...]]:
        """A query's rows as psycopg returns them (the session's TimeZone is UTC):
        reconcile's warehouse side, aggregates and a few keys, no Arrow needed."""
        with self._lock, self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(sql.encode(), params or [])
            return [tuple(r) for r in cur.fetchall()]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
