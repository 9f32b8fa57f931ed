"""The state's lease affinity among workers (state/store.py, run/worker.py), against every
adapter (the fixture of test_state_contract.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.contract.test_state_contract import Adapter, adapter

from steadyflow.model import Watermark

__all__ = ["adapter"]  # the fixture, used by name


def test_lease_affinity_keeps_a_table_with_its_live_owner_while_balanced(
        adapter: Adapter) -> None:
    """Among workers, a table whose lease another live process just took or released stays
    theirs (refused as if held), unless they look after two tables more than the one
    asking; the owner itself, a process without affinity, or anyone once the affinity has
    passed, gets it."""
    a, b, c = adapter.open(), adapter.open(), adapter.open()
    for store in (a, b):
        store.lease_affinity = 3600
    for table in ("t1", "t2", "t3"):  # a looks after three tables
        lease = a.try_lease("s", table, f"otherhost:1:{table}", 30)
        assert lease is not None
        a.release_lease(lease)
    # b asks: a looks after 3, b none, so b may take one...
    taken = b.try_lease("s", "t1", "otherhost:2:x", 30)
    assert taken is not None and taken.generation == 2
    b.release_lease(taken)
    # ...and then no more: a looks after 2, b 1
    assert b.try_lease("s", "t2", "otherhost:2:y", 30) is None
    again = a.try_lease("s", "t2", "otherhost:1:z", 30)  # the owner polls its own table
    assert again is not None
    a.release_lease(again)
    assert a.try_lease("s", "t1", "otherhost:1:w", 30) is None  # t1 is b's now
    free = c.try_lease("s", "t2", "otherhost:3:v", 30)  # no affinity: the lease alone
    assert free is not None and free.generation == again.generation + 1
    c.release_lease(free)  # c records no ownership: t2 is still a's
    assert b.try_lease("s", "t3", "otherhost:2:u", 30) is None
    b.lease_affinity = 1e-6  # a's releases are older than that: anyone's
    assert b.try_lease("s", "t3", "otherhost:2:u", 30) is not None


def test_lease_affinity_ends_with_its_owners_process(adapter: Adapter) -> None:
    """An owner on this host whose process is gone has no affinity: its tables are taken
    at once, as its leases are."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    gone = f"{socket.gethostname()}:{int(dead.stdout)}"
    a, b = adapter.open(), adapter.open()
    a.lease_affinity = b.lease_affinity = 3600
    lease = a.try_lease("s", "t", f"{gone}:x", 30)
    assert lease is not None
    a.release_lease(lease)
    assert b.try_lease("s", "t", "otherhost:2:y", 30) is not None


def test_a_partitioned_first_load_has_no_affinity(adapter: Adapter) -> None:
    """Every worker reads a split first load's key ranges and any one may end it: the
    table's lease is not kept for the worker that planned the split."""
    a, b = adapter.open(), adapter.open()
    a.lease_affinity = b.lease_affinity = 3600
    lease = a.try_lease("s", "t", "otherhost:1:a", 30)
    assert lease is not None
    high, middle = Watermark(5, (9,)), Watermark(1, (4,))
    a.start_backfill("s", "t", high, lease)
    assert a.plan_backfill("s", "t", high, [(None, middle), (middle, Watermark(1, (9,)))],
                           lease=lease)
    a.release_lease(lease)
    assert b.look_after("s", "t")
    assert b.try_lease("s", "t", "otherhost:2:b", 30) is not None


def test_a_failing_table_has_no_affinity(adapter: Adapter) -> None:
    """A table whose last error is newer than its last load may be tried by any worker (its
    owner may be the one host that cannot reach the store), until one loads it again."""
    a, b = adapter.open(), adapter.open()
    a.lease_affinity = b.lease_affinity = 3600
    lease = a.try_lease("s", "t", "otherhost:1:a", 30)
    assert lease is not None
    a.release_lease(lease)
    assert not b.look_after("s", "t")
    a.record_error("s", "t", "connection refused")
    assert b.look_after("s", "t")
    taken = b.try_lease("s", "t", "otherhost:2:b", 30)
    assert taken is not None
    b.release_lease(taken)
    b.record_load("s", "t", 3, 0, None, None)
    assert not a.look_after("s", "t")  # loaded again by b: b's now
