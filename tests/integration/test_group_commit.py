"""Group commit (run/load.py, merge/*: `Warehouse.load_group`): the loader merges the ready
batches of one target in one warehouse transaction, and that changes none of the rules.

- two batches of one key in one group keep the later extraction, in either order, on both
  warehouses (each batch's merge sees the ones before it in the transaction);
- a batch whose rows the warehouse refuses for good fails alone: its group is rolled back
  and the others load one by one;
- a group that outlasts the buffer lease keeps its batches leased (SQLite visible_at,
  JetStream in-progress acks): another loader never gets them meanwhile.
The SIGKILL tests of a grouped commit are in tests/faults/test_crash.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
import psycopg
import pyarrow as pa
import pytest
from tests.conftest import write_pipeline
from tests.support.jetstream import NATS_URL, fresh_stream

from steadyflow.buffer.jetstream import JetStreamBuffer
from steadyflow.buffer.sqlite import SqliteBuffer
from steadyflow.demo.stores import create_stores
from steadyflow.merge.duckdb import DuckdbWarehouse
from steadyflow.merge.postgres import PostgresWarehouse
from steadyflow.model import BatchRef, Column, Contract, TableRef
from steadyflow.ports import Buffer, Ledgered, LoadPart, Warehouse
from steadyflow.run.pipeline import Pipeline

pytestmark = pytest.mark.integration

CONTRACT = Contract(
    columns=(Column("k", "int64", nullable=False), Column("v", "string"),
             Column("ts", "int64")),
    primary_key=("k",), cursor="ts")
REF = TableRef("s", "t", "t")


def _part(name: str, seq: int, *rows: tuple[int, str, int]) -> LoadPart:
    k, v, ts = zip(*rows, strict=True)
    table = pa.table({"k": pa.array(k, pa.int64()), "v": pa.array(v, pa.string()),
                      "ts": pa.array(ts, pa.int64())})
    return LoadPart(REF, CONTRACT, BatchRef(name, "s", "t", "x", len(rows), 0, "", None, None,
                                            0.0, seq=seq), table)


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    wh: Warehouse
    if request.param == "duckdb":
        wh = DuckdbWarehouse(tmp_path / "wh.duckdb")
    else:
        dsn = request.getfixturevalue("pg_dsn")
        wh = PostgresWarehouse(dsn, "wh")
    wh.ensure_table(REF, CONTRACT)
    yield wh
    wh.close()


def _values(wh: Warehouse) -> dict[int, str]:
    got = wh.query(f"SELECT k, v FROM {'main' if isinstance(wh, DuckdbWarehouse) else 'wh'}.t"
                   ).to_pylist()  # type: ignore[attr-defined]
    return {row["k"]: row["v"] for row in got}


@pytest.mark.parametrize("later_first", [False, True])
def test_two_batches_of_one_key_in_one_group_keep_the_later_extraction(
        warehouse: Warehouse, later_first: bool) -> None:
    # the earlier extraction carries the NEWER cursor (a late commit read first), so a
    # "newer cursor wins" merge, or a group that collapsed its rows by cursor, keeps it
    earlier = _part("early", 5, (1, "early", 9), (2, "early", 9))
    later = _part("late", 6, (1, "late", 1), (3, "late", 1))
    parts = [later, earlier] if later_first else [earlier, later]
    merged = warehouse.load_group(parts)
    assert all(m is not None for m in merged)
    assert _values(warehouse) == {1: "late", 2: "early", 3: "late"}
    assert warehouse.is_loaded("early") and warehouse.is_loaded("late")
    # a repeat of the group, with one new batch: the two loaded ones are no-ops
    again = warehouse.load_group([earlier, _part("new", 7, (4, "new", 1)), later])
    assert again[0] is None and again[2] is None and again[1] is not None
    assert _values(warehouse) == {1: "late", 2: "early", 3: "late", 4: "new"}


def test_new_batches_go_in_together_and_each_counts_its_rows(warehouse: Warehouse) -> None:
    """New keys only (DuckDB inserts such batches with one statement): each batch still
    gets its ledger row and its own changed count; a key already loaded, or repeated in
    the group, sends the group through the batch-by-batch merge with the same result."""
    merged = warehouse.load_group([_part("a", 1, (1, "a", 1), (2, "a", 1)),
                                   _part("b", 2, (3, "b", 1), (4, "b", 1)),
                                   _part("c", 3, (5, "c", 1))])
    assert [m.changed if m else None for m in merged] == [2, 2, 1]
    merged = warehouse.load_group([_part("d", 4, (6, "d", 1)),
                                   _part("e", 5, (2, "e", 1)),  # already loaded: an update
                                   _part("f", 6, (7, "f", 1), (7, "f2", 2))])  # twice
    assert [m.changed if m else None for m in merged] == [1, 1, 1]
    assert _values(warehouse) == {1: "a", 2: "e", 3: "b", 4: "b", 5: "c", 6: "d", 7: "f2"}
    assert all(warehouse.is_loaded(b) for b in "abcdef")


def test_the_ledger_keeps_each_batch_count(warehouse: Warehouse) -> None:
    """What a loader that dies after the commit leaves for its redelivery (or the
    sweeper) to count: rows, changed and quarantined rows of each batch, the group's
    equal re-read and its repeat included; a batch not loaded is not there."""
    first = warehouse.load_group([replace(_part("a", 1, (1, "a", 1), (2, "a", 1)),
                                          quarantined=3)])
    assert [m.changed if m else None for m in first] == [2]
    merged = warehouse.load_group([
        _part("b", 2, (1, "a", 1), (3, "b", 1)),  # one equal re-read, one new
        _part("c", 3, (2, "c", 2))])  # an update
    assert [m.changed if m else None for m in merged] == [1, 1]
    assert warehouse.load_group([_part("c", 3, (2, "c", 2))]) == [None]  # a repeat
    assert warehouse.ledgered(["a", "b", "c", "nope"]) == {
        "a": Ledgered(2, 2, 3), "b": Ledgered(2, 1, 0), "c": Ledgered(1, 1, 0)}
    assert warehouse.ledgered([]) == {}


def test_a_postgres_group_of_new_batches_writes_its_ledger_rows_once(pg_dsn: str) -> None:
    """New rows only (a first load, new keys: the direct COPY): each ledger row is written
    with its count in its INSERT, and no UPDATE of the ledger follows (a round trip per
    group); a group with a merged part corrects that part's row alone. Counted by a
    trigger on the ledger."""
    wh = PostgresWarehouse(pg_dsn, "wh")
    wh.ensure_table(REF, CONTRACT)
    wh.load_group([_part("first", 1, (1, "a", 1))])
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("CREATE TABLE wh.ledger_updates (batch_id text)")
        c.execute("CREATE FUNCTION wh.count_update() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$BEGIN INSERT INTO wh.ledger_updates VALUES (NEW.batch_id); "
                  "RETURN NEW; END$$")
        c.execute("CREATE TRIGGER counted AFTER UPDATE ON wh._steadyflow_ledger FOR EACH "
                  "ROW EXECUTE FUNCTION wh.count_update()")
    try:
        merged = wh.load_group([_part("a", 2, (2, "a", 1), (3, "a", 1)),
                                _part("b", 3, (4, "b", 1))])
        assert [m.changed if m else None for m in merged] == [2, 1]
        merged = wh.load_group([_part("c", 4, (5, "c", 1)),
                                _part("d", 5, (1, "a", 1), (2, "d", 2))])  # merged
        assert [m.changed if m else None for m in merged] == [1, 1]
        with psycopg.connect(pg_dsn) as c:
            updated = [r[0] for r in c.execute("SELECT batch_id FROM wh.ledger_updates")]
        assert updated == ["d"]
        assert wh.ledgered(["a", "b", "c", "d"]) == {
            "a": Ledgered(2, 2, 0), "b": Ledgered(1, 1, 0), "c": Ledgered(1, 1, 0),
            "d": Ledgered(2, 1, 0)}
    finally:
        wh.close()


def test_a_ledger_made_before_it_kept_counts_gets_them(warehouse: Warehouse) -> None:
    """A warehouse loaded by an older steadyflow: its ledger rows stay, counts unknown
    (None), and the next load adds the columns and fills them."""
    warehouse.load_group([_part("old", 1, (1, "a", 1))])
    for column in ("changed", "quarantined"):
        drop = f"ALTER TABLE {{}}._steadyflow_ledger DROP COLUMN {column}"
        if isinstance(warehouse, DuckdbWarehouse):
            warehouse.query(drop.format("main"))
        else:
            assert isinstance(warehouse, PostgresWarehouse)
            with warehouse.conn.transaction():
                warehouse.conn.execute(drop.format("wh"))
    warehouse.ensure_table(REF, CONTRACT)
    assert warehouse.load_group([_part("new", 2, (2, "b", 1))])[0] is not None
    assert warehouse.ledgered(["old", "new"]) == {
        "old": Ledgered(1, None, None), "new": Ledgered(1, 1, 0)}


def test_an_old_ledger_is_read_before_any_table_is_ensured(
        warehouse: Warehouse, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The sweeper reads the ledger (`ledgered`) before this process ensured any table:
    an upgraded warehouse whose ledger lacks the count columns answers with its rows,
    counts unknown, instead of failing every sweep (and with it every `run` and `load`
    that has a landed batch to look up)."""
    warehouse.load_group([_part("old", 1, (1, "a", 1))])
    drops = [f"ALTER TABLE {{}}._steadyflow_ledger DROP COLUMN {column}"
             for column in ("changed", "quarantined")]
    fresh: Warehouse
    if isinstance(warehouse, DuckdbWarehouse):
        for drop in drops:
            warehouse.query(drop.format("main"))
        warehouse.close()
        fresh = DuckdbWarehouse(tmp_path / "wh.duckdb")
    else:
        assert isinstance(warehouse, PostgresWarehouse)
        with warehouse.conn.transaction():
            for drop in drops:
                warehouse.conn.execute(drop.format("wh"))
        fresh = PostgresWarehouse(request.getfixturevalue("pg_dsn"), "wh")
    try:
        assert fresh.ledgered(["old", "nope"]) == {"old": Ledgered(1, None, None)}
    finally:
        fresh.close()


