"""Work stealing of a first load (run/steal.py): idle extraction slots cut the far part of a
key range another reader is in the middle of. Tries to break it; each test ends with the
independent oracle (tests/support/oracle.py: both ends read through psycopg and duckdb):
every source row once in the warehouse, at its newest version, and no key twice.

- key types drawn by hypothesis (an integer, a text in a collation that is not byte
  order, a composite (text, integer) key), rows and page sizes drawn, with updates,
  inserts and deletes drawn at a drawn moment of the load (in one process: three slots on
  one PostgreSQL table whose source allows three queries, so two slots steal);
- with no change during the load, every row is read exactly once: the pages of the
  one-piece reader and of the stolen ranges tile the key space (a cut reader lands
  nothing past its bound);
- a stealer SIGKILLed mid-range, and a one-piece reader SIGSTOPped while a stealer cut it
  (then SIGCONT within its lease: it reads on to its new bound, landing nothing past it),
  both between `steadyflow worker` processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import steadyflow, write_pipeline
from tests.faults.test_backfill_chunks import WORDS, stopped
from tests.faults.test_initial_load import batches
from tests.faults.test_network import FAST, open_pipeline
from tests.support.gen import Col, Table
from tests.support.hypo import generated
from tests.support.jetstream import fresh_stream
from tests.support.oracle import diff, read_source, read_warehouse

from steadyflow.config import load_config
from steadyflow.model import Watermark
from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(240)]

KEYS = {"int": ["n"], "text": ["code"], "composite": ["code", "n"]}


def _contract(kind: str) -> dict[str, Any]:
    cols: dict[str, Any] = {"val": {"type": "string"},
                            "updated_at": {"type": "timestamp", "nullable": False}}
    if "code" in KEYS[kind]:
        cols["code"] = {"type": "string", "nullable": False}
    if "n" in KEYS[kind]:
        cols["n"] = {"type": "int64", "nullable": False}
    return {"primary_key": KEYS[kind], "cursor": "updated_at", "columns": cols}


def _key(kind: str, i: int) -> tuple[Any, ...]:
    code = f"{WORDS[i % len(WORDS)]}{i % 13}"
    return {"int": (i,), "text": (f"{code}-{i}",), "composite": (code, i)}[kind]


def _oracle_table(kind: str) -> Table:
    cols = [Col("code", "text")] if "code" in KEYS[kind] else []
    cols += [Col("n", "int64")] if "n" in KEYS[kind] else []
    return Table("items", [*cols, Col("val", "text"), Col("updated_at", "ts")], KEYS[kind],
                 "updated_at")


def _create(dsn: str, kind: str, rows: int) -> None:
    key = KEYS[kind]
    cols = [c for c in ('code text COLLATE "und-x-icu" NOT NULL', "n bigint NOT NULL")
            if c.split()[0] in key]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS items")
        conn.execute(f"CREATE TABLE items ({', '.join(cols)}, val text, updated_at "
                     f"timestamptz NOT NULL, PRIMARY KEY ({', '.join(key)}))")
        conn.execute(f"CREATE INDEX items_cursor ON items (updated_at, {', '.join(key)})")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO items ({', '.join(key)}, val, updated_at) VALUES "
                f"({', '.join(['%s'] * len(key))}, %s, timestamptz '2026-01-01 00:00:00+00' "
                "+ %s * interval '1 second')",
                [(*_key(kind, i), f"v{i}", i // 3) for i in range(rows)])


def _change(dsn: str, kind: str, updates: list[int], inserts: list[int],
            deletes: list[int]) -> None:
    key = KEYS[kind]
    match = " AND ".join(f"{k} = %s" for k in key)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(f"UPDATE items SET val = val || '+', updated_at = now() WHERE {match}",
                        [_key(kind, i) for i in updates])
        cur.executemany(f"INSERT INTO items ({', '.join(key)}, val, updated_at) VALUES "
                        f"({', '.join(['%s'] * len(key))}, 'new', now()) ON CONFLICT DO NOTHING",
                        [_key(kind, i) for i in inserts])
        cur.executemany(f"DELETE FROM items WHERE {match}", [_key(kind, i) for i in deletes])


def _source(dsn: str, page: int, queries: int = 3) -> dict[str, Any]:
    return {"name": "s", "kind": "postgres", "dsn": dsn,
            "resilience": {**FAST, "max_concurrent_queries": queries},
            "tables": [{"name": "items", "contract": "items", "target": "items",
                        "page_size": page, "min_page_size": page, "mirror_deletes": True}]}


def _assert_exact(directory: Path, dsn: str, kind: str, schema: str) -> None:
    """The oracle: the warehouse is the source, key by key, and holds no key twice."""
    table = _oracle_table(kind)
    expected = read_source("postgres", dsn, table)
    path = str(directory / "warehouse.duckdb")
    actual = read_warehouse("duckdb", path, schema, table)
    assert actual == expected, diff(expected, actual)
    with duckdb.connect(path, read_only=True) as db:
        rows, keys = db.execute(f"SELECT count(*), count(DISTINCT ({', '.join(KEYS[kind])})) "
                                f'FROM "{schema}".items').fetchone()  # type: ignore[misc]
    assert rows == keys == len(expected)


@pytest.fixture
def one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every first load in one piece (stealing is what splits it), its pages slowed a
    little so the idle slots find it mid-read."""
    monkeypatch.setenv("STEADYFLOW_BACKFILL_CHUNK_ROWS", "0")
    monkeypatch.setenv("STEADYFLOW_FAILPOINT", "extract.after_enqueue:1:sleep0.01")


