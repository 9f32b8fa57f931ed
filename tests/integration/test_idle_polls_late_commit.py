"""Idle polls (run/extract.py `_idle`: no lease, no read) never lose a late commit under the
adaptive lookback with no fixed window (lookback 0, the default).

test_adaptive_lookback.py keeps a 1 s window, which makes every poll re-read it, so no
poll there is idle. Here the table's polls in between find nothing new while a long
transaction stays open, and then one finds only a newer row: the open transaction must
still be remembered from the idle polls' observation, so that the poll after its commit
re-reads from its start. In one process, and after a restart (the bound then comes from
the last landed page).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.integration.test_adaptive_lookback import LATE, Store, pipeline

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def keys(p: Pipeline) -> set[tuple[int, int]]:
    """The warehouse's keys, read through the pipeline's own DuckDB handle (it holds the
    file): a plain query, not steadyflow's comparison."""
    got = p.warehouse.query("SELECT store_id, sale_id FROM main.sales")  # type: ignore[attr-defined]
    return {(int(a), int(b)) for a, b in zip(got["store_id"].to_pylist(),
                                             got["sale_id"].to_pylist(), strict=True)}


def generation(p: Pipeline) -> int:
    """How many times the table's extraction lease was taken (idle polls take none)."""
    rows = p.state._query("SELECT generation FROM extract_leases")
    return int(rows[0][0]) if rows else 0


@pytest.fixture(params=["postgres", "mysql"])
def store(request: pytest.FixtureRequest) -> Store:
    dsn = request.getfixturevalue("pg_dsn" if request.param == "postgres" else "mysql_dsn")
    return Store(request.param, dsn)


@pytest.mark.parametrize("restart", [False, True], ids=["one-process", "after-restart"])
def test_a_late_commit_seen_only_by_idle_polls_still_arrives(tmp_path: Path, store: Store,
                                                            restart: bool) -> None:
    store.create(20, store.recent("i"))
    config = pipeline(tmp_path, store)  # lookback 0, lookback_mode auto: adaptive
    p = Pipeline.from_yaml(config)
    try:
        assert p.run_once().extracted_rows == 20
        late = store.connect(autocommit=False)  # an application's long transaction
        try:
            store.insert(late, LATE, store.now)  # stamped with the source's clock, held
            time.sleep(0.2)
            taken = generation(p)
            idle = p.run_once()  # nothing new: an idle poll, the transaction open
            assert idle.ok and idle.extracted_rows == 0, idle
            assert generation(p) == taken, "not an idle poll (it took the lease)"
            with store.connect() as other:
                store.insert(other, (1, 501), store.now)  # newer, committed at once
            newer = p.run_once()  # the newer row only: the late one is not visible yet
            assert newer.ok and LATE not in keys(p), newer
            assert (1, 501) in keys(p)
            assert p.run_once().ok  # polls again while it is still open
            late.commit()  # its row is stamped before the checkpoint now
        finally:
            late.close()
        if restart:
            p.close()
            p = Pipeline.from_yaml(config)
        last = p.run_once()
        assert last.ok, last.errors
        assert LATE in keys(p), last
        assert len(keys(p)) == 22
    finally:
        p.close()
