"""Decide the SQL of a load without a connection: DDL, merge and ledger statements.

Pure functions of (contract, names, quoting), so they are unit-tested without a database
and both warehouse adapters execute the same decisions. The merge rule everywhere: match on
the primary key; the row from the later extraction (higher `_steadyflow_seq`) wins, ties
included; a batch's own duplicates collapse to their newest cursor first.

Why extraction order and not the cursor: a transaction that commits late can stamp a row
with a cursor OLDER than the version already loaded (PostgreSQL's now() is the transaction
start). The source's truth is still the later commit, and a later read of a row never
returns an older version, so the later extraction is the one to keep.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from steadyflow.errors import SchemaError
from steadyflow.model import ColumnType, Contract

if TYPE_CHECKING:
    import pyarrow as pa

Quote = Callable[[str], str]
LEDGER = "_steadyflow_ledger"
SEQ = "_steadyflow_seq"
DELETED_AT = "_steadyflow_deleted_at"  # when a tombstone was written (the repair's load)
TOMB_PREFIX = "_steadyflow_tomb_"
# the ledger's columns added after its first version, each nullable (MergePlan)
LEDGER_ADDED = ("changed", "quarantined", "seq")
RESERVED = "_steadyflow_"  # the prefix of the columns steadyflow adds (config.RESERVED_PREFIX)


def sql_type(kind: ColumnType, engine: str) -> str:
    if kind.name == "decimal":
        name = "NUMERIC" if engine == "postgres" else "DECIMAL"
        return f"{name}({kind.precision},{kind.scale})"
    table = {
        "int64": "BIGINT", "int32": "INTEGER", "bool": "BOOLEAN", "date": "DATE",
        "timestamp": "TIMESTAMPTZ",
        "float64": "DOUBLE PRECISION" if engine == "postgres" else "DOUBLE",
        "string": "TEXT" if engine == "postgres" else "VARCHAR",
    }
    return table[kind.name]


# the integer types a catalog may list, by their bits (a value range of ±2**(bits-1))
_INTEGER_BITS = {"smallint": 16, "int2": 16, "tinyint": 8, "integer": 32, "int4": 32,
                 "int": 32, "bigint": 64, "int8": 64, "hugeint": 128}
_FLOATS = ("real", "float4", "float", "double", "double precision", "float8")
_SIZED = re.compile(r"^(?:numeric|decimal)\((\d+),\s*(\d+)\)$")
# types whose column converts text put into it: '007' is stored as 7 ('abc' fails the batch)
_NOT_TEXT = re.compile(
    r"^(u?(tiny|small|big|huge)?int(eger)?|u?int[1248]|real|float[48]?|double( precision)?|"
    r"numeric|decimal|date|time|timestamp|timestamptz|boolean|bool|interval|uuid)\b")


def _holds(declared: str, kind: ColumnType) -> bool:
    """Whether a warehouse column declared `declared` (as its catalog spells it) holds
    every value of the contract type `kind` (a number or a timestamp) exactly. A type
    this cannot judge (a user's own, a text column) is taken to hold it: only a known
    narrower number type, a float for an exact number, a number type for a float64, a
    date for a timestamp, a number, time or bool type for a string and a bool for
    anything but a bool are refused."""
    spelled = declared.strip().lower()
    if spelled in ("boolean", "bool"):  # DuckDB takes 2 (and -1) for true; PostgreSQL fails
        return kind.name == "bool"
    if kind.name == "string":  # a number, time or bool type converts the text (or fails)
        return _NOT_TEXT.match(spelled) is None
    bits = _INTEGER_BITS.get(spelled)
    sized = _SIZED.match(spelled)
    if kind.name == "timestamp":  # a date drops the time of day
        return spelled != "date"
    if kind.name == "float64":  # a number type rounds it; a 4-byte float narrows it
        return bits is None and sized is None and spelled not in ("real", "float4", "float")
    if spelled in ("numeric", "decimal"):  # PostgreSQL's unconstrained numeric
        return True
    if spelled in _FLOATS:
        return False
    if kind.bits:
        if bits is not None:
            return bits >= kind.bits
        # the digits of the contract type's extremes: 10 (int32), 19 (int64)
        return sized is None or int(sized.group(1)) - int(sized.group(2)) >= len(
            str(2 ** (kind.bits - 1)))
    assert kind.name == "decimal"
    whole, fraction = kind.precision - kind.scale, kind.scale
    if bits is not None:  # every whole number of `whole` digits is below 2**(bits-1)
        return fraction == 0 and 10 ** whole <= 2 ** (bits - 1)
    return sized is None or (int(sized.group(2)) >= fraction
                             and int(sized.group(1)) - int(sized.group(2)) >= whole)


def narrower_columns(contract: Contract, declared: dict[str, str]
                     ) -> list[tuple[str, str, str]]:
    """(column, warehouse type, contract type) of each existing target column too narrow
    for its contract type, `declared` being column → type as the warehouse's catalog
    spells it.

    A target is created from the contract once; a contract widened later (int32 to int64,
    decimal(10,2) to decimal(12,4), int64 to float64, date to timestamp) leaves the old
    column, and the warehouses convert into it without a word: 1.2345 was stored as
    1.23, 1.5 as 2 and 10:30 on a day as the day, and one value past the old range
    failed its whole batch on every delivery. So with a string (a contract column changed
    to it, or a `schema_drift: add` column whose source type became text): '007' was
    stored as 7 in the BIGINT column, 'abc' failed the batch; and with an integer over
    a BOOLEAN (a source boolean changed to integer): DuckDB stored 2 as true, PostgreSQL
    failed the batch on every delivery. Such a table is refused instead, naming the ALTER
    that widens it."""
    out = []
    for column in contract.columns:
        kind, have = column.parsed_type, declared.get(column.name)
        if (have is not None and kind.name in ("int64", "int32", "decimal", "float64",
                                                "timestamp", "string")
                and not _holds(have, kind)):
            out.append((column.name, have, column.type))
    return out


def refuse_missing(contract: Contract, declared: dict[str, str], target: str, label: str,
                   table: str, quote: Quote, engine: str) -> None:
    """Raise SchemaError naming each contract column the existing warehouse table lacks
    (a column added to the contract after the table was loaded; `schema_drift: add`
    adds its own). Loading went on into a merge that failed on the column, for good,
    naming nothing; adding it silently would leave every row loaded before NULL in it,
    which no later poll re-reads. The hint gives the ALTER TABLE and the reset that
    re-reads those rows."""
    have = {name.lower() for name in declared}
    missing = [c for c in contract.columns if not c.added and c.name.lower() not in have]
    if not missing:
        return
    names = ", ".join(c.name for c in missing)
    fix = "; ".join(f"ALTER TABLE {target} ADD COLUMN {quote(c.name)} "
                    f"{sql_type(c.parsed_type, engine)}" for c in missing)
    raise SchemaError(f"warehouse table {table} lacks the contract's column(s) {names} (added "
                      "to the contract after the table was loaded?): rows loaded before would "
                      "hold NULL in it, so nothing is loaded into it", stage="load",
                      table=table, hint=f"add the column(s), then read the table again so "
                      f"every row has them: {fix}; steadyflow reset --table {label}")


def refuse_unloaded(contract: Contract, declared: dict[str, str], defaulted: set[str],
                    target: str, label: str, table: str, quote: Quote) -> None:
    """Raise SchemaError naming each column of the existing warehouse table that the
    batch's contract does not hold: removed from the contract, or (`schema_drift: add`)
    dropped at the source. The merge replaces whole rows, so every row changed from
    then on would hold NULL there while its other rows keep their values, every run
    "ok", and reconcile (comparing the contract's columns) blind to it. Nothing is
    loaded into the table until the operator decides: drop the column from the
    warehouse table, or bring it back. A column with a DEFAULT is the warehouse's own
    (filled on every insert) and `_steadyflow_` columns are steadyflow's: not asked."""
    known = {c.name.lower() for c in contract.columns}
    extra = [name for name in declared if name.lower() not in known
             and not name.lower().startswith(RESERVED) and name not in defaulted]
    if not extra:
        return
    names = ", ".join(extra)
    drop = "; ".join(f"ALTER TABLE {target} DROP COLUMN {quote(n)}" for n in extra)
    raise SchemaError(
        f"warehouse table {table} holds column(s) {names} that the contract (or, with "
        "schema_drift: add, the source) no longer has: each row merged from now on would "
        "hold NULL there, so nothing is loaded into it", stage="load", table=table,
        hint=f"if the column(s) are meant to go, drop them from the warehouse table "
             f"({drop}) and run again; otherwise put them back in the contract of "
             f"{label} (or at the source)")


def refuse_narrower(contract: Contract, declared: dict[str, str], target: str, table: str,
                    quote: Quote, engine: str) -> None:
    """Raise SchemaError naming each narrower column of `target` (`narrower_columns`)
    and the ALTER TABLE that widens it; nothing is loaded into it until then."""
    narrower = narrower_columns(contract, declared)
    if not narrower:
        return
    what = "; ".join(f"column {name} is {have} in the warehouse but {want} in the contract"
                     for name, have, want in narrower)
    fix = "; ".join(f"ALTER TABLE {target} ALTER COLUMN {quote(name)} TYPE "
                    f"{sql_type(contract.column(name).parsed_type, engine)}"
                    for name, _, _ in narrower)
    raise SchemaError(f"warehouse table {table}: {what}: its values would be rounded, "
                      "converted or refused there, so nothing is loaded into it", stage="load",
                      table=table, hint=f"widen the column(s), then run again: {fix}")


def with_seq(rows: pa.Table, seq: int) -> pa.Table:
    """The batch's rows with its extraction sequence as the merge's version column.
    (pyarrow imported here: the rest of this module is the SQL a reconcile needs too.)"""
    if SEQ in rows.column_names:
        return rows
    import pyarrow as pa

    return rows.append_column(SEQ, pa.repeat(pa.scalar(seq, pa.int64()), rows.num_rows))


def delete_seq(seq: int) -> int:
    """The parameter of a plan's `delete`: the extraction sequence of the batch whose
    deletes it applies. A warehouse row from a later extraction stays, as the merge keeps
    it: a repair batch loaded late (by the sweeper, after the process that landed it died)
    must not delete a key the source inserted again after the repair read it as gone,
    which an extractor read and loaded meanwhile. A batch landed before batches carried a
    sequence (0) deletes its keys whatever loaded them."""
    return seq if seq > 0 else 2**63 - 1


def tomb_table(target: str) -> str:
    """The name of `target`'s tombstone table (docs/deletes.md), beside it in its schema.

    Within PostgreSQL's 63 bytes (a longer name is cut without a word, and two long
    targets would share one table): a target name too long for the prefix is cut and
    given a digest of the whole name."""
    name = TOMB_PREFIX + target
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.blake2b(target.encode(), digest_size=6).hexdigest()
    return f"{TOMB_PREFIX}{target.encode()[:33].decode(errors='ignore')}_{digest}"


def tomb_live(keys: list[str] | tuple[str, ...], tomb: str, quote: Quote) -> str:
    """The condition that a staged row `s` is not held back by a tombstone of its key in
    `tomb`: none, or one older than the row's extraction. A tombstone of seq N says the
    key was gone from the source when extraction N read it; a row of an extraction up to
    N is an older version, which the delete outranks as a newer row would."""
    on = " AND ".join(f"d.{quote(k)} = s.{quote(k)}" for k in keys)
    return (f"NOT EXISTS (SELECT 1 FROM {tomb} AS d WHERE {on} "
            f"AND d.{quote(SEQ)} >= s.{quote(SEQ)})")


def ledgered_sql(schema: str, quote: Quote, counts: bool = True) -> str:
    """Counts of the ledger rows of a list of batch ids (one list parameter), the same
    on PostgreSQL and DuckDB. `counts` False: for a ledger made before it kept them,
    which the sweeper may read before any `ensure_table` added the columns."""
    kept = "changed, quarantined" if counts else "NULL, NULL"
    return (f"SELECT batch_id, rows, {kept} FROM {quote(schema)}.{quote(LEDGER)} "
            "WHERE batch_id IN (SELECT unnest(%s::text[]))")


def highest_seq_sql(schema: str, quote: Quote, above: int) -> str:
    """The highest extraction number above `above` among the ledger rows of a list of
    targets (one list parameter), the same on PostgreSQL and DuckDB: NULL when none is
    above it, the common case, which costs no scan of the ledger either way (PostgreSQL:
    its index on `seq`; DuckDB: the row groups' min/max, which a constant `above` lets
    the scan skip whole)."""
    return (f"SELECT max(seq) FROM {quote(schema)}.{quote(LEDGER)} WHERE seq > {int(above)} "
            "AND target IN (SELECT unnest(%s::text[]))")


def ledger_seq_index(schema: str, quote: Quote) -> tuple[str, str]:
    """(the qualified name, the CREATE) of PostgreSQL's index on the ledger's `seq`."""
    name = f"{LEDGER}_seq"
    return (f"{quote(schema)}.{quote(name)}",
            f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(schema)}.{quote(LEDGER)} (seq)")


@dataclass(frozen=True, slots=True)
class MergePlan:
    create_schema: str
    add_seq: str  # tables created before the sequence column existed get it on first use
    add_columns: tuple[str, ...]  # the contract's `schema_drift: add` columns, nullable
    create_table: str
    create_ledger: str
    # ledgers made before they kept counts: `changed` and `quarantined` (nullable) added,
    # and before they kept the batch's extraction number, `seq` (LEDGER_ADDED, in order)
    add_ledger_counts: tuple[str, ...]
    ledger_check: str
    ledger_insert: str
    merge: str
    delete: str
    # Tombstones (docs/deletes.md): the keys a repair deleted, each with the extraction
    # seq of the repair batch, so an older batch loaded after the delete cannot insert
    # the row again. `tomb_any` is a boolean SQL expression: does the table hold any?
    create_tomb: str
    tomb: str  # the tombstone table, schema-qualified
    tomb_any: str
    merge_live: str  # `merge` without the staged rows a tombstone holds back
    live: str  # the condition on a staged row `s`: no tombstone holds it back
    # a staged row of a newer extraction than a key's tombstone clears it (the source
    # inserted the key again); run after the merge
    tomb_clear: str
    # a delete batch's keys (the deletes stage) into the tombstones, its seq the parameter
    # of both: an older tombstone of the key replaced, a newer one kept
    tomb_write: tuple[str, str]


def plan(contract: Contract, schema: str, table: str, stage: str, deletes: str,
         quote: Quote, engine: str) -> MergePlan:
    q = quote
    target = f"{q(schema)}.{q(table)}"
    ledger = f"{q(schema)}.{q(LEDGER)}"
    cols = [c.name for c in contract.columns]
    keys = list(contract.primary_key)
    cur = q(contract.cursor)
    seq = q(SEQ)
    col_defs = ", ".join(
        f"{q(c.name)} {sql_type(c.parsed_type, engine)}"
        + (" NOT NULL" if c.name in keys else "")
        for c in contract.columns
    ) + f", {seq} BIGINT"
    cols = [*cols, SEQ]
    key_list = ", ".join(q(k) for k in keys)
    tomb = f"{q(schema)}.{q(tomb_table(table))}"
    live = tomb_live(keys, tomb, quote)
    non_keys = [c for c in cols if c not in keys]

    def merge_of(newest: str) -> str:
        if engine == "postgres":
            updates = ", ".join(f"{q(c)} = EXCLUDED.{q(c)}" for c in non_keys)
            return (
                f"INSERT INTO {target} ({', '.join(q(c) for c in cols)}) {newest} "
                f"ON CONFLICT ({key_list}) DO "
                + (f"UPDATE SET {updates} WHERE {target}.{seq} IS NULL "
                   f"OR {target}.{seq} <= EXCLUDED.{seq}" if non_keys else "NOTHING")
            )
        on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in keys)
        updates = ", ".join(f"{q(c)} = s.{q(c)}" for c in non_keys)
        return (
            f"MERGE INTO {target} AS t USING ({newest}) AS s ON {on} "
            + (f"WHEN MATCHED AND (t.{seq} IS NULL OR s.{seq} >= t.{seq}) "
               f"THEN UPDATE SET {updates} " if non_keys else "")
            + f"WHEN NOT MATCHED THEN INSERT ({', '.join(q(c) for c in cols)}) "
            f"VALUES ({', '.join('s.' + q(c) for c in cols)})"
        )

    def newest(where: str) -> str:
        return (f"SELECT DISTINCT ON ({key_list}) * FROM {stage} AS s{where} "
                f"ORDER BY {key_list}, {cur} DESC")

    key_tuple = f"({key_list})"
    key_defs = ", ".join(f"{q(c.name)} {sql_type(c.parsed_type, engine)} NOT NULL"
                         for c in contract.columns if c.name in keys)
    on_d = " AND ".join(f"d.{q(k)} = s.{q(k)}" for k in keys)
    return MergePlan(
        create_schema=f"CREATE SCHEMA IF NOT EXISTS {q(schema)}",
        add_seq=f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {seq} BIGINT",
        add_columns=tuple(
            f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {q(c.name)} "
            f"{sql_type(c.parsed_type, engine)}" for c in contract.columns if c.added),
        create_table=(f"CREATE TABLE IF NOT EXISTS {target} ({col_defs}"
                      + (f", PRIMARY KEY ({key_list}))" if engine == "postgres" else ")")),
        create_ledger=(f"CREATE TABLE IF NOT EXISTS {ledger} (batch_id VARCHAR PRIMARY KEY, "
                       "source VARCHAR NOT NULL, tbl VARCHAR NOT NULL, target VARCHAR NOT NULL, "
                       "rows BIGINT NOT NULL, loaded_at TIMESTAMPTZ NOT NULL, "
                       "changed BIGINT, quarantined BIGINT, seq BIGINT)"),
        add_ledger_counts=tuple(f"ALTER TABLE {ledger} ADD COLUMN IF NOT EXISTS {c} BIGINT"
                                for c in LEDGER_ADDED),
        ledger_check=f"SELECT 1 FROM {ledger} WHERE batch_id = %s",
        # seq: the batch's extraction number, the warehouse's own record of the highest
        # number it holds (highest_seq_sql; docs/architecture.md, "the sequence's floor")
        ledger_insert=(f"INSERT INTO {ledger} (batch_id, source, tbl, target, rows, "
                       "quarantined, changed, seq, loaded_at) VALUES (%s, %s, %s, %s, %s, %s, "
                       "%s, %s, now())"),
        merge=merge_of(newest("")),
        # a repair's deletes lose to a later extraction as its rows do (`delete_seq`)
        delete=(f"DELETE FROM {target} WHERE {key_tuple} IN (SELECT {key_list} FROM {deletes}) "
                f"AND ({seq} IS NULL OR {seq} <= %s)"),
        # DuckDB's table has no key (as its targets: a key index costs every insert, and
        # a key deleted and inserted again in one transaction would collide in it)
        create_tomb=(f"CREATE TABLE IF NOT EXISTS {tomb} ({key_defs}, {seq} BIGINT NOT NULL, "
                     f"{q(DELETED_AT)} TIMESTAMPTZ NOT NULL"
                     + (f", PRIMARY KEY ({key_list}))" if engine == "postgres" else ")")),
        tomb=tomb,
        tomb_any=f"EXISTS (SELECT 1 FROM {tomb})",
        merge_live=merge_of(newest(f" WHERE {live}")),
        live=live,
        tomb_clear=(f"DELETE FROM {tomb} AS d WHERE EXISTS (SELECT 1 FROM {stage} AS s "
                    f"WHERE {on_d} AND s.{seq} > d.{seq})"),
        tomb_write=(
            f"DELETE FROM {tomb} WHERE {key_tuple} IN (SELECT {key_list} FROM {deletes}) "
            f"AND {seq} < %s",
            f"INSERT INTO {tomb} ({key_list}, {seq}, {q(DELETED_AT)}) SELECT DISTINCT "
            f"{', '.join('s.' + q(k) for k in keys)}, CAST(%s AS BIGINT), now() "
            f"FROM {deletes} AS s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {tomb} AS d WHERE {on_d})"),
    )

