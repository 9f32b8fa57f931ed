"""MariaDB's open transactions, seen fresh (the adaptive lookback's observation).

information_schema.innodb_trx is a cache that InnoDB refreshes only when nobody has read it
for 0.1 s (trx0i_s.cc: can_cache_be_updated compares with the LAST READ, and every read
sets it). A server whose cache is read more often than that (several tables' polls, a
dashboard, another worker) keeps serving the same old list: a transaction begun since is
never listed, so a poll took "nothing open" for true and the next one started after a row
that transaction held, which committed later: lost, every run ok.

So the observation proves its freshness: it runs inside a transaction of its own, begun
before it reads the list (WITH CONSISTENT SNAPSHOT registers it with InnoDB at once), and
the list is fresh only when it shows that transaction. A stale list is read again once after
0.1 s without reading; still stale, the poll uses the last fresh observation of the server
(an earlier observation is always safe: it only re-reads more, see docs/architecture.md),
and says so once. The polls of one process share an observation per server for
SHARE_SECONDS, so they do not freeze the cache themselves.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from steadyflow.extract.sql import SqlSource

log = logging.getLogger("steadyflow.extract")

SHARE_SECONDS = 0.25  # one observation serves a server's polls this long (each re-reads it)
IDLE_SECONDS = 0.11  # InnoDB refreshes the cache once it was not read for 0.1 s
# this statement's own row in the list: its connection's transaction running this very
# statement (the nonce is in its text). The connection alone did not prove it: a list
# filled during this connection's previous observation, and frozen since, shows that
# earlier transaction under the same thread id, so a stale list passed for fresh and a
# transaction begun since was not seen (a number it held was lost, every run ok)

_lock = threading.Lock()
# server (host, port) → (monotonic time, the last fresh observation's row)
_fresh: dict[tuple[str, int], tuple[float, tuple[Any, ...]]] = {}
_stale_told: set[tuple[str, int]] = set()


def _server(db: SqlSource) -> tuple[str, int]:
    parts = urlsplit(db.config.dsn or "")
    return (parts.hostname or "localhost", parts.port or 3306)


def observe(db: SqlSource, table: str) -> tuple[list[tuple[Any, ...]], float]:
    """The row of `db.dialect.open_since_sql`, from a list proven fresh, or the server's
    last fresh one (shared by this process's polls for SHARE_SECONDS); and the seconds
    since that row was read (its `now` is that much later: OpenSince.delivered)."""
    server = _server(db)
    with _lock:
        hit = _fresh.get(server)
    if hit is not None and time.monotonic() - hit[0] < SHARE_SECONDS:
        return [hit[1]], time.monotonic() - hit[0]
    for attempt in range(2):
        if attempt:
            time.sleep(IDLE_SECONDS)
        row = _read(db, table)
        if row[-1]:
            with _lock:
                _fresh[server] = (time.monotonic(), row[:-1])
                _stale_told.discard(server)
            return [row[:-1]], 0.0
    if hit is None:
        with _lock:
            hit = _fresh.get(server)
    if hit is None:  # never seen fresh: nothing is known, as without the privilege
        return [(*row[:-2], 0)], 0.0
    if server not in _stale_told:
        _stale_told.add(server)
        log.warning("information_schema.innodb_trx was not refreshed (another session reads "
                    "it more often than every 0.1 s, which keeps InnoDB from updating it): "
                    "polls re-read from the last fresh observation, %.1fs old, until it is",
                    time.monotonic() - hit[0],
                    extra={"source": db.config.name, "table": table, "stage": "extract"})
    return [hit[1]], time.monotonic() - hit[0]


def _read(db: SqlSource, table: str) -> tuple[Any, ...]:
    """The observation's row plus 1 when the list shows this session's own transaction
    running this statement (so the list was filled after it began), else 0."""
    sql = db.dialect.open_since_sql
    assert sql is not None and sql.startswith("SELECT ")
    # near the statement's start: the list keeps the first 1,024 characters of its text
    nonce = f"steadyflow:{uuid.uuid4().hex}"
    statement = sql.format(nonce=nonce)  # its last column: this statement's own row
    db._execute(table, "START TRANSACTION WITH CONSISTENT SNAPSHOT", [])
    try:
        [row] = db._execute(table, statement, [])
    finally:
        db._execute(table, "COMMIT", [])
    return (*row[:-1], row[-1] if int(row[-1] or 0) > 0 else 0)
