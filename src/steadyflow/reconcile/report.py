"""What a reconcile run found: the per-table report operators read, and the keys repair uses.

`TableReport` is the outcome of one table: the counts, a few example keys, the repair
result and the comparison after it.  It is recorded in state as a dict and printed by
`text_report`.  `Findings` is the other half of a comparison, too large for a report: every
differing key and the current source rows of the missing and mismatched ones, which
repair.py turns into batches without reading the source again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from steadyflow.reconcile.bisect import Key

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class TableReport:
    source: str
    table: str
    target: str
    by: str = ""
    # the row hash: md5, or on PostgreSQL to PostgreSQL hash_record_extended/hashtextextended
    hash: str = "md5"
    buckets: int = 0
    ranges: int = 0
    leaves: int = 0
    rows_compared: int = 0
    warehouse_rows: int = 0
    missing: int = 0
    extra: int = 0
    mismatched: int = 0
    duplicates: int = 0
    quarantined: int = 0
    in_flight: int = 0
    outside_filter: int = 0
    pending_batches: int = 0
    leaf_rows: int = 0
    queries: int = 0
    since: str | None = None
    horizon: str | None = None
    seconds: float = 0.0
    # incremental: {"since": cursor, "buckets": due, "of": all}; None for a full reconcile
    incremental: dict[str, Any] | None = None
    truncated: bool = False  # more differences than one pass keeps (Options.max_differences)
    examples: dict[str, list[list[Any]]] = field(default_factory=dict)
    repair: dict[str, Any] | None = None
    after: TableReport | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.source}.{self.table}"

    @property
    def differences(self) -> int:
        return self.missing + self.extra + self.mismatched + self.duplicates

    @property
    def final(self) -> TableReport:
        """The state the warehouse is left in: after the repair, if there was one."""
        return self.after if self.after is not None else self

    @property
    def clean(self) -> bool:
        final = self.final
        return self.error is None and final.error is None and final.differences == 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["after"] = self.after.to_dict() if self.after is not None else None
        return data

FETCH_CHUNK = 400  # keys per source query when reading differing rows


@dataclass
class Findings:
    missing: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # → typed key
    mismatched: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # → typed key
    ahead: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # → warehouse key
    extra: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # → warehouse key
    rows: pa.Table | None = None  # current source rows of missing + mismatched keys
    # current source rows that fail validation and are in no quarantine, as read (landing
    # them parks them); one table per read, as their columns' types may differ
    unparked: list[pa.Table] = field(default_factory=list)


@dataclass
class Current:
    """The current source rows of differing keys, as `_read_current` classified them."""

    rows: pa.Table | None = None  # valid rows, as the loader casts them
    good: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # → typed key
    parked: set[Key] = field(default_factory=set)  # invalid, and in quarantine
    unparked: dict[Key, tuple[Any, ...]] = field(default_factory=dict)  # invalid, not parked
    unparked_rows: list[pa.Table] = field(default_factory=list)  # those rows, as read


def text_report(reports: Sequence[TableReport]) -> str:
    """What `steadyflow reconcile` prints: one block per table, examples included."""
    lines: list[str] = []
    for r in reports:
        if r.error:
            lines.append(f"{r.label}: ERROR {r.error}")
            continue
        lines.append(
            f"{r.label} → {r.target}: {r.buckets} buckets ({r.by}), {r.rows_compared:,} rows "
            f"compared in {r.seconds:.2f}s; missing {r.missing}, extra {r.extra}, mismatched "
            f"{r.mismatched}" + (f", duplicates {r.duplicates}" if r.duplicates else "")
            + f"; {r.quarantined} expected in quarantine"
            + (f", {r.in_flight} in flight" if r.in_flight else ""))
        for name, keys in r.examples.items():
            lines.append(f"  {name}: " + ", ".join(
                "(" + ", ".join(str(v) for v in k) + ")" for k in keys)
                + (" …" if getattr(r, name) > len(keys) else ""))
        if r.incremental is not None:
            i = r.incremental
            lines.append(f"  incremental: rows with cursor from {i['since']}, and "
                         f"{i['buckets']} of {i['of']} buckets compared again")
        if r.truncated:
            lines.append("  note: more differences than one pass keeps: these are the first; "
                         "repair them (or reset the table's checkpoint) and reconcile again")
        if r.outside_filter:
            lines.append(f"  warning: {r.outside_filter} source rows do not match its "
                         "warehouse_filter")
        if r.pending_batches:
            lines.append(f"  note: {r.pending_batches} landed batches of this table are not "
                         "loaded yet")
        if r.repair is not None:
            x = r.repair
            lines.append(f"  repaired: {x['upserted']} rows upserted, {x['deleted']} deleted in "
                         f"{x['batches']} repair batches" + (
                             f"; {x['deletes_skipped']} extra rows kept (mirror_deletes is off)"
                             if x["deletes_skipped"] else ""))
        if r.after is not None:
            a = r.after
            lines.append(f"  after repair: missing {a.missing}, extra {a.extra}, mismatched "
                         f"{a.mismatched}" + (f", duplicates {a.duplicates}"
                                              if a.duplicates else ""))
    clean = all(r.clean for r in reports)
    failed = [r.label for r in reports if r.error is not None or r.final.error is not None]
    if failed:  # not compared: its differences are unknown, never reported as found
        lines.append(f"ERROR: not compared: {', '.join(failed)}")
    elif not clean:
        lines.append("DIFFERENCES remain")
    else:
        lines.append("OK: warehouse matches the sources")
    return "\n".join(lines)
