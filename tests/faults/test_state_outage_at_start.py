"""A worker whose state store goes away while its first catch-up runs keeps working.

`steadyflow worker` first runs one `run_once` (every table caught up), then follows. The
run-history writes around that first run (`start_run`, `end_run`) were outside every
retry: a PostgreSQL state server restarted (or unreachable) while a worker caught up, which
for a big first load lasts long, ended the worker with exit 2 ("its loop ended with an
error: state store ... cannot connect"), though every other state call of the follow loop
is retried and the architecture promises a worker that retries. Found by a chaos run that
crashed the state server under newly started workers (all three died).

Here: the state in a PostgreSQL server of the test's own; one worker whose pages are slowed
(a failpoint sleep) so its first run lasts seconds; the server is stopped as soon as the
worker has started and brought back 4 s later. The worker must still be running, load every
row (the independent oracle on both ends) and stop with exit 0 on SIGTERM.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tests.faults.test_multihost import Nats
from tests.support.chaos_tables import SourceDb, create_tables
from tests.support.own_pg import OwnPostgres, own_postgres
from tests.support.workers import Workers, diffs, status_json, write_config

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]

TABLES = ("orders", "lineitem")


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Nats]:
    server = Nats("127.0.0.1", tmp_path / "nats", tmp_path / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def state_server() -> Iterator[OwnPostgres]:
    with own_postgres() as server:
        yield server


def test_a_state_outage_during_the_first_catch_up_does_not_end_the_worker(
        tmp_path: Path, pg_dsn: str, pg_warehouse_dsn: str, nats: Nats,
        state_server: OwnPostgres) -> None:
    db = SourceDb("postgres", pg_dsn)
    create_tables(db, 20, 60, 3)
    cfg = write_config(tmp_path, "outage", [db], pg_warehouse_dsn,
                       {"url": nats.url, "stream": "outage", "capacity": 16, "lease": "5s"},
                       {"page_size": 20, "min_page_size": 20}, tables=TABLES)
    doc = yaml.safe_load(cfg.read_text())
    doc["state"]["dsn"] = state_server.dsn()
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "logs").mkdir()
    workers = Workers(cfg, tmp_path / "logs", 2.0)
    name = workers.start(failpoint="extract.after_enqueue:1:sleep0.3")
    try:
        deadline = time.monotonic() + 30
        while "started" not in workers.log_since(name, 0):
            assert name in workers.alive() and time.monotonic() < deadline, workers.tail(name)
            time.sleep(0.05)
        time.sleep(0.5)  # its first catch-up is under way
        state_server.stop()
        time.sleep(4)
        state_server.start()
        time.sleep(3)
        assert name in workers.alive(), (
            f"the worker ended on a state outage (exit {workers.exits.get(name)}):\n"
            + workers.tail(name))
        deadline = time.monotonic() + 60
        while True:
            found = diffs([db], pg_warehouse_dsn, TABLES)
            report = status_json(cfg)
            if all(d.clean for d in found) and report["pending_batches"] == 0:
                break
            assert time.monotonic() < deadline, (
                "\n".join(d.report() for d in found) + workers.tail(name))
            time.sleep(1)
        assert all(d.source_rows > 0 for d in found)
        assert workers.terminate(name) == 0, workers.tail(name)
    finally:
        for left in workers.alive():
            workers.kill(left)
