"""Edge values through both warehouses, read back with each warehouse's own driver.

Every value here is one validation lets through (tests/unit/test_validate.py covers the ones
it quarantines), so each warehouse must store it exactly: the PostgreSQL adapter through its
CSV COPY (empty string vs NULL, quotes, commas, CR/LF, backslashes, `\\.`), DuckDB through
Arrow. Each table is loaded twice: a first load (PostgreSQL's direct COPY into the target)
and an update of every row (the staged merge).
"""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest
from tests.conftest import PG_HOST, PG_PORT, require_service, write_pipeline

from steadyflow.config import SourceConfig
from steadyflow.errors import SchemaError
from steadyflow.extract.pg_arrow import PgArrowSource
from steadyflow.merge.duckdb import DuckdbWarehouse
from steadyflow.merge.postgres import PostgresWarehouse
from steadyflow.model import MAX_TIME, MIN_TIME, BatchRef, Column, Contract, TableRef
from steadyflow.run.pipeline import Pipeline
from steadyflow.validate.rules import validate

CONTRACT = Contract(columns=(
    Column("id", "int64", nullable=False), Column("txt", "string"), Column("i32", "int32"),
    Column("i64", "int64"), Column("flag", "bool"), Column("d38", "decimal(38,10)"),
    Column("d38_0", "decimal(38,0)"), Column("f", "float64"), Column("at", "timestamp"),
    Column("day", "date")), primary_key=("id",), cursor="id")
BIG = Decimal("9999999999999999999999999999.9999999999")
TEXTS = ["", None, '"quoted"', 'a,"b",c', "line\r\nbreak", "\r", "\n", "back\\slash\\",
         "\\N", "\\.", "a\n\\.\nb", "NULL", " padded ", "\t", "😀𝄞 日本 é", "x" * 1_000_000,
         "'single'", ",", '"', "\\", "\u2028\u2029\ufeff"]
INTS32 = [-(2**31), 2**31 - 1, 0, None]
INTS64 = [-(2**63), 2**63 - 1, 0, None]
FLAGS = [True, False, None]
D38 = [BIG, BIG.copy_negate(), Decimal("0E-10"), Decimal("-0.0000000001"), None]
D38_0 = [Decimal(10**38 - 1), Decimal(-(10**38 - 1)), Decimal(0), None]
FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308,
          0.1, 1e-300, None]
TIMES = [MIN_TIME, MAX_TIME, datetime(1970, 1, 1, tzinfo=UTC),
         datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), None]
DAYS = [date(1, 1, 1), date(9999, 12, 31), date(1970, 1, 1), None]


def _table(shift: int) -> list[dict[str, Any]]:
    """One row per text value; the other columns cycle through their edges (by `shift`)."""
    def pick(values: list[Any], i: int) -> Any:
        return values[(i + shift) % len(values)]
    return [{"id": i, "txt": TEXTS[(i + shift) % len(TEXTS)], "i32": pick(INTS32, i),
             "i64": pick(INTS64, i), "flag": pick(FLAGS, i), "d38": pick(D38, i),
             "d38_0": pick(D38_0, i), "f": pick(FLOATS, i), "at": pick(TIMES, i),
             "day": pick(DAYS, i)} for i in range(len(TEXTS))]