def _load_with_changes(dsn: str, kind: str, rows: int, page: int, moment: int,
                       updates: list[int], inserts: list[int], deletes: list[int]) -> None:
    _create(dsn, kind, rows)
    directory = Path(tempfile.mkdtemp(prefix="h-steal-"))
    try:
        with open_pipeline(directory, [_source(dsn, page)], contracts={
                "items": _contract(kind)}, run={"max_parallel_sources": 3}) as pipeline:
            state = pipeline.state
            moves = [0]

            def hooked(name: str) -> None:
                original = getattr(state, name)

                def move(*args: Any, **kwargs: Any) -> None:
                    original(*args, **kwargs)
                    moves[0] += 1
                    if moves[0] == moment:
                        _change(dsn, kind, updates, inserts, deletes)

                setattr(state, name, move)

            hooked("advance_backfill")
            hooked("advance_chunk")
            summary = pipeline.run_once()
            assert summary.ok, summary.errors
            assert moves[0] >= moment
            stolen = state.backfill_chunks("s", "items")
            assert stolen and all(c.status == "done" for c in stolen), stolen
            assert state.checkpoint("s", "items") is not None
            assert pipeline.run_once().ok  # the next poll, as a follow's
            # a row deleted behind a reader is the one change no cursor sees: the repair
            # (mirror_deletes) removes it, as after any load
            reports = reconcile(pipeline, options=Options(repair=True))
            assert [r.error for r in reports] == [None]
            schema = pipeline.config.warehouse.schema_
        _assert_exact(directory, dsn, kind, schema)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@st.composite
