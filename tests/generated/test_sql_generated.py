"""Correct on ANY data: hypothesis draws table shapes, types, values, page sizes, load modes and
lookback, puts the rows into a real source database, runs the real pipeline three times with
changes in between, and compares both ends through their drivers (tests/support/oracle.py).

Each example ends in one of two ways, nothing else:
  * the warehouse equals the source, key by key and value by value, for every row whose
    values fit the contract; every other row is in quarantine;
  * a loud refusal naming the table and column (e.g. a SQLite cursor spelled two ways).

The same cases run again with the first load split into key ranges of a few rows
(run/backfill.py), read by 1-3 threads, and compared right after it; then the landed files
compacted, the warehouse table emptied and every landed batch replayed (`split`,
`compacted`); exhaustive only, also with the state in PostgreSQL and the buffer a JetStream
stream (`scaled`), and with the first run a process SIGKILLed part way into its load while
the changes are made (`killed`).

CI runs a fixed seed and a bounded number of examples per source x warehouse;
`make test-exhaustive` runs the same cases with >= 2,000 examples in all.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import steadyflow
from tests.support import gen, oracle
from tests.support.gen import Table
from tests.support.hypo import exhaustive_examples, generated, tier_timeout
from tests.support.jetstream import NATS_URL, fresh_stream
from tests.support.source_db import SourceDb

from steadyflow.config import parse_config
from steadyflow.reconcile.runner import Options, TableReport, reconcile
from steadyflow.run.compact import compact_pipeline
from steadyflow.run.pipeline import Pipeline, RunSummary
from steadyflow.run.replay import replay_batches

SOURCES = ("sqlite", "postgres", "mysql")
WAREHOUSES = ("duckdb", "postgres")
CI_EXAMPLES = int(os.environ.get("STEADYFLOW_GENERATED_EXAMPLES", "12"))
EXHAUSTIVE_EXAMPLES = exhaustive_examples(350)  # x 6 source/warehouse pairs = 2,100
_counter = itertools.count()


# --- the pipeline, written as a user would ---------------------------------------------------
def config(tmp: Path, source: SourceDb, wh_kind: str, wh_where: str, schema: str,
           tables: list[Table], page_size: int, initial_load: str, lookback: float,
           readers: int = 1) -> dict[str, Any]:
    contracts = {}
    for t in tables:
        columns: dict[str, Any] = {}
        for c in t.cols:
            spec: dict[str, Any] = {"type": c.contract_type, "nullable": c.nullable}
            if c.minimum is not None:
                spec["min"] = c.minimum
            columns[c.name] = spec
        contracts[t.name] = {"primary_key": t.key, "cursor": t.cursor, "columns": columns}
    location = {"sqlite": {"path": source.where}}.get(source.kind, {"dsn": source.where})
    warehouse = ({"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": schema}
                 if wh_kind == "duckdb" else
                 {"kind": "postgres", "dsn": wh_where, "schema": schema})
    return {
        "name": "generated", "base_dir": str(tmp), "state_dir": str(tmp / "state"),
        "landing": {"path": str(tmp / "landing")}, "warehouse": warehouse,
        "contracts": contracts,
        "sources": [{
            "name": "src", "kind": source.kind, **location,
            "resilience": {"retries": 0, "statement_timeout": "20s",
                           "max_concurrent_queries": readers},
            "tables": [{"name": t.name, "contract": t.name, "page_size": page_size,
                        "min_page_size": 1, "initial_load": initial_load,
                        "lookback": lookback if can_step_back(t) else 0.0}
                       for t in tables],
        }],
    }


def run_killed(tmp: Path, raw: dict[str, Any], chunk: int, page: int) -> RunSummary:
    """`steadyflow run` in a child process SIGKILLed once its `page`-th page is queued
    (after the enqueue, before the position moves): a RunSummary whose errors are
    ['killed'] if it was, an empty one if the run ended first."""
    cfg = tmp / "pipeline.yml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {"STEADYFLOW_FAILPOINT": f"extract.after_enqueue:{page}"}
    if chunk:
        env["STEADYFLOW_BACKFILL_CHUNK_ROWS"] = str(chunk)
    proc = steadyflow("run", "--json", "-c", str(cfg), env=env)
    if proc.returncode == -signal.SIGKILL:
        return RunSummary(errors=["killed"])
    assert proc.returncode in (0, 1, 2), proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])["errors"]
    assert errors or not proc.returncode, proc.stderr[-3000:]
    return RunSummary(errors=errors)


def can_step_back(table: Table) -> bool:
    """An ENUM cursor is ordered but no time or number: no lookback (refused in config)."""
    return table.col(table.cursor).kind != "enum"


def run(raw: dict[str, Any]) -> RunSummary:
    with Pipeline(parse_config(raw)) as pipeline:
        return pipeline.run_once(raise_on_error=False)


def quarantined_rows(landing: Path, table: str) -> int:
    root = landing / "_quarantine" / f"src.{table}"
    return sum(pq.read_metadata(f).num_rows for f in root.rglob("*.parquet")) \
        if root.exists() else 0


# --- what the run must refuse ----------------------------------------------------------------
def refusal_expected(source: SourceDb, table: Table) -> str | None:
    """The column a SQLite table must be refused for, read from the file itself: a time
    cursor stored in two spellings (' ' and 'T', or two zone suffixes: 'iso_offset' spells
    a time it cannot shift by +02:00 with 'Z'), whose text order is not time order, or
    else a time key so stored (two spellings of one instant would be one warehouse key:
    extract/key_spellings.py). None: no refusal."""
    if source.kind != "sqlite":
        return None
    times = [c for c in (table.cursor, *table.key) if table.col(c).kind == "ts"]
    with closing(sqlite3.connect(source.where)) as conn:
        for name in dict.fromkeys(times):
            col = f'"{name}"'
            zone = (f"CASE WHEN {col} LIKE '%Z' THEN 'Z' WHEN {col} GLOB "
                    f"'*[+-][0-9][0-9]:[0-9][0-9]' THEN substr({col}, -6) ELSE '' END")
            seps, zones = conn.execute(f"SELECT count(DISTINCT substr({col}, 11, 1)), "
                                       f'count(DISTINCT {zone}) FROM "{table.name}"'
                                       ).fetchone()
            if seps > 1 or zones > 1:
                return name
    return None


# --- the property ----------------------------------------------------------------------------
def check_case(data: st.DataObject, tmp_root: Path, source: SourceDb, wh_kind: str,
               wh_where: str, split: bool = False, compacted: bool = False,
               scaled: str = "", killed: bool = False) -> None:
    """One drawn example. `split`: the first load is read in key ranges of a few rows
    (run/backfill.py), by one to three reader threads, and the warehouse is also compared
    right after it (a row the ranges missed is not yet hidden by a later update).
    `compacted`: at the end the landed files are compacted (`steadyflow compact`), the
    warehouse table emptied and every landed batch replayed: the same rows again.
    `scaled` (a PostgreSQL DSN): the state in a schema of that database and the buffer a
    JetStream stream of the case's own, as `steadyflow worker`s share them.
    `killed`: the first run is a `steadyflow run` process SIGKILLed after its k-th page is
    queued (k drawn; a run with fewer pages ends), so the changes below are made while
    its load is unfinished; the next runs resume it."""
    n = next(_counter)
    tmp = tmp_root / f"case{n}"
    tmp.mkdir()
    if source.kind == "sqlite":
        source = SourceDb("sqlite", str(tmp / "store.db"))
    ntables = data.draw(st.integers(1, 2), label="tables")
    tables = [data.draw(gen.tables(source.kind, f"t{n}_{i}"), label=f"table {i}")
              for i in range(ntables)]
    page_size = data.draw(st.sampled_from([1, 2, 3, 5, 8, 1000]), label="page_size")
    initial_load = data.draw(st.sampled_from(["key", "cursor"]), label="initial_load")
    lookback = data.draw(st.sampled_from([0.0, 60.0]), label="lookback")
    unit = data.draw(st.sampled_from(["us", "ms", "s"]), label="cursor unit")
    chunk, readers = 0, 1
    if split:
        initial_load = "key"
        chunk = data.draw(st.sampled_from([1, 2, 3, 5]), label="rows per key range")
        readers = data.draw(st.sampled_from([1, 2, 3]), label="reader threads")
    kill_at = data.draw(st.integers(1, 6), label="killed at page") if killed else 0
    target = data.draw(st.sampled_from([1, 3_000, 10**9]), label="compact target") \
        if compacted else 0
    schema = f"w{n}"
    raw = config(tmp, source, wh_kind, wh_where, schema, tables, page_size, initial_load,
                 lookback, readers)
    stream = ExitStack()
    if scaled:
        raw["state"] = {"kind": "postgres", "dsn": scaled, "schema": f"st{n}"}
        raw["buffer"] = {"kind": "jetstream", "url": NATS_URL, "lease": "5s",
                         "stream": stream.enter_context(fresh_stream("sf_gen"))}
    where = wh_where if wh_kind == "postgres" else str(tmp / "wh.duckdb")
    how = (f"page_size {page_size}, initial_load {initial_load}, lookback {lookback}, "
           f"unit {unit}" + (f", key ranges of {chunk} rows, {readers} reader(s)"
                             if split else "")
           + (f", run 1 killed after page {kill_at}" if killed else ""))
    keys: dict[str, set[tuple[Any, ...]]] = {t.name: set() for t in tables}
    latest: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {t.name: {} for t in tables}
    steps = {t.name: 0 for t in tables}
    with stream, chunk_rows(chunk) if split else nullcontext():
        try:
            for t in tables:
                source.execute([(s, []) for s in gen.ddl(t, source.kind)])
                # a table whose rows mostly share a cursor value has runs of ties longer than
                # most page sizes (a bulk import stamped once)
                count = data.draw(st.integers(10, 16) if t.ties else st.integers(0, 12))
                first = data.draw(gen.rows(t, source.kind, count, 0, unit, keys[t.name]),
                                  label=f"{t.name} rows")
                source.insert(t, first, 0)
                t.rows = first
                for r in first:
                    latest[t.name][gen.normal_key(t, r, source.kind)] = r
                # the newest cursor step loaded by run 1: late rows go just behind it, inside
                # the 60 s / 60 units / 1 day lookback whatever the cursor's unit
                steps[t.name] = max((r[gen.STEP] for r in first), default=0)
            summaries = [run(raw) if not kill_at else run_killed(tmp, raw, chunk, kill_at)]
            if split and summaries[0].errors != ["killed"]:  # the first load alone, exactly
                for t in tables:
                    if refusal_expected(source, t) is None:
                        compare(source, wh_kind, where, schema, t, latest[t.name],
                                f"after the first load; {how}")
            if compacted:  # the first load's files now: the last compaction takes this
                # one's output (under half the target) with the later runs' files again
                with Pipeline(parse_config(raw)) as pipeline:
                    compact_pipeline(pipeline, target, include_today=True)
            for t in tables:  # updates, new rows and (with a lookback) late rows
                existing = list(latest[t.name].values())
                chosen = data.draw(st.lists(st.sampled_from(existing), max_size=4, unique_by=id)
                                   if existing else st.just([]), label=f"{t.name} updated")
                step = steps[t.name] + 40
                for i, row in enumerate(chosen):
                    values = gen.fresh_values(data.draw, t, source.kind)
                    step += data.draw(st.sampled_from([0, 1, 3]))
                    values[t.cursor] = gen.cursor_value(t.col(t.cursor), step, unit)
                    source.update(t, row, values, 100 + i)
                    latest[t.name][gen.normal_key(t, row, source.kind)] = {**row, **values}
                new = data.draw(gen.rows(t, source.kind, data.draw(st.integers(0, 5)), step + 1,
                                         unit, keys[t.name]), label=f"{t.name} new rows")
                if lookback and existing and can_step_back(t):
                    late = data.draw(gen.rows(t, source.kind, data.draw(st.integers(0, 3)),
                                              steps[t.name] - 5 if t.col(t.cursor).kind != "date"
                                              else steps[t.name], unit, keys[t.name]),
                                     label=f"{t.name} late rows")
                    new += late
                source.insert(t, new, 200)
                t.rows = t.rows + new
                for r in new:
                    latest[t.name][gen.normal_key(t, r, source.kind)] = r
            summaries.append(run(raw))
            summaries.append(run(raw))
            for t in tables:
                label = f"src.{t.name}"
                shape = ", ".join(f"{c.name} {c.kind}" for c in t.cols)
                refused = refusal_expected(source, t)
                if refused is not None:
                    last = summaries[-1]
                    assert label in last.failed_tables, (
                        f"{t.name} ({shape}): {refused} stored in two spellings must be "
                        "refused")
                    assert f"column {refused}" in " ".join(last.errors), last.errors
                    continue
                for s in summaries:  # a run never fails a table quietly, nor for a fitting row
                    mine = [e for e in s.errors if label in e or f"table={t.name}" in e]
                    assert label not in s.failed_tables and not mine, f"{t.name} ({shape}): {mine}"
                expected, actual, bad = compare(source, wh_kind, where, schema, t,
                                                latest[t.name], how)
                assert quarantined_rows(tmp / "landing", t.name) >= len(bad), (
                    f"{t.name}: {len(bad)} rows cannot be loaded but fewer are in quarantine")
                if compacted:  # (a table no row reached may not exist: nothing to empty)
                    compact_and_replay(raw, t, wh_kind, where, schema, target, bool(actual))
                    expected, actual, _ = compare(source, wh_kind, where, schema, t,
                                                  latest[t.name], f"{how}; compacted to "
                                                  f"{target} bytes, emptied, replayed")
                if os.environ.get("STEADYFLOW_GENERATED_RECONCILE", "1") == "1":
                    check_reconcile(raw, t, wh_kind, where, schema, expected, actual)
        finally:
            for t in tables:
                source.drop(t)
            if wh_kind == "postgres":
                with psycopg.connect(wh_where, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())
            if scaled:
                with psycopg.connect(scaled, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "st{n}" CASCADE'.encode())


def compare(source: SourceDb, wh_kind: str, where: str, schema: str, t: Table,
            latest: dict[tuple[Any, ...], dict[str, Any]], how: str
            ) -> tuple[dict[Any, Any], dict[Any, Any], set[tuple[Any, ...]]]:
    """The oracle's verdict on one table: the warehouse holds every source row whose values
    fit the contract, exactly. Returns (expected, actual, keys of rows that do not fit)."""
    shape = ", ".join(f"{c.name} {c.kind}" for c in t.cols)
    bad = {k for k, r in latest.items() if any(gen.is_invalid(c, r[c.name]) for c in t.cols)}
    expected = oracle.read_source(source.kind, source.where, t)
    bad_canon = {tuple(oracle.canon(t.col(k), r[k]) for k in t.key)
                 for key, r in latest.items() if key in bad}
    expected = {k: v for k, v in expected.items() if k not in bad_canon}
    actual = oracle.read_warehouse(wh_kind, where, schema, t)
    problem = oracle.diff(expected, actual)
    assert not problem, f"{t.name} ({shape}; {how}, spelling {t.spelling}):\n{problem}"
    return expected, actual, bad


@contextmanager
def chunk_rows(rows: int) -> Iterator[None]:
    """Split every first load into key ranges of `rows` rows (run/backfill.py reads this
    for a table of any size)."""
    before = os.environ.get("STEADYFLOW_BACKFILL_CHUNK_ROWS")
    os.environ["STEADYFLOW_BACKFILL_CHUNK_ROWS"] = str(rows)
    try:
        yield
    finally:
        if before is None:
            del os.environ["STEADYFLOW_BACKFILL_CHUNK_ROWS"]
        else:
            os.environ["STEADYFLOW_BACKFILL_CHUNK_ROWS"] = before


def compact_and_replay(raw: dict[str, Any], table: Table, wh_kind: str, where: str,
                       schema: str, target: int, empty: bool = True) -> None:
    """`steadyflow compact --include-today`, the warehouse table emptied through its driver
    (a restore from an empty backup), then `steadyflow replay --table`: every landed batch,
    read from wherever compaction moved it, applied again."""
    with Pipeline(parse_config(raw)) as pipeline:
        compact_pipeline(pipeline, target, include_today=True)
    sql = f'DELETE FROM "{schema}"."{table.name}"'
    if empty and wh_kind == "postgres":
        with psycopg.connect(where) as conn:
            conn.execute(sql.encode())
    elif empty:
        with closing(duckdb.connect(where)) as conn:
            conn.execute(sql)
    with Pipeline(parse_config(raw)) as pipeline:
        replay_batches(pipeline, [], f"src.{table.name}")


def reconciled(raw: dict[str, Any], table: str, repair: bool = False) -> TableReport:
    with Pipeline(parse_config(raw)) as pipeline:
        (report,) = reconcile(pipeline, [table], Options(repair=repair))
        return report


def damage(wh_kind: str, where: str, schema: str, table: Table, key: tuple[Any, ...]) -> None:
    """Delete one warehouse row through the driver (as an outside mishap would)."""
    names = [c.name for c in table.cols]
    row = oracle.read_warehouse(wh_kind, where, schema, table)[key]
    preds = " AND ".join(f'"{k}" = ?' if wh_kind == "duckdb" else f'"{k}" = %s'
                         for k in table.key)
    params = [oracle.raw_key_value(table.col(k), row[names.index(k)]) for k in table.key]
    sql = f'DELETE FROM "{schema}"."{table.name}" WHERE {preds}'
    if wh_kind == "postgres":
        with psycopg.connect(where) as conn:
            assert conn.execute(sql.encode(), params).rowcount == 1
    else:
        with closing(duckdb.connect(where)) as conn:
            conn.execute(sql, params)


def check_reconcile(raw: dict[str, Any], table: Table, wh_kind: str, where: str, schema: str,
                    expected: dict[Any, Any], actual: dict[Any, Any]) -> None:
    """steadyflow's own reconcile must agree with the oracle: nothing to report when the
    oracle found the ends equal; exactly the deleted row after one is deleted; and its
    repair makes the ends equal again (judged by the oracle, not by reconcile)."""
    report = reconciled(raw, table.name)
    assert report.error is None and report.differences == 0, (
        f"{table.name}: the oracle finds the warehouse equal, reconcile reports "
        f"{report.to_dict()}")
    if not expected:
        return
    key = sorted(expected, key=repr)[0]
    damage(wh_kind, where, schema, table, key)
    report = reconciled(raw, table.name, repair=True)
    assert report.error is None and report.missing == 1 and report.differences == 1, (
        f"{table.name}: one warehouse row deleted, reconcile reports {report.to_dict()}")
    problem = oracle.diff(expected, oracle.read_warehouse(wh_kind, where, schema, table))
    assert not problem, f"{table.name}: after reconcile --repair:\n{problem}"


def _source(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> SourceDb:
    if kind == "postgres":
        return SourceDb("postgres", request.getfixturevalue("pg_dsn"))
    if kind == "mysql":
        return SourceDb("mysql", request.getfixturevalue("mysql_dsn"))
    return SourceDb("sqlite", str(tmp_path / "unused.db"))


def _run(source_kind: str, wh_kind: str, examples: int, request: pytest.FixtureRequest,
         tmp_path: Path, split: bool = False, compacted: bool = False,
         scaled: bool = False, killed: bool = False) -> None:
    source = _source(source_kind, request, tmp_path)
    wh_where = request.getfixturevalue("pg_dsn") if wh_kind == "postgres" else ""
    state = request.getfixturevalue("pg_dsn") if scaled else ""

    @generated(examples)
    @given(st.data())
    def case(data: st.DataObject) -> None:
        check_case(data, tmp_path, source, wh_kind, wh_where, split, compacted, state,
                   killed)

    case()


@pytest.mark.integration
@pytest.mark.parametrize("wh_kind", WAREHOUSES)
@pytest.mark.parametrize("source_kind", SOURCES)
def test_generated_tables_arrive_exactly(source_kind: str, wh_kind: str,
                                         request: pytest.FixtureRequest,
                                         tmp_path: Path) -> None:
    _run(source_kind, wh_kind, CI_EXAMPLES, request, tmp_path)


@pytest.mark.exhaustive
@tier_timeout(EXHAUSTIVE_EXAMPLES)
@pytest.mark.parametrize("wh_kind", WAREHOUSES)
@pytest.mark.parametrize("source_kind", SOURCES)
def test_generated_tables_exhaustive(source_kind: str, wh_kind: str,
                                     request: pytest.FixtureRequest, tmp_path: Path) -> None:
    _run(source_kind, wh_kind, EXHAUSTIVE_EXAMPLES, request, tmp_path)


# --- the split first load, compaction, replay, shared stores, a kill mid-load ---------------
# each case below also loads its first run in key ranges of 1-5 rows (run/backfill.py) on
# 1-3 reader threads and compares right after it, and ends with the landed files compacted,
# the warehouse table emptied and every batch replayed (run/compact.py, run/replay.py);
# CI runs a few per source (~4 s each), `make test-exhaustive` 300 per case
SPLIT_CI_EXAMPLES = int(os.environ.get("STEADYFLOW_GENERATED_SPLIT_EXAMPLES", "2"))
SPLIT_EXHAUSTIVE_EXAMPLES = exhaustive_examples(300)


@pytest.mark.integration
@pytest.mark.parametrize("source_kind", SOURCES)
def test_generated_tables_arrive_through_key_ranges_and_replay_from_compacted_landing(
        source_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Every drawn key type's range bounds (found by the database, kept in the state as
    JSON, compared again in the ranges' SQL) cover each row exactly once, the cursor pass
    after the load misses nothing, and the landed batches compacted into files of one to
    all of them replay into an emptied warehouse table as the same rows."""
    _run(source_kind, "duckdb", SPLIT_CI_EXAMPLES, request, tmp_path, split=True,
         compacted=True)