def _arrow(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table({c.name: pa.array([r[c.name] for r in rows], c.arrow_type)
                     for c in CONTRACT.columns})


def _read(where: str) -> list[dict[str, Any]]:
    cols = ", ".join(f'"{n}"' for n in CONTRACT.names)
    sql = f"SELECT {cols} FROM edge ORDER BY id"
    if where.startswith("postgresql://"):
        with psycopg.connect(where, options="-c TimeZone=UTC") as conn:
            data = conn.execute(sql.encode()).fetchall()
    else:
        with duckdb.connect(where, read_only=True) as conn:  # Arrow: no pytz needed
            return conn.sql(sql).to_arrow_table().to_pylist()
    return [dict(zip(CONTRACT.names, r, strict=True)) for r in data]


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return (math.isnan(got) and math.isnan(want)) or (
            got == want and math.copysign(1, got) == math.copysign(1, want))
    return type(got) is type(want) and got == want or (got is None and want is None)


def _load(where: str, rows: list[dict[str, Any]], seq: int) -> None:
    ref = TableRef("src", "edge", "edge")
    wh = (PostgresWarehouse(where) if where.startswith("postgresql://")
          else DuckdbWarehouse(Path(where)))
    try:
        wh.ensure_table(ref, CONTRACT)
        verdict = validate(_arrow(rows), CONTRACT)
        assert verdict.bad.num_rows == 0, verdict.reasons
        batch = BatchRef(f"b{seq}", "src", "edge", "p", 0, 0, "c", None, None, 0.0, seq=seq)
        assert wh.load(ref, CONTRACT, batch, verdict.good)
    finally:
        wh.close()  # DuckDB: the file is read below by a connection of its own


def test_edge_values_survive_both_load_paths_exactly(where: str) -> None:
    for seq in (1, 2):  # a first load, then an update of every row
        rows = _table(shift=seq)
        _load(where, rows, seq)
        got = _read(where)
        diffs = [(want["id"], name, got_row[name], want[name])
                 for got_row, want in zip(got, rows, strict=True)
                 for name in CONTRACT.names if not _same(got_row[name], want[name])]
        assert diffs == [], [d if len(repr(d)) < 200 else d[:2] for d in diffs[:8]]


def test_values_no_warehouse_holds_cost_their_row_not_the_batch(where: str) -> None:
    """A NUL in text (PostgreSQL refuses the whole COPY), text that is not UTF-8 (both
    refuse the batch; Arrow does not check what a reader puts in a string column), a year
    outside 1..9999 and NaN under a min rule are quarantined by validation; the rest of
    the batch loads."""
    contract = Contract(columns=(
        Column("id", "int64", nullable=False), Column("note", "string"),
        Column("at", "timestamp"), Column("score", "float64", min=0)),
        primary_key=("id",), cursor="id")
    notes = [b"ok", b"nul\x00", b"ok", b"ok", b"a\xffb", "é".encode()]
    raw = pa.table({"id": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
                    "note": pa.array(notes, pa.binary()).view(pa.string()),
                    "at": ["2024-01-01 00:00:00", None, "0000-01-01 00:00:00", None, None,
                           None],
                    "score": [1.0, 1.0, 1.0, float("nan"), 1.0, 1.0]})
    verdict = validate(raw, contract)
    assert verdict.bad["id"].to_pylist() == ["2", "3", "4", "5"]
    assert verdict.bad["_reason"][3].as_py() == "note: invalid UTF-8: 'a\\xffb'"
    ref = TableRef("src", "odd", "odd")
    wh = (PostgresWarehouse(where) if where.startswith("postgresql://")
          else DuckdbWarehouse(Path(where)))
    try:
        wh.ensure_table(ref, contract)
        assert wh.load(ref, contract, BatchRef("b1", "src", "odd", "p", 0, 0, "c", None, None,
                                               0.0, seq=1), verdict.good)
        assert wh.query("SELECT id, note FROM odd ORDER BY id").to_pylist() == [
            {"id": 1, "note": "ok"}, {"id": 6, "note": "é"}]
    finally:
        wh.close()


def _encoded_database(encoding: str) -> Iterator[str]:
    """A fresh PostgreSQL database in `encoding`."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    name = f"sfenc_{uuid.uuid4().hex[:12]}"
    admin = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE \"{name}\" ENCODING '{encoding}' LC_COLLATE 'C' "
                     "LC_CTYPE 'C' TEMPLATE template0".encode())
    yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def sql_ascii_dsn() -> Iterator[str]:
    """A fresh PostgreSQL database in SQL_ASCII: its text columns hold any bytes."""
    yield from _encoded_database("SQL_ASCII")


@pytest.fixture
def latin1_dsn() -> Iterator[str]:
    """A fresh PostgreSQL database in LATIN1."""
    yield from _encoded_database("LATIN1")


def _warehouse_config(where: str) -> dict[str, str]:
    return ({"kind": "postgres", "dsn": where, "schema": "public"}
            if where.startswith("postgresql://")
            else {"kind": "duckdb", "path": where, "schema": "main"})


def _warehouse_rows(where: str, sql: str) -> list[tuple[Any, ...]]:
    if where.startswith("postgresql://"):
        with psycopg.connect(where) as conn:
            return conn.execute(sql.encode()).fetchall()
    with duckdb.connect(where, read_only=True) as conn:
        return conn.execute(sql).fetchall()


def test_text_that_is_not_utf8_costs_its_row_end_to_end(tmp_path: Path, where: str,
                                                         sql_ascii_dsn: str) -> None:
    """A SQL_ASCII database holds any bytes in text (latin-1 'caf\\xe9', a stray 0xff),
    and ADBC's reader puts them in Arrow strings unchecked: both warehouses refused the
    whole batch on every delivery (PostgreSQL 'invalid byte sequence for encoding
    "UTF8"', DuckDB 'Invalid unicode'), so no row of the table ever loaded. Now each such
    row is quarantined naming column and bytes; the others load exactly."""
    with psycopg.connect(sql_ascii_dsn, autocommit=True) as conn:
        conn.execute(b"CREATE TABLE t (id bigint PRIMARY KEY, s text, v varchar(20))")
        conn.execute(b"INSERT INTO t VALUES (1, 'ok', 'ok'), (2, 'a\xffb', 'ok'), "
                     b"(3, 'h\xc3\xa9', 'ok'), (4, 'ok', 'caf\xe9'), (5, '', NULL)")
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "postgres", "dsn": sql_ascii_dsn,
                                        "tables": [{"name": "t", "contract": "c"}]}],
                            _warehouse_config(where), contracts={"c": {
                                "primary_key": ["id"], "cursor": "id", "columns": {
                                    "id": {"type": "int64", "nullable": False},
                                    "s": {"type": "string"}, "v": {"type": "string"}}}})
    with Pipeline.from_yaml(config) as pipeline:
        summary = pipeline.run_once(raise_on_error=False)
        parked = pipeline.state.quarantined()
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 2
    assert {reason for item in parked for reason in item["reasons"]} == {
        "s: invalid UTF-8: 'a\\xffb'", "v: invalid UTF-8: 'caf\\xe9'"}
    assert _warehouse_rows(where, "SELECT id, s, v FROM t ORDER BY id") == [
        (1, "ok", "ok"), (3, "hé", "ok"), (5, "", None)]


def test_a_sql_ascii_source_reconciles(tmp_path: Path, sql_ascii_dsn: str) -> None:
    """Reconcile runs its bucket queries with enable_sort off and puts the setting back as
    it read it: from a SQL_ASCII database the setting arrived as bytes and was put back
    as "b'on'" ('parameter "enable_sort" requires a Boolean value'), so every reconcile
    of such a source failed. Now it compares, the row of text that is not UTF-8 counted
    as quarantined."""
    from steadyflow.reconcile.runner import reconcile

    with psycopg.connect(sql_ascii_dsn, autocommit=True) as conn:
        conn.execute(b"CREATE TABLE t (id bigint PRIMARY KEY, s text)")
        conn.execute(b"INSERT INTO t VALUES (1, 'ok'), (2, 'a\xffb'), (3, 'h\xc3\xa9')")
    wh = str(tmp_path / "wh.duckdb")
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "postgres", "dsn": sql_ascii_dsn,
                                        "tables": [{"name": "t", "contract": "c"}]}],
                            _warehouse_config(wh), contracts={"c": {
                                "primary_key": ["id"], "cursor": "id", "columns": {
                                    "id": {"type": "int64", "nullable": False},
                                    "s": {"type": "string"}}}})
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once(raise_on_error=False).ok
        [report] = reconcile(pipeline)
    assert report.error is None, report.error
    assert (report.missing, report.extra, report.mismatched, report.quarantined) == (0, 0, 0, 1)


def test_a_sql_ascii_source_with_a_text_key_reconciles(tmp_path: Path,
                                                       sql_ascii_dsn: str) -> None:
    """Reconcile reads the current source rows of the keys that differ by those keys, as
    the source side read them: a SQL_ASCII database's text key is bytes, sent as a bytea
    parameter ('operator does not exist: text = bytea'), so a table keyed on text with a
    row in quarantine failed every reconcile. It is now sent as the other lookups send it
    (the dialect's to_param)."""
    from steadyflow.reconcile.runner import reconcile

    with psycopg.connect(sql_ascii_dsn, autocommit=True) as conn:
        conn.execute(b"CREATE TABLE t (id text PRIMARY KEY, s text)")
        conn.execute(b"INSERT INTO t VALUES ('a', 'ok'), ('b\xff', 'ok'), ('c', 'x\xe9')")
    wh = str(tmp_path / "wh.duckdb")
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "postgres", "dsn": sql_ascii_dsn,
                                        "tables": [{"name": "t", "contract": "c"}]}],
                            _warehouse_config(wh), contracts={"c": {
                                "primary_key": ["id"], "cursor": "id", "columns": {
                                    "id": {"type": "string", "nullable": False},
                                    "s": {"type": "string"}}}})
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once(raise_on_error=False).quarantined_rows == 2
        [report] = reconcile(pipeline)
    assert report.error is None, report.error
    assert (report.missing, report.extra, report.mismatched) == (0, 0, 0)