def loads(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(KEYS)))
    rows = draw(st.integers(600, 1_500))
    page = draw(st.sampled_from([40, 60, 100]))
    some = st.lists(st.integers(0, rows - 1), max_size=12, unique=True)
    return {"kind": kind, "rows": rows, "page": page,
            "moment": draw(st.integers(1, max(2, rows // page))),
            "updates": draw(some), "deletes": draw(some),
            "inserts": draw(st.lists(st.integers(rows, 3 * rows), max_size=12, unique=True))}


@generated(4)
@given(load=loads())
def test_stolen_first_loads_of_drawn_keys_with_changes_meanwhile_are_exact(
        pg_dsn: str, one_piece: None, load: dict[str, Any]) -> None:
    _load_with_changes(pg_dsn, **load)


@pytest.mark.exhaustive
@generated(60)
@given(load=loads())
def test_stolen_first_loads_of_drawn_keys_with_changes_meanwhile_are_exact_exhaustive(
        pg_dsn: str, one_piece: None, load: dict[str, Any]) -> None:
    _load_with_changes(pg_dsn, **load)


def _tiles(refs: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(first key, last key, rows) of each landed page of an integer key, in key order."""
    spans = [(_at(r["low"]) if r["low"] else -1, _at(r["high"]), int(r["rows"]))
             for r in refs if r["meta"].get("order") == "key"]
    return sorted(spans)


def _at(mark: Any) -> int:
    """The integer key of a landed page's bound (a watermark, as JSON in the ref)."""
    return int((json.loads(mark) if isinstance(mark, str) else mark)["cursor"])


def test_without_changes_every_row_is_read_once(tmp_path: Path, pg_dsn: str,
                                                one_piece: None) -> None:
    _create(pg_dsn, "int", 3_000)
    with open_pipeline(tmp_path, [_source(pg_dsn, 50)], contracts={
            "items": _contract("int")}, run={"max_parallel_sources": 3}) as pipeline:
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        assert summary.extracted_rows == 3_000  # no page read twice, none refused landed
        stolen = pipeline.state.backfill_chunks("s", "items")
        assert len(stolen) >= 2, stolen
        schema = pipeline.config.warehouse.schema_
    spans = _tiles(batches(tmp_path))
    # the pages tile the keys: each starts after the one before it ends
    assert spans[0][0] == -1 and spans[-1][1] == 2_999
    for (_, end, _), (start, _, _) in zip(spans, spans[1:], strict=False):
        assert start == end, spans
    assert sum(n for _, _, n in spans) == 3_000
    _assert_exact(tmp_path, pg_dsn, "int", schema)


@pytest.mark.parametrize("chunk_rows", ["0", "1000"])
def test_a_cut_right_after_the_load_is_noted_leaves_the_readers_part_to_it(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, chunk_rows: str) -> None:
    """A stealer cuts the one-piece load the moment it is noted (before its reader's
    first page, and before a reader that may split it looked for ranges): its ranges are
    no plan, the reader's part up to the cut is still read. Split up front (1000 rows a
    range) the load is never cut as one piece, only its ranges."""
    monkeypatch.setenv("STEADYFLOW_BACKFILL_CHUNK_ROWS", chunk_rows)
    _create(pg_dsn, "int", 3_000)
    with open_pipeline(tmp_path, [_source(pg_dsn, 100)], contracts={
            "items": _contract("int")}, run={"max_parallel_sources": 3}) as pipeline:
        state = pipeline.state
        noted = state.start_backfill

        def then_cut(*args: Any, **kwargs: Any) -> None:
            noted(*args, **kwargs)
            deadline = time.monotonic() + 10
            while not state.backfill_chunks("s", "items"):
                assert time.monotonic() < deadline, "no stealer cut the load"
                time.sleep(0.02)

        state.start_backfill = then_cut  # type: ignore[method-assign]
        summary = pipeline.run_once()
        assert summary.ok, summary.errors
        assert summary.extracted_rows == 3_000
        ranges = state.backfill_chunks("s", "items")
        assert ranges and all(c.status == "done" for c in ranges)
        if chunk_rows != "0":
            assert [c.low for c in ranges[:3]] == [None, Watermark(999, ()),
                                                   Watermark(1999, ())]
        schema = pipeline.config.warehouse.schema_
    _assert_exact(tmp_path, pg_dsn, "int", schema)


def _workers(cfg: Path, directory: Path, env: dict[str, str], n: int,
             names: list[str]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for name in names[:n]:
        with (directory / f"{name}.log").open("w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "steadyflow", "--log-level", "info", "worker", "-c",
                 str(cfg)], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}))
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def _loaded(cfg: Path, rows: int, seconds: float = 90) -> Pipeline:
    """Wait until the load has ended (checkpoint) and every landed batch is loaded."""
    pipeline = Pipeline(load_config(cfg))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pipeline.state.checkpoint("s", "items") is not None and \
                not pipeline.state.pending_batches():
            return pipeline
        time.sleep(0.3)
    pipeline.close()
    raise AssertionError("the load did not end")


@pytest.fixture
def stream() -> Iterator[str]:
    with fresh_stream("sf_steal") as name:
        yield name


def _worker_config(tmp_path: Path, pg_dsn: str, stream: str, page: int) -> Path:
    """Workers sharing PostgreSQL state (a reader stopped inside a SQLite transaction
    would lock out the others) and a JetStream buffer."""
    return write_pipeline(tmp_path, [_source(pg_dsn, page, queries=1)],
                          contracts={"items": _contract("int")},
                          warehouse={"kind": "postgres", "dsn": pg_dsn, "schema": "wh"},
                          state={"kind": "postgres", "dsn": pg_dsn, "schema": "st"},
                          buffer={"kind": "jetstream", "stream": stream, "lease": "5s"},
                          run={"interval": 0.5})


def _landed(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        return [json.loads(ref) for ref, in conn.execute(
            "SELECT ref FROM st.manifest ORDER BY landed_at")]


def _assert_exact_pg(dsn: str) -> None:
    table = _oracle_table("int")
    expected = read_source("postgres", dsn, table)
    actual = read_warehouse("postgres", dsn, "wh", table)
    assert actual == expected, diff(expected, actual)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) - count(DISTINCT n) FROM wh.items").fetchone() \
            == (0,)


def test_a_run_killed_mid_steal_resumes_every_range(tmp_path: Path, pg_dsn: str) -> None:
    """One process, three slots stealing from one another, SIGKILLed at its 25th landed
    page (a range stolen, maybe cut again, half read); the next run ends the load."""
    _create(pg_dsn, "int", 3_000)
    cfg = write_pipeline(tmp_path, [_source(pg_dsn, 50)], contracts={
        "items": _contract("int")}, run={"max_parallel_sources": 3})
    env = {"STEADYFLOW_BACKFILL_CHUNK_ROWS": "0"}
    killed = steadyflow("run", "-c", str(cfg),
                        env={**env, "STEADYFLOW_FAILPOINT": "extract.after_enqueue:25"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    with Pipeline(load_config(cfg)) as pipeline:
        stolen = pipeline.state.backfill_chunks("s", "items")
        assert stolen and pipeline.state.checkpoint("s", "items") is None, stolen
    steadyflow("run", "-c", str(cfg), env={**env, "STEADYFLOW_FAILPOINT": ""}, check=True)
    with Pipeline(load_config(cfg)) as pipeline:
        assert all(c.status == "done" for c in pipeline.state.backfill_chunks("s", "items"))
        assert pipeline.state.checkpoint("s", "items") is not None
        schema = pipeline.config.warehouse.schema_
    _assert_exact(tmp_path, pg_dsn, "int", schema)
    # every landed page is loaded once (a page landed again after the kill is the same
    # batch: its content and range)
    ids = [r["batch_id"] for r in batches(tmp_path)]
    assert len(ids) == len(set(ids))


def test_a_reader_stopped_while_cut_lands_nothing_past_its_new_bound(
        tmp_path: Path, pg_dsn: str, stream: str) -> None:
    """The one-piece reader (pages of 200) stops before landing its 3rd page, keys
    400..599, read against the table's end; a worker with pages of 50 cuts it at key 549
    (half of the 300 keys after its recorded 399) and reads (549, 699]. Continued within
    its lease, the reader's page is refused and it reads on to 549 only."""
    _create(pg_dsn, "int", 700)
    lease = 20.0
    cfg = _worker_config(tmp_path, pg_dsn, stream, 200)
    thief_cfg = tmp_path / "thief.yml"  # the same pipeline, smaller pages
    thief_cfg.write_text(cfg.read_text().replace("page_size: 200", "page_size: 50")
                         .replace("min_page_size: 200", "min_page_size: 50"))
    env = {"STEADYFLOW_BACKFILL_CHUNK_ROWS": "0", "STEADYFLOW_EXTRACT_LEASE": str(lease)}
    holder = _workers(cfg, tmp_path, {**env, "STEADYFLOW_FAILPOINT":
                                      "extract.before_land:3:SIGSTOP"}, 1, ["holder"])
    thief: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while not stopped(holder[0].pid):
            assert holder[0].poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        thief = _workers(thief_cfg, tmp_path, {**env, "STEADYFLOW_FAILPOINT": ""}, 1,
                         ["thief"])
        with Pipeline(load_config(cfg)) as pipeline:
            while not pipeline.state.backfill_chunks("s", "items"):
                assert time.monotonic() - started < lease - 2, "not cut within the lease"
                time.sleep(0.1)
            first = pipeline.state.backfill_chunks("s", "items")[0]
        assert first.low == Watermark(549, ())
        holder[0].send_signal(signal.SIGCONT)  # within its lease: still the reader
        with _loaded(cfg, 700) as pipeline:
            assert all(c.status == "done" for c in pipeline.state.backfill_chunks(
                "s", "items"))
        landed = _landed(pg_dsn)
        own = [r for r in landed if r["meta"].get("order") == "key"
               and "chunk" not in r["meta"]]
        # its pages: 0..199, 200..399, then 400..549 read again up to its new bound
        assert [(_at(r["low"]) if r["low"] else -1, _at(r["high"])) for r in own] == [
            (-1, 199), (199, 399), (399, 549)], own
        assert sum(int(r["rows"]) for r in landed if r["meta"].get("order") == "key") == 700
        _assert_exact_pg(pg_dsn)
    finally:
        _stop(holder + thief)