@pytest.mark.exhaustive
@tier_timeout(SPLIT_EXHAUSTIVE_EXAMPLES)
@pytest.mark.parametrize("wh_kind", WAREHOUSES)
@pytest.mark.parametrize("source_kind", SOURCES)
def test_generated_key_ranges_and_compacted_replay_exhaustive(
        source_kind: str, wh_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    _run(source_kind, wh_kind, SPLIT_EXHAUSTIVE_EXAMPLES, request, tmp_path, split=True,
         compacted=True)


@pytest.mark.exhaustive
@tier_timeout(SPLIT_EXHAUSTIVE_EXAMPLES)
@pytest.mark.parametrize("source_kind", SOURCES)
def test_generated_key_ranges_with_shared_stores_exhaustive(
        source_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The stores `steadyflow worker`s share: PostgreSQL state, a JetStream buffer."""
    _run(source_kind, "postgres", SPLIT_EXHAUSTIVE_EXAMPLES, request, tmp_path, split=True,
         compacted=True, scaled=True)


@pytest.mark.exhaustive
@tier_timeout(SPLIT_EXHAUSTIVE_EXAMPLES)
@pytest.mark.parametrize("source_kind", SOURCES)
def test_generated_key_ranges_killed_exhaustive(
        source_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The first load SIGKILLed after its k-th page, the changes made before it resumes."""
    _run(source_kind, "duckdb", SPLIT_EXHAUSTIVE_EXAMPLES, request, tmp_path, split=True,
         killed=True)
