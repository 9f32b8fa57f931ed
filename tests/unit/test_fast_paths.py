"""The speed work's shortcuts give exactly the results of the paths they replace.

- DuckDB: INSERT / DELETE+INSERT (merge/duckdb.py) == the plan's MERGE, for new rows,
  newer and older versions, cursor ties, NULL cursors and a batch's own duplicate keys.
- PostgreSQL → Arrow (extract/pg_arrow.py): exact casts to the contract type, text when a
  value does not fit (as column_to_arrow), exact literals, libpq parameters added to DSNs.
- Landing: the Parquet settings round-trip every contract type.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from tests.conftest import write_pipeline

from steadyflow.config import load_config
from steadyflow.errors import ConfigError, FatalError
from steadyflow.extract.pg_arrow import _literal, conform_column, conninfo
from steadyflow.land.parquet import LandingZone
from steadyflow.merge.duckdb import DuckdbWarehouse, quote
from steadyflow.merge.plan import plan, with_seq
from steadyflow.model import BatchRef, Column, Contract, TableRef
from steadyflow.ports import LoadPart, Merged
from steadyflow.run.pipeline import Pipeline

CONTRACT = Contract(
    columns=(Column("k", "int64", nullable=False), Column("v", "string"),
             Column("ts", "int64")),
    primary_key=("k",), cursor="ts")
REF = TableRef("s", "t", "t")


def _batch(n: int) -> BatchRef:
    return BatchRef(f"b{n}", "s", "t", "x", 0, 0, "", None, None, 0.0, seq=n + 1)


def _rows(*rows: tuple[int, str, int | None]) -> pa.Table:
    k, v, ts = zip(*rows, strict=True)
    return pa.table({"k": pa.array(k, pa.int64()), "v": pa.array(v, pa.string()),
                     "ts": pa.array(ts, pa.int64())})


BATCHES = [
    _rows((1, "a", 1), (2, "b", 1), (3, "c", None)),  # empty target: plain INSERT
    _rows((4, "d", 1), (5, "e", 1)),  # new keys only: plain INSERT
    _rows((1, "a2", 2), (2, "b-old", 0), (3, "c2", 5), (6, "f", 1)),  # newer, older, NULL
    _rows((4, "d-tie", 1), (7, "g1", 1), (7, "g2", 3), (7, "g0", 2)),  # tie, duplicates
    _rows((8, "h1", 1), (8, "h2", 2)),  # duplicates, no overlap
]


def _merged_by_plan(batches: list[pa.Table]) -> list[tuple[object, ...]]:
    p = plan(CONTRACT, "main", "t", "steadyflow_stage", "steadyflow_deletes", quote, "duckdb")
    con = duckdb.connect()
    con.execute(p.create_table)
    for i, rows in enumerate(batches):
        con.register("steadyflow_stage", with_seq(rows, i + 1))
        con.execute(p.merge)
        con.unregister("steadyflow_stage")
    return sorted(con.execute("SELECT * FROM main.t").fetchall())


def test_duckdb_fast_paths_equal_the_plans_merge(tmp_path: Path) -> None:
    wh = DuckdbWarehouse(tmp_path / "wh.duckdb")
    wh.ensure_table(REF, CONTRACT)
    for i, rows in enumerate(BATCHES):
        assert wh.load(REF, CONTRACT, _batch(i), rows)
    got = sorted(tuple(r.values()) for r in wh.query("SELECT * FROM main.t").to_pylist())
    wh.close()
    assert got == _merged_by_plan(BATCHES)
    assert dict((k, v) for k, v, *_ in got)[7] == "g2"  # the newest duplicate won
    assert dict((k, v) for k, v, *_ in got)[2] == "b-old"  # the later extraction won


def test_duckdb_an_older_batch_loaded_late_keeps_the_newer_rows(tmp_path: Path) -> None:
    """A replay or a late redelivery: its seq is below rows already loaded, so the merge
    must not take the shortcut that inserts every batch row after the delete."""
    newer = _rows((1, "new", 1), (2, "new", 1))
    older = _rows((1, "old", 9), (2, "old", 9), (3, "old", 9))
    wh = DuckdbWarehouse(tmp_path / "wh.duckdb")
    wh.ensure_table(REF, CONTRACT)
    assert wh.load(REF, CONTRACT, _batch(5), newer)  # seq 6
    assert wh.load(REF, CONTRACT, _batch(1), older)  # seq 2, loaded after it
    got = sorted(tuple(r.values()) for r in wh.query("SELECT * FROM main.t").to_pylist())
    wh.close()
    assert got == [(1, "new", 1, 6), (2, "new", 1, 6), (3, "old", 9, 2)]


def test_duckdb_an_update_larger_than_memory_limit_still_loads(tmp_path: Path) -> None:
    """Deleting many scattered rows of a large target needs more than a small memory_limit
    (h-rss: a 122,880-row page of updates to a 4M-row table at the default 32MB). At the
    limit the batch failed on every delivery; it now loads, and the limit is set back."""
    n, changed = 300_000, 30_000
    first = pa.table({"k": pa.array(range(n), pa.int64()),
                      "v": pa.array([f"value-{i}" for i in range(n)], pa.string()),
                      "ts": pa.array([1] * n, pa.int64())})
    keys = sorted({(i * 7919) % n for i in range(changed)})
    update = pa.table({"k": pa.array(keys, pa.int64()),
                       "v": pa.array([f"new-{k}" for k in keys], pa.string()),
                       "ts": pa.array([2] * len(keys), pa.int64())})
    wh = DuckdbWarehouse(tmp_path / "wh.duckdb", memory_limit="8MB")
    try:
        wh.ensure_table(REF, CONTRACT)
        assert wh.load(REF, CONTRACT, _batch(1), first)
        merged = wh.load(REF, CONTRACT, _batch(2), update)
        assert merged is not None and merged.changed == len(keys)
        assert wh.query("SELECT current_setting('memory_limit') AS m").to_pylist() == [
            {"m": "7.6 MiB"}]
    finally:
        wh.close()
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:  # the oracle
        assert con.execute("SELECT count(*), count(DISTINCT k), sum(ts) FROM main.t"
                           ).fetchone() == (n, n, n + len(keys))
        assert con.execute("SELECT count(*) FROM main.t WHERE v LIKE 'new-%'"
                           ).fetchone() == (len(keys),)


def test_duckdb_a_group_larger_than_memory_limit_is_refused_whole(tmp_path: Path) -> None:
    """A group of several batches that needs more than memory_limit is refused (the
    loader then loads its batches one at a time, each retried without the limit), so the
    group's parts are taken lazily, one batch's rows at a time, never all kept for a
    retry; nothing of the group is committed, and each batch then loads alone."""
    n = 300_000
    first = pa.table({"k": pa.array(range(n), pa.int64()),
                      "v": pa.array([f"value-{i}" for i in range(n)], pa.string()),
                      "ts": pa.array([1] * n, pa.int64())})
    halves = [sorted({(i * 7919) % n for i in range(start, 30_000, 2)}) for start in (0, 1)]
    updates = [pa.table({"k": pa.array(keys, pa.int64()),
                         "v": pa.array([f"new-{k}" for k in keys], pa.string()),
                         "ts": pa.array([2] * len(keys), pa.int64())}) for keys in halves]
    wh = DuckdbWarehouse(tmp_path / "wh.duckdb", memory_limit="8MB")
    try:
        wh.ensure_table(REF, CONTRACT)
        assert wh.load(REF, CONTRACT, _batch(1), first)
        taken: list[int] = []

        def parts() -> Iterator[LoadPart]:
            for i, rows in enumerate(updates, start=2):
                taken.append(i)
                yield LoadPart(REF, CONTRACT, _batch(i), rows)

        with pytest.raises(FatalError, match="one at a time"):
            wh.load_group(parts())
        assert taken == [2, 3]  # taken once: not kept and replayed
        assert wh.ledgered(["b2", "b3"]) == {}
        for i, rows in enumerate(updates, start=2):
            merged = wh.load(REF, CONTRACT, _batch(i), rows)
            assert merged is not None and merged.changed == rows.num_rows
        assert wh.query("SELECT current_setting('memory_limit') AS m").to_pylist() == [
            {"m": "7.6 MiB"}]
    finally:
        wh.close()
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:  # the oracle
        assert con.execute("SELECT count(*) FROM main.t WHERE v LIKE 'new-%'").fetchone() == (
            sum(len(k) for k in halves),)


def test_duckdb_settings_come_from_the_warehouse_config(tmp_path: Path) -> None:
    cfg = write_pipeline(tmp_path, [{"name": "s", "kind": "sqlite", "path": "s.db",
                                     "tables": [{"name": "sales", "contract": "sales"}]}],
                         warehouse={"kind": "duckdb", "path": "w.duckdb",
                                    "memory_limit": "64MB", "threads": 2})
    with Pipeline(load_config(cfg)) as pipeline:
        got = pipeline.warehouse.query(  # type: ignore[attr-defined]
            "SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t")
    assert got.to_pylist() == [{"m": "61.0 MiB", "t": 2}]
    with pytest.raises(ConfigError, match="bad DuckDB setting"):
        DuckdbWarehouse(tmp_path / "x.duckdb", memory_limit="lots")


def test_duckdb_fast_paths_with_a_composite_key(tmp_path: Path) -> None:
    contract = Contract(columns=(Column("a", "int64", nullable=False),
                                 Column("b", "int64", nullable=False), Column("ts", "int64")),
                        primary_key=("a", "b"), cursor="ts")
    batches = [pa.table({"a": [1, 1, 2], "b": [1, 2, 1], "ts": [1, 1, 1]}),
               pa.table({"a": [1, 1, 3], "b": [1, 1, 1], "ts": [0, 2, 1]})]
    wh = DuckdbWarehouse(tmp_path / "wh.duckdb")
    wh.ensure_table(REF, contract)
    for i, rows in enumerate(batches):
        assert wh.load(REF, contract, _batch(i), rows)
    got = sorted(tuple(r.values()) for r in wh.query("SELECT * FROM main.t").to_pylist())
    wh.close()
    assert got == [(1, 1, 2, 2), (1, 2, 1, 1), (2, 1, 1, 1), (3, 1, 1, 2)]  # (a, b, ts, seq)


def _statements(wh: DuckdbWarehouse) -> list[str]:
    """The statements DuckDB ran on the warehouse's connection since logging began."""
    return [r[0] for r in wh._conn.execute(  # noqa: SLF001 - the loader's own connection
        "SELECT message FROM duckdb_logs WHERE type = 'QueryLog'").fetchall()]


