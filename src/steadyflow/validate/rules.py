"""Validate a landed batch against its table contract, column at a time (Arrow compute).

The result splits the batch: rows that conform (cast to the contract's types) go on to
the merge; rows that break a rule go to quarantine with the first rule they broke. One
bad row never stops the good rows of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from steadyflow.failpoints import failpoint
from steadyflow.model import Contract

REASON = "_reason"


@dataclass(frozen=True, slots=True)
class Verdict:
    good: pa.Table
    bad: pa.Table  # every contract column as text, plus _reason
    reasons: dict[str, int]
    bad_mask: pa.Array  # per input row: True where the row went to quarantine


def _cast_fast(values: pa.Array, target: pa.DataType) -> pa.Array:
    """Vectorised cast; raises ArrowInvalid if any value does not fit."""
    if pa.types.is_string(values.type) and pa.types.is_timestamp(target):
        stripped = pc.replace_substring_regex(values, r"(Z|[+-]00:?00)$", "")
        return pc.cast(stripped, pa.timestamp(target.unit)).cast(target)
    return pc.cast(values, target)


def _cast_column(values: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """Cast to the contract type; returns (cast values, mask of values that did not fit)."""
    flat = values.combine_chunks()
    fits = pa.repeat(pa.scalar(False, pa.bool_()), len(flat))
    if flat.type == target:
        return flat, fits
    try:
        return _cast_fast(flat, target), fits
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Rare path (a batch with malformed values): find exactly which values fail.
    out, bad = [], []
    for i in range(len(flat)):
        try:
            out.append(_cast_fast(flat.slice(i, 1), target)[0].as_py())
            bad.append(False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out.append(None)
            bad.append(True)
    return pa.array(out, target), pa.array(bad, pa.bool_())


def validate(batch: pa.Table, contract: Contract) -> Verdict:
    n = batch.num_rows
    reason = pa.nulls(n, pa.string())
    conformed: list[pa.Array] = []
    checks: list[tuple[pa.Array, str]] = []
    for column in contract.columns:
        values, type_bad = _cast_column(batch[column.name], column.arrow_type)
        conformed.append(values)
        checks.append((type_bad, f"{column.name}: not a valid {column.type}"))
        if not column.nullable:
            checks.append((pc.and_(pc.is_null(values), pc.invert(type_bad)),
                           f"{column.name}: must not be null"))
        if column.min is not None:
            checks.append((_compare(values, "less", column.min),
                           f"{column.name}: below minimum {column.min:g}"))
        if column.max is not None:
            checks.append((_compare(values, "greater", column.max),
                           f"{column.name}: above maximum {column.max:g}"))
        if column.allowed is not None:
            text = pc.cast(values, pa.string())
            checks.append((_present_and(text, pc.invert(pc.is_in(
                text, value_set=pa.array(column.allowed)))),
                f"{column.name}: not one of {','.join(column.allowed)}"))
        if column.pattern is not None:
            text = pc.cast(values, pa.string())
            checks.append((_present_and(text, pc.invert(pc.match_substring_regex(
                text, column.pattern))), f"{column.name}: does not match {column.pattern}"))
    failpoint("transform.mid")
    schema = _nullable_schema(contract)
    bad_mask = _any(n, [mask for mask, _ in checks])
    if not pc.any(bad_mask).as_py():
        # the common case: nothing to quarantine, so no reason strings and no filtering
        empty = pa.table({name: pa.array([], pa.string()) for name in (*contract.names, REASON)})
        return Verdict(good=pa.Table.from_arrays(conformed, schema=schema), bad=empty,
                       reasons={}, bad_mask=bad_mask)
    # first failing rule wins: apply in reverse so earlier rules overwrite later ones
    for mask, text in reversed(checks):
        reason = pc.if_else(mask, pa.scalar(text), reason)
    good = pa.Table.from_arrays(conformed, schema=schema).filter(pc.invert(bad_mask))
    bad_raw = batch.select(list(contract.names)).filter(bad_mask)
    bad = pa.Table.from_arrays(
        [pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
         for col in bad_raw.columns] + [reason.filter(bad_mask)],
        names=[*contract.names, REASON])
    return Verdict(good=good, bad=bad, reasons=count_values(bad[REASON]), bad_mask=bad_mask)


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


def _compare(values: pa.Array, op: str, bound: float) -> pa.Array:
    numeric = values if not pa.types.is_decimal(values.type) else pc.cast(values, pa.float64())
    if not (pa.types.is_integer(numeric.type) or pa.types.is_floating(numeric.type)):
        return pa.repeat(pa.scalar(False, pa.bool_()), len(values))
    limit = pa.scalar(float(bound))
    result = pc.less(numeric, limit) if op == "less" else pc.greater(numeric, limit)
    return result.fill_null(False)


def _present_and(values: pa.Array, failed: pa.Array) -> pa.Array:
    """A rule on values only fails present values; nulls are the nullable rule's business."""
    return pc.fill_null(pc.and_(pc.is_valid(values), failed), False)
