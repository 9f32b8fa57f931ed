"""A PostgreSQL source whose database (or role) sets how values print as text.

DateStyle 'SQL, DMY' (common in Europe), IntervalStyle 'sql_standard', extra_float_digits 0
and bytea_output 'escape' are ordinary ALTER DATABASE settings. psycopg reads results as
text: it could not parse such dates, times or intervals (every poll of every table failed,
a traceback naming no column), and it read floats rounded to 15 digits (a float8 value
changed on its way to the warehouse). Every source session now pins these settings.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg
import pytest
from tests.support.read_paths import contract, read_all

from steadyflow.config import SourceConfig
from steadyflow.errors import SchemaError
from steadyflow.extract.pg_arrow import PgArrowSource
from steadyflow.extract.sql import SqlSource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def config(dsn: str) -> SourceConfig:
    return SourceConfig(name="pg", kind="postgres", dsn=dsn,
                        tables=[{"name": "t", "contract": "c"}])  # type: ignore[list-item]


def fallback(dsn: str) -> PgArrowSource:
    source = PgArrowSource(config(dsn))
    source._adbc_usable = False
    return source


PATHS = {"adbc": lambda dsn: PgArrowSource(config(dsn)), "psycopg fallback": fallback,
         "SqlSource": lambda dsn: SqlSource(config(dsn))}


@pytest.mark.parametrize("path", PATHS)
def test_database_text_settings_change_no_value(pg_dsn: str, path: str) -> None:
    db = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for setting in ("DateStyle = 'SQL, DMY'", "IntervalStyle = 'sql_standard'",
                        "extra_float_digits = 0", "bytea_output = 'escape'"):
            conn.execute(f'ALTER DATABASE "{db}" SET {setting}')
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, f float8, at timestamptz, "
                     "d date, i interval, b bytea)")
        conn.execute("INSERT INTO t VALUES (1, 0.30000000000000004, "
                     "'2024-03-04 05:06:07.123456+00', '2024-03-04', '1 day 2 hours', "
                     "'\\x00ff'), (2, 1.2345678901234567, '2024-12-31 23:59:59.999999+00', "
                     "'2024-12-31', '-1 year -3 days', 'ab')")
    c = contract(("id", "int64"), ("f", "float64"), ("at", "timestamp"), ("d", "date"),
                 ("i", "string"), ("b", "string"))
    rows, _ = read_all(PATHS[path](pg_dsn), "t", c, 1)
    assert rows.to_pylist() == [
        {"id": 1, "f": 0.30000000000000004,
         "at": datetime(2024, 3, 4, 5, 6, 7, 123456, tzinfo=UTC), "d": date(2024, 3, 4),
         "i": "1 day 02:00:00", "b": "\\x00ff"},
        {"id": 2, "f": 1.2345678901234567,
         "at": datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
         "d": date(2024, 12, 31), "i": "-1 years -3 days", "b": "\\x6162"}]
    source = PATHS[path](pg_dsn)
    try:  # the poll's position probe reads the whole row (every column's text)
        high, _ = source.poll_end("t", c, observe=True)
        assert high is not None and high.cursor == 2
    finally:
        source.close()


@pytest.mark.parametrize("path", PATHS)
def test_a_value_python_cannot_hold_outside_the_contract_stops_no_poll(pg_dsn: str,
                                                                       path: str) -> None:
    """The poll's position probe returned the table's whole last row, only for its column
    names: psycopg parsed every value, and an interval past 999999999 days (in a column
    the contract does not name) failed every poll of the table. A column added later is
    still seen (`probe` runs again)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, big interval, at time)")
        conn.execute("INSERT INTO t VALUES (1, '1 day', '24:00'), "
                     "(2, '100000000 years', '24:00')")
    c = contract(("id", "int64"), ("at", "string"))
    source = PATHS[path](pg_dsn)
    try:
        assert source.probe("t", c) == ["big"]
        high, _ = source.poll_end("t", c, observe=True)
        assert high is not None and high.cursor == 2
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE t ADD COLUMN late text")
        source.poll_end("t", c, observe=False)
        assert "t" not in source._probed  # the next call probes again
        assert source.probe("t", c) == ["big", "late"]
    finally:
        source.close()
    rows, _ = read_all(PATHS[path](pg_dsn), "t", c, 1)
    assert rows.to_pylist() == [{"id": 1, "at": "24:00:00"}, {"id": 2, "at": "24:00:00"}]


def test_a_domain_cursor_no_path_can_hold_is_refused_at_the_probe(pg_dsn: str) -> None:
    """A cursor declared as a domain over timestamptz was not recognised as a time by the
    probe ('infinity' passed it, and the run failed later on a page, naming no column)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE DOMAIN stamp AS timestamptz")
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, at stamp NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, '2024-01-01'), (2, 'infinity')")
    c = contract(("id", "int64"), ("at", "timestamp"), cursor="at")
    source = PgArrowSource(config(pg_dsn))
    try:
        with pytest.raises(SchemaError, match="at holds 'infinity'"):
            source.probe("t", c)
    finally:
        source.close()


@pytest.mark.parametrize(("at", "west"), [
    ("2026-11-01 05:30:00+00", 5 * 3600),  # 01:30 EDT: the wall clock repeats 01:00-02:00
    ("2026-11-01 02:00:00+00", 4 * 3600),  # four hours before: the bound is before it
    ("2026-07-01 12:00:00+00", 4 * 3600),  # summer: no hour more is re-read
    ("2026-11-01 07:00:00+00", 5 * 3600)])
def test_the_zone_allowance_covers_a_fall_back_ahead(pg_dsn: str, at: str,
                                                     west: int) -> None:
    """A naive-timestamp cursor written by now() in America/New_York: a bound taken at
    01:30 EDT with the summer offset (4 h) lay at wall time 01:30, and the next poll
    resumed from it; rows stamped 01:00-01:30 in the repeated (EST) hour sorted before it
    and were never read. The allowance now takes the westmost offset of the next two
    hours. (now() is the database's; the instant is put in its place.)"""
    from steadyflow.extract.dialects import PostgresDialect

    db = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{db}\" SET timezone = 'America/New_York'")
        sql = (PostgresDialect.zone_west_sql or "").replace(
            "now()", f"'{at}'::timestamptz")
        [(seconds,)] = conn.execute(sql, []).fetchall()
    assert seconds == west