def test_duckdb_an_ascending_first_load_skips_the_overlap_join(tmp_path: Path) -> None:
    """Key-order pages into an empty target (a first load): ascending integer keys are
    unique and above every target key, proven by Arrow and one zone-map probe, so neither
    the uniqueness count nor the overlap join runs, alone or as a group."""
    wh = DuckdbWarehouse(tmp_path / "wh.duckdb")
    wh.ensure_table(REF, CONTRACT)
    wh._conn.execute("CALL enable_logging('QueryLog')")  # noqa: SLF001
    assert wh.load(REF, CONTRACT, _batch(0), _rows((1, "a", 1), (2, "b", 1)))
    parts = [LoadPart(REF, CONTRACT, _batch(i), _rows((10 * i, "x", 1), (10 * i + 1, "y", 1)))
             for i in (1, 2)]
    assert wh.load_group(parts) == [Merged(2), Merged(2)]
    ran = _statements(wh)
    got = sorted(tuple(r.values()) for r in wh.query("SELECT * FROM main.t").to_pylist())
    wh.close()
    assert not [s for s in ran if "SEMI JOIN" in s or "DISTINCT" in s], ran
    assert [k for k, *_ in got] == [1, 2, 10, 11, 20, 21]


@pytest.mark.parametrize("grouped", [False, True])
def test_duckdb_an_ascending_batch_meeting_loaded_keys_still_merges(
        tmp_path: Path, grouped: bool) -> None:
    """A first load (key order, ascending) that meets a target already holding some of
    its keys, or keys above them: the zone-map probe finds them, so the overlap join and
    the DELETE + INSERT run and the target keeps one row per key, the later extraction's."""
    held = [_rows((5, "held", 1), (50, "above", 1))]
    batches = [_rows((1, "a", 2), (5, "new", 2), (9, "b", 2)), _rows((12, "c", 2), (50, "d", 2))]
    wh = DuckdbWarehouse(tmp_path / "wh.duckdb")
    wh.ensure_table(REF, CONTRACT)
    assert wh.load(REF, CONTRACT, _batch(0), held[0])
    if grouped:
        results = wh.load_group([LoadPart(REF, CONTRACT, _batch(i + 1), rows)
                                 for i, rows in enumerate(batches)])
    else:
        results = [wh.load(REF, CONTRACT, _batch(i + 1), rows)
                   for i, rows in enumerate(batches)]
    got = sorted(tuple(r.values()) for r in wh.query("SELECT * FROM main.t").to_pylist())
    wh.close()
    assert results == [Merged(3), Merged(2)]
    assert got == _merged_by_plan(held + batches)
    assert [(k, v) for k, v, *_ in got] == [(1, "a"), (5, "new"), (9, "b"), (12, "c"),
                                            (50, "d")]