@pytest.mark.parametrize("cursor", ["id", "n"])
@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_a_text_key_that_is_not_utf8_costs_its_row(tmp_path: Path, sql_ascii_dsn: str,
                                                   initial_load: str, cursor: str) -> None:
    """A SQL_ASCII database's text key is read as bytes (psycopg's position probe) or as
    an Arrow string that is not UTF-8 (ADBC's page): the table failed on every run, one
    stray byte in a key ending a page ('utf-8' codec can't decode byte 0xff) or any text
    key at all in a cursor pass ('operator does not exist: text <= bytea'). Each such row
    now costs itself (quarantined naming column and bytes); the pages continue after it,
    from a checkpoint that keeps the key's bytes (a second run reads only the new row)."""
    with psycopg.connect(sql_ascii_dsn, autocommit=True) as conn:
        conn.execute(b"CREATE TABLE t (id text PRIMARY KEY, n bigint NOT NULL, s text)")
        conn.execute(b"CREATE INDEX ON t (n, id)")
        conn.execute(b"INSERT INTO t VALUES ('a', 1, 'ok'), ('b\xff', 2, 'ok'), "
                     b"('c', 3, 'ok'), ('d\xe9''\\', 4, 'x')")
    wh = str(tmp_path / "wh.duckdb")
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "postgres", "dsn": sql_ascii_dsn,
                                        "tables": [{"name": "t", "contract": "c",
                                                    "initial_load": initial_load,
                                                    "page_size": 1}]}],
                            _warehouse_config(wh), contracts={"c": {
                                "primary_key": ["id"], "cursor": cursor, "columns": {
                                    "id": {"type": "string", "nullable": False},
                                    "n": {"type": "int64", "nullable": False},
                                    "s": {"type": "string"}}}})
    with Pipeline.from_yaml(config) as pipeline:
        first = pipeline.run_once(raise_on_error=False)
        parked = pipeline.state.quarantined()
    assert first.ok, first.errors
    assert first.quarantined_rows == 2
    assert {reason for item in parked for reason in item["reasons"]} == {
        "id: invalid UTF-8: 'b\\xff'", "id: invalid UTF-8: 'd\\xe9'\\'"}
    with psycopg.connect(sql_ascii_dsn, autocommit=True) as conn:
        conn.execute(b"INSERT INTO t VALUES ('e', 5, 'new')")
    with Pipeline.from_yaml(config) as pipeline:
        second = pipeline.run_once(raise_on_error=False)
    assert second.ok, second.errors
    assert _warehouse_rows(wh, "SELECT id, n FROM t ORDER BY n") == [
        ("a", 1), ("c", 3), ("e", 5)]


