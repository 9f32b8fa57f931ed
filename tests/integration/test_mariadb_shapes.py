"""MariaDB column types whose order is not their values' order, run through the pipeline and
read back by the drivers (adversarial shapes the generated tests do not draw)."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pymysql
import pytest
import yaml

from steadyflow.config import ResilienceConfig, SourceConfig
from steadyflow.errors import SchemaError
from steadyflow.extract.mysql_arrow import MysqlArrowSource
from steadyflow.extract.sql import SqlSource
from steadyflow.model import Column, Contract
from steadyflow.reconcile.runner import Options, reconcile
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def mysql(dsn: str) -> Any:
    parts = urlsplit(dsn)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                           password="", database=parts.path.lstrip("/"), autocommit=True,
                           charset="utf8mb4")


def execute(dsn: str, *statements: str) -> None:
    with closing(mysql(dsn)) as conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def source_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with closing(mysql(dsn)) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return sorted(tuple(r) for r in cur.fetchall())


def warehouse_rows(tmp: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return sorted(tuple(r) for r in con.sql(sql).fetchall())


def run(tmp: Path, dsn: str, contract: dict[str, Any], initial_load: str = "key",
        page_size: int = 1, table: dict[str, Any] | None = None) -> Any:
    config = {"name": "shapes", "contracts": {"c": contract},
              "state_dir": str(tmp / "state"), "landing": {"path": str(tmp / "landing")},
              "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "main"},
              "sources": [{"name": "m", "kind": "mysql", "dsn": dsn,
                           "resilience": {"retries": 0},
                           "tables": [{"name": "t", "contract": "c", "page_size": page_size,
                                       "initial_load": initial_load, **(table or {})}]}]}
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Pipeline.from_yaml(path) as p:
        return p.run_once(raise_on_error=False)


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_enum_and_set_keys_page_in_their_own_order(tmp_path: Path, mysql_dsn: str,
                                                   initial_load: str) -> None:
    """ENUM sorts by its place in the declaration, SET by its members' bits, but both compare
    with text as text: a page ending on 'z' of ENUM('z','m','a') continued with `k > 'z'`,
    which no other member is, so every later row was never read (3 of 4 lost, run ok)."""
    execute(mysql_dsn,
            "CREATE TABLE t (k ENUM('z','m','a''b','b\\\\c') NOT NULL, "
            "s SET('x','b','a') NOT NULL, at DATETIME(6) NOT NULL, n INT, "
            "PRIMARY KEY (k, s), KEY c (at, k, s))",
            "INSERT INTO t VALUES ('z', 'a', '2024-01-01', 1), ('m', 'x', '2024-01-01', 2), "
            "('a''b', 'b,a', '2024-01-01', 3), ('b\\\\c', '', '2024-01-01', 4), "
            "('z', 'x,a', '2024-01-01', 5), ('z', 'b', '2024-01-01', 6)")
    contract = {"primary_key": ["k", "s"], "cursor": "at", "columns": {
        "k": {"type": "string", "nullable": False}, "s": {"type": "string", "nullable": False},
        "at": {"type": "timestamp", "nullable": False}, "n": {"type": "int64"}}}
    summary = run(tmp_path, mysql_dsn, contract, initial_load)
    assert summary.ok, summary.errors
    query = "SELECT CAST(k AS CHAR), CAST(s AS CHAR), n FROM t"
    assert warehouse_rows(tmp_path, "SELECT k, s, n FROM main.t") == source_rows(mysql_dsn, query)
    assert len(source_rows(mysql_dsn, query)) == 6
    # an incremental pass: updates at a later cursor, pages of one row again
    execute(mysql_dsn, "UPDATE t SET at = '2024-01-02', n = n + 10 WHERE n IN (1, 4, 6)")
    summary = run(tmp_path, mysql_dsn, contract, initial_load)
    assert summary.ok, summary.errors
    assert warehouse_rows(tmp_path, "SELECT k, s, n FROM main.t") == source_rows(mysql_dsn, query)


def test_an_enum_cursor_pages_in_declaration_order(tmp_path: Path, mysql_dsn: str) -> None:
    """A status ENUM as the cursor: its pages follow the declaration's order too."""
    execute(mysql_dsn,
            "CREATE TABLE t (id INT PRIMARY KEY, st ENUM('new', 'paid', 'archived') NOT NULL, "
            "KEY c (st, id))",
            "INSERT INTO t VALUES (1, 'paid'), (2, 'new'), (3, 'archived'), (4, 'new')")
    contract = {"primary_key": ["id"], "cursor": "st", "columns": {
        "id": {"type": "int64", "nullable": False}, "st": {"type": "string", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract, "cursor")
    assert summary.ok, summary.errors
    assert warehouse_rows(tmp_path, "SELECT id, st FROM main.t") == source_rows(
        mysql_dsn, "SELECT id, CAST(st AS CHAR) FROM t")


def test_time_columns_keep_mariadb_s_own_text(tmp_path: Path, mysql_dsn: str) -> None:
    """TIME read as string (negative, past 24 h, fractions, as key and as value) is the
    text MariaDB shows for it: the drivers' timedelta spelled '-00:00:01' as
    '-1 day, 23:59:59' and '838:59:59' as '34 days, 22:59:59' in the warehouse."""
    execute(mysql_dsn,
            "CREATE TABLE t (k TIME(3) NOT NULL PRIMARY KEY, tm TIME, n INT, "
            "at DATETIME(6) NOT NULL, KEY c (at, k))",
            "INSERT INTO t VALUES ('-838:59:59', '-00:00:01', 1, '2024-01-01'), "
            "('-00:00:00.5', '25:00:00', 2, '2024-01-01'), "
            "('00:00:00', '838:59:59', 3, '2024-01-02'), "
            "('24:00:00.001', '-1:02:03', 4, '2024-01-03'), "
            "('100:00:00', NULL, 5, '2024-01-03')")
    contract = {"primary_key": ["k"], "cursor": "at", "columns": {
        "k": {"type": "string", "nullable": False}, "tm": {"type": "string"},
        "n": {"type": "int64"}, "at": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract)
    assert summary.ok, summary.errors
    query = "SELECT CAST(k AS CHAR), CAST(tm AS CHAR), n FROM t"
    expected = source_rows(mysql_dsn, query)
    assert ("-838:59:59.000", "-00:00:01", 1) in expected
    assert warehouse_rows(tmp_path, "SELECT k, tm, n FROM main.t") == expected


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_a_binary_key_pages_by_its_bytes(tmp_path: Path, mysql_dsn: str,
                                         initial_load: str) -> None:
    """A VARBINARY key of text read as string: the checkpoint keeps the key's bytes (it
    could not be written at all: 'Object of type bytes is not JSON serializable', the
    table never loaded), and pages follow MariaDB's bytewise order ('B' < 'b' < 'é')."""
    execute(mysql_dsn,
            "CREATE TABLE t (k VARBINARY(16) NOT NULL PRIMARY KEY, n INT, "
            "at DATETIME(6) NOT NULL, KEY c (at, k))",
            "INSERT INTO t VALUES ('b', 1, '2024-01-01'), ('B', 2, '2024-01-01'), "
            "('a''\\\\', 3, '2024-01-01'), ('é', 5, '2024-01-01'), ('', 6, '2024-01-02')")
    contract = {"primary_key": ["k"], "cursor": "at", "columns": {
        "k": {"type": "string", "nullable": False}, "n": {"type": "int64"},
        "at": {"type": "timestamp", "nullable": False}}}
    query = "SELECT CONVERT(k USING utf8mb4), n FROM t"
    summary = run(tmp_path, mysql_dsn, contract, initial_load)
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 0
    assert warehouse_rows(tmp_path, "SELECT k, n FROM main.t") == source_rows(mysql_dsn, query)
    execute(mysql_dsn, "INSERT INTO t VALUES ('zz', 7, '2024-01-03')",
            "UPDATE t SET n = 101, at = '2024-01-04' WHERE k = 'b'")
    summary = run(tmp_path, mysql_dsn, contract, initial_load)
    assert summary.ok, summary.errors
    assert warehouse_rows(tmp_path, "SELECT k, n FROM main.t") == source_rows(mysql_dsn, query)


BINARY_KEY_HINT = "store such keys as text"


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
@pytest.mark.parametrize(("declared", "keys"), [
    ("BINARY(16)", "UNHEX(REPLACE(UUID(), '-', ''))"),  # a UUID's bytes, the common case
    ("BINARY(4)", "'ab'"),  # text, padded with NUL bytes to the width
    ("VARBINARY(16)", "X'ff00'")])
def test_a_binary_key_that_is_no_text_is_refused_naming_it(
        tmp_path: Path, mysql_dsn: str, initial_load: str, declared: str, keys: str) -> None:
    """A BINARY(16) key of UUID bytes read as string (the contract has no bytes type): each
    row was quarantined as invalid UTF-8, one by one, every run ok, and no row ever loaded
    (BINARY(n) text shorter than n likewise, for its NUL padding). No warehouse string
    holds such a key: refused at the probe, naming table, column and the fix."""
    execute(mysql_dsn,
            f"CREATE TABLE t (k {declared} NOT NULL PRIMARY KEY, n INT, "
            "at DATETIME(6) NOT NULL, KEY c (at, k))",
            f"INSERT INTO t VALUES ({keys}, 1, '2024-01-01'), ('abcd', 2, '2024-01-01')")
    contract = {"primary_key": ["k"], "cursor": "at", "columns": {
        "k": {"type": "string", "nullable": False}, "n": {"type": "int64"},
        "at": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract, initial_load)
    assert summary.failed_tables == ["m.t"], summary
    assert summary.quarantined_rows == 0 and summary.loaded_rows == 0, summary
    assert f"key column k (string) is declared {declared.lower()}" in summary.errors[0], \
        summary.errors
    assert BINARY_KEY_HINT in summary.errors[0], summary.errors


@pytest.mark.parametrize("arrow", [False, True])
def test_a_binary_key_that_is_no_text_written_after_the_probe_stops_its_page(
        mysql_dsn: str, arrow: bool) -> None:
    """The probe looks at the keys at most hourly; a key written since that is no text
    fails the page that reads it, on either read path (it was quarantined, run ok)."""
    execute(mysql_dsn,
            "CREATE TABLE t (k VARBINARY(16) NOT NULL PRIMARY KEY, n INT)",
            "INSERT INTO t VALUES ('a', 1), ('b', 2)")
    contract = Contract(columns=(Column("k", "string", nullable=False), Column("n", "int64")),
                        primary_key=("k",), cursor="k")
    config = SourceConfig(name="m", kind="mysql", dsn=mysql_dsn,
                          tables=[{"name": "t", "contract": "c"}],  # type: ignore[list-item]
                          resilience=ResilienceConfig(retries=0))
    source = MysqlArrowSource(config) if arrow else SqlSource(config)
    try:
        source.probe("t", contract)
        execute(mysql_dsn, "INSERT INTO t VALUES (X'ff', 3)")
        with pytest.raises(SchemaError) as raised:  # a first page: connectorx reads it
            source.page("t", contract, None, None, 10)
    finally:
        source.close()
    assert "key column k (string) is declared varbinary(16)" in raised.value.message
    assert "X'FF'" in raised.value.message and BINARY_KEY_HINT in (raised.value.hint or "")


@pytest.mark.parametrize("pymysql_only", [False, True])
def test_a_decimal_read_as_string_is_spelled_as_mariadb_spells_it(
        tmp_path: Path, mysql_dsn: str, pymysql_only: bool) -> None:
    """DECIMAL(65,30) (past what the contract's decimal holds) read as string is MariaDB's
    text: Python's str() of the Decimal loaded '0E-30' and '1E-30' for 0 and 1e-30, on
    either read path (a FLOAT column sends the table's pages to pymysql)."""
    extra = ", f FLOAT" if pymysql_only else ""
    execute(mysql_dsn,
            f"CREATE TABLE t (id INT PRIMARY KEY, big DECIMAL(65,30), small DECIMAL(10,2){extra}, "
            "at DATETIME(6) NOT NULL, KEY c (at, id))",
            "INSERT INTO t (id, big, small, at) VALUES (1, 0, 0, '2024-01-01'), "
            "(2, 0.000000000000000000000000000001, 1.5, '2024-01-01'), "
            "(3, -1, -0.01, '2024-01-01'), (4, NULL, NULL, '2024-01-01'), "
            "(5, 12345678901234567890123456789012345.123456789012345678901234567891, "
            "99999999.99, '2024-01-01')")
    contract = {"primary_key": ["id"], "cursor": "at", "columns": {
        "id": {"type": "int64", "nullable": False}, "big": {"type": "string"},
        "small": {"type": "string"}, "at": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract, page_size=2)
    assert summary.ok, summary.errors
    expected = source_rows(mysql_dsn, "SELECT id, CAST(big AS CHAR), CAST(small AS CHAR) FROM t")
    assert (1, "0.000000000000000000000000000000", "0.00") in expected
    assert warehouse_rows(tmp_path, "SELECT id, big, small FROM main.t") == expected


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_times_read_as_string_keep_mariadb_s_own_text(tmp_path: Path, mysql_dsn: str,
                                                      initial_load: str) -> None:
    """DATETIME/TIMESTAMP/DATE read as string (a key among them, a zero date too) are
    MariaDB's text: str() of the driver's datetime dropped a zero fraction
    ('2024-01-01 00:00:00' for a DATETIME(6) shown '2024-01-01 00:00:00.000000') and
    widened others ('...00.500000' for a DATETIME(3) '...00.500'), so reconcile found every
    such row mismatched. Keyset pages of one row compare the text with the column as a
    time."""
    execute(mysql_dsn,
            "SET SESSION sql_mode = ''",
            "CREATE TABLE t (k DATETIME(6) NOT NULL, d3 DATETIME(3), ts TIMESTAMP(6) NULL, "
            "dd DATE, n INT, at DATETIME NOT NULL, PRIMARY KEY (k), KEY c (at, k))",
            "INSERT INTO t VALUES "
            "('2024-01-01 00:00:00', '2024-01-01 00:00:00.5', '2024-01-01 00:00:00', "
            "'2024-01-01', 1, '2024-01-01'), "
            "('2024-01-01 00:00:00.5', '2024-01-01 00:00:00', '2024-01-01 00:00:00.000001', "
            "'0000-00-00', 2, '2024-01-01'), "
            "('1000-01-01 00:00:00', NULL, NULL, NULL, 3, '2024-01-01'), "
            "('2024-01-01 00:00:00.000001', '9999-12-31 23:59:59.999', NULL, '9999-12-31', 4, "
            "'2024-01-02')")
    contract = {"primary_key": ["k"], "cursor": "at", "columns": {
        "k": {"type": "string", "nullable": False}, "d3": {"type": "string"},
        "ts": {"type": "string"}, "dd": {"type": "string"}, "n": {"type": "int64"},
        "at": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract, initial_load)
    assert summary.ok, summary.errors
    query = ("SELECT CAST(k AS CHAR), CAST(d3 AS CHAR), CAST(ts AS CHAR), CAST(dd AS CHAR), "
             "n FROM t")
    expected = source_rows(mysql_dsn, query)
    assert ("2024-01-01 00:00:00.000000", "2024-01-01 00:00:00.500",
            "2024-01-01 00:00:00.000000", "2024-01-01", 1) in expected
    assert warehouse_rows(tmp_path, "SELECT k, d3, ts, dd, n FROM main.t") == expected


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_a_year_read_as_string_keeps_mariadb_s_own_text(tmp_path: Path, mysql_dsn: str,
                                                        initial_load: str) -> None:
    """YEAR read as string (as key and as value) is MariaDB's four digits: the drivers hand
    it over as a number, whose text loaded the zero year '0000' as '0' (every run ok, and
    reconcile, reading MariaDB's text, found the row mismatched). Keyset pages of one row
    compare the text with the column as a year."""
    execute(mysql_dsn,
            "CREATE TABLE t (k YEAR NOT NULL PRIMARY KEY, y YEAR, n INT, "
            "at DATETIME(6) NOT NULL, KEY c (at, k))",
            "INSERT INTO t VALUES (0, 0, 1, '2024-01-01'), (1901, NULL, 2, '2024-01-01'), "
            "(2155, 1999, 3, '2024-01-01'), (1970, 2000, 4, '2024-01-02')")
    contract = {"primary_key": ["k"], "cursor": "at", "columns": {
        "k": {"type": "string", "nullable": False}, "y": {"type": "string"},
        "n": {"type": "int64"}, "at": {"type": "timestamp", "nullable": False}}}
    query = "SELECT CAST(k AS CHAR), CAST(y AS CHAR), n FROM t"
    for second in (False, True):
        if second:
            execute(mysql_dsn, "UPDATE t SET n = n + 10, at = '2024-01-03' WHERE k IN (0, 2155)",
                    "INSERT INTO t VALUES (2024, 0, 5, '2024-01-03')")
        summary = run(tmp_path, mysql_dsn, contract, initial_load)
        assert summary.ok, summary.errors
        expected = source_rows(mysql_dsn, query)
        assert warehouse_rows(tmp_path, "SELECT k, y, n FROM main.t") == expected
    assert ("0000", "0000", 11) in expected and len(expected) == 5


@pytest.mark.parametrize(("declared", "ctype", "bad", "later"), [
    ("DATE", "date", "2024-05-00", "2024-05-10"),
    ("DATETIME(3)", "timestamp", "2024-05-00 10:00:00.5", "2024-05-10 00:00:00")])
@pytest.mark.parametrize("lookback", ["0s", "1d"])
def test_a_date_that_is_none_in_the_cursor_holds_no_later_row_back(
        tmp_path: Path, mysql_dsn: str, declared: str, ctype: str, bad: str, later: str,
        lookback: str) -> None:
    """A zero-in-date cursor ('2024-05-00', kept under a relaxed sql_mode) is quarantined,
    and the checkpoint lands on its text; every later run then failed with 'day is out of
    range for month' (naming no table or column) and no row written afterwards was ever
    loaded. The clock check and the lookback now step back from the latest real date
    before it."""
    execute(mysql_dsn, "SET SESSION sql_mode = ''",
            f"CREATE TABLE t (id INT PRIMARY KEY, n INT, at {declared} NOT NULL, "
            "KEY c (at, id))",
            f"INSERT INTO t VALUES (1, 1, '2024-01-01'), (2, 2, '{bad}')")
    contract = {"primary_key": ["id"], "cursor": "at", "columns": {
        "id": {"type": "int64", "nullable": False}, "n": {"type": "int64"},
        "at": {"type": ctype, "nullable": False}}}
    config = {"lookback": lookback}
    summary = run(tmp_path, mysql_dsn, contract, "cursor", table=config)
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 1
    execute(mysql_dsn, f"INSERT INTO t VALUES (3, 3, '{later}')")
    summary = run(tmp_path, mysql_dsn, contract, "cursor", table=config)
    assert summary.ok, summary.errors
    assert warehouse_rows(tmp_path, "SELECT id, n FROM main.t") == [(1, 1), (3, 3)]


@pytest.mark.parametrize(("column", "ctype"), [("tm", "timestamp"), ("id", "timestamp"),
                                               ("id", "int64"), ("tm", "int64")])
def test_a_time_of_day_read_as_other_than_string_is_refused_naming_it(
        tmp_path: Path, mysql_dsn: str, column: str, ctype: str) -> None:
    """A TIME cursor (or key) the contract reads as timestamp, or as a number: no row could
    load, and the first page failed with 'Object of type timedelta is not JSON
    serializable', naming neither table nor column (the int64 case too, until the probe
    refused every type but string). Refused at the probe, naming both and the fix."""
    execute(mysql_dsn, "CREATE TABLE t (id TIME NOT NULL PRIMARY KEY, n INT, "
                       "tm TIME(6) NOT NULL, KEY c (tm, id))",
            "INSERT INTO t VALUES ('01:00:00', 1, '-10:00:00'), ('02:00:00', 2, '100:00:00')")
    contract = {"primary_key": ["id"], "cursor": "tm", "columns": {
        "id": {"type": ctype if column == "id" else "string", "nullable": False},
        "n": {"type": "int64"},
        "tm": {"type": ctype if column == "tm" else "string", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract)
    assert summary.failed_tables == ["m.t"], summary
    assert f"column {column} ({ctype}) is declared time" in summary.errors[0], summary.errors
    assert f"declare {column} as string" in summary.errors[0], summary.errors


@pytest.mark.parametrize("column", ["e", "st"])
def test_an_enum_key_or_cursor_with_an_empty_member_is_refused_naming_it(
        tmp_path: Path, mysql_dsn: str, column: str) -> None:
    """ENUM('b','','a') holds two values spelled '': the member '' (number 2) and the error
    value MariaDB stores for invalid input outside strict mode (number 0). Both are read as
    '', so a keyset page ending on one continued from the other's number: key pages after
    the error value (0) resumed after the member (2) and never read 'b' nor the member ''
    itself (2 of 5 rows lost, run ok). Refused at the probe, naming the column and the fix."""
    e = "'b','','a'" if column == "e" else "'b','x','a'"  # the cursor's case: st's only
    execute(mysql_dsn, "SET SESSION sql_mode = ''",
            f"CREATE TABLE t (id INT NOT NULL, e ENUM({e}) NOT NULL, "
            "st ENUM('new','','done') NOT NULL, n INT, at DATETIME(6) NOT NULL, "
            "PRIMARY KEY (e, id), KEY c (at, e, id), KEY s (st, e, id))",
            "INSERT INTO t VALUES (1, 'b', 'new', 1, '2024-01-01'), "
            "(2, '', '', 2, '2024-01-01'), (3, 'a', 'done', 3, '2024-01-01'), "
            "(4, 'no such', 'no such', 4, '2024-01-01'), (5, '', 'new', 5, '2024-01-01')")
    spelled_empty = source_rows(mysql_dsn, f"SELECT id, {column} + 0 FROM t "
                                           f"WHERE CAST({column} AS CHAR) = ''")
    assert (2, 2) in spelled_empty and (4, 0) in spelled_empty  # the member, the error
    contract = {"primary_key": ["e", "id"], "cursor": "at" if column == "e" else "st",
                "columns": {"id": {"type": "int64", "nullable": False},
                            "e": {"type": "string", "nullable": False},
                            "st": {"type": "string", "nullable": False},
                            "n": {"type": "int64"},
                            "at": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract, "key" if column == "e" else "cursor")
    assert summary.failed_tables == ["m.t"], summary
    assert f"column {column} is declared enum(" in summary.errors[0], summary.errors
    assert "'' both as a member and as the error value" in summary.errors[0], summary.errors


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_an_enum_key_s_error_value_pages_first(tmp_path: Path, mysql_dsn: str,
                                               initial_load: str) -> None:
    """Without a '' member, '' is only the error value (number 0, sorting first): it loads
    as '' and key pages continue after it."""
    execute(mysql_dsn, "SET SESSION sql_mode = ''",
            "CREATE TABLE t (id INT NOT NULL, e ENUM('b','a') NOT NULL, n INT, "
            "at DATETIME(6) NOT NULL, PRIMARY KEY (e, id), KEY c (at, e, id))",
            "INSERT INTO t VALUES (1, 'b', 1, '2024-01-01'), (2, 'no such', 2, '2024-01-01'), "
            "(3, 'a', 3, '2024-01-01'), (4, '', 4, '2024-01-01')")
    contract = {"primary_key": ["e", "id"], "cursor": "at", "columns": {
        "id": {"type": "int64", "nullable": False}, "e": {"type": "string", "nullable": False},
        "n": {"type": "int64"}, "at": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract, initial_load)
    assert summary.ok, summary.errors
    query = "SELECT id, CAST(e AS CHAR), n FROM t"
    assert warehouse_rows(tmp_path, "SELECT id, e, n FROM main.t") == source_rows(mysql_dsn, query)
    assert len(source_rows(mysql_dsn, query)) == 4


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_bit_columns_load_as_the_numbers_they_hold(tmp_path: Path, mysql_dsn: str,
                                                   initial_load: str) -> None:
    """BIT read as string was its raw bytes: b'\\x05' is no text a reader can use, and
    most values (a NUL byte, a byte past 0x7f) cost their row; every BIT(1) flag of 0 was
    quarantined. Read as string, BIT is now the decimal text of its number, like the number
    types read it; a BIT(64) whose top bit is set loads whole as decimal(20,0) or string,
    and a BIT key pages in its number's order."""
    execute(mysql_dsn,
            "CREATE TABLE t (k BIT(12) NOT NULL PRIMARY KEY, flag BIT(1), flag_s BIT(1), "
            "b8 BIT(8), b64 BIT(64), b64_s BIT(64), at DATETIME(6) NOT NULL, KEY c (at, k))",
            "INSERT INTO t VALUES (b'111111111111', 1, 1, 255, 18446744073709551615, "
            "18446744073709551615, '2024-01-01'), "
            "(0, 0, 0, 0, 0, 0, '2024-01-01'), (256, NULL, NULL, 127, 9223372036854775808, "
            "9223372036854775807, '2024-01-01'), (5, 1, 0, NULL, NULL, NULL, '2024-01-02')")
    contract = {"primary_key": ["k"], "cursor": "at", "columns": {
        "k": {"type": "int64", "nullable": False}, "flag": {"type": "bool"},
        "flag_s": {"type": "string"}, "b8": {"type": "string"},
        "b64": {"type": "decimal(20,0)"}, "b64_s": {"type": "string"},
        "at": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract, initial_load)
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 0
    expected = source_rows(mysql_dsn, "SELECT k + 0, flag = 1, CAST(flag_s + 0 AS CHAR), "
                                      "CAST(b8 + 0 AS CHAR), b64 + 0, CAST(b64_s + 0 AS CHAR) "
                                      "FROM t")
    assert (4095, 1, "1", "255", 18446744073709551615, "18446744073709551615") in expected
    got = warehouse_rows(tmp_path, "SELECT k, flag, flag_s, b8, b64, b64_s FROM main.t")
    assert got == expected
    with Pipeline.from_yaml(tmp_path / "pipeline.yml") as p:  # reconcile reads them alike
        [report] = reconcile(p, options=Options(by="key"))
    assert report.error is None, report.error
    assert (report.extra, report.differences) == (0, 0), report.to_dict()


@pytest.mark.parametrize(("declared", "ctype", "fix"), [
    ("BIT(64)", "int64", "decimal(20,0)"), ("BIT(32)", "int32", "int64"),
    ("BIT(2)", "bool", "int64"), ("BIT(64)", "decimal(19,0)", "decimal(20,0)"),
    ("BIT(54)", "float64", "int64"), ("BIT(8)", "timestamp", "int64")])
def test_a_bit_column_the_contract_type_cannot_hold_is_refused_naming_it(
        tmp_path: Path, mysql_dsn: str, declared: str, ctype: str, fix: str) -> None:
    """A BIT(64) read as int64 (BIT(2) as bool, ...): each row holding a value past the
    contract type was quarantined, every run ok (a BIT(64) of 2^64 - 1 cannot load). Refused
    at the probe, naming the column, its declaration and a type that holds every value."""
    execute(mysql_dsn,
            f"CREATE TABLE t (id INT PRIMARY KEY, b {declared}, at DATETIME(6) NOT NULL, "
            "KEY c (at, id))",
            "INSERT INTO t VALUES (1, 1, '2024-01-01'), (2, b'11', '2024-01-01')")
    contract = {"primary_key": ["id"], "cursor": "at", "columns": {
        "id": {"type": "int64", "nullable": False}, "b": {"type": ctype},
        "at": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract)
    assert summary.failed_tables == ["m.t"], summary
    assert f"column b ({ctype}) is declared {declared.lower()}" in summary.errors[0], \
        summary.errors
    assert f"declare b as {fix}" in summary.errors[0], summary.errors


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_a_set_key_with_an_empty_member_is_refused_naming_it(
        tmp_path: Path, mysql_dsn: str, initial_load: str) -> None:
    """SET('','a') spells its '' member as nothing: the empty set (0) and {''} (1) are both
    read as '', {a} (2) and {'',a} (3) both as 'a'. Two source keys became one warehouse
    key and pages resumed from the wrong number (rows lost, run ok). Refused at the probe."""
    execute(mysql_dsn, "SET SESSION sql_mode = ''",
            "CREATE TABLE t (s SET('','a') NOT NULL, n INT, at DATETIME(6) NOT NULL, "
            "PRIMARY KEY (s), KEY c (at, s))",
            "INSERT INTO t VALUES (0, 1, '2024-01-01'), (1, 2, '2024-01-01'), "
            "(2, 3, '2024-01-01'), (3, 4, '2024-01-01')")
    assert source_rows(mysql_dsn, "SELECT s + 0, CAST(s AS CHAR) FROM t") == [
        (0, ""), (1, ""), (2, "a"), (3, "a")]
    contract = {"primary_key": ["s"], "cursor": "at", "columns": {
        "s": {"type": "string", "nullable": False}, "n": {"type": "int64"},
        "at": {"type": "timestamp", "nullable": False}}}
    summary = run(tmp_path, mysql_dsn, contract, initial_load)
    assert summary.failed_tables == ["m.t"], summary
    assert "column s is declared set('','a')" in summary.errors[0], summary.errors
    assert "'' member is read as nothing" in summary.errors[0], summary.errors


@pytest.mark.parametrize("initial_load", ["key", "cursor"])
def test_a_date_read_as_a_timestamp_loads_as_its_midnight(tmp_path: Path, mysql_dsn: str,
                                                          initial_load: str) -> None:
    """A DATE column under a `timestamp` contract (as cursor and as value) is the instant
    of its midnight, UTC, as on PostgreSQL. Its values came back as Python dates, which
    Arrow would not take as timestamps, then as text '2024-01-02' without a time, which no
    time cast reads: every row was quarantined ('not a valid timestamp') while the run
    said ok, and a cursor retyped from DATETIME to DATE sent every row changed since to
    quarantine the same way."""
    execute(mysql_dsn,
            "CREATE TABLE t (id INT PRIMARY KEY, d DATE NOT NULL, born DATE, KEY c (d, id))",
            "INSERT INTO t VALUES (1, '2024-01-01', '1969-12-31'), (2, '2024-01-02', NULL), "
            "(3, '2024-01-02', '2000-02-29')")
    contract = {"primary_key": ["id"], "cursor": "d", "columns": {
        "id": {"type": "int64", "nullable": False}, "d": {"type": "timestamp", "nullable": False},
        "born": {"type": "timestamp"}}}
    summary = run(tmp_path, mysql_dsn, contract, initial_load, page_size=2)
    assert summary.ok and summary.quarantined_rows == 0, summary
    query = ("SELECT id, strftime(d AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S'), "
             "strftime(born AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S') FROM main.t")
    assert warehouse_rows(tmp_path, query) == [
        (1, "2024-01-01 00:00:00", "1969-12-31 00:00:00"), (2, "2024-01-02 00:00:00", None),
        (3, "2024-01-02 00:00:00", "2000-02-29 00:00:00")]
    execute(mysql_dsn, "UPDATE t SET d = '2024-01-05', born = '1999-01-01' WHERE id = 1")
    summary = run(tmp_path, mysql_dsn, contract, initial_load, page_size=2)
    assert summary.ok and summary.quarantined_rows == 0, summary
    assert (1, "2024-01-05 00:00:00", "1999-01-01 00:00:00") in warehouse_rows(tmp_path, query)
    with Pipeline.from_yaml(tmp_path / "pipeline.yml") as p:
        (report,) = reconcile(p, ["t"], Options())
    assert report.error is None and report.differences == 0, report.to_dict()


def test_an_ignored_keyset_index_is_not_forced(tmp_path: Path, mysql_dsn: str) -> None:
    """The (cursor, key) index marked IGNORED (MariaDB 10.6+: how an operator sees what
    dropping it would do): pages were pinned to it by FORCE INDEX, which fails on an
    ignored index ("Key 'c' doesn't exist in table 't'"), so every cursor page failed,
    reported as a connection problem, and the table loaded nothing more until the index
    was used again. It is no keyset index now: pages scan, and every row arrives."""
    execute(mysql_dsn, "CREATE TABLE t (id INT PRIMARY KEY, n INT, at DATETIME(6) NOT NULL, "
                       "KEY c (at, id))", "ALTER TABLE t ALTER INDEX c IGNORED",
            "INSERT INTO t VALUES (1, 1, '2024-01-01'), (2, 2, '2024-01-01'), "
            "(3, 3, '2024-01-02')")
    contract = {"primary_key": ["id"], "cursor": "at", "columns": {
        "id": {"type": "int64", "nullable": False}, "n": {"type": "int64"},
        "at": {"type": "timestamp", "nullable": False}}}
    for second in (False, True):  # the second run: an incremental pass
        if second:
            execute(mysql_dsn, "UPDATE t SET n = n + 10, at = '2024-01-03' WHERE id = 1",
                    "INSERT INTO t VALUES (4, 4, '2024-01-03')")
        summary = run(tmp_path, mysql_dsn, contract, "cursor", page_size=2)
        assert summary.ok, summary.errors
        assert warehouse_rows(tmp_path, "SELECT id, n FROM main.t") == source_rows(
            mysql_dsn, "SELECT id, n FROM t")
    assert len(source_rows(mysql_dsn, "SELECT id FROM t")) == 4


def test_a_keyset_index_dropped_after_the_probe_is_named(mysql_dsn: str) -> None:
    """The index a source object found for the table is gone (dropped, renamed) when a page
    is pinned to it: the error names it as such, not as a connection problem (it was
    retried as one, and the retries failed alike); the next run probes again."""
    execute(mysql_dsn, "CREATE TABLE t (id INT PRIMARY KEY, at DATETIME(6) NOT NULL, "
                       "KEY c (at, id))", "INSERT INTO t VALUES (1, '2024-01-01')")
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("at", "timestamp", nullable=False)),
                        primary_key=("id",), cursor="at")
    config = SourceConfig(name="m", kind="mysql", dsn=mysql_dsn,
                          tables=[{"name": "t", "contract": "c"}],  # type: ignore[list-item]
                          resilience=ResilienceConfig(retries=0))
    source = SqlSource(config)
    try:
        source.probe("t", contract)
        execute(mysql_dsn, "DROP INDEX c ON t")
        with pytest.raises(SchemaError) as raised:
            source.page("t", contract, None, None, 10)
    finally:
        source.close()
    assert "keyset index not found" in raised.value.message, raised.value.message
    assert not raised.value.retryable