def test_duckdb_an_update_asks_for_newer_rows_by_a_probe_not_a_scan(tmp_path: Path) -> None:
    """Whether a target row is newer than an update batch (then the batch's rows go in by
    the anti-join) is one `seq > oldest LIMIT 1` probe the zone maps answer, never a
    max(seq) over the whole target; both answers give the plan's merge, in order and
    out of order (a replay of an older batch after a newer one)."""
    wh = DuckdbWarehouse(tmp_path / "wh.duckdb")
    wh.ensure_table(REF, CONTRACT)
    wh._conn.execute("CALL enable_logging('QueryLog')")  # noqa: SLF001
    first, update = _rows((1, "a", 1), (2, "b", 1)), _rows((2, "b2", 2), (3, "c", 2))
    late = _rows((1, "a-old", 0), (3, "c-old", 0))
    assert wh.load(REF, CONTRACT, _batch(0), first)
    assert wh.load(REF, CONTRACT, _batch(5), update)  # seq 6: above every loaded row
    assert wh.load(REF, CONTRACT, _batch(2), late)  # seq 3: row 3 (seq 6) stays
    ran = _statements(wh)
    got = sorted(tuple(r.values()) for r in wh.query("SELECT * FROM main.t").to_pylist())
    wh.close()
    assert not [q for q in ran if "max(" in q.lower()], ran
    assert len([q for q in ran if "_steadyflow_seq\" > " in q and "LIMIT 1" in q]) == 2, ran
    oracle = duckdb.connect()
    oracle.execute("CREATE TABLE t (k BIGINT, v VARCHAR, ts BIGINT, s BIGINT)")
    for seq, rows in ((1, first), (6, update), (3, late)):
        for k, v, ts in zip(*(rows.column(n).to_pylist() for n in ("k", "v", "ts")),
                            strict=True):
            held = oracle.execute("SELECT s FROM t WHERE k = ?", [k]).fetchone()
            if held is None or held[0] <= seq:
                oracle.execute("DELETE FROM t WHERE k = ?", [k])
                oracle.execute("INSERT INTO t VALUES (?, ?, ?, ?)", [k, v, ts, seq])
    assert got == sorted(oracle.execute("SELECT * FROM t").fetchall())
    # row 1 (seq 1) takes the late batch's version (seq 3); row 3 keeps seq 6's
    assert [(k, v) for k, v, *_ in got] == [(1, "a-old"), (2, "b2"), (3, "c")]


