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

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from steadyflow.model import Contract

Quote = Callable[[str], str]
LEDGER = "_steadyflow_ledger"
SEQ = "_steadyflow_seq"


def sql_type(arrow: pa.DataType, engine: str) -> str:
    if pa.types.is_decimal(arrow):
        name = "NUMERIC" if engine == "postgres" else "DECIMAL"
        return f"{name}({arrow.precision},{arrow.scale})"
    if pa.types.is_timestamp(arrow):
        return "TIMESTAMPTZ"
    table = {
        pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.bool_(): "BOOLEAN", pa.date32(): "DATE",
        pa.float64(): "DOUBLE PRECISION" if engine == "postgres" else "DOUBLE",
        pa.string(): "TEXT" if engine == "postgres" else "VARCHAR",
    }
    return table[arrow]


def with_seq(rows: pa.Table, seq: int) -> pa.Table:
    """The batch's rows with its extraction sequence as the merge's version column."""
    if SEQ in rows.column_names:
        return rows
    return rows.append_column(SEQ, pa.repeat(pa.scalar(seq, pa.int64()), rows.num_rows))


def delete_seq(seq: int) -> int:
    """The parameter of a plan's `delete`: the extraction sequence of the batch whose
    deletes it applies. A warehouse row from a later extraction stays, as the merge keeps
    it: a repair batch loaded late (by the sweeper, after the process that landed it died)
    must not delete a key the source inserted again after the repair read it as gone,
    which an extractor read and loaded meanwhile. A batch landed before batches carried a
    sequence (0) deletes its keys whatever loaded them."""
    return seq if seq > 0 else 2**63 - 1


def ledgered_sql(schema: str, quote: Quote, counts: bool = True) -> str:
    """Counts of the ledger rows of a list of batch ids (one list parameter), the same
    on PostgreSQL and DuckDB. `counts` False: for a ledger made before it kept them,
    which the sweeper may read before any `ensure_table` added the columns."""
    kept = "changed, quarantined" if counts else "NULL, NULL"
    return (f"SELECT batch_id, rows, {kept} FROM {quote(schema)}.{quote(LEDGER)} "
            "WHERE batch_id IN (SELECT unnest(%s::text[]))")


@dataclass(frozen=True, slots=True)
class MergePlan:
    create_schema: str
    add_seq: str  # tables created before the sequence column existed get it on first use
    add_columns: tuple[str, ...]  # the contract's `schema_drift: add` columns, nullable
    create_table: str
    create_ledger: str
    # ledgers made before they kept counts: `changed` and `quarantined` (nullable) added
    add_ledger_counts: tuple[str, ...]
    ledger_check: str
    ledger_insert: str
    merge: str
    delete: str


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
        f"{q(c.name)} {sql_type(c.arrow_type, engine)}"
        + (" NOT NULL" if c.name in keys else "")
        for c in contract.columns
    ) + f", {seq} BIGINT"
    cols = [*cols, SEQ]
    key_list = ", ".join(q(k) for k in keys)
    newest = (f"SELECT DISTINCT ON ({key_list}) * FROM {stage} "
              f"ORDER BY {key_list}, {cur} DESC")
    non_keys = [c for c in cols if c not in keys]
    if engine == "postgres":
        updates = ", ".join(f"{q(c)} = EXCLUDED.{q(c)}" for c in non_keys)
        merge = (
            f"INSERT INTO {target} ({', '.join(q(c) for c in cols)}) {newest} "
            f"ON CONFLICT ({key_list}) DO "
            + (f"UPDATE SET {updates} WHERE {target}.{seq} IS NULL "
               f"OR {target}.{seq} <= EXCLUDED.{seq}" if non_keys else "NOTHING")
        )
    else:
        on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in keys)
        updates = ", ".join(f"{q(c)} = s.{q(c)}" for c in non_keys)
        merge = (
            f"MERGE INTO {target} AS t USING ({newest}) AS s ON {on} "
            + (f"WHEN MATCHED AND (t.{seq} IS NULL OR s.{seq} >= t.{seq}) "
               f"THEN UPDATE SET {updates} " if non_keys else "")
            + f"WHEN NOT MATCHED THEN INSERT ({', '.join(q(c) for c in cols)}) "
            f"VALUES ({', '.join('s.' + q(c) for c in cols)})"
        )
    key_tuple = f"({key_list})"
    return MergePlan(
        create_schema=f"CREATE SCHEMA IF NOT EXISTS {q(schema)}",
        add_seq=f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {seq} BIGINT",
        add_columns=tuple(
            f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {q(c.name)} "
            f"{sql_type(c.arrow_type, engine)}" for c in contract.columns if c.added),
        create_table=(f"CREATE TABLE IF NOT EXISTS {target} ({col_defs}"
                      + (f", PRIMARY KEY ({key_list}))" if engine == "postgres" else ")")),
        create_ledger=(f"CREATE TABLE IF NOT EXISTS {ledger} (batch_id VARCHAR PRIMARY KEY, "
                       "source VARCHAR NOT NULL, tbl VARCHAR NOT NULL, target VARCHAR NOT NULL, "
                       "rows BIGINT NOT NULL, loaded_at TIMESTAMPTZ NOT NULL, "
                       "changed BIGINT, quarantined BIGINT)"),
        add_ledger_counts=tuple(f"ALTER TABLE {ledger} ADD COLUMN IF NOT EXISTS {c} BIGINT"
                                for c in ("changed", "quarantined")),
        ledger_check=f"SELECT 1 FROM {ledger} WHERE batch_id = %s",
        ledger_insert=(f"INSERT INTO {ledger} (batch_id, source, tbl, target, rows, "
                       "quarantined, changed, loaded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, "
                       "now())"),
        merge=merge,
        # a repair's deletes lose to a later extraction as its rows do (`delete_seq`)
        delete=(f"DELETE FROM {target} WHERE {key_tuple} IN (SELECT {key_list} FROM {deletes}) "
                f"AND ({seq} IS NULL OR {seq} <= %s)"),
    )
