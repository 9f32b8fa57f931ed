"""The current source rows of differing keys, read and validated as the loader would.

Split from table.py: this is the Arrow side of a comparison (a page of the source rows,
validation, the quarantine digests), imported by a TableReconciler only once it has keys
to look at, so a reconcile that finds an unchanged table loads no pyarrow (~80 MiB of
peak RSS, #15; arrow_types.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from steadyflow.extract.arrow_values import column_to_arrow
from steadyflow.model import Contract, TextEncoding
from steadyflow.reconcile.bisect import Key
from steadyflow.reconcile.report import FETCH_CHUNK, Current
from steadyflow.validate.quarantine import parked_rows
from steadyflow.validate.rules import validate


def typed_keys(contract: Contract, keys: Sequence[tuple[Any, ...]]
               ) -> list[tuple[Any, ...] | None]:
    """Source key values as the contract types (what the warehouse holds); None where a
    value does not convert (such a row cannot have been loaded)."""
    if not keys:
        return []
    columns = []
    for i, name in enumerate(contract.primary_key):
        target = contract.column(name).arrow_type
        arr = column_to_arrow([k[i] for k in keys], target)
        columns.append(arr.to_pylist() if arr.type == target else [None] * len(keys))
    return [None if any(v is None for v in vals) else tuple(vals)
            for vals in zip(*columns, strict=True)]


class CurrentReader:
    """Reads the current source rows of differing keys and validates them.

    `read` gives the source rows of some raw keys (one page); `key_of` a row's canonical
    key from its key values; `parked` which of some quarantine digests are this table's
    parked rows."""

    def __init__(self, contract: Contract, read: Callable[[list[tuple[Any, ...]]], pa.Table],
                 key_of: Callable[[tuple[Any, ...]], Key], encoding: TextEncoding | None,
                 parked: Callable[[list[str]], dict[str, str]]) -> None:
        self.contract = contract
        self._read = read
        self._key_of = key_of
        self.encoding = encoding
        self._parked = parked

    def read(self, candidates: dict[Key, tuple[Any, ...]]) -> Current:
        """Read the current source rows of these keys (canonical key → raw key) and
        validate them exactly as the loader does. A row that fails is `parked` only if
        that very row (its quarantine digest) is in quarantine; otherwise it is `unparked`:
        lost on the way (committed behind the checkpoint, say), so it is a difference, and
        landing it (repair) parks it."""
        out = Current()
        tables: list[pa.Table] = []
        retry: list[Key] = []
        keys = list(candidates)
        for i in range(0, len(keys), FETCH_CHUNK):
            chunk = keys[i:i + FETCH_CHUNK]
            rows = self._read([candidates[k] for k in chunk])
            good, bad = self._split(rows, tables, out)
            retry.extend(k for k in bad if k in candidates and k not in out.parked)
        for key in retry:
            # a parked row's digest holds its values as text, which for SQLite depends on
            # the page it was read in (a column of a page with an unreadable value is text):
            # read it alone, as a page of one row would have held it
            rows = self._read([candidates[key]])
            _, bad = self._split(rows, tables, out)
            if key in bad and key not in out.parked:
                out.unparked[key] = bad[key]
                out.unparked_rows.append(rows.filter(pa.array(
                    [self._key_of(v) == key for v in self._key_values(rows)], pa.bool_())))
        out.rows = pa.concat_tables(tables) if tables else None
        return out

    def _split(self, rows: pa.Table, tables: list[pa.Table], out: Current
               ) -> tuple[dict[Key, tuple[Any, ...]], dict[Key, tuple[Any, ...]]]:
        """Validate rows as read: the valid ones go to `tables` and `out.good`, the invalid
        ones in quarantine to `out.parked`; returns (valid, invalid) as canonical key → key."""
        verdict = validate(rows, self.contract, encoding=self.encoding)
        good: dict[Key, tuple[Any, ...]] = {}
        if verdict.good.num_rows:
            tables.append(verdict.good)
            for values in self._key_values(verdict.good):
                good[self._key_of(values)] = values
            out.good.update(good)
        bad: dict[Key, tuple[Any, ...]] = {}
        if verdict.bad.num_rows:
            _, by = parked_rows(self._parked, verdict.bad)
            for values, parker in zip(self._key_values(rows.filter(verdict.bad_mask)), by,
                                      strict=True):
                key = self._key_of(values)
                bad[key] = values
                if parker is not None:
                    out.parked.add(key)
        return good, bad

    def _key_values(self, rows: pa.Table) -> list[tuple[Any, ...]]:
        cols = [rows[k].to_pylist() for k in self.contract.primary_key]
        return list(zip(*cols, strict=True))