def test_duckdb_keys_that_do_not_ascend_still_collapse(tmp_path: Path) -> None:
    """A batch (or a group) whose integer keys repeat or fall back is not taken as unique:
    its duplicate keys still collapse to the newest row."""
    wh = DuckdbWarehouse(tmp_path / "wh.duckdb")
    wh.ensure_table(REF, CONTRACT)
    assert wh.load(REF, CONTRACT, _batch(0), _rows((1, "a", 1), (1, "b", 2), (2, "c", 1)))
    parts = [LoadPart(REF, CONTRACT, _batch(1), _rows((3, "d", 1), (4, "e", 1))),
             LoadPart(REF, CONTRACT, _batch(2), _rows((4, "f", 2), (5, "g", 1)))]
    wh.load_group(parts)
    got = sorted((k, v) for k, v, *_ in (tuple(r.values()) for r in wh.query(
        "SELECT * FROM main.t").to_pylist()))
    wh.close()
    assert got == [(1, "b"), (2, "c"), (3, "d"), (4, "f"), (5, "g")]


def test_conform_casts_exactly_or_keeps_text() -> None:
    dec = pa.decimal128(12, 2)
    ok = conform_column(pa.chunked_array([["1.25", None, "-3"]]), dec)
    assert ok.type == dec and ok.to_pylist() == [Decimal("1.25"), None, Decimal("-3.00")]
    # a widened scale or NaN is never rounded or dropped: the column stays text
    bad = conform_column(pa.chunked_array([["1.25", "1.234", "NaN"]]), dec)
    assert bad.type == pa.string() and bad.to_pylist() == ["1.25", "1.234", "NaN"]
    assert conform_column(pa.chunked_array([[1, 2]], pa.int32()), pa.int64()).type == pa.int64()
    over = conform_column(pa.chunked_array([[2**40]], pa.int64()), pa.int32())
    assert over.to_pylist() == [str(2**40)]
    naive = pa.chunked_array([[0]], pa.timestamp("us"))
    assert conform_column(naive, pa.timestamp("us", tz="UTC")).to_pylist() == [
        datetime(1970, 1, 1, tzinfo=UTC)]


