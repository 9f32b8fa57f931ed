"""One snapshot of pipeline health, shared by `steadyflow status`, the status page and
the metrics endpoint, so all three always agree.

The snapshot is scrubbed of registered secrets here, where it is made, so no consumer
(`status --json`, /api/status, the page) can show one: errors in state were scrubbed when
written, but a state file written by an older version, or a secret registered only now,
is caught here too.
"""

from __future__ import annotations

import time
from typing import Any

from steadyflow.secrets import scrub_tree


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def collect(pipeline: Any) -> dict[str, Any]:
    now = time.time()
    health = {(h.source, h.table): h for h in pipeline.state.health()}
    quarantined = pipeline.state.quarantined("open")
    failing = pipeline.state.failing_batches()
    holders = {(lease["source"], lease["table"]): lease["holder"]
               for lease in pipeline.state.leases() if lease["chunk"] is None}
    tables = []
    for _, _, ref in pipeline.config.tables():
        h = health.get((ref.source, ref.table))
        freshness = (now - h.newest_cursor_epoch) if h and h.newest_cursor_epoch else None
        since_success = (now - h.last_success) if h and h.last_success else None
        tables.append({
            "table": ref.label, "source": ref.source, "name": ref.table, "target": ref.target,
            "freshness_seconds": freshness, "freshness_human": human_age(freshness),
            "newest_cursor": h.newest_cursor if h else None,
            "last_success": h.last_success if h else None,
            "last_success_human": (human_age(since_success) + " ago") if since_success
            is not None else "never",
            "last_error": h.last_error if h else None,
            "last_error_at": h.last_error_at if h else None,
            # changed: inserted or updated in the warehouse; reread: read again without
            # effect (lookback); loaded (their sum) is kept for older readers
            "rows_changed": h.rows_changed if h else 0,
            "rows_reread": h.rows_reread if h else 0,
            "rows_loaded": h.rows_loaded if h else 0,
            "rows_quarantined": h.rows_quarantined if h else 0,
            "open_quarantine_batches": sum(1 for q in quarantined if q["source"] == ref.source
                                           and q["table"] == ref.table),
            "page_size": h.page_size if h else None,
            "breaker": h.breaker if h else None,
            "failing_batches": failing.get((ref.source, ref.table), 0),
            # host:pid of the process extracting the table now (its lease), or None
            "holder": _process(holders.get((ref.source, ref.table))),
            "state": ("failing" if failing.get((ref.source, ref.table)) and h is not None
                      and h.last_success else _state(h, freshness)),
        })
    pending = pipeline.state.pending_batches()
    report: dict[str, Any] = scrub_tree({
        "pipeline": pipeline.config.name,
        "at": now,
        "tables": tables,
        "queue_depth": pipeline.buffer.depth(),
        "queue_capacity": pipeline.buffer.capacity,
        "queue_oldest_seconds": pipeline.buffer.oldest_age(),
        "pending_batches": len(pending),
        "pending_rows": sum(b.rows for b in pending),
        "runs": pipeline.state.runs(10),
        "workers": pipeline.state.workers(),
        "reconcile": pipeline.state.last_reconcile(),
    })
    report["health"], report["exit_code"] = overall(report)
    return report


#: `steadyflow status` exit codes, by overall health (docs/operations.md lists them)
EXIT_CODES = {"healthy": 0, "degraded": 1, "failing": 2}
_FAILING_STATES = {"error", "source down"}


def overall(report: dict[str, Any], loop_error: str | None = None) -> tuple[str, int]:
    """The pipeline's health in one word, and the exit code `status` gives it.

    failing (2): a table in error or whose source is down, an open breaker, a batch that
    failed for good, a stopped loop, or workers that ran and none of which is heard of
    now: data is not moving and will not by itself.
    degraded (1): a table that failed since its last success (it retries) or a half-open
    breaker. healthy (0): everything else, tables still waiting for their first load too.
    """
    tables = report.get("tables", [])
    workers = report.get("workers", [])
    if workers and not any(w["status"] == "running" for w in workers) and any(
            w["status"] == "lost" for w in workers):
        return "failing", EXIT_CODES["failing"]  # workers ran, and none is heard of now
    if loop_error or any(t["state"] in _FAILING_STATES or t.get("breaker") == "open"
                         or t.get("failing_batches") for t in tables):
        return "failing", EXIT_CODES["failing"]
    if any(t["state"] == "failing" or t.get("breaker") == "half-open" for t in tables):
        return "degraded", EXIT_CODES["degraded"]
    return "healthy", EXIT_CODES["healthy"]


def _process(holder: str | None) -> str | None:
    """host:pid of a lease holder ("host:pid:token"), the name a worker is listed under."""
    return ":".join(holder.split(":")[:2]) if holder else None


def _state(h: Any, freshness: float | None) -> str:
    if h is None or h.last_success is None:
        return "error" if h is not None and h.last_error else "waiting"
    if h.breaker == "open":
        return "source down"
    if h.last_error_at and h.last_error_at > h.last_success:
        return "failing"
    return "ok"