def test_a_failing_part_rolls_the_whole_group_back(warehouse: Warehouse) -> None:
    def parts() -> Iterator[LoadPart]:
        yield _part("a", 1, (1, "a", 1))
        raise RuntimeError("the second batch could not be read")

    with pytest.raises(RuntimeError):
        warehouse.load_group(parts())
    assert not warehouse.is_loaded("a") and _values(warehouse) == {}
    assert warehouse.load_group([_part("a", 1, (1, "a", 1))])[0] is not None


def test_merges_across_targets_count_changes_not_rereads(warehouse: Warehouse) -> None:
    """A group of several targets, a target merged twice in it, and a group rolled back
    after its first merge: each batch still changes exactly the rows whose values
    changed (an equal re-read is not a change) and the tables end right. The PostgreSQL
    warehouse keeps its stage tables per connection and empties them at commit; a stage
    reused within a transaction, or made by one that rolled back, must not leak rows."""
    other = TableRef("s", "u", "u")
    warehouse.ensure_table(other, CONTRACT)
    schema = "main" if isinstance(warehouse, DuckdbWarehouse) else "wh"

    def into_u(part: LoadPart) -> LoadPart:
        return replace(part, ref=other)

    def u_values() -> dict[int, str]:
        got = warehouse.query(f"SELECT k, v FROM {schema}.u").to_pylist()  # type: ignore[attr-defined]
        return {row["k"]: row["v"] for row in got}

    assert warehouse.load_group([_part("a", 1, (1, "a", 1), (2, "a", 1))])[0] is not None
    merged = warehouse.load_group([
        _part("b", 2, (1, "a", 1), (2, "b", 2)),  # key 1 re-read equal, key 2 changed
        into_u(_part("c", 3, (1, "c", 1))),
        # t's stage again in this transaction; its cursor is older than b's (a later read
        # wins by its extraction, not by cursor), so a row of b's left in the stage would win
        _part("d", 4, (2, "d", 1), (1, "a", 1))])
    assert [m.changed if m else None for m in merged] == [1, 1, 1]

    def failing() -> Iterator[LoadPart]:
        yield into_u(_part("e", 5, (1, "e", 2), (9, "e", 2)))
        raise RuntimeError("the second batch could not be read")

    with pytest.raises(RuntimeError):
        warehouse.load_group(failing())
    merged = warehouse.load_group([into_u(_part("f", 6, (1, "c", 1), (2, "f", 1))),
                                   _part("g", 7, (1, "g", 2))])
    assert [m.changed if m else None for m in merged] == [1, 1]
    assert _values(warehouse) == {1: "g", 2: "d"}
    assert u_values() == {1: "c", 2: "f"}
    assert not warehouse.is_loaded("e")


