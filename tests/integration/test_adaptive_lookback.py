"""The adaptive lookback, on real PostgreSQL and MariaDB.

A long store transaction writes a row stamped with its own start (PostgreSQL's now(); MariaDB's
NOW() of the statement) and commits after a newer row was extracted and checkpointed, later
than a small fixed window reaches back. The adaptive lookback noted the open transaction
before it read its pass's end, so the next poll re-reads from its start and the row arrives,
in the same process and after a restart (the bound then comes from the last landed page). The
same scenario with the fixed window alone loses the row: the test can see the problem.

With no transaction open, a poll re-reads nothing: it continues strictly after its
checkpoint, where a fixed window re-reads all of it. A role that cannot see other sessions'
transactions falls back to the fixed window, with a warning naming the privilege.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pymysql
import pytest
from tests.conftest import write_pipeline

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HOLD = 1.5  # how long the late transaction stays open before the newer row commits
WINDOW = "1s"  # the fixed window: shorter than HOLD, so it cannot reach the late row
LATE = (1, 500)
COLUMNS = "store_id, sale_id, sku, qty, unit_price, currency, sold_at, updated_at"


class Store:
    """One store database of either kind, written the way an application writes it."""

    def __init__(self, kind: str, dsn: str) -> None:
        self.kind, self.dsn = kind, dsn

    def connect(self, autocommit: bool = True) -> Any:
        if self.kind == "postgres":
            return psycopg.connect(self.dsn, autocommit=autocommit)
        database = self.dsn.rsplit("/", 1)[1]
        return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                               database=database, autocommit=autocommit)

    @property
    def now(self) -> str:
        """The source's clock as the application's statement sees it."""
        return "now()" if self.kind == "postgres" else "NOW(6)"

    def execute(self, conn: Any, sql: str) -> None:
        if self.kind == "postgres":
            conn.execute(sql)
        else:
            with conn.cursor() as cur:
                cur.execute(sql)

    def create(self, rows: int, stamped: str) -> None:
        """`rows` rows whose cursor is `stamped` (an SQL expression of i)."""
        series = ("generate_series(1, {n}) i" if self.kind == "postgres" else
                  "(SELECT seq AS i FROM seq_1_to_{n}) s").format(n=rows)
        time_type = "timestamptz" if self.kind == "postgres" else "datetime(6)"
        with self.connect() as conn:
            self.execute(conn, f"CREATE TABLE sales (store_id bigint NOT NULL, sale_id bigint "
                               f"NOT NULL, sku text NOT NULL, qty bigint, unit_price "
                               f"numeric(12,2), currency text, sold_at {time_type} NULL, "
                               f"updated_at {time_type} NOT NULL, "
                               "PRIMARY KEY (store_id, sale_id))")
            self.execute(conn, "CREATE INDEX sales_cursor ON sales (updated_at, store_id, "
                               "sale_id)")
            self.execute(conn, f"INSERT INTO sales ({COLUMNS}) SELECT 1, i, 'SKU', 1, 1.25, "
                               f"'EUR', NULL, {stamped} FROM {series}")

    def insert(self, conn: Any, key: tuple[int, int], stamped: str) -> None:
        self.execute(conn, f"INSERT INTO sales ({COLUMNS}) VALUES ({key[0]}, {key[1]}, "
                           f"'SKU-{key[1]}', 1, 1.00, 'USD', NULL, {stamped})")

    def past(self, i: str) -> str:
        """A fixed time well before now, i seconds into it."""
        if self.kind == "postgres":
            return f"timestamptz '2024-01-01 00:00:00+00' + {i} * interval '1 second'"
        return f"TIMESTAMP '2024-01-01 00:00:00' + INTERVAL {i} SECOND"

    def recent(self, i: str) -> str:
        """Minutes ago on the source's clock, i seconds into it."""
        if self.kind == "postgres":
            return f"clock_timestamp() - interval '10 minutes' + {i} * interval '1 second'"
        return f"NOW(6) - INTERVAL 10 MINUTE + INTERVAL {i} SECOND"


@pytest.fixture(params=["postgres", "mysql"])
def store(request: pytest.FixtureRequest) -> Store:
    dsn = request.getfixturevalue("pg_dsn" if request.param == "postgres" else "mysql_dsn")
    return Store(request.param, dsn)


def pipeline(tmp_path: Path, store: Store, dsn: str | None = None, **table: Any) -> Path:
    return write_pipeline(tmp_path, [{
        "name": "store", "kind": store.kind, "dsn": dsn or store.dsn,
        "tables": [{"name": "sales", "contract": "sales", **table}]}])


def warehouse_keys(tmp_path: Path) -> set[tuple[int, int]]:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        return {(int(a), int(b)) for a, b in
                con.sql("SELECT store_id, sale_id FROM main.sales").fetchall()}


@pytest.mark.parametrize(("mode", "restart", "arrives"), [
    ("adaptive", False, True), ("adaptive", True, True), ("fixed", False, False)],
    ids=["adaptive", "adaptive-after-restart", "fixed-window-misses"])
def test_a_transaction_committing_late_is_read_from_its_start(
        tmp_path: Path, store: Store, mode: str, restart: bool, arrives: bool) -> None:
    store.create(20, store.recent("i"))
    config = pipeline(tmp_path, store, lookback=WINDOW, lookback_mode=mode)
    late = store.connect(autocommit=False)  # an application's long transaction
    try:
        store.insert(late, LATE, store.now)  # stamped with the source's clock, then held
        time.sleep(HOLD)
        with store.connect() as other:
            store.insert(other, (1, 501), store.now)  # newer, committed at once
        p = Pipeline.from_yaml(config)
        first = p.run_once()
        assert first.ok and first.extracted_rows >= 21, first  # the late row is not visible
        late.commit()  # later than the fixed window reaches back from the checkpoint
    finally:
        late.close()
    if restart:
        p.close()
        p = Pipeline.from_yaml(config)
    with p:
        second = p.run_once()
    assert second.ok, second.errors
    keys = warehouse_keys(tmp_path)
    assert len(keys) == (22 if arrives else 21)
    if arrives:
        assert LATE in keys
        # re-read from the late transaction's start: it and the row after it
        assert second.extracted_rows == 2, second
    else:
        assert LATE not in keys  # the window re-read only the newest row


