"""Shared fixtures: real services on 127.0.0.1, one fresh database per test.

With CI=true a missing service FAILS the test; elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pymysql
import pytest
import yaml

from steadyflow.demo.scenario import SALES_CONTRACT as DEMO_SALES_CONTRACT

ROOT = Path(__file__).resolve().parents[1]
PG_HOST, PG_PORT = "127.0.0.1", 5432
MY_HOST, MY_PORT = "127.0.0.1", 3306

# the demo's contract: one definition of the sales table for the product and its tests
SALES_CONTRACT: dict[str, Any] = DEMO_SALES_CONTRACT


def unavailable(reason: str) -> NoReturn:
    """Something a test needs is missing: a failure under CI=true, a skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI requires it: {reason}")
    pytest.skip(reason)


def require_service(name: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        unavailable(f"{name} is not reachable on {host}:{port} ({exc})")


def require_tool(name: str, package: str, fallback: str | None = None) -> str:
    """The path of a command-line tool from Debian's `package`."""
    path = shutil.which(name) or (
        fallback if fallback is not None and os.access(fallback, os.X_OK) else None)
    if path is None:
        unavailable(f"{name} not found (apt-get install -y {package})")
    return path


PG_ADMIN = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"


def _create_pg_database(prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Databases:
    """Fresh databases made one ahead and dropped behind, on a thread of their own.

    CREATE DATABASE copies a template and DROP DATABASE deletes its files, each waiting on
    the server's disk (0.3-1 s apiece on a busy 2-core machine, ~200 tests each take one):
    no test needs to wait for either. The next database of a prefix is made while a test
    runs, and a test's database is dropped while the next one runs. Each is still a new,
    empty database of a name no other test (or pytest-xdist worker) uses, never reused. A
    failed drop fails a later test's setup, and the end of the session, loudly."""

    def __init__(self, create: Callable[[str], str], drop: Callable[[str], None]) -> None:
        self._create, self._drop = create, drop
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="databases")
        self._ahead: dict[str, Future[str]] = {}
        self._drops: list[Future[None]] = []

    def take(self, prefix: str) -> str:
        self._raise_failed_drops()
        ahead = self._ahead.pop(prefix, None)
        name = (ahead or self._thread.submit(self._create, prefix)).result()
        self._ahead[prefix] = self._thread.submit(self._create, prefix)
        return name

    def give_back(self, name: str) -> None:
        self._drops.append(self._thread.submit(self._drop, name))

    def close(self) -> None:
        """Drop what was made ahead and wait for every drop (the end of the session)."""
        for ahead in self._ahead.values():
            if ahead.exception() is None:
                self.give_back(ahead.result())
        self._ahead.clear()
        self._thread.shutdown(wait=True)
        self._raise_failed_drops()

    def _raise_failed_drops(self) -> None:
        done = [f for f in self._drops if f.done()]
        self._drops = [f for f in self._drops if not f.done()]
        for drop in done:
            drop.result()


_PG_DATABASES = _Databases(_create_pg_database, _drop_pg_database)


def _fresh_pg_database(prefix: str) -> Iterator[str]:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    name = _PG_DATABASES.take(prefix)
    yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    _PG_DATABASES.give_back(name)


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test only."""
    yield from _fresh_pg_database("sf")


@pytest.fixture
def pg_warehouse_dsn() -> Iterator[str]:
    """A second fresh PostgreSQL database on the same server, for a warehouse only."""
    yield from _fresh_pg_database("sfwh")


@pytest.fixture
def mysql_dsn() -> Iterator[str]:
    """A fresh, empty MariaDB database for this test only."""
    require_service("MariaDB", MY_HOST, MY_PORT)
    name = _MY_DATABASES.take("sf")
    yield f"mysql://root@{MY_HOST}:{MY_PORT}/{name}"
    _MY_DATABASES.give_back(name)


def _mysql_admin(statement: str) -> None:
    conn = pymysql.connect(host=MY_HOST, port=MY_PORT, user="root", password="",
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def _create_mysql_database(prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _mysql_admin(f"CREATE DATABASE `{name}`")
    return name


_MY_DATABASES = _Databases(_create_mysql_database,
                           lambda name: _mysql_admin(f"DROP DATABASE IF EXISTS `{name}`"))


def pytest_sessionfinish() -> None:
    """The databases made ahead are dropped, and every drop is waited for."""
    _PG_DATABASES.close()
    _MY_DATABASES.close()


def write_pipeline(directory: Path, sources: list[dict[str, Any]],
                   warehouse: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Write a pipeline.yml using the sales contract; returns its path."""
    config: dict[str, Any] = {
        "name": "test",
        "contracts": {"sales": SALES_CONTRACT},
        "warehouse": warehouse or {"kind": "duckdb", "path": "warehouse.duckdb"},
        "sources": sources,
        **extra,
    }
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def steadyflow(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
               check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process (crash tests need a process to kill)."""
    proc = subprocess.run([sys.executable, "-m", "steadyflow", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"steadyflow {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


# Default-tier time (`make test`, CI) is kept near 15 minutes on 2 cores by running these
# siblings only in `make test-exhaustive`. Each is a second variant of a test that stays in
# the default tier with the same guarantee: another crash count or buffer of a failpoint
# already killed at, the PostgreSQL half of a chaos run or a generated suite whose other
# source/warehouse pairs run, the multi-host faults that the default chaos run also injects
# (a worker cut from PostgreSQL), and the two whole-system soaks whose parts have their own
# default-tier tests (autoscale policy and drain; memory bounded during a load).
# Node id prefixes.
EXHAUSTIVE_ONLY = (
    "tests/faults/test_crash.py::test_sigkill_at_failpoint_loses_and_doubles_nothing[1-",
    "tests/faults/test_crash.py::test_sigkill_around_a_group_commit_loses_and_doubles_nothing"
    "[jetstream-",
    "tests/faults/test_chaos_tables.py::test_chaos_tables[postgres]",
    "tests/faults/test_multihost.py::test_a_worker_cut_off_from_its_state_store_keeps_working",
    "tests/faults/test_multihost.py::test_a_state_transaction_cut_midway_leaves_no_lock_behind",
    "tests/integration/test_memory.py::test_memory_returns_after_a_spike",
    "tests/faults/test_autoscale.py::test_a_spike_adds_workers_and_its_end_drains_them",
    "tests/integration/test_reconcile_any_data.py::"
    "test_reconcile_agrees_with_the_oracle_on_every_type[mysql-postgres]",
    "tests/integration/test_reconcile_any_data.py::"
    "test_reconcile_agrees_with_the_oracle_on_every_type[sqlite-postgres]",
    "tests/generated/test_sql_generated.py::test_generated_tables_arrive_exactly[postgres-postgres]",
    "tests/generated/test_sql_generated.py::test_generated_tables_arrive_exactly[sqlite-postgres]",
)


@pytest.hookimpl(tryfirst=True)  # before `-m 'not exhaustive'` deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(EXHAUSTIVE_ONLY):
            item.add_marker(pytest.mark.exhaustive)