def test_a_loader_starting_while_another_commits_a_group_waits_for_no_one(pg_dsn: str
                                                                          ) -> None:
    """Every loader process ensures its tables once (ensure_table), while other loaders'
    groups are open. A group writes the shared ledger, then merges into its targets; an
    ensure_table that locked a target, then asked for the ledger (ALTER TABLE ... ADD
    COLUMN IF NOT EXISTS takes its lock even when the column is there) deadlocked with
    such a group: PostgreSQL aborted one of them after deadlock_timeout."""
    other = TableRef("s", "u", "u")
    running, starting = PostgresWarehouse(pg_dsn, "wh"), PostgresWarehouse(pg_dsn, "wh")
    try:
        for ref in (REF, other):
            running.ensure_table(ref, CONTRACT)
        errors: list[BaseException] = []

        def start() -> None:
            try:
                starting.ensure_table(other, CONTRACT)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion
                errors.append(exc)

        def parts() -> Iterator[LoadPart]:
            yield _part("a", 1, (1, "a", 1))  # the ledger row, then t
            thread = threading.Thread(target=start)
            thread.start()  # another loader starts meanwhile, and ensures u
            thread.join(timeout=3)
            yield replace(_part("b", 2, (1, "b", 1)), ref=other)  # the ledger row, then u
            thread.join()

        merged = running.load_group(parts())
        assert errors == []
        assert [m.changed if m else None for m in merged] == [1, 1]
    finally:
        running.close()
        starting.close()