def test_with_no_transaction_open_a_poll_rereads_nothing(tmp_path: Path, store: Store
                                                         ) -> None:
    """PostgreSQL's cursors are now-stamped (only this test's sessions use its database).
    MariaDB reports every schema's transactions, so other tests on the server could hold
    one open: its rows are stamped in the past, which no open transaction can reach."""
    stamped = store.recent if store.kind == "postgres" else store.past
    store.create(200, stamped("i"))
    time.sleep(1.5)  # MariaDB's bound is a second early (whole-second trx_started)
    adaptive, fixed = tmp_path / "adaptive", tmp_path / "fixed"
    for where in (adaptive, fixed):
        where.mkdir()
    configs = {"adaptive": pipeline(adaptive, store, lookback_mode="auto"),
               "fixed": pipeline(fixed, store, lookback="2m", lookback_mode="fixed")}
    pipelines = {mode: Pipeline.from_yaml(path) for mode, path in configs.items()}
    try:
        for p in pipelines.values():
            assert p.run_once().ok
        with store.connect() as conn:
            for sale in range(1001, 1031):
                store.insert(conn, (1, sale), stamped(str(200 + sale - 1000)))
        time.sleep(1.5)
        polls = {mode: p.run_once() for mode, p in pipelines.items()}
        again = pipelines["adaptive"].run_once()
    finally:
        for p in pipelines.values():
            p.close()
    assert polls["adaptive"].extracted_rows == 30, polls["adaptive"]  # just the new rows
    assert again.extracted_rows == 0, again  # an idle poll reads nothing at all
    # the fixed window re-reads the last two minutes of cursors every poll
    assert polls["fixed"].extracted_rows > 30 + 60, polls["fixed"]
    assert warehouse_keys(adaptive) == warehouse_keys(fixed)


@contextmanager
def unprivileged(store: Store) -> Iterator[str]:
    """A DSN for a role that can read the table but not other sessions' transactions."""
    name = f"sf_plain_{uuid.uuid4().hex[:8]}"
    database = store.dsn.rsplit("/", 1)[1]
    with store.connect() as conn:
        if store.kind == "postgres":
            store.execute(conn, f"CREATE ROLE {name} LOGIN")
            store.execute(conn, f"GRANT SELECT ON sales TO {name}")
        else:
            store.execute(conn, f"CREATE USER '{name}'@'%'")
            store.execute(conn, f"GRANT SELECT ON `{database}`.* TO '{name}'@'%'")
    host = "127.0.0.1:5432" if store.kind == "postgres" else "127.0.0.1:3306"
    scheme = "postgresql" if store.kind == "postgres" else "mysql"
    try:
        yield f"{scheme}://{name}@{host}/{database}"
    finally:
        drop: Callable[[Any], None]
        if store.kind == "postgres":
            def drop(conn: Any) -> None:
                store.execute(conn, f"DROP OWNED BY {name}")
                store.execute(conn, f"DROP ROLE {name}")
        else:
            def drop(conn: Any) -> None:
                store.execute(conn, f"DROP USER '{name}'@'%'")
        with store.connect() as conn:
            drop(conn)


def test_a_role_that_cannot_see_transactions_falls_back_to_the_window_loudly(
        tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    store.create(20, store.recent("i"))
    with unprivileged(store) as dsn:
        config = pipeline(tmp_path, store, dsn=dsn, lookback=WINDOW)
        late = store.connect(autocommit=False)
        try:
            store.insert(late, LATE, store.now)
            time.sleep(HOLD)
            with store.connect() as other:
                store.insert(other, (1, 501), store.now)
            with caplog.at_level(logging.WARNING, logger="steadyflow"), \
                    Pipeline.from_yaml(config) as p:
                assert p.run_once().ok
                late.commit()
                assert p.run_once().ok
        finally:
            late.close()
    warnings = [r.getMessage() for r in caplog.records
                if "adaptive lookback unavailable" in r.getMessage()]
    assert len(warnings) == 1, caplog.text  # once per connection, not per poll
    assert ("pg_read_all_stats" if store.kind == "postgres" else "PROCESS") in warnings[0]
    # the fixed window, as the warning says: the late row is not read
    assert LATE not in warehouse_keys(tmp_path)
    with Pipeline.from_yaml(config) as p:  # and `steadyflow status` shows why
        (health,) = p.state.health()
    assert health.last_error is not None and "adaptive lookback unavailable" in health.last_error


def test_the_floor_rereads_behind_the_checkpoint_too(tmp_path: Path, store: Store) -> None:
    """A row stamped by another clock (an import of old times) lands behind the checkpoint
    with no transaction open: the adaptive start is the earlier of the checkpoint and the
    oldest open transaction, both minus the floor, so the floor catches it as the fixed
    window did."""
    store.create(100, store.past("i"))  # cursors 2024-01-01 00:00:01 .. 00:01:40
    config = pipeline(tmp_path, store, lookback="1m")
    with Pipeline.from_yaml(config) as p:
        assert p.run_once().ok
        with store.connect() as conn:
            store.insert(conn, LATE, store.past("70"))  # 30 s behind the checkpoint
        second = p.run_once()
    assert second.ok
    assert LATE in warehouse_keys(tmp_path)
