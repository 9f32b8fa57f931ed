"""A cursor pass ends at the table's last (cursor, key) noted when it began, compared by the
database: rows at or before it are read (late inserts below it included), rows after it
are the next run's, in every engine's own order and collation (MariaDB's case-insensitive
text keys, SQLite's stored text), with the lookback's lower bound too, through each read
path, and a table empty at the pass's start has no position (the pass reads nothing)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from steadyflow.config import SourceConfig
from steadyflow.extract.pg_arrow import PgArrowSource
from steadyflow.extract.sql import SqlSource
from steadyflow.model import Column, Contract, Watermark

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CONTRACT = Contract(
    columns=(Column("a", "string", nullable=False), Column("b", "int64", nullable=False),
             Column("v", "timestamp", nullable=False)),
    primary_key=("a", "b"), cursor="v")
T = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=s) for s in range(3)]
BEFORE = [("a", 1, T[0]), ("c", 1, T[0]), ("B", 2, T[1])]  # last (cursor, key): (T1, B, 2)
# written once the position is noted: tied on its cursor with keys on either side of 'B'
# (by case-insensitive collation 'ab', 'b'/1 and 'A' sort before it), one below it, one past
AFTER = [("ab", 1, T[1]), ("b", 1, T[1]), ("A", 9, T[1]), ("B", 3, T[1]), ("a", 5, T[0]),
         ("z", 1, T[2])]

Engine = tuple[Callable[[], SqlSource], Callable[[list[tuple[str, int, datetime]]], None],
               Callable[[], list[tuple[str, int]]]]


def _config(kind: str, **where: str) -> SourceConfig:
    return SourceConfig(name="s", kind=kind,  # type: ignore[arg-type]
                        tables=[{"name": "t", "contract": "c"}], **where)  # type: ignore[list-item]


def _pg(dsn: str, adbc: bool) -> Engine:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (a text, b int, v timestamptz NOT NULL, "
                     "PRIMARY KEY (a, b)); CREATE INDEX t_v ON t (v, a, b)")

    def write(rows: list[tuple[str, int, datetime]]) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s, %s)", rows)

    def order() -> list[tuple[str, int]]:
        with psycopg.connect(dsn) as conn:
            return [(a, b) for a, b in conn.execute("SELECT a, b FROM t ORDER BY v, a, b")]

    config = _config("postgres", dsn=dsn)
    return (lambda: PgArrowSource(config)) if adbc else (lambda: SqlSource(config)), \
        write, order


def _mysql(dsn: str) -> Engine:
    database = dsn.rsplit("/", 1)[1]

    def conn() -> Any:
        return pymysql.connect(host="127.0.0.1", port=3306, user="root", database=database,
                               autocommit=True, charset="utf8mb4")

    with closing(conn()) as c, c.cursor() as cur:
        cur.execute("CREATE TABLE t (a varchar(20) COLLATE utf8mb4_general_ci, b int, "
                    "v datetime(6) NOT NULL, PRIMARY KEY (a, b), INDEX t_v (v, a, b))")

    def write(rows: list[tuple[str, int, datetime]]) -> None:
        with closing(conn()) as c, c.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s, %s)",
                            [(a, b, v.replace(tzinfo=None)) for a, b, v in rows])

    def order() -> list[tuple[str, int]]:
        with closing(conn()) as c, c.cursor() as cur:
            cur.execute("SELECT a, b FROM t ORDER BY v, a, b")
            return [(a, b) for a, b in cur.fetchall()]

    return lambda: SqlSource(_config("mysql", dsn=dsn)), write, order


def _sqlite(path: Path) -> Engine:
    """Cursor text in ISO 'T...Z' spelling: the stored text is the position."""
    with closing(sqlite3.connect(path)) as c:
        c.execute("CREATE TABLE t (a TEXT, b INTEGER, v TEXT NOT NULL, PRIMARY KEY (a, b))")
        c.execute("CREATE INDEX t_v ON t (v, a, b)")
        c.commit()

    def write(rows: list[tuple[str, int, datetime]]) -> None:
        with closing(sqlite3.connect(path)) as c:
            c.executemany("INSERT INTO t VALUES (?, ?, ?)",
                          [(a, b, v.strftime("%Y-%m-%dT%H:%M:%S.%fZ")) for a, b, v in rows])
            c.commit()

    def order() -> list[tuple[str, int]]:
        with closing(sqlite3.connect(path)) as c:
            return [(a, b) for a, b in c.execute("SELECT a, b FROM t ORDER BY v, a, b")]

    return lambda: SqlSource(_config("sqlite", path=str(path))), write, order


@pytest.fixture(params=["postgres", "postgres-adbc", "mysql", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    kind = request.param
    if kind.startswith("postgres"):
        yield _pg(request.getfixturevalue("pg_dsn"), adbc=kind == "postgres-adbc")
    elif kind == "mysql":
        yield _mysql(request.getfixturevalue("mysql_dsn"))
    else:
        yield _sqlite(tmp_path / "s.db")


def _pass(db: SqlSource, upto: Watermark, since: Any, size: int) -> list[tuple[str, int]]:
    """Pages of `size` from the start (or `since`) to `upto`, until a short page."""
    out: list[tuple[str, int]] = []
    after = None
    for _ in range(100):
        rows, high = db.page("t", CONTRACT, after, None if after else since, size, upto=upto)
        out += list(zip(rows["a"].to_pylist(), rows["b"].to_pylist(), strict=True))
        if rows.num_rows < size:
            return out
        after = high
    raise AssertionError("the pass did not end")


@pytest.mark.parametrize("size", [1, 2, 50])
def test_a_pass_ends_at_the_position_noted_when_it_began(engine: Engine, size: int) -> None:
    make, write, order = engine
    db = make()
    try:
        assert db.last_position("t", CONTRACT) is None  # empty: the pass reads nothing
        write(BEFORE)
        upto = db.last_position("t", CONTRACT)
        assert upto is not None and upto.key == ("B", 2)
        write(AFTER)
        everything = order()  # the database's own order, after the writes
        want = everything[:everything.index(("B", 2)) + 1]
        assert ("z", 1) not in want and ("B", 3) not in want and ("a", 5) in want
        assert _pass(db, upto, None, size) == want
        # lookback: from `cursor >= since` to the same noted position
        since = T[1].strftime("%Y-%m-%dT%H:%M:%S.%fZ") if db.config.kind == "sqlite" else T[1]
        assert _pass(db, upto, since, size) == [k for k in want if k not in (
            ("a", 1), ("c", 1), ("a", 5))]
    finally:
        db.close()


def test_mariadb_bound_follows_its_case_insensitive_collation(mysql_dsn: str) -> None:
    """'ab' sorts before 'B' by utf8mb4_general_ci (after it by code point): the database
    compares the bound, so the pass keeps it, where Python's order would drop it."""
    make, write, _ = _mysql(mysql_dsn)
    db = make()
    try:
        write(BEFORE)
        upto = db.last_position("t", CONTRACT)
        assert upto is not None
        write(AFTER)
        got = _pass(db, upto, None, 1)
        assert ("ab", 1) in got and ("b", 1) in got and ("B", 3) not in got
    finally:
        db.close()