def test_a_process_start_waits_for_no_reader(pg_dsn: str) -> None:
    """ensure_table runs at every loader process's start, while analysts read the
    targets. With every column already there it must take no table lock: ALTER TABLE
    ... ADD COLUMN IF NOT EXISTS waits for an exclusive lock even then, so one long query
    on a target held the start back, and every reader queued behind that ALTER."""
    first = PostgresWarehouse(pg_dsn, "wh")
    first.ensure_table(REF, CONTRACT)
    first.load_group([_part("a", 1, (1, "a", 1))])
    first.close()
    done = threading.Event()
    with psycopg.connect(pg_dsn) as reader:  # a long query's transaction: AccessShareLock
        reader.execute("SELECT count(*) FROM wh.t").fetchone()
        reader.execute("SELECT count(*) FROM wh._steadyflow_ledger").fetchone()

        def start() -> None:
            starting = PostgresWarehouse(pg_dsn, "wh")
            try:
                starting.ensure_table(REF, CONTRACT)
                done.set()
            finally:
                starting.close()

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        started = done.wait(timeout=5)
        reader.rollback()  # lets a blocked ALTER go on
        thread.join(timeout=30)
    assert started, "ensure_table waited for a reader of the target"


# --- through the pipeline -----------------------------------------------------------------
def _stores_config(tmp_path: Path, warehouse: dict[str, Any], buffer: dict[str, Any],
                   rows: int = 2_000) -> Path:
    paths = create_stores(tmp_path / "stores", stores=1, rows_per_store=rows, seed=3)
    return write_pipeline(tmp_path, [{
        "name": "store", "kind": "sqlite", "path": str(paths[0]),
        "tables": [{"name": "sales", "contract": "sales", "page_size": 250}]}],
        warehouse=warehouse, buffer=buffer)


def _queued(directory: Path) -> list[str]:
    """The SQLite buffer's batch ids in the order the loader takes them."""
    with closing(sqlite3.connect(directory / "state" / "buffer.db")) as db:
        return [b for b, in db.execute("SELECT batch_id FROM queue ORDER BY enqueued_at")]


