"""Durable pipeline state behind one port (`StateStore`, the shared SQL in store.py) with
two adapters: SQLite (embedded, the default) and PostgreSQL (shared by workers on many
hosts). `open_state` picks one from the pipeline's config."""

from __future__ import annotations

from pathlib import Path

from steadyflow.state.sqlite import SqliteStateStore, open_sqlite
from steadyflow.state.store import (
    BackfillChunk,
    ChunkLease,
    Lease,
    LoadedBatch,
    LoadLease,
    Reader,
    StateStore,
    TableHealth,
    holder_alive,
    pid_alive,
)

__all__ = ["BackfillChunk", "ChunkLease", "Lease", "LoadLease", "LoadedBatch", "Reader",
           "StateStore", "SqliteStateStore", "TableHealth", "holder_alive", "open_sqlite",
           "open_state", "pid_alive"]


def open_state(kind: str, state_dir: Path, dsn: str | None = None,
               schema: str = "steadyflow_state") -> StateStore:
    """The configured state store: `sqlite` (state_dir/state.db) or `postgres`."""
    if kind == "postgres":
        from steadyflow.state.postgres import PostgresStateStore  # psycopg only when used

        if not dsn:
            raise ValueError("a postgres state store needs 'dsn'")
        return PostgresStateStore(dsn, schema)
    return SqliteStateStore(state_dir / "state.db")
