"""The dead-letter path: rows that broke a rule, parked with their reason and batch.

Parked rows are Parquet files under landing/_quarantine, named by the batch id, so parking
the same batch twice (a redelivery) writes the same file and the same index row. A bad
row that another batch parked already (the lookback window re-reads recent rows) is not
parked again, whichever rule it breaks now, so quarantine counts are rows, not re-reads.
Replay
re-validates parked rows against the current contract and sends those that now pass
through the normal load path as a new batch whose id is derived from the parked batch
and the rows replayed, so replaying twice loads them once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pyarrow as pa

from steadyflow.land.parquet import LandingZone
from steadyflow.model import INVALID, BatchRef, Contract, TextEncoding
from steadyflow.state import StateStore
from steadyflow.validate.rules import REASON, Owner, Verdict, count_values, validate

QUARANTINE_SOURCE_DIR = "_quarantine"


class Quarantine:
    def __init__(self, landing: LandingZone, state: StateStore) -> None:
        self.landing = landing
        self.state = state

    def park(self, batch: BatchRef, verdict: Verdict) -> int:
        """Park the batch's bad rows that no other batch parked; returns how many."""
        hashes, by = parked_rows(
            lambda digests: self.state.parked_by(batch.source, batch.table, digests),
            verdict.bad)
        fresh = [b is None or b == batch.batch_id for b in by]
        if not any(fresh):
            return 0
        rows = verdict.bad.filter(pa.array(fresh, pa.bool_()))
        new_hashes = [h for h, keep in zip(hashes, fresh, strict=True) if keep]
        reasons = count_values(rows[REASON])
        parked = self.landing.write(
            rows, QUARANTINE_SOURCE_DIR, f"{batch.source}.{batch.table}",
            None, None, kind="quarantine", meta={"of": batch.batch_id})
        self.state.record_quarantine(batch.batch_id, batch.source, batch.table, parked.path,
                                     rows.num_rows, reasons, new_hashes)
        return rows.num_rows

    def rows(self, path: str) -> pa.Table:
        return self.landing.read_file(path)

    def replayable(self, path: str, contract: Contract,
                   encoding: TextEncoding | None = None, owner: Owner | None = None
                   ) -> tuple[pa.Table, Verdict]:
        """Parked rows re-validated against `contract` (and, as the loader validates, the
        table's warehouse_filter `owner` and the warehouse's text `encoding`): (raw rows,
        verdict). A row let through here that the loader refuses again is not parked
        twice (its digest is parked already) while its item is marked replayed: it would
        be in neither the warehouse nor the open quarantine."""
        parked = self.rows(path)
        raw = parked.drop_columns([REASON])
        return raw, validate(raw, contract, owner, encoding)

    def reasons_of(self, path: str) -> dict[str, int]:
        parked = self.rows(path)
        return count_values(parked[REASON])


def parked_rows(lookup: Callable[[list[str]], dict[str, str]], bad: pa.Table
                ) -> tuple[list[str], list[str | None]]:
    """(each bad row's digest, the batch that parked it or None). `lookup`: which of some
    digests are parked, by which batch (StateStore.parked_by for the table).

    The digest leaves the rule's reason out: a contract change that words a still-bad
    row's reason anew ('v: not one of a,b' once 'c' is allowed too) parked each re-read of
    it again (the lookback, a reset, `replay`), counted it twice and held it in two open
    entries. Rows parked by a version whose digest held the reason are found by that one."""
    digests = row_hashes(bad)
    worded = row_hashes(bad, with_reason=True)
    found = lookup([*digests, *worded])
    return digests, [found.get(d) or found.get(w)
                     for d, w in zip(digests, worded, strict=True)]


def row_hashes(bad: pa.Table, with_reason: bool = False) -> list[str]:
    """One digest per parked row: its columns, all text (`with_reason`: and its reason,
    as versions before `parked_rows` digested it).

    Values are joined by \\x1f with \\x00 for a null; a value holding either character
    (or \\x1b, the escape) is escaped, so a text NUL never digests like a null. The INVALID
    column joins only where it is set, so rows parked before it existed keep their digest.
    """
    names = [n for n in bad.column_names if n != INVALID and (with_reason or n != REASON)]
    columns = [bad[name].to_pylist() for name in names]
    invalid = bad[INVALID].to_pylist() if INVALID in bad.column_names else [None] * bad.num_rows
    digests = []
    for row, why in zip(zip(*columns, strict=True), invalid, strict=True):
        parts = ["\x00" if v is None else _escaped(str(v)) for v in row]
        if why is not None:
            parts.append(_escaped(why))
        digests.append(hashlib.blake2b("\x1f".join(parts).encode(),
                                       digest_size=16).hexdigest())
    return digests


def _escaped(text: str) -> str:
    if "\x00" not in text and "\x1f" not in text and "\x1b" not in text:
        return text
    return text.replace("\x1b", "\x1b\x1b").replace("\x00", "\x1b0").replace("\x1f", "\x1b1")
