"""MariaDB's innodb_trx list kept from refreshing by a frequent reader (extract/innodb_trx.py).

InnoDB refreshes information_schema.innodb_trx only once nobody read it for 0.1 s: a session
reading it every 50 ms (a dashboard, other pollers) freezes the list, and a transaction begun
since is never listed. A poll that believed the frozen list saw nothing open and the next
started after the row that transaction held, which committed later: lost, run ok. The
observation now proves its list fresh (its own transaction must be in it) and otherwise
re-reads from the last fresh observation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.integration.test_adaptive_lookback import (
    HOLD,
    LATE,
    WINDOW,
    Store,
    pipeline,
    warehouse_keys,
)

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@contextmanager
def frequent_reader(store: Store) -> Iterator[None]:
    """Reads innodb_trx every 50 ms until the block ends."""
    stop = threading.Event()

    def read() -> None:
        with store.connect() as conn:
            while not stop.is_set():
                store.execute(conn, "SELECT COUNT(*) FROM information_schema.innodb_trx")
                time.sleep(0.05)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(0.3)  # the list is frozen from here on
        yield
    finally:
        stop.set()
        reader.join(5)


def test_a_late_commit_arrives_while_innodb_trx_is_frozen(tmp_path: Path, mysql_dsn: str
                                                         ) -> None:
    store = Store("mysql", mysql_dsn)
    store.create(20, store.recent("i"))
    config = pipeline(tmp_path, store, lookback=WINDOW)
    p = Pipeline.from_yaml(config)
    assert p.run_once().ok  # the first load, with a fresh list
    with frequent_reader(store):
        late = store.connect(autocommit=False)
        try:
            store.insert(late, LATE, store.now)  # held past the window and the margin
            time.sleep(HOLD + 1.0)
            with store.connect() as other:
                store.insert(other, (1, 501), store.now)
            assert p.run_once().ok
            late.commit()
        finally:
            late.close()
        with p:
            assert p.run_once().ok
    assert LATE in warehouse_keys(tmp_path)
