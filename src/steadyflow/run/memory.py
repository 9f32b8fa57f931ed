"""Process memory: keep freed page buffers from piling up, and hand them back after a spike.

Pages are allocated and freed by several threads (extract, land, load, DuckDB). Arrow's
bundled mimalloc and glibc's per-thread arenas both keep what those threads freed, so peak
RSS grew with the rows loaded (434 MiB for 4M rows, see bench/RESULTS.md): `bound_memory`
puts Arrow on the system allocator, with at most 2 glibc arenas and page-sized buffers
mmapped (returned to the OS on free), and it stays flat.

What a follow run still kept after a spike (tests/integration/test_memory.py: 4 tables,
1.2M rows into a PostgreSQL warehouse; RSS 12-27 MiB above its level before the spike, for
good) was in two places. Arrow's C++ default pool: pyarrow's `set_memory_pool` only
changes the pool pyarrow's Python calls use, and C++ code that asks Arrow's default pool
itself (ADBC's import of pyarrow.dataset creates it) got the bundled mimalloc, whose
1 GiB arena grew by ~22 MiB during the spike and never gave it back; the pool is chosen
from ARROW_DEFAULT_MEMORY_POOL once, so steadyflow/__init__.py sets it to "system" before
pyarrow loads (then the same run ended 1 MiB above its start). And glibc's heap: small
blocks freed into its arenas stay mapped, fragmented, until trimmed (`malloc_trim(0)` after
a run_once spike took RSS back down by 18 MiB). The loader releases through a `Releaser`
once it loaded RELEASE_AFTER_ROWS rows since the last release: when it has been idle a
moment (a spike absorbed), and while batches keep coming, at most every RELEASE_EVERY.
The second is what a spike followed by a steady flow needs: bench/spike.py's 20 stores at
5,000 rows/s hand the loader a batch every few tens of milliseconds, so it never waits
RELEASE_IDLE for one, and the spike's ~25-35 MiB stayed in glibc's arenas to the end of
the run (RSS 237 -> 263 MiB, bench/NOTES.md session 10; a malloc_trim at the end of a
`--scale 0.25` run took 34 MiB back, to below the level before the spike). DuckDB's own
memory is bounded by the warehouse's memory_limit (its buffer pool keeps up to that much of
the table cached) and is not touched here.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable

# an idle loader releases memory once it loaded this many rows since the last release and
# has found the buffer empty for RELEASE_IDLE seconds: a spike has ended (a gap between its
# batches is shorter), and a trickle trims every few seconds at most (a trim of a heap with
# little free costs ~1-5 ms; of hundreds of fragmented MiB, ~0.1 s)
RELEASE_AFTER_ROWS = 20_000
RELEASE_IDLE = 0.5
# ... and, while batches keep coming (never idle that long), at most this often: a trim
# took 0.5-5 ms in bench/spike.py (11 in a --scale 0.25 run), and the pages it frees that
# are used again are faulted back in (a few ms of CPU per 10 MiB)
RELEASE_EVERY = 10.0

_BOUND = False


def _libc() -> ctypes.CDLL | None:
    """glibc, whose allocator this tunes; None elsewhere (other libcs: nothing to tune)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def bound_memory() -> None:
    """Arrow on the system allocator, 2 glibc arenas, >= 1 MiB blocks mmapped; once per
    process. A user's ARROW_DEFAULT_MEMORY_POOL other than "system" wins."""
    global _BOUND
    if _BOUND:
        return
    _BOUND = True
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system") == "system" \
            and "pyarrow" in sys.modules:
        import pyarrow as pa

        # pyarrow's own default, for a pyarrow loaded before steadyflow set the variable
        # (C++ code that asks Arrow's default pool directly then keeps the bundled one).
        # Loaded later, the variable (steadyflow/__init__.py) makes the system pool every
        # default; nor is pyarrow imported here for it: a command that moves no rows (a
        # reconcile of an unchanged table) never loads it (#15)
        pa.set_memory_pool(pa.system_memory_pool())
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: >= 1 MiB straight from (and back to) the OS


def release_memory() -> None:
    """Return the memory freed since the last call to the OS: the Arrow pool's unused
    memory (a jemalloc or mimalloc pool keeps it), then glibc's free heap pages."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class Releaser:
    """When a loader hands freed memory back to the OS (`release_memory`): once it loaded
    `after_rows` rows since the last release, at its first idle moment (`idle` called
    `idle_for` seconds after its last batch), or at its next batch `every` seconds after
    the last release, whichever comes first. Defaults: the module's RELEASE_* (read when
    made, so a test can shorten them)."""

    def __init__(self, after_rows: int | None = None, idle_for: float | None = None,
                 every: float | None = None, release: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.after_rows = RELEASE_AFTER_ROWS if after_rows is None else after_rows
        self.idle_for = RELEASE_IDLE if idle_for is None else idle_for
        self.every = RELEASE_EVERY if every is None else every
        self._release = release or release_memory
        self._clock = clock
        self.rows = 0  # loaded since the last release
        self.released_at = self.last_batch = clock()

    def loaded(self, rows: int) -> None:
        """A group of `rows` rows in all was loaded (or skipped as already loaded: its
        pages were read all the same)."""
        self.rows += rows
        self.last_batch = now = self._clock()
        if self.rows >= self.after_rows and now - self.released_at >= self.every:
            self._now(now)

    def idle(self) -> None:
        """The loader found nothing to load."""
        now = self._clock()
        if self.rows >= self.after_rows and now - self.last_batch >= self.idle_for:
            self._now(now)

    def _now(self, now: float) -> None:
        self._release()
        self.rows = 0
        self.released_at = now