@pytest.mark.parametrize("path", ["adbc", "psycopg"])
def test_pages_continue_after_a_text_key_that_is_not_utf8(sql_ascii_dsn: str,
                                                          path: str) -> None:
    """Both read paths of a PostgreSQL source page past such a key: each page's watermark
    holds its bytes and the next page compares with them as text."""
    with psycopg.connect(sql_ascii_dsn, autocommit=True) as conn:
        conn.execute(b"CREATE TABLE t (id text PRIMARY KEY)")
        conn.execute(b"INSERT INTO t VALUES ('a'), ('b\xff'), ('c''\\\xe9'), ('d')")
    source = PgArrowSource(SourceConfig(name="s", kind="postgres", dsn=sql_ascii_dsn,
                                        tables=[{"name": "t", "contract": "c"}]))
    source._adbc_usable = path == "adbc"
    contract = Contract(columns=(Column("id", "string", nullable=False),),
                        primary_key=("id",), cursor="id")
    try:
        highs = [high for _, high in source.pages("t", contract, None, None, 1)]
    finally:
        source.close()
    assert [high.cursor for high in highs] == ["a", b"b\xff", b"c'\\\xe9", "d"]


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_text_of_a_latin1_source_loads_as_its_characters(tmp_path: Path, latin1_dsn: str,
                                                         initial_load: str) -> None:
    """ADBC read a LATIN1 database's text as its bytes, taken for UTF-8: 'café' arrived
    as 'caf\\xe9', which no warehouse holds (the batch failed, later the row was
    quarantined as invalid UTF-8). The connection now asks the server for UTF-8."""
    with psycopg.connect(latin1_dsn, autocommit=True) as conn:
        conn.execute(b"SET client_encoding = 'UTF8'")
        conn.execute(b"CREATE TABLE t (id bigint PRIMARY KEY, s text)")
        conn.execute("INSERT INTO t VALUES (1, 'ok'), (2, 'café'), (3, 'ÿ½')".encode())
    wh = str(tmp_path / "wh.duckdb")
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "postgres", "dsn": latin1_dsn,
                                        "tables": [{"name": "t", "contract": "c",
                                                    "initial_load": initial_load}]}],
                            _warehouse_config(wh), contracts={"c": {
                                "primary_key": ["id"], "cursor": "id", "columns": {
                                    "id": {"type": "int64", "nullable": False},
                                    "s": {"type": "string"}}}})
    with Pipeline.from_yaml(config) as pipeline:
        summary = pipeline.run_once(raise_on_error=False)
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 0
    assert _warehouse_rows(wh, "SELECT id, s FROM t ORDER BY id") == [
        (1, "ok"), (2, "café"), (3, "ÿ½")]


