"""A SQL source's key columns, and a time cursor without a lookback, against two
spellings of one value (the rule: extract/key_spellings.py), where the database keeps them
apart (SQLite).

The probe reads the whole column once per source object and table, and again every
RECHECK_EVERY; between, each page's keys are added to what was seen before the page is
used, so a row written since in another spelling of a loaded key fails the table before it
is landed, and a poll's probe costs no scan. Without the page check, a source object kept
between polls (`run --follow`, a pipeline's next run) merged such a row into the loaded
key's warehouse row: one row lost, every run ok.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from steadyflow.errors import SchemaError
from steadyflow.extract import key_spellings as spellings
from steadyflow.model import Contract

if TYPE_CHECKING:
    from steadyflow.extract.sql import SqlSource

# seconds between two whole reads of a key column's spellings (pages are checked between)
RECHECK_EVERY = 3600.0  # as sql.KEY_RECHECK_EVERY for the other looks at key rows


def spelled_columns(db: SqlSource, table: str, contract: Contract) -> list[str]:
    """The columns whose spellings are checked: every key column, and a time cursor
    paged without a lookback. SQLite compares a time cursor's text, in which a shorter
    spelling of one instant sorts first ('...:01' before '...:01.000'): a row written
    after a run whose checkpoint was ('...:01.000', key 1), stamped '...:01' with key 2,
    comes after the checkpoint in (time, key) order but sorts behind it in the text, so
    strictly after (cursor, key) passed it for good, every run ok. A lookback re-reads
    from a time strictly before the checkpoint's instant, which every spelling of that
    instant follows. None where the database keeps no two spellings apart."""
    if db.dialect.key_texts_sql(table, contract.cursor) is None:
        return []
    cursor = contract.cursor
    lookback = next((t.lookback for t in db.config.tables if t.name == table), 0.0)
    timed = contract.column(cursor).type == "timestamp" and lookback == 0
    return list(dict.fromkeys((*contract.primary_key, *([cursor] if timed else []))))


def check_keys(db: SqlSource, table: str, contract: Contract) -> None:
    """Refuse, naming table and column, a key column whose values the source keeps apart
    while the contract's type makes two of them one warehouse key: numbers mixed with text
    (1 and '1'), or text spelled more than one way ('1.0' and '1.00'); and a time cursor
    without a lookback spelling one instant two ways (`spelled_columns`). Reads the whole
    column when it was not read by this source object in the last RECHECK_EVERY."""
    for name in spelled_columns(db, table, contract):
        ctype = contract.column(name).type
        seen = db._key_spelled.get((table, name, ctype))
        if seen is None or time.monotonic() - seen[0] >= RECHECK_EVERY:
            _whole(db, table, name, ctype, spellings.Spellings(), contract)


def refuse_key_spellings(db: SqlSource, table: str, contract: Contract,
                         column: Callable[[int], Any]) -> None:
    """A page's key values (`column(i)`: the contract's i-th column as the driver gave it,
    Python values or Arrow) must be spelled as the column's other keys are. A page that
    breaks that is judged again with the whole column as it now is (the spellings kept
    may be of rows since re-spelled), and fails the table if the column breaks it too."""
    checked = spelled_columns(db, table, contract)
    for i, c in enumerate(contract.columns):
        if c.name not in checked:
            continue
        values = column(i)
        page = (spellings.of_arrow(values, c.type)
                if isinstance(values, pa.Array | pa.ChunkedArray)
                else spellings.of_values(values, c.type))
        seen = db._key_spelled.get((table, c.name, c.type))
        if seen is None:
            _whole(db, table, c.name, c.type, page, contract)
            continue
        merged = seen[1].merge(page)
        if spellings.problem(merged, c.type) is None:
            db._key_spelled[(table, c.name, c.type)] = (seen[0], merged)
        else:
            _whole(db, table, c.name, c.type, page, contract)


def _whole(db: SqlSource, table: str, key: str, ctype: str,
           page: spellings.Spellings, contract: Contract) -> None:
    """Read the whole column's spellings, add `page`'s, keep them or refuse."""
    sql = db.dialect.key_classes_sql(table, key)
    assert sql is not None
    classes = frozenset(str(r[0]) for r in db._execute(table, sql, []))
    whole = spellings.Spellings(classes)
    if classes == {"text"} and ctype != "string":
        whole = db._text_spellings(table, key, ctype)
    now = time.monotonic()
    merged = whole.merge(page)
    found = spellings.problem(merged, ctype)
    if found is None:
        db._key_spelled[(table, key, ctype)] = (now, merged)
        return
    db._key_spelled.pop((table, key, ctype), None)
    if key not in contract.primary_key:
        raise _cursor_refusal(db, table, key, found[0])
    raise _refusal(db, table, key, ctype, merged, found)


def _cursor_refusal(db: SqlSource, table: str, cursor: str, what: str) -> SchemaError:
    return SchemaError(
        f"cursor column {cursor} (timestamp) {what}: SQLite compares the text, in which "
        "a shorter spelling of one instant sorts first ('...:01' before '...:01.000'), so "
        "a row written later tying the checkpoint's instant in a shorter spelling would "
        "sort behind the checkpoint and never be read (this table has no lookback)",
        stage="extract", source=db.config.name, table=table,
        hint=f"set a lookback on this table (e.g. lookback: 1s: each run then re-reads "
             "from before the checkpoint's instant, every spelling of it included), or "
             f"store every {cursor} in one fraction width (e.g. UPDATE {table} SET "
             f"{cursor} = strftime('%Y-%m-%d %H:%M:%f', {cursor})); a row tying an "
             "earlier checkpoint may already be behind it: `steadyflow reset --table "
             f"{db.config.name}.{table}` reads the table again")


def _refusal(db: SqlSource, table: str, key: str, ctype: str, seen: spellings.Spellings,
             found: tuple[str, list[str]]) -> SchemaError:
    what, named = found
    if len(seen.classes) > 1:
        return SchemaError(
            f"key column {key} {what}: the source keeps 1 and '1' apart as two keys, the "
            "contract's one type makes them one warehouse key, so one row would replace "
            "the other", stage="extract", source=db.config.name, table=table,
            hint=f"store one type (e.g. UPDATE {table} SET {key} = CAST({key} AS "
                 "INTEGER), after resolving the pairs that become equal) and declare the "
                 "column INTEGER or TEXT")
    pair = _a_pair(db, table, key, ctype, seen, named)
    both = (f"; the table holds both {pair[0]!r} and {pair[1]!r}, one {ctype} value"
            if pair else "")
    return SchemaError(
        f"key column {key} ({ctype}) {what}{both}: the source keeps each spelling apart as "
        f"a key of its own, the contract's {ctype} reads two spellings of one value ('1.0' "
        "and '1.00', '2024-01-01T00:00:00' and '2024-01-01 00:00:00') as one warehouse "
        "key, so one row would replace the other", stage="extract", source=db.config.name,
        table=table,
        hint=f"declare {key} as string in the contract (the warehouse keys it by its text, "
             f"as the source does), or store each value of {key} in one spelling (UPDATE "
             f"{table} SET {key} = ..., after resolving the rows that become one)")


def _a_pair(db: SqlSource, table: str, key: str, ctype: str, seen: spellings.Spellings,
            named: Sequence[str]) -> tuple[str, str] | None:
    """Two spellings of one value the key column holds, found among the other spellings
    (`key_spellings.twins`) of the texts an error names: one look up by the key, on the
    way to failing the table only."""
    twins = {t: spellings.twins(t, ctype, seen.forms) for t in named}
    wanted = sorted({w for found in twins.values() for w in found})
    if not wanted:
        return None
    sql = db.dialect.key_texts_sql(table, key, among=len(wanted))
    assert sql is not None
    held = {r[0] for r in db._execute(table, sql, wanted)}
    return next(((t, w) for t, found in twins.items() for w in found if w in held), None)


__all__ = ["RECHECK_EVERY", "check_keys", "refuse_key_spellings", "spelled_columns"]
