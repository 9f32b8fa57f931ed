"""Is a cursor the source numbers handed out in commit order? (PostgreSQL sequences)

A cursor filled by a sequence (serial, identity, a nextval() default) is safe to page by
only if numbers are taken in the order time passes: the adaptive lookback's argument
(docs/architecture.md) and keyset paging itself rely on a number taken later being
greater. A sequence with CACHE n > 1 hands each session a block of n numbers: a session
holding 1..20 writes 2 after another session wrote 21 and it was checkpointed, even in a
short transaction begun after the poll, and 2 is never read: lost, every run ok. The
probe refuses such a cursor without a floor, and warns (once per process) with one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from steadyflow.errors import SchemaError, SteadyflowError
from steadyflow.model import Contract

if TYPE_CHECKING:
    from steadyflow.extract.sql import SqlSource

log = logging.getLogger("steadyflow.extract")

NUMBER_TYPES = ("int64", "int32")

# the sequences a column's numbers come from: its default's (serial, nextval()) and the
# one it owns (identity, serial); the table as a regclass parameter, then the column name
_SEQUENCES_SQL = (
    "WITH col AS (SELECT attrelid, attnum FROM pg_attribute WHERE attrelid = %s::regclass "
    "AND attname = %s AND attnum > 0 AND NOT attisdropped) "
    "SELECT s.seqrelid::regclass::text, s.seqcache FROM pg_sequence s WHERE s.seqrelid IN ("
    "SELECT d.refobjid FROM pg_depend d JOIN pg_attrdef ad ON d.objid = ad.oid "
    "JOIN col ON ad.adrelid = col.attrelid AND ad.adnum = col.attnum "
    "WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass "
    "UNION SELECT d.objid FROM pg_depend d JOIN col ON d.refobjid = col.attrelid "
    "AND d.refobjsubid = col.attnum WHERE d.classid = 'pg_class'::regclass "
    "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) "
    "ORDER BY 1")

_warned: set[tuple[str, str]] = set()


def check_numbering(db: SqlSource, table: str, contract: Contract) -> None:
    """Refuse (no floor) or warn (a floor) about an integer cursor whose sequence caches
    numbers per session, naming table, column, sequence and the fix."""
    if db.dialect.name != "postgres" or contract.column(contract.cursor).type not in \
            NUMBER_TYPES:
        return
    declared = {k.lower(): k for k in db.declared_types(table)}
    column = declared.get(contract.cursor.lower(), contract.cursor)
    cached = [(str(name), int(cache)) for name, cache in db._execute(
        table, _SEQUENCES_SQL, [db.dialect.index_param(table), column]) if int(cache) > 1]
    if not cached:
        return
    name, cache = cached[0]
    floor = next((t.lookback for t in db.config.tables if t.name == table), 0.0)
    why = (f"cursor column {contract.cursor} is numbered by sequence {name} with CACHE "
           f"{cache}: each session takes a block of {cache} numbers, so a row can commit "
           "with a number below one already read and checkpointed, and no poll reads it")
    fix = (f"ALTER SEQUENCE {name} CACHE 1 (numbers then follow commit order), or a "
           f"lookback of at least {cache} times the number of sessions writing {table} "
           "(it re-reads that many numbers behind the checkpoint)")
    if floor <= 0:
        raise SchemaError(why, stage="extract", source=db.config.name, table=table,
                          hint=fix)
    if (db.config.name, table) not in _warned:
        _warned.add((db.config.name, table))
        log.warning("%s; the lookback of %g numbers covers only that many: %s", why, floor,
                    fix, extra={"source": db.config.name, "table": table,
                                "stage": "extract"})


# the highest number a sequence has handed out since it last (re)started; no row when it
# has handed out none (a serial whose rows all bring their own numbers: no sign of a
# restart) and the increment, to skip one counting down (nothing to compare)
_ISSUED_PG_SQL = ("SELECT last_value, (SELECT seqincrement FROM pg_sequence "
                  "WHERE seqrelid = %s::regclass) FROM {} WHERE is_called")
# the next AUTO_INCREMENT value, where the cursor column is the one it fills
_ISSUED_MARIADB_SQL = (
    "SELECT t.auto_increment FROM information_schema.tables t "
    "JOIN information_schema.columns c ON c.table_schema = t.table_schema "
    "AND c.table_name = t.table_name WHERE t.table_schema = DATABASE() "
    "AND t.table_name = %s AND c.column_name = %s AND c.extra LIKE '%%auto_increment%%'")


def issued_number(db: SqlSource, table: str, contract: Contract) -> int | None:
    """The highest number the source has handed out for an integer cursor it numbers (a
    PostgreSQL sequence, a MariaDB AUTO_INCREMENT), None where unknown or unreadable.
    Below the checkpoint, the numbering started again (TRUNCATE ... RESTART IDENTITY,
    ALTER SEQUENCE ... RESTART, MariaDB's TRUNCATE): rows numbered again at or below the
    checkpoint are never read (TableExtractor.start_point refuses it)."""
    if contract.column(contract.cursor).type not in NUMBER_TYPES:
        return None
    name = {k.lower(): k for k in db.declared_types(table)}.get(contract.cursor.lower(),
                                                                contract.cursor)
    try:
        if db.dialect.name == "mysql":
            rows = db._execute(table, _ISSUED_MARIADB_SQL, [table, name])
            return int(rows[0][0]) - 1 if rows and rows[0][0] is not None else None
        if db.dialect.name != "postgres":
            return None
        issued = []
        for sequence, _ in db._execute(table, _SEQUENCES_SQL,
                                       [db.dialect.index_param(table), name]):
            from psycopg import sql as pgsql

            query = pgsql.SQL(_ISSUED_PG_SQL).format(pgsql.SQL(str(sequence))).as_string(None)
            for last, step in db._execute(table, query, [str(sequence)]):
                if step is not None and int(step) > 0:
                    issued.append(int(last))
        return max(issued) if issued else None
    except SteadyflowError:  # no privilege on the sequence, a catalog it cannot read
        return None
