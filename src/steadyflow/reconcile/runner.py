"""`steadyflow reconcile`: compare each source table with its warehouse rows, report, repair.

The command runs over the selected SQL source tables, one at a time; a table that fails is
reported as failed and the others still run.  Each result is recorded in state (the status
page shows it) and on the reconcile gauges, which the SteadyflowReconcileDiscrepancy alert
watches.  `Scheduler` runs the same command periodically in follow mode.

    options.py  what a run is asked to do (`Options`, `parse_since`)
    table.py    one table: compare, classify, repair, compare again
    repair.py   the differences landed and loaded as repair batches
    report.py   `TableReport` (recorded, printed by `text_report`) and the `Findings`
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from steadyflow.errors import ConfigError, SteadyflowError
from steadyflow.observe import logs
from steadyflow.reconcile.options import Options, parse_since
from steadyflow.reconcile.report import TableReport, text_report
from steadyflow.reconcile.table import TableReconciler, errors

if TYPE_CHECKING:
    from steadyflow.run.pipeline import Pipeline

__all__ = [  # Options, parse_since, TableReport, text_report: re-exported for callers
    "Options", "Scheduler", "TableReport", "parse_since", "reconcile", "text_report",
]

log = logs.get("reconcile")


def reconcile(pipeline: Pipeline, tables: Sequence[str] | None = None,
              options: Options | None = None, command: str = "reconcile"
              ) -> list[TableReport]:
    """Reconcile every (selected) SQL source table; record and export each result."""
    options = options or Options()
    if options.by not in (None, "key", "cursor"):
        raise ConfigError(f"--by {options.by!r}: use key or cursor")
    selected = [(s, t, ref) for s, t, ref in pipeline.config.tables()
                if not tables or ref.label in tables or ref.table in tables]
    if tables and not selected:
        raise ConfigError(f"no table {', '.join(tables)} in the config")
    run_id = pipeline.state.start_run(command)
    reports: list[TableReport] = []
    unowned_by: dict[str, str] = {}  # a shared target's unowned rows: once per run
    try:
        for s, t, ref in selected:
            if s.kind == "http":
                if tables:
                    reports.append(TableReport(ref.source, ref.table, ref.target, error=(
                        "reconcile compares SQL sources; an HTTP API has no checksum query")))
                continue
            try:
                report = TableReconciler(pipeline, s, t, ref, options, run_id,
                                         unowned_by).run()
            except errors() as exc:
                report = TableReport(ref.source, ref.table, ref.target, error=str(exc))
                log.error("reconcile failed: %s", exc, extra={
                    "source": ref.source, "table": ref.table, "stage": "reconcile"})
            _record(pipeline, report)
            reports.append(report)
    finally:
        outcome = ("error" if any(r.error for r in reports) else
                   "clean" if all(r.clean for r in reports) else "differences")
        repaired = [r.repair for r in reports if r.repair]
        pipeline.state.end_run(run_id, outcome, sum(x["batches"] for x in repaired),
                               sum(x["upserted"] + x["deleted"] for x in repaired),
                               "; ".join(f"{r.label}: {r.error}" for r in reports if r.error
                                         )[:2000] or None)
    return reports


def _record(pipeline: Pipeline, report: TableReport) -> None:
    if not report.by:
        return  # it failed before comparing anything
    state, metrics = pipeline.state, pipeline.metrics
    repaired = (report.repair or {}).get("upserted", 0) + (report.repair or {}).get("deleted", 0)
    detail = report.to_dict()
    state.record_reconcile(report.source, report.table, report.buckets, report.rows_compared,
                           report.missing, report.extra, report.mismatched, repaired, detail)
    after = report.after
    if after is not None:
        state.record_reconcile(after.source, after.table, after.buckets, after.rows_compared,
                               after.missing, after.extra, after.mismatched, 0,
                               {**after.to_dict(), "verifies_repair": True})
    final = report.final
    metrics.reconcile(report.source, report.table, final.missing, final.extra + final.duplicates,
                      final.mismatched)
    log.info("reconciled: %d missing, %d extra, %d mismatched", final.missing, final.extra,
             final.mismatched, extra={"source": report.source, "table": report.table,
                                      "stage": "reconcile"})


class Scheduler:
    """Follow mode: reconcile every `run.reconcile_every` seconds, between two runs,
    incrementally (incremental.py: every row compared again within run.reconcile_reverify).

    Report only (history, metrics, logs; the SteadyflowReconcileDiscrepancy alert fires on
    the gauges); repairs stay a deliberate `steadyflow reconcile --repair`.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.every = pipeline.config.run.reconcile_every
        # due from the recorded history, so a process that restarts often still reconciles
        last = [r["at"] for r in pipeline.state.last_reconcile() if r["at"]]
        self.due = min(last) + self.every if last else 0.0

    def tick(self) -> list[TableReport] | None:
        """Reconcile if due (wall clock); called by Pipeline.run between two runs."""
        if self.every <= 0 or time.time() < self.due:
            return None
        self.due = time.time() + self.every
        try:
            # incremental: after a clean one, rows changed since + the buckets that are due
            return reconcile(self.pipeline, options=Options(incremental=True),
                             command="reconcile (scheduled)")
        except SteadyflowError as exc:
            log.error("scheduled reconcile failed: %s", exc, extra={"stage": "reconcile"})
            return None
