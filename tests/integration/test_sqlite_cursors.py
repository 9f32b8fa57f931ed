"""SQLite text-time cursors: every common spelling is paged exactly, or refused at probe.

SQLite has no time type: a timestamp cursor is text compared as text. Keyset pages must
continue from the stored text itself (a value re-spelled in one fixed format sorts before or
after its own row: `CURRENT_TIMESTAMP` whole seconds lost 20 of 30 tied rows, ISO 'T' values
looped forever), lookback must step back in the stored spelling, and a column whose text
order is not time order (mixed spellings, numbers, garbage, NULLs) is refused at probe,
naming table and column, instead of losing rows or crash-looping.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.conftest import write_pipeline

from steadyflow.config import SourceConfig, parse_config
from steadyflow.errors import SchemaError
from steadyflow.extract.sql import SqlSource
from steadyflow.model import Column, Contract, Watermark, step_back
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BASE = datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)
ROWS = 30
CONTRACT = Contract(columns=(Column("id", "int64", nullable=False), Column("v", "string"),
                             Column("updated_at", "timestamp", nullable=False)),
                    primary_key=("id",), cursor="updated_at")
PLUS2 = timezone(timedelta(hours=2))

# spelling name -> (how a time is written, whole seconds only?)
SPELLINGS: dict[str, tuple[Callable[[datetime], str], bool]] = {
    "current_timestamp": (lambda t: t.strftime("%Y-%m-%d %H:%M:%S"), True),
    "millis": (lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], False),
    "micros": (lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f"), False),
    "isoformat": (lambda t: t.replace(tzinfo=None).isoformat(), False),  # fraction or none
    "isoformat_space": (lambda t: t.replace(tzinfo=None).isoformat(" "), False),
    "t_z": (lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), False),
    "t_z_whole": (lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"), True),
    "utc_offset": (lambda t: t.isoformat(), False),  # +00:00, fraction or none
    "plus_two": (lambda t: t.astimezone(PLUS2).isoformat(), False),
}


def instants(whole: bool) -> list[datetime]:
    """Ties across page boundaries: whole seconds in two groups of 15; else 250 ms steps in
    groups of 3 (some on a whole second, so isoformat() spells them without a fraction)."""
    if whole:
        return [BASE + timedelta(seconds=i // 15) for i in range(ROWS)]
    return [BASE + timedelta(milliseconds=(i // 3) * 250) for i in range(ROWS)]


def make_db(path: Path, texts: list[Any], declared: str = "TEXT") -> None:
    """Table t; `declared` is the cursor's declared type (DATETIME has NUMERIC affinity:
    numbers stay numbers; TEXT stores them as text)."""
    rows = list(enumerate(texts))
    random.Random(3).shuffle(rows)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, updated_at {declared})")
        conn.execute("CREATE INDEX t_cursor ON t (updated_at, id)")
        conn.executemany("INSERT INTO t VALUES (?, 'x', ?)", rows)
        conn.commit()


def source(path: Path) -> SqlSource:
    return SqlSource(SourceConfig(name="s", kind="sqlite", path=str(path),
                                  tables=[{"name": "t", "contract": "c"}]))


def read_all(db: SqlSource, page_size: int, after: Watermark | None = None,
             since: Any = None) -> tuple[list[tuple[int, datetime]], Watermark | None]:
    got: list[tuple[int, datetime]] = []
    high = None
    for n, (rows, mark) in enumerate(db.pages("t", CONTRACT, after, since, page_size)):
        assert n <= 2 * ROWS, "extraction does not end"
        got += zip(rows["id"].to_pylist(), rows["updated_at"].to_pylist(), strict=True)
        high = mark
    return got, high


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("page_size", [1, 2, 3, 4, 7, 10])
def test_every_spelling_pages_exactly(spelling: str, page_size: int, tmp_path: Path) -> None:
    spell, whole = SPELLINGS[spelling]
    times = instants(whole)
    texts = [spell(t) for t in times]
    make_db(tmp_path / "s.db", texts)
    db = source(tmp_path / "s.db")
    assert db.probe("t", CONTRACT) == []

    got, high = read_all(db, page_size)
    assert [i for i, _ in got] == list(range(ROWS))  # each row once, in (cursor, key) order
    assert [t for _, t in got] == times  # the warehouse value is the UTC instant
    assert high is not None and high.cursor == texts[-1] and high.key == (ROWS - 1,)
    assert Watermark.from_json(high.to_json()) == high  # the checkpoint keeps the raw text

    # rows added on the checkpoint's own cursor value with larger keys: the next run reads
    # exactly those
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        conn.executemany("INSERT INTO t VALUES (?, 'y', ?)",
                         [(100 + i, texts[-1]) for i in range(3)])
        conn.commit()
    more, _ = read_all(db, page_size, after=high)
    assert [i for i, _ in more] == [100, 101, 102]

    # lookback: stepping back 0.5 s in the stored spelling re-reads at least every row of
    # the last 0.5 s, and nothing older than a whole second before
    since = step_back(high.cursor, 0.5)
    assert isinstance(since, str)
    again, _ = read_all(db, page_size, since=since)
    last = times[-1]
    want = {i for i, t in enumerate(times) if t >= last - timedelta(seconds=0.5)}
    assert want | {100, 101, 102} <= {i for i, _ in again}
    assert all(t >= last - timedelta(seconds=1) for _, t in again)
    db.close()


@pytest.mark.parametrize(("texts", "what"), [
    (["2024-01-01 10:00:00", "2024-01-01T10:00:01"], "mixes ' ' and 'T'"),
    (["2024-01-01T10:00:00Z", "2024-01-01T10:00:01"], "mixes zone suffixes"),
    (["2024-01-01T10:00:00+00:00", "2024-01-01T10:00:01+02:00"], "mixes zone suffixes"),
    (["2024-01-01T10:00:00Z", "2024-01-01T10:00:00.5Z"], "fractions of different widths"),
    (["2024-01-01 10:00:00", 1704103201], "mixes numbers"),
    ([1704103200, 1704103201.5], "declare the cursor as int64"),
    ([1704103200, 1704103201], "declare the cursor as int64 if it holds Unix times"),
    (["2024-01-01 10:00:00", "pending"], "'pending'"),
    (["2024-01-01 10:00:00", None], "holds NULLs"),
])
def test_probe_refuses_a_cursor_pages_cannot_follow(texts: list[Any], what: str,
                                                     tmp_path: Path) -> None:
    # DATETIME (NUMERIC affinity) keeps numbers numbers; TEXT stores them as text
    make_db(tmp_path / "s.db", texts, declared="TEXT" if "Unix" in what else "DATETIME")
    db = source(tmp_path / "s.db")
    with pytest.raises(SchemaError) as info:
        db.probe("t", CONTRACT)
    text = f"{info.value}"
    assert what in text, text
    assert "updated_at" in text and "table=t" in text and info.value.hint


# --- the whole pipeline ----------------------------------------------------------------------
def contract_config() -> dict[str, Any]:
    return {"c": {"primary_key": ["id"], "cursor": "updated_at", "columns": {
        "id": {"type": "int64", "nullable": False}, "v": {"type": "string"},
        "updated_at": {"type": "timestamp", "nullable": False}}}}


def run_once(config: Path) -> tuple[int, Watermark | None]:
    with Pipeline.from_yaml(config) as p:
        summary = p.run_once()
        mark = p.state.checkpoint("s", "t")
    assert summary.errors == []
    return summary.extracted_rows, mark


def warehouse_ids(path: Path) -> list[int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return sorted(r[0] for r in con.sql("SELECT id FROM main.t").fetchall())


@pytest.mark.parametrize("spelling", ["current_timestamp", "isoformat"])
@pytest.mark.parametrize("initial_load", ["key", "cursor"])
@pytest.mark.parametrize("lookback", [0, 2])
def test_pipeline_loads_every_row(spelling: str, initial_load: str, lookback: int,
                                  tmp_path: Path) -> None:
    """The issue's cases end to end: 30 rows sharing a second, page_size 10 (20 were lost);
    isoformat() 'T' values (extraction looped forever)."""
    spell, whole = SPELLINGS[spelling]
    texts = [spell(t) for t in instants(whole)]
    make_db(tmp_path / "s.db", texts)
    wh = tmp_path / "wh.duckdb"
    config = write_pipeline(
        tmp_path, [{"name": "s", "kind": "sqlite", "path": str(tmp_path / "s.db"),
                    "tables": [{"name": "t", "contract": "c", "page_size": 10,
                                "min_page_size": 10, "lookback": lookback,
                                "initial_load": initial_load}]}],
        {"kind": "duckdb", "path": str(wh), "schema": "main"}, contracts=contract_config())
    extracted, mark = run_once(config)
    assert extracted >= ROWS
    assert warehouse_ids(wh) == list(range(ROWS))
    assert mark is not None and mark.cursor == texts[-1]

    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:  # ties on the checkpoint
        conn.executemany("INSERT INTO t VALUES (?, 'y', ?)", [(100, texts[-1]),
                                                              (101, texts[-1])])
        conn.commit()
    run_once(config)
    assert warehouse_ids(wh) == [*range(ROWS), 100, 101]
    if lookback == 0:
        assert run_once(config)[0] == 0


def test_old_parsed_checkpoint_continues_from_stored_text(tmp_path: Path) -> None:
    """A checkpoint written as a parsed datetime (before watermarks kept the stored text)
    restarts a day earlier instead of comparing a datetime with text."""
    spell, whole = SPELLINGS["isoformat"]
    texts = [spell(t) for t in instants(whole)]
    make_db(tmp_path / "s.db", texts)
    wh = tmp_path / "wh.duckdb"
    config = write_pipeline(
        tmp_path, [{"name": "s", "kind": "sqlite", "path": str(tmp_path / "s.db"),
                    "tables": [{"name": "t", "contract": "c", "page_size": 10,
                                "lookback": 0, "initial_load": "cursor"}]}],
        {"kind": "duckdb", "path": str(wh), "schema": "main"}, contracts=contract_config())
    with Pipeline.from_yaml(config) as p:
        p.state.advance_checkpoint("s", "t", Watermark(BASE, (0,)))
    extracted, mark = run_once(config)
    assert extracted == ROWS and warehouse_ids(wh) == list(range(ROWS))
    assert mark is not None and mark.cursor == texts[-1]


@pytest.mark.parametrize("ctype", ["int64", "decimal(12,2)"])
def test_a_number_cursor_stored_as_text_is_refused_naming_the_column(
        tmp_path: Path, ctype: str) -> None:
    """Found by the generated suite: a decimal cursor in a TEXT column compares as text
    ('999' > '1000'), so rows newer than the checkpoint sort behind it and are never read."""
    db = tmp_path / "store.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "999"), (2, "1000")])
        conn.commit()
    raw = {"name": "n", "base_dir": str(tmp_path), "state_dir": "state",
           "landing": {"path": "landing"}, "warehouse": {"kind": "duckdb", "path": "wh.duckdb"},
           "contracts": {"t": {"primary_key": ["id"], "cursor": "v", "columns": {
               "id": {"type": "int64", "nullable": False},
               "v": {"type": ctype, "nullable": False}}}},
           "sources": [{"name": "s", "kind": "sqlite", "path": str(db),
                        "tables": [{"name": "t", "contract": "t"}]}]}
    with Pipeline(parse_config(raw)) as pipeline:
        summary = pipeline.run_once(raise_on_error=False)
    assert summary.failed_tables == ["s.t"]
    assert "cursor column v" in summary.errors[0] and "stored as text" in summary.errors[0]


# --- the cursor check's cost: Arrow profile, and only new rows between whole checks -----------
PROFILE_CASES: list[list[Any]] = [
    *[[spell(t) for t in instants(whole)] for spell, whole in SPELLINGS.values()],
    ["2024-01-01 10:00:00", "2024-01-01T10:00:01"],
    ["2024-01-01T10:00:00Z", "2024-01-01T10:00:00.5Z", "2024-01-01T10:00:00.25Z"],
    ["2024-01-01 10:00:00.", "2024-01-01 10:00:00.5.5", "2024-01-01 10:00:00+0100",
     "2024-01-01 10:00:00 Z", "2024-01-01 10:00:00+01:00x", "2024-01-01"],
    ["", "pending", "é2024-01-01 10:00:00", "2024-01-01 10:00:00.12é", "1704103200",
     "2024-01-01\n10:00:00", "2024-01-01 10:00:00\n"],
    ["ééééééééééTéééééééé.5Z", "2024-01-01T10:00:00.123456+02:00", None],
]


@pytest.mark.parametrize("ctype", ["timestamp", "date"])
@pytest.mark.parametrize("case", range(len(PROFILE_CASES)))
def test_arrow_and_sql_cursor_profiles_agree(case: int, ctype: str, tmp_path: Path) -> None:
    """SqliteArrowSource profiles a text cursor with Arrow; SqlSource with the SQL query:
    the same profile, whole and over a region, so the same refusal and message."""
    from steadyflow.extract.sqlite_arrow import SqliteArrowSource, text_time_profile

    make_db(tmp_path / "s.db", PROFILE_CASES[case])
    config = SourceConfig(name="s", kind="sqlite", path=str(tmp_path / "s.db"),
                          tables=[{"name": "t", "contract": "c"}])
    fast, slow = SqliteArrowSource(config), SqlSource(config)
    region = fast.dialect.cursor_region("updated_at")
    for where, params in (("", []), (region, ["2024-01-01 10:00:00", "2024-01-01 10:00:01"])):
        want = slow._read_cursor_profile("t", "updated_at", ctype, where, params)
        assert fast._read_cursor_profile("t", "updated_at", ctype, where, params) == want
        # the Arrow path itself answered, not its SQL fallback (every value here is text)
        assert fast._stream(
            "SELECT CASE WHEN typeof(updated_at) = 'text' THEN updated_at END, 0 FROM t"
            + (f" WHERE {where}" if where else ""), params,
            lambda batches: text_time_profile(batches, ctype)) == want
    fast.close()
    slow.close()


def add(path: Path, rows: list[tuple[int, Any]]) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.executemany("INSERT OR REPLACE INTO t VALUES (?, 'y', ?)", rows)
        conn.commit()


@pytest.mark.parametrize(("value", "what"), [
    ("2024-01-01T10:00:09", "mixes ' ' and 'T'"),  # sorts past the checked range
    ("2024-01-01 10:00:09Z", "mixes zone suffixes"),
    ("pending", "'pending'"),
    (1704103209, "mixes numbers"),  # sorts before every text
    ("1/1/2024 10:00:09", "'1/1/2024 10:00:09'"),  # text sorting before the range
])
def test_rows_written_after_a_check_are_checked_at_the_next_probe(
        value: Any, what: str, tmp_path: Path) -> None:
    """Between whole checks a probe reads only the rows outside the range it checked
    (and that range's ends): a new row whose spelling breaks time order is refused."""
    from steadyflow.extract.sqlite_arrow import SqliteArrowSource

    path = tmp_path / "s.db"
    make_db(path, [f"2024-01-01 10:00:0{i}" for i in range(5)], declared="DATETIME")
    db = SqliteArrowSource(SourceConfig(name="s", kind="sqlite", path=str(path),
                                        tables=[{"name": "t", "contract": "c"}]))
    assert db.probe("t", CONTRACT) == []
    add(path, [(50, "2024-01-01 10:00:08")])  # a good new row: still fine
    assert db.probe("t", CONTRACT, max_age=0) == []
    add(path, [(51, value)])
    with pytest.raises(SchemaError) as info:
        db.probe("t", CONTRACT, max_age=0)
    assert what in str(info.value) and "updated_at" in str(info.value)
    assert "table=t" in str(info.value) and info.value.hint
    db.close()


def test_a_row_restamped_inside_the_checked_range_waits_for_the_whole_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit of the cheap check, and what bounds it: a value written between the
    checked range's ends is seen at the next whole check (CURSOR_RECHECK_EVERY)."""
    from steadyflow.extract import sql

    path = tmp_path / "s.db"
    make_db(path, [f"2024-01-01 10:00:0{i}" for i in range(5)])
    db = source(path)
    assert db.probe("t", CONTRACT) == []
    add(path, [(2, "2024-01-01 10:00:02Z")])  # sorts between the ends (:00 and :04)
    assert db.probe("t", CONTRACT, max_age=0) == []
    monkeypatch.setattr(sql, "CURSOR_RECHECK_EVERY", 0.0)
    with pytest.raises(SchemaError, match="mixes zone suffixes"):
        db.probe("t", CONTRACT, max_age=0)
    db.close()