def _execute(where: str, sql: str) -> None:
    if where.startswith("postgresql://"):
        with psycopg.connect(where, autocommit=True) as conn:
            conn.execute(sql.encode())
    else:
        with duckdb.connect(where) as conn:
            conn.execute(sql)


def test_a_contract_widened_past_its_target_is_refused_until_widened(where: str) -> None:
    """The target keeps the types it was created with; a contract widened later (int32 to
    int64, decimal(10,2) to decimal(12,4), int64 to float64, date to timestamp) had its
    values converted into the old columns without a word (1.2345 stored as 1.23, 1.5 as
    2, 10:30 on a day as the day; run ok) or one value failed its batch on every
    delivery. The table is now refused naming the columns and the ALTERs that widen
    them; once run, every value loads exactly."""
    def contract(*types: str) -> Contract:
        return Contract(columns=(Column("id", "int64", nullable=False),
                                 *(Column(n, t) for n, t in zip("ndfa", types, strict=True))),
                        primary_key=("id",), cursor="id")

    ref = TableRef("src", "grown", "grown")
    old = contract("int32", "decimal(10,2)", "int64", "date")
    new = contract("int64", "decimal(12,4)", "float64", "timestamp")
    at = datetime(2024, 1, 1, 10, 30, tzinfo=UTC)
    rows = pa.table({"id": pa.array([1, 2], pa.int64()),
                     "n": pa.array([5_000_000_000, 1], pa.int64()),
                     "d": pa.array([Decimal("1.2345"), Decimal("12345678.1234")],
                                   pa.decimal128(12, 4)),
                     "f": [1.5, -0.25], "a": pa.array([at, None], pa.timestamp("us", "UTC"))})
    wh = (PostgresWarehouse(where) if where.startswith("postgresql://")
          else DuckdbWarehouse(Path(where)))
    try:
        wh.ensure_table(ref, old)
        with pytest.raises(SchemaError) as refused:
            wh.ensure_table(ref, new)
        assert "column n is" in str(refused.value) and "int64 in the contract" in str(
            refused.value)
        assert all(f"column {c} is" in str(refused.value) for c in "dfa")
        wh.close()
        hint = refused.value.hint or ""
        for alter in hint.split(": ", 1)[1].split("; "):  # the operator runs the fix
            _execute(where, alter)
        wh = (PostgresWarehouse(where) if where.startswith("postgresql://")
              else DuckdbWarehouse(Path(where)))
        wh.ensure_table(ref, new)
        assert wh.load(ref, new, BatchRef("b1", "src", "grown", "p", 0, 0, "c", None, None,
                                          0.0, seq=1), rows)
        got = wh.query("SELECT id, n, d, f, a FROM grown ORDER BY id").to_pylist()
    finally:
        wh.close()
    assert [{**r, "a": r["a"] and r["a"].astimezone(UTC)} for r in got] == [
        {"id": 1, "n": 5_000_000_000, "d": Decimal("1.2345"), "f": 1.5, "a": at},
        {"id": 2, "n": 1, "d": Decimal("12345678.1234"), "f": -0.25, "a": None}]


