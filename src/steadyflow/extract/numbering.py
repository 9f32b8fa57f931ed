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

from steadyflow.errors import SchemaError
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