def test_a_batch_the_warehouse_refuses_fails_alone(tmp_path: Path, pg_dsn: str) -> None:
    cfg = _stores_config(tmp_path, {"kind": "postgres", "dsn": pg_dsn, "schema": "wh",
                                    "group_batches": 4}, {"kind": "sqlite"})
    with Pipeline.from_yaml(cfg) as p:
        extracted = p.extract()
        assert extracted.ok and extracted.extracted_batches >= 6
        pending = {b.batch_id: b for b in p.state.pending_batches()}
        refused = pending[_queued(tmp_path)[1]]  # the second batch of the first group
        first = p.landing.read(refused).column("sale_id")[0].as_py()
        _, table, ref = p.config.table(refused.source, refused.table)
        p.warehouse.ensure_table(ref, p.config.contract_of(table))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # its rows fail for good
            conn.execute(f"ALTER TABLE wh.sales ADD CONSTRAINT no_{first} "
                         f"CHECK (sale_id <> {first})")
        summary = p.load(max_failures=1)
    assert summary.failed_batches == [refused.batch_id]
    assert summary.loaded_batches == len(pending) - 1
    with psycopg.connect(pg_dsn) as conn:
        ledger = {b for b, in conn.execute("SELECT batch_id FROM wh._steadyflow_ledger")}
        count = conn.execute("SELECT count(*) FROM wh.sales").fetchone()
    assert ledger == set(pending) - {refused.batch_id}
    assert count == (summary.loaded_rows,) and summary.loaded_rows > 0


# --- leases during a long group ------------------------------------------------------------
@pytest.fixture(params=["sqlite", "jetstream"])
def short_lease(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {"kind": "sqlite", "lease": "1s"}
        return
    with fresh_stream("sf_group") as stream:
        yield {"kind": "jetstream", "url": NATS_URL, "stream": stream, "lease": "1s"}


def _leased(directory: Path, buffer: dict[str, Any]) -> int:
    """How many of the buffer's messages a loader holds right now."""
    if buffer["kind"] == "sqlite":
        with closing(sqlite3.connect(directory / "state" / "buffer.db")) as db:
            return int(db.execute("SELECT count(*) FROM queue WHERE owner IS NOT NULL"
                                  ).fetchone()[0])

    async def pending() -> int:
        nc = await nats.connect(NATS_URL)
        try:
            info = await nc.jsm().consumer_info(buffer["stream"], "loader")
            return int(info.num_ack_pending or 0)
        finally:
            await nc.close()

    return asyncio.run(pending())


def test_a_group_longer_than_the_lease_keeps_its_batches(
        tmp_path: Path, short_lease: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    wh = {"kind": "duckdb", "path": "warehouse.duckdb"}
    cfg = _stores_config(tmp_path, wh, short_lease, rows=1_000)
    with Pipeline.from_yaml(cfg) as p:
        n = p.extract().extracted_batches
    assert n >= 3
    cfg.write_text(cfg.read_text().replace("path: warehouse.duckdb",
                                           f"path: warehouse.duckdb\n  group_batches: {n}"))
    other: Buffer = (SqliteBuffer(tmp_path / "state" / "buffer.db", lease=1.0)
                     if short_lease["kind"] == "sqlite" else
                     JetStreamBuffer(NATS_URL, short_lease["stream"], lease=1.0))
    taken: list[str] = []
    stop = threading.Event()

    def steal() -> None:  # a second loader, from the moment the group holds every batch
        while not stop.is_set() and _leased(tmp_path, short_lease) < n:
            stop.wait(0.02)
        while not stop.is_set():
            delivery = other.get(wait=0.2)
            if delivery is not None:
                taken.append(delivery.ref.batch_id)
                other.nack(delivery.ref.batch_id)

    thief = threading.Thread(target=steal, daemon=True)
    # the group pauses three leases between its merges and its commit
    monkeypatch.setenv("STEADYFLOW_FAILPOINT", "load.after_merge:1:sleep3")
    try:
        with Pipeline.from_yaml(cfg) as p:
            assert p.config.warehouse.group_batches == n
            thief.start()
            summary = p.load()
    finally:
        stop.set()
        thief.join(timeout=10)
        other.close()
    assert not taken, f"another loader got batches a running group held: {taken}"
    assert summary.ok and summary.loaded_batches == n, summary
    assert summary.duplicates_skipped == 0
