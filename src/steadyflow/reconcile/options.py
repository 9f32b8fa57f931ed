"""What a reconcile run is asked to do: `Options`, and `--since` parsed into a time.

A module of its own because both the command (runner.py) and each table's comparison
(table.py) take it, and runner.py imports table.py: kept in either, it would make a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from steadyflow.errors import ConfigError
from steadyflow.model import parse_duration


@dataclass(frozen=True)
class Options:
    since: datetime | None = None
    repair: bool = False
    by: str | None = None  # "key" | "cursor"; None picks key when the key has an integer
    top_buckets: int = 1024  # a damaged row re-hashes 1/1024 of the table, not 1/64
    fanout: int = 16
    leaf_rows: int = 64  # small leaves: a difference costs ~8 (key, hash) pairs a side
    examples: int = 5
    incremental: bool = False  # after a clean reconcile: changed rows + a rolling share
    max_differences: int = 100_000  # keys kept per pass (memory); past it, a partial result


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 timestamp (naive = UTC), or a duration back from now ("2h", "7d")."""
    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since {text!r}: not an ISO-8601 time nor a duration like 2h"
                          ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