def test_literals_are_exact() -> None:
    ts = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert _literal(ts) == "'2025-01-02T03:04:05.000006+00:00'::timestamptz"
    assert _literal(42) == "42" and _literal(True) == "TRUE"
    assert _literal(Decimal("12.50")) == "'12.50'::numeric"
    assert _literal(Decimal("NaN")) == "'NaN'::numeric"
    # text (uuid too) is untyped, so PostgreSQL compares it as the column's own type
    assert _literal("x'); DROP TABLE t; --") == "E'x''); DROP TABLE t; --'"
    assert _literal("a\\b") == "E'a\\\\b'"
    assert _literal("nul\x00") is None  # PostgreSQL text never holds NUL: bound, refused


def test_conninfo_adds_parameters_the_dsn_does_not_set() -> None:
    uri = conninfo("postgresql://u:p@h:5432/db?connect_timeout=3", {
        "connect_timeout": "10", "keepalives": "1"})
    assert "connect_timeout=3" in uri and "keepalives=1" in uri and uri.startswith(
        "postgresql://u:p@h:5432/db?")
    kv = conninfo("host=h dbname=db keepalives=0", {"keepalives": "1", "tcp_user_timeout": "9"})
    assert kv == "host=h dbname=db keepalives=0 tcp_user_timeout='9'"


@pytest.mark.parametrize("compression", ["zstd", "lz4", "snappy"])
def test_landing_round_trips_contract_types(tmp_path: Path, compression: str) -> None:
    zone = LandingZone(tmp_path, compression)
    page = pa.table({
        "i": pa.array([1, None], pa.int64()), "d": pa.array([Decimal("1.50"), None],
                                                             pa.decimal128(12, 2)),
        "s": ["x", None], "t": pa.array([1, None], pa.timestamp("us", tz="UTC")),
        "b": [True, None]})
    ref = zone.write(page, "s", "t", None, None)
    assert zone.read(ref).equals(page)


_ACERO_CHECK = """
import sys
from pathlib import Path
import pyarrow as pa
from steadyflow.merge.duckdb import DuckdbWarehouse
from steadyflow.model import BatchRef, Column, Contract, TableRef
from steadyflow.ports import LoadPart, Merged
c = Contract(columns=(Column("a", "int64", nullable=False), Column("b", "string",
             nullable=False), Column("v", "string"), Column("ts", "int64")),
             primary_key=("a", "b"), cursor="ts")
ref = TableRef("s", "t", "t")
wh = DuckdbWarehouse(Path(sys.argv[1]))
wh.ensure_table(ref, c)
first = pa.table({"a": [1, 1, 2], "b": ["x", "y", "x"], "v": ["p", None, "r"], "ts": [1, 1, 1]})
again = pa.table({"a": [1, 1, 2, 3], "b": ["x", "y", "x", "x"], "v": ["p", None, "R", "s"],
                  "ts": [1, 1, 2, 2]})
changed = []
for n, rows in enumerate((first, again)):
    merged = wh.load(ref, c, BatchRef(f"b{n}", "s", "t", "x", 0, 0, "", None, None, 0.0,
                                      seq=n + 1), rows)
    changed.append(merged.changed)
wh.close()
print(changed, "pyarrow.acero" in sys.modules)
"""


