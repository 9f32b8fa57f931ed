"""Contracts that several tests share, written once."""

from __future__ import annotations

from typing import Any

# a sale with a note and its update time: the reconcile, repair and sequence-floor tests'
# PostgreSQL `sales` table (the note is what they change at the source)
NOTED_SALES: dict[str, Any] = {
    "primary_key": ["sale_id"], "cursor": "updated_at",
    "columns": {"sale_id": {"type": "int64", "nullable": False},
                "note": {"type": "string"},
                "updated_at": {"type": "timestamp", "nullable": False}},
}