def test_a_latin1_warehouse_stores_the_characters_it_was_sent(latin1_dsn: str) -> None:
    """The loader's session took the database's encoding, so the UTF-8 bytes of its COPY
    were read as LATIN1: 'café' was stored as 'cafÃ©' (every run ok)."""
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("s", "string")), primary_key=("id",), cursor="id")
    ref, wh = TableRef("src", "enc", "enc"), PostgresWarehouse(latin1_dsn)
    try:
        wh.ensure_table(ref, contract)
        assert wh.load(ref, contract, BatchRef("b1", "src", "enc", "p", 0, 0, "c", None, None,
                                               0.0, seq=1),
                       pa.table({"id": pa.array([1], pa.int64()), "s": ["café ÿ"]}))
    finally:
        wh.close()
    with psycopg.connect(latin1_dsn, client_encoding="UTF8") as conn:
        assert conn.execute(b"SELECT s FROM enc").fetchall() == [("café ÿ",)]


def test_a_character_a_latin1_warehouse_lacks_costs_its_row(tmp_path: Path,
                                                            latin1_dsn: str) -> None:
    """Since the loader's session speaks UTF-8 (above), the server converts each value to
    the database's encoding and refuses one it lacks (an emoji in LATIN1): the whole
    batch failed on every delivery, no row of it loaded. Validation now knows the
    warehouse's encoding and quarantines that row, naming column and character."""
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, n TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [
            (1, "ok", "café ÿ"), (2, "fine 😀", "ok"), (3, "ok", "日本"), (4, "é", None)])
        conn.commit()
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "sqlite",
                                        "path": str(tmp_path / "s.db"),
                                        "tables": [{"name": "t", "contract": "c"}]}],
                            _warehouse_config(latin1_dsn), contracts={"c": {
                                "primary_key": ["id"], "cursor": "id", "columns": {
                                    "id": {"type": "int64", "nullable": False},
                                    "s": {"type": "string"}, "n": {"type": "string"}}}})
    with Pipeline.from_yaml(config) as pipeline:
        summary = pipeline.run_once(raise_on_error=False)
        parked = pipeline.state.quarantined()
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 2
    assert {reason for item in parked for reason in item["reasons"]} == {
        "s: the warehouse database's encoding LATIN1 cannot hold the character '😀' "
        "(U+1F600)",
        "n: the warehouse database's encoding LATIN1 cannot hold the character '日' "
        "(U+65E5)"}
    with psycopg.connect(latin1_dsn, client_encoding="UTF8") as conn:
        assert conn.execute(b"SELECT id, s, n FROM t ORDER BY id").fetchall() == [
            (1, "ok", "café ÿ"), (4, "é", None)]


def test_a_replay_keeps_a_character_the_warehouse_lacks_in_quarantine(
        tmp_path: Path, latin1_dsn: str) -> None:
    """Replay re-validated parked rows without the warehouse's encoding: the emoji row
    'passed' and was landed again, the loader found it bad again but did not park it
    twice (its digest was parked already), and the parked item was marked replayed: the
    row was in neither the warehouse nor the open quarantine, and the replay said
    loaded_rows 0, still_quarantined 0. Replay now validates as the loader does: the row
    stays in the open quarantine, counted as still quarantined."""
    from steadyflow.run.replay import replay_quarantine

    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "ok"), (2, "fine 😀")])
        conn.commit()
    config = write_pipeline(tmp_path, [{"name": "s", "kind": "sqlite",
                                        "path": str(tmp_path / "s.db"),
                                        "tables": [{"name": "t", "contract": "c"}]}],
                            _warehouse_config(latin1_dsn), contracts={"c": {
                                "primary_key": ["id"], "cursor": "id", "columns": {
                                    "id": {"type": "int64", "nullable": False},
                                    "s": {"type": "string"}}}})
    with Pipeline.from_yaml(config) as pipeline:
        assert pipeline.run_once(raise_on_error=False).quarantined_rows == 1
        result = replay_quarantine(pipeline, [])
        parked = pipeline.state.quarantined()
    assert (result["loaded_rows"], result["still_quarantined"]) == (0, 1), result
    assert [(item["status"], item["replayed_rows"]) for item in parked] == [("open", 0)]