def test_duckdb_counts_rereads_without_loading_acero(tmp_path: Path) -> None:
    """A batch re-reading rows the target holds unchanged counts only the rows it changes
    (here: one new value, one new key; a NULL value re-read unchanged), and counts them in
    DuckDB: pyarrow's Table.join would load Acero, ~27 MiB of RSS kept by the process for
    good (bench/NOTES.md). A process of its own: another test may have loaded Acero."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _ACERO_CHECK, str(tmp_path / "w.duckdb")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[3, 2] False"


def test_mariadb_and_sqlite_sources_do_not_import_psycopg() -> None:
    """psycopg (its C library, libpq, OpenSSL) is ~22 MiB of RSS that only PostgreSQL
    needs: the pipeline and the MariaDB and SQLite sources import without it."""
    import subprocess
    import sys

    check = ("import sys, steadyflow.run.pipeline, steadyflow.extract.mysql_arrow, "
             "steadyflow.extract.sqlite_arrow, steadyflow.cli.main; "
             "print('psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_postgres_and_sqlite_sources_do_not_import_pymysql() -> None:
    """pymysql (with ssl) is ~8 ms of every command's start-up that only MariaDB needs: the
    pipeline and the PostgreSQL and SQLite sources import without it."""
    import subprocess
    import sys

    check = ("import sys, steadyflow.run.pipeline, steadyflow.extract.pg_arrow, "
             "steadyflow.extract.sqlite_arrow, steadyflow.cli.main; "
             "print('pymysql' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("keys, columns", [
    (["k"], {"k": pa.array([1, 2, 3], pa.int64())}),
    (["k"], {"k": pa.array([1, 2, 1], pa.int64())}),
    (["k"], {"k": pa.array([None, 2, None], pa.int64())}),  # NULLs are one value
    (["k"], {"k": pa.array(["a", "A", "a "], pa.string())}),  # no case or pad folding
    (["k"], {"k": pa.array(["a", "b", "a"], pa.string())}),
    (["k"], {"k": pa.array([Decimal("1.10"), Decimal("1.1")], pa.decimal128(10, 2))}),
    (["k"], {"k": pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * 2, pa.timestamp("us", "UTC"))}),
    (["k"], {"k": pa.array([0.0, -0.0, float("nan"), float("nan")], pa.float64())}),  # DuckDB
    (["a", "b"], {"a": pa.array([1, 1, 2], pa.int32()), "b": pa.array(["x", "y", "x"])}),
    (["a", "b"], {"a": pa.array([1, 1, 2], pa.int32()), "b": pa.array(["x", "x", "y"])}),
])
def test_duckdb_batch_key_uniqueness_in_arrow_agrees_with_duckdb(
        keys: list[str], columns: dict[str, pa.Array]) -> None:
    """The uniqueness the fast paths take from Arrow (merge/duckdb._unique) is what
    DuckDB's DISTINCT over the registered stage says: a wrong True would insert a batch's
    repeated key twice."""
    from steadyflow.merge.duckdb import STAGE, _unique, _upsert

    rows = pa.table(columns)
    contract = Contract(columns=tuple(Column(n, "int64") for n in rows.column_names),
                        primary_key=tuple(keys), cursor=keys[0])
    u = _upsert(contract, "t", "tomb")
    con = duckdb.connect()
    con.register(STAGE, rows)
    by_duckdb = bool(con.execute(u.unique).fetchone()[0])  # type: ignore[index]
    assert _unique(con, u, rows, keys) is by_duckdb


def test_mysql_preferred_tls_context_is_pymysqls_without_the_ca_store() -> None:
    """A DSN asking nothing about TLS gets pymysql's PREFERRED mode: TLS where the server
    offers it, the certificate unchecked. extract/mysql_tls.py builds that context once
    per process without loading the system CA store (20-40 ms per connection), which
    unchecked certificates never consult: every setting the handshake uses is pymysql's."""
    import pymysql

    from steadyflow.extract import mysql_tls

    theirs = pymysql.connections.Connection._create_ssl_ctx(
        object.__new__(pymysql.connections.Connection), {})
    ours = mysql_tls.preferred_context()
    settings = ("protocol", "options", "verify_mode", "check_hostname", "verify_flags",
                "minimum_version", "maximum_version", "keylog_filename",
                "post_handshake_auth", "security_level", "hostname_checks_common_name")
    assert {s: getattr(ours, s) for s in settings} == {s: getattr(theirs, s) for s in settings}
    assert [c["name"] for c in ours.get_ciphers()] == [c["name"] for c in theirs.get_ciphers()]
    assert ours.cert_store_stats()["x509_ca"] == 0
    assert mysql_tls.preferred_context() is ours  # one per process
    # an explicit TLS option (REQUIRED mode) takes pymysql's own path
    asked = mysql_tls.Connection._create_ssl_ctx(
        object.__new__(mysql_tls.Connection), {"check_hostname": False})
    assert asked is not ours and asked.verify_mode == theirs.verify_mode
