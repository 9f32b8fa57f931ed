"""The dead-letter path: rows that broke a rule, parked with their reason and batch.

Parked rows are Parquet files under landing/_quarantine, named by the batch id, so parking
the same batch twice (a redelivery) writes the same file and the same index row. Replay
re-validates parked rows against the current contract and sends those that now pass
through the normal load path as a new batch whose id is derived from the parked batch
and the rows replayed, so replaying twice loads them once.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from steadyflow.land.parquet import LandingZone
from steadyflow.model import BatchRef, Contract
from steadyflow.state import StateStore
from steadyflow.validate.rules import REASON, Verdict, validate

QUARANTINE_SOURCE_DIR = "_quarantine"


class Quarantine:
    def __init__(self, landing: LandingZone, state: StateStore) -> None:
        self.landing = landing
        self.state = state

    def park(self, batch: BatchRef, verdict: Verdict) -> None:
        parked = self.landing.write(
            verdict.bad, QUARANTINE_SOURCE_DIR, f"{batch.source}.{batch.table}",
            None, None, kind="quarantine", meta={"of": batch.batch_id})
        self.state.record_quarantine(batch.batch_id, batch.source, batch.table, parked.path,
                                     verdict.bad.num_rows, verdict.reasons)

    def rows(self, path: str) -> pa.Table:
        return pq.read_table(self.landing.root / path)

    def replayable(self, path: str, contract: Contract) -> tuple[pa.Table, Verdict]:
        """Parked rows re-validated against `contract`: (raw rows, verdict)."""
        parked = self.rows(path)
        raw = parked.drop_columns([REASON])
        return raw, validate(raw, contract)

    def reasons_of(self, path: str) -> dict[str, int]:
        parked = self.rows(path)
        return {i["values"]: i["counts"] for i in pc.value_counts(parked[REASON]).to_pylist()}
