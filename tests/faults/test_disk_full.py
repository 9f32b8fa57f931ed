"""A full disk under each file steadyflow writes besides the landing zone (that one:
test_resilience_faults.py): the DuckDB warehouse (its WAL) during a group commit, the
state directory (the SQLite state and buffer files) mid-run, and `run --follow` while the
warehouse's disk fills and then gets room again.

Each disk is a small tmpfs of its own, filled up to a few pages' worth of room. Every
scenario ends the same way: the error named what is full and where, the exit code said it
could not finish, no file is corrupt, and once there is room the warehouse equals the source
row for row (read by the drivers, tests/support/oracle.py), every batch in the ledger once,
every manifest entry loaded, the tables' counts right.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.conftest import steadyflow, write_pipeline
from tests.faults.test_network import seed_pg, sql_source
from tests.support.disk import tmpfs
from tests.support.gen import Col, Table
from tests.support.oracle import diff, read_source, read_warehouse

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]

SALES = Table("sales", [Col("store_id", "int64"), Col("sale_id", "int64"), Col("sku", "text"),
                        Col("qty", "int64"), Col("unit_price", "dec", 12, 2),
                        Col("currency", "text"), Col("sold_at", "ts"), Col("updated_at", "ts")],
              ["store_id", "sale_id"], "updated_at")
LEDGER = "_steadyflow_ledger"
FIRST, MORE = 3_000, 12_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB filesystem of its own (the landing test's mechanism)."""
    with tmpfs(tmp_path / "disk", 4) as mount:
        yield mount


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` bytes of room; the file to delete to give it back."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def config(tmp_path: Path, pg_dsn: str, **extra: Any) -> Path:
    return write_pipeline(tmp_path, [sql_source("pg", "postgres", pg_dsn, page_size=500)],
                          **extra)


def run(cfg: Path, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return steadyflow("run", "-c", str(cfg), "--json", *args, timeout=60, env=env)


def state_rows(state_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(state_dir / "state.db", timeout=30)) as db:
        return db.execute(sql).fetchall()


def assert_whole(pg_dsn: str, warehouse: Path, state_dir: Path, rows: int) -> None:
    """Warehouse == source by the drivers; every batch once in the ledger and loaded in the
    manifest; the table's counts are the rows that reached the warehouse."""
    expected = read_source("postgres", pg_dsn, SALES)
    assert len(expected) == rows
    problem = diff(expected, read_warehouse("duckdb", str(warehouse), "main", SALES))
    assert not problem, problem
    with closing(duckdb.connect(str(warehouse), read_only=True)) as con:
        ledger = con.execute(f'SELECT batch_id, "rows" FROM main."{LEDGER}"').fetchall()
    twice = [b for b, n in Counter(b for b, _ in ledger).items() if n > 1]
    assert not twice, f"batches in the ledger more than once: {twice}"
    manifest = dict(state_rows(state_dir, "SELECT batch_id, status FROM manifest"))
    assert {b for b, _ in ledger} == set(manifest)
    assert set(manifest.values()) <= {"loaded", "duplicate"}, Counter(manifest.values())
    assert sum(n for _, n in ledger) == rows  # page boundaries never overlap here
    assert state_rows(state_dir, "SELECT sum(rows_changed) FROM table_health") == [(rows,)]


def assert_sound(warehouse: Path, state_dir: Path, pg_dsn: str) -> None:
    """After the failed run (SQLite cannot open a WAL file on a disk too full for its
    index, so this reads once the room is back, before any run): both state files pass
    their checks, and the warehouse holds whole batches only (its rows are exactly those
    its ledger counts, equal to the source's)."""
    with closing(sqlite3.connect(state_dir / "state.db", timeout=30)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with closing(sqlite3.connect(state_dir / "buffer.db", timeout=30)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    source = read_source("postgres", pg_dsn, SALES)
    loaded = read_warehouse("duckdb", str(warehouse), "main", SALES)
    assert all(source[k] == v for k, v in loaded.items())
    with closing(duckdb.connect(str(warehouse), read_only=True)) as con:
        booked = con.execute(f'SELECT coalesce(sum("rows"), 0) FROM main."{LEDGER}"'
                             ).fetchone()
    assert booked == (len(loaded),)


def test_warehouse_disk_full_during_a_group_commit(
        tmp_path: Path, pg_dsn: str, small_disk: Path) -> None:
    """The group's COMMIT cannot write DuckDB's WAL. The error says so and names the file
    (a ROLLBACK after the failed COMMIT used to replace it with 'cannot rollback - no
    transaction is active'); nothing of the group is visible; the next run loads it."""
    warehouse = small_disk / "warehouse.duckdb"
    cfg = config(tmp_path, pg_dsn, warehouse={"kind": "duckdb", "path": str(warehouse)})
    seed_pg(pg_dsn, FIRST)
    assert run(cfg).returncode == 0
    seed_pg(pg_dsn, MORE, start=FIRST + 1)
    filler = fill(small_disk, 100_000)

    full = run(cfg)
    assert full.returncode == 1, full.stdout + full.stderr
    errors = json.loads(full.stdout.strip().splitlines()[-1])["errors"]
    assert errors and all("No space left on device" in e and f"{warehouse}.wal" in e
                          for e in errors), errors
    assert "Traceback" not in full.stderr
    filler.unlink()
    assert_sound(warehouse, tmp_path / "state", pg_dsn)
    again = run(cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_whole(pg_dsn, warehouse, tmp_path / "state", FIRST + MORE)


@pytest.mark.parametrize("leave", [16_000, 120_000])
def test_state_dir_disk_full_mid_run(
        tmp_path: Path, pg_dsn: str, small_disk: Path, leave: int) -> None:
    """state.db and buffer.db share a full disk: SQLite's 'database or disk is full' named
    neither file and escaped the run as a traceback. Now: one clear error naming the file,
    a non-zero exit, both files intact, and the next run with room finishes the work."""
    cfg = config(tmp_path, pg_dsn, state_dir=str(small_disk))
    seed_pg(pg_dsn, FIRST)
    assert run(cfg).returncode == 0
    seed_pg(pg_dsn, MORE, start=FIRST + 1)
    filler = fill(small_disk, leave)

    full = run(cfg)
    out = full.stdout + full.stderr
    assert full.returncode in (1, 2), out
    assert "Traceback" not in out, out
    assert "the disk is full" in out and str(small_disk) in out, out
    filler.unlink()
    assert_sound(tmp_path / "warehouse.duckdb", small_disk, pg_dsn)
    again = run(cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_whole(pg_dsn, tmp_path / "warehouse.duckdb", small_disk, FIRST + MORE)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loaded_rows(state_dir: Path) -> int:
    """Rows loaded so far, by the state (the follower holds the DuckDB file)."""
    if not (state_dir / "state.db").exists():
        return 0
    try:
        return int(state_rows(state_dir, "SELECT coalesce(sum(rows_changed), 0) "
                                         "FROM table_health")[0][0])
    except sqlite3.OperationalError as exc:  # the follower has not made its schema yet
        if "no such table" not in str(exc):
            raise
        return 0


def status(cfg: Path) -> tuple[int, dict[str, Any]]:
    proc = steadyflow("status", "-c", str(cfg), "--json", timeout=60)
    return proc.returncode, json.loads(proc.stdout)


def test_follow_while_the_warehouse_disk_fills_and_gets_room_again(
        tmp_path: Path, pg_dsn: str, small_disk: Path) -> None:
    """`run --follow` keeps running while its warehouse's disk is full: no hang, no spin,
    the failure (what is full, where) in `steadyflow status` (exit 2); it stops when told,
    with a non-zero exit; the next run with room catches up."""
    warehouse = small_disk / "warehouse.duckdb"
    cfg = config(tmp_path, pg_dsn, warehouse={"kind": "duckdb", "path": str(warehouse)},
                 run={"interval": 0.5})
    seed_pg(pg_dsn, FIRST)
    follower = subprocess.Popen(
        [sys.executable, "-m", "steadyflow", "run", "-c", str(cfg), "--follow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while loaded_rows(tmp_path / "state") < FIRST:
            assert follower.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        filler = fill(small_disk, 100_000)
        seed_pg(pg_dsn, MORE, start=FIRST + 1)
        deadline = time.monotonic() + 30
        while True:  # the failure reaches the status
            code, report = status(cfg)
            errors = [t.get("last_error") or "" for t in report["tables"]]
            if code == 2 and any("No space left on device" in e for e in errors):
                break
            assert follower.poll() is None and time.monotonic() < deadline, (code, report)
            time.sleep(0.3)
        assert any(str(warehouse) in e for e in errors), errors
        used = cpu_seconds(follower.pid)
        time.sleep(2.0)
        assert cpu_seconds(follower.pid) - used < 1.0, "the follower spins on the full disk"
        assert follower.poll() is None
        filler.unlink()
        time.sleep(1.0)
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()  # reaps it and closes its pipes
    assert follower.returncode in (1, 2), out + err  # stopped with batches not loaded
    assert "Traceback" not in err, err

    again = run(cfg)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_whole(pg_dsn, warehouse, tmp_path / "state", FIRST + MORE)
    code, report = status(cfg)
    assert code == 0, report



def test_a_warehouse_invalidated_by_a_full_disk_is_opened_again(small_disk: Path) -> None:
    """A checkpoint that cannot write (the WAL past checkpoint_threshold, the disk full)
    is fatal to DuckDB: it invalidates the database and refuses every later statement
    until it is opened again. A long-running loader failed every load until restarted;
    now the failure is retryable (WarehouseUnavailable) and the next attempt, with room
    again, opens the file anew (replaying its WAL) and loads."""
    from steadyflow.errors import WarehouseUnavailable
    from steadyflow.merge.duckdb import DuckdbWarehouse
    from steadyflow.model import BatchRef, Column, Contract, TableRef
    from steadyflow.ports import LoadPart

    contract = Contract(columns=(Column("k", "int64", nullable=False), Column("v", "string"),
                                 Column("ts", "int64")), primary_key=("k",), cursor="ts")
    ref = TableRef("s", "t", "t")

    def part(n: int) -> LoadPart:
        import pyarrow as pa

        rows = pa.table({"k": pa.array(range(n * 10_000, n * 10_000 + 2_000), pa.int64()),
                         "v": pa.array([f"value {i} " * 5 for i in range(2_000)]),
                         "ts": pa.array([n] * 2_000, pa.int64())})
        return LoadPart(ref, contract, BatchRef(f"b{n}", "s", "t", "x", 2_000, 0, "", None,
                                                None, 0.0, seq=n), rows)

    path = small_disk / "warehouse.duckdb"
    wh = DuckdbWarehouse(path)
    try:
        wh.ensure_table(ref, contract)
        wh.query("SET checkpoint_threshold = '1KB'")  # every commit checkpoints
        assert wh.load_group([part(1)])[0] is not None
        filler = fill(small_disk, 20_000)
        with pytest.raises(WarehouseUnavailable, match="invalidated"):
            wh.load_group([part(2)])
        filler.unlink()
        for n in (2, 3):  # the same object, room again: opened anew, and it loads
            merged = wh.load_group([part(n)])[0]
            assert merged is not None and merged.changed == 2_000
    finally:
        wh.close()
    with closing(duckdb.connect(str(path), read_only=True)) as con:  # the oracle
        assert con.execute("SELECT count(*), count(DISTINCT k) FROM main.t").fetchone() == (
            6_000, 6_000)
        assert sorted(r[0] for r in con.execute(
            f"SELECT batch_id FROM main.{LEDGER}").fetchall()) == ["b1", "b2", "b3"]
