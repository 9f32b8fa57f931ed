"""Validate a landed batch against its table contract, column at a time (Arrow compute).

The result splits the batch: rows that conform (cast to the contract's types) go on to
the merge; rows that break a rule go to quarantine with the first rule they broke. One
bad row never stops the good rows of its batch.

Besides the contract's rules, a row is quarantined for any value a warehouse would refuse
or its type cannot hold, so a warehouse never fails a whole batch (forever, on redelivery)
for one row, and no value is rounded or clamped on the way: a reason a reader gave
(model.INVALID), a NUL in text, a date or time outside model.MIN_TIME..MAX_TIME, NaN or an
infinity where a min/max rule applies, a decimal with more scale or precision than the
contract (float input included: it is read by its shortest text, never rounded), a
character the warehouse's text encoding lacks (`TextEncoding`, when the loader knows it: an
emoji for a PostgreSQL database in LATIN1). And, for a table with a `warehouse_filter`
(`Owner`), a row outside it: several tables feeding one target are merged on the key
alone, so it could replace another table's row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from steadyflow.arrow_types import cast_exact, cast_text_decimal, cast_text_time
from steadyflow.errors import ContractError
from steadyflow.failpoints import failpoint
from steadyflow.model import (
    INVALID,
    MAX_TIME,
    MIN_TIME,
    Column,
    Contract,
    TextEncoding,
)

REASON = "_reason"
# A check: per row, did it fail; and why (one text, or per row for reasons a reader gave).
Check = tuple[pa.Array, str | pa.Array]
# a column as a rule sees it: its reader's chunks when already of the contract type
Values = pa.Array | pa.ChunkedArray
_NUL = "contains a NUL character (no warehouse text type holds it)"
_RANGE = f"outside the years {MIN_TIME.year}..{MAX_TIME.year} (no warehouse holds it)"
_NOT_FINITE = "not a finite number (its min/max rule cannot hold NaN or infinity)"


@dataclass(frozen=True, slots=True)
class Verdict:
    good: pa.Table
    bad: pa.Table  # every contract column as text, then INVALID and _reason
    reasons: dict[str, int]
    bad_mask: pa.Array  # per input row: True where the row went to quarantine


@dataclass(frozen=True, slots=True)
class Owner:
    """The rows a table owns in its target: its `warehouse_filter`, as column values.

    Tables feeding one target are merged on the primary key alone; config makes their
    filters name key columns with distinct values, and a row holding other values is
    quarantined here, so no table's row can ever replace another's.
    """

    target: str
    values: Mapping[str, Any]  # column → value as the contract type holds it


def _cast_fast(values: pa.Array, target: pa.DataType) -> pa.Array:
    """Vectorised cast; raises ArrowInvalid if any value does not fit."""
    if pa.types.is_decimal(target) and not (pa.types.is_decimal(values.type)
                                            or pa.types.is_string(values.type)):
        # Floats (and ints) go through their shortest exact text: Arrow's float→decimal
        # cast rounds (5.6789 → 5.68), while a text or decimal cast refuses a value with
        # more scale or precision than the contract, so it is quarantined, never rounded.
        values = pc.cast(values, pa.string())
    if pa.types.is_string(values.type) and pa.types.is_timestamp(target):
        # the reader's own cast (every spelling and offset): a value's validity must not
        # depend on whether another value of its page made the column land as text
        return cast_text_time(values, target)
    if pa.types.is_string(values.type) and pa.types.is_decimal(target):
        return cast_text_decimal(values, target)  # Arrow's cast alone can return garbage
    return cast_exact(values, target)  # Arrow's safe cast changes some values unasked


def _cast_column(values: pa.ChunkedArray, target: pa.DataType
                 ) -> tuple[Values, pa.Array]:
    """Cast to the contract type; returns (cast values, mask of values that did not fit).

    A column already of the contract type is returned as it is, in its reader's chunks
    (every rule and the good rows' table take chunks): combining them copied every
    column of every batch on the loader's thread, ~10% of its time in a MariaDB full
    load (bench/NOTES.md)."""
    fits = pa.repeat(pa.scalar(False, pa.bool_()), len(values))
    if values.type == target:
        return values, fits
    flat = values.combine_chunks()
    if pa.types.is_large_string(flat.type):
        flat = pc.cast(flat, pa.string())
    try:
        return _cast_fast(flat, target), fits
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Rare path (a batch with malformed values): find exactly which values fail. Values
    # stay Arrow values (no Python objects: a year-0 timestamp has no datetime).
    out, bad = [], []
    for i in range(len(flat)):
        try:
            out.append(_cast_fast(flat.slice(i, 1), target))
            bad.append(False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out.append(pa.array([None], target))
            bad.append(True)
    cast = pa.concat_arrays(out) if out else pa.array([], target)
    return cast, pa.array(bad, pa.bool_())


def validate(batch: pa.Table, contract: Contract, owner: Owner | None = None,
             encoding: TextEncoding | None = None) -> Verdict:
    """Split `batch` into rows that conform to `contract` (and lie within `owner`'s filter,
    if given, and whose text `encoding` holds, if given: the warehouse's) and rows to
    quarantine.

    Raises ContractError when a rule itself cannot run (a `pattern` that is not RE2).
    """
    n = batch.num_rows
    reason = pa.nulls(n, pa.string())
    conformed: list[Values] = []
    batch, invalid = _readable(batch, contract, _invalid(batch))
    # a reader's reason first: the value it nulled would otherwise read as a rule's failure
    checks: list[Check] = [(pc.is_valid(invalid), invalid)]
    for column in contract.columns:
        values, type_bad = _cast_column(batch[column.name], column.arrow_type)
        conformed.append(values)
        checks.append((type_bad, f"{column.name}: not a valid {column.type}"))
        checks.extend(_rules(column, values, type_bad, encoding))
    if owner is not None:
        checks.extend(_owned(contract, conformed, owner))
    failpoint("transform.mid")
    schema = _nullable_schema(contract)
    bad_mask = _any(n, [mask for mask, _ in checks])
    if not pc.any(bad_mask).as_py():
        # the common case: nothing to quarantine, so no reason strings and no filtering
        empty = pa.table({name: pa.array([], pa.string())
                          for name in (*contract.names, INVALID, REASON)})
        return Verdict(good=pa.Table.from_arrays(conformed, schema=schema), bad=empty,
                       reasons={}, bad_mask=bad_mask)
    # first failing rule wins: apply in reverse so earlier rules overwrite later ones
    for mask, text in reversed(checks):
        reason = pc.if_else(mask, text if isinstance(text, pa.Array) else pa.scalar(text),
                            reason)
    good = pa.Table.from_arrays(conformed, schema=schema).filter(pc.invert(bad_mask))
    bad_raw = batch.select(list(contract.names)).filter(bad_mask)
    bad = pa.Table.from_arrays(
        [as_text(col) for col in bad_raw.columns] + [invalid.filter(bad_mask),
                                                    reason.filter(bad_mask)],
        names=[*contract.names, INVALID, REASON])
    return Verdict(good=good, bad=bad, reasons=count_values(bad[REASON]), bad_mask=bad_mask)


def _owned(contract: Contract, conformed: list[Values], owner: Owner) -> Iterator[Check]:
    """Rows whose filter columns do not hold the owner's values (a NULL never does)."""
    for name, value in owner.values.items():
        column = contract.column(name)
        values = conformed[contract.names.index(name)]
        differs: pa.Array = pc.not_equal(values, pa.scalar(value, column.arrow_type))
        outside: pa.Array = pc.or_kleene(differs, pc.is_null(differs))  # NULL: outside
        yield (outside, f"{name}: not {value} (outside the table's warehouse_filter); "
                        f"loaded into {owner.target}, it could replace another source "
                        "table's row")


def _readable(batch: pa.Table, contract: Contract, invalid: pa.Array
              ) -> tuple[pa.Table, pa.Array]:
    """`batch` with each text value that is not UTF-8 nulled, its reason in `invalid`.

    Arrow does not check the bytes a reader puts in a string column (ADBC's PostgreSQL
    driver passes on whatever a SQL_ASCII database holds), and both warehouses refuse such
    a value for the whole batch on every delivery (PostgreSQL: invalid byte sequence for
    encoding "UTF8"; DuckDB: invalid unicode): so it costs its row, as a reader's own
    undecodable value does (model.INVALID), its bytes shown as backslash escapes.
    """
    for column in contract.columns:
        values = batch[column.name]
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            continue
        try:
            values.validate(full=True)  # the common case: one pass, no Python objects
            continue
        except pa.ArrowInvalid:
            pass
        flat = values.combine_chunks()
        raw = flat.view(pa.large_binary() if pa.types.is_large_string(flat.type)
                        else pa.binary())
        reasons = [_undecodable(column.name, value) for value in raw.to_pylist()]
        bad = pa.array([why is not None for why in reasons], pa.bool_())
        kept = pc.if_else(bad, pa.scalar(None, raw.type), raw).view(flat.type)
        batch = batch.set_column(batch.column_names.index(column.name), column.name, kept)
        invalid = pc.coalesce(invalid, pa.array(reasons, pa.string()))
    return batch, invalid


def _undecodable(name: str, value: bytes | None) -> str | None:
    """The reason a text value is not UTF-8 (None if it is), naming its bytes."""
    if value is None:
        return None
    try:
        value.decode()
    except UnicodeDecodeError:
        shown = value[:100].decode("utf-8", "backslashreplace")
        return f"{name}: invalid UTF-8: '{shown}{'...' if len(value) > 100 else ''}'"
    return None


def _invalid(batch: pa.Table) -> pa.Array:
    """Per row, the reason a reader could not read one of its values (see model.INVALID)."""
    if INVALID not in batch.column_names:
        return pa.nulls(batch.num_rows, pa.string())
    return as_text(batch[INVALID])


def _rules(column: Column, values: Values, type_bad: pa.Array,
           encoding: TextEncoding | None = None) -> Iterator[Check]:
    """The checks of one column's cast values, in the order they are reported."""
    name = column.name
    if not column.nullable:
        yield (pc.and_(pc.is_null(values), pc.invert(type_bad)), f"{name}: must not be null")
    yield from _representable(column, values)
    if encoding is not None and pa.types.is_string(values.type):
        yield from _encodable(name, values, encoding)
    if column.min is not None:
        yield (_compare(values, "less", column.min), f"{name}: below minimum {column.min:g}")
    if column.max is not None:
        yield (_compare(values, "greater", column.max), f"{name}: above maximum {column.max:g}")
    if column.allowed is not None:
        text = pc.cast(values, pa.string())
        yield (_present_and(text, pc.invert(pc.is_in(text, value_set=pa.array(column.allowed)))),
               f"{name}: not one of {','.join(column.allowed)}")
    if column.pattern is not None:
        text = pc.cast(values, pa.string())
        yield (_present_and(text, pc.invert(_matches(text, name, column.pattern))),
               f"{name}: does not match {column.pattern}")


def _representable(column: Column, values: Values) -> Iterator[Check]:
    """Values the contract type holds in Arrow but no warehouse does (or a rule cannot
    judge). One rule for every warehouse, so a pipeline quarantines the same rows whether
    it loads into DuckDB (which would take a NUL) or PostgreSQL (which refuses the batch)."""
    kind = values.type
    if pa.types.is_string(kind):
        if _may_hold_nul(values):
            yield (_present_and(values, pc.match_substring(values, "\x00")),
                   f"{column.name}: {_NUL}")
    elif pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        low, high = ((MIN_TIME, MAX_TIME) if pa.types.is_timestamp(kind)
                     else (date(1, 1, 1), MAX_TIME.date()))
        outside = pc.or_(pc.less(values, pa.scalar(low, kind)),
                         pc.greater(values, pa.scalar(high, kind)))
        yield _present_and(values, outside), f"{column.name}: {_RANGE}"
    elif pa.types.is_floating(kind) and (column.min is not None or column.max is not None):
        yield (_present_and(values, pc.invert(pc.is_finite(values))),
               f"{column.name}: {_NOT_FINITE}")


def _encodable(name: str, values: Values, encoding: TextEncoding) -> Iterator[Check]:
    """Text holding a character the warehouse's encoding lacks: the server refuses the
    conversion for the whole batch (PostgreSQL: 'character with byte sequence ... has no
    equivalent in encoding "LATIN1"'), so it costs its row, naming the first such
    character. ASCII is in every encoding the check is made for: only other values are
    looked at one by one."""
    other = _present_and(values, pc.invert(pc.string_is_ascii(values)))
    if not pc.any(other).as_py():
        return
    reasons: list[str | None] = []
    for value, look in zip(values.to_pylist(), other.to_pylist(), strict=True):
        reasons.append(_unencodable(name, value, encoding) if look and value else None)
    why = pa.array(reasons, pa.string())
    yield pc.is_valid(why), why


def _unencodable(name: str, value: str, encoding: TextEncoding) -> str | None:
    """Why `encoding` cannot hold `value` (None if it can), naming the first character."""
    try:
        value.encode(encoding.codec)
    except UnicodeEncodeError as exc:
        char = value[exc.start]
        return (f"{name}: the warehouse database's encoding {encoding.name} cannot hold "
                f"the character {char!r} (U+{ord(char):04X})")
    return None


def _matches(text: Values, name: str, pattern: str) -> pa.Array:
    """The column's `pattern` applied; a pattern RE2 cannot compile is the contract's error,
    raised as one (naming the column) rather than as Arrow's, which would stop the loader."""
    try:
        return pc.match_substring_regex(text, pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ContractError(
            f"column {name}: pattern {pattern!r} is not a valid RE2 "
            f"expression ({exc})", stage="validate",
            hint="fix the column's `pattern` in the contract (RE2 syntax: no lookaround, "
                 "no backreferences)") from None


def as_text(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as text for the quarantine file, whatever it holds: invalid UTF-8 bytes
    are kept as backslash escapes, a NUL stays a NUL (Parquet text holds it). Never raises:
    a row that failed to load must still be parked with its reason."""
    flat = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_string(flat.type):
        return flat
    try:
        return pc.cast(flat, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out: list[str | None] = []
    for i in range(len(flat)):
        try:
            value = flat[i].as_py()
        except (ValueError, OverflowError):  # e.g. a timestamp Python cannot hold
            out.append(str(flat[i]))
            continue
        if value is None or isinstance(value, str):
            out.append(value)
        elif isinstance(value, bytes):
            out.append(value.decode("utf-8", "backslashreplace"))
        else:
            out.append(str(value))
    return pa.array(out, pa.string())


def count_values(values: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """{value: how many rows hold it}, e.g. quarantine reasons."""
    counts = pc.value_counts(values)
    return {str(value): int(n or 0) for value, n in zip(
        counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)}


def _any(n: int, masks: list[pa.Array]) -> pa.Array:
    """Per row: did any rule fail? (The masks never hold nulls.)"""
    out = pa.repeat(pa.scalar(False, pa.bool_()), n)
    for mask in masks:
        out = pc.or_(out, mask)
    return out


def _nullable_schema(contract: Contract) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type) for c in contract.columns])


def _compare(values: Values, op: str, bound: float) -> pa.Array:
    """Per value: below (`less`) or above (`greater`) the rule's bound.

    Integers compare exactly against the nearest whole bound (value < 0.5 ⟺ value < 1):
    Arrow refuses to compare an int64 beyond 2**53 with a float scalar, and casting the
    column to float would misjudge values near the bound."""
    if pa.types.is_integer(values.type):
        whole = math.ceil(bound) if op == "less" else math.floor(bound)
        whole = max(-(2**63), min(2**63 - 1, whole))
        wide = pc.cast(values, pa.int64())
        limit_int = pa.scalar(whole, pa.int64())
        result = pc.less(wide, limit_int) if op == "less" else pc.greater(wide, limit_int)
        return result.fill_null(False)
    numeric = values if not pa.types.is_decimal(values.type) else pc.cast(values, pa.float64())
    if not pa.types.is_floating(numeric.type):
        return pa.repeat(pa.scalar(False, pa.bool_()), len(values))
    limit = pa.scalar(float(bound))
    result = pc.less(numeric, limit) if op == "less" else pc.greater(numeric, limit)
    return result.fill_null(False)


def _may_hold_nul(values: Values) -> bool:
    """Whether a NUL byte lies anywhere in the bytes the string values span. False proves
    that no value holds one, so the NUL rule's mask would be all false and is skipped: one
    memchr over each chunk's character data (~0.3 ms for 122,880 SKUs) instead of
    match_substring (~6 ms, a third of validating the bench's pages, bench/NOTES.md
    session 15). True (a NUL in a value, or in the bytes of a null slot) runs the exact
    rule."""
    for chunk in values.chunks if isinstance(values, pa.ChunkedArray) else [values]:
        if len(chunk) == 0:
            continue
        _, offsets, data = chunk.buffers()  # a string array's int32 offsets: its values
        if offsets is None or data is None:  # (of its slice) span data[first:last]
            continue
        raw = memoryview(offsets)
        at = raw[:len(raw) // 4 * 4].cast("i")
        first, last = at[chunk.offset], at[chunk.offset + len(chunk)]
        if last > first and b"\x00" in data.slice(first, last - first).to_pybytes():
            return True
    return False


def _present_and(values: Values, failed: pa.Array) -> pa.Array:
    """A rule on values only fails present values; nulls are the nullable rule's business."""
    return pc.fill_null(pc.and_(pc.is_valid(values), failed), False)
