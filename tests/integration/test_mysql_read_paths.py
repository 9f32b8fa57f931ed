"""Every MariaDB read path gives the same rows, in keyset order, with the same values.

Paths: connectorx pages (MysqlArrowSource, the extraction path), pymysql pages (SqlSource:
its fallback, and what reconcile and repair construct) and `where` pages. Each must read
every row exactly once whatever the key type and page size, give identical values for the
same row (DECIMAL past 28 digits, DATETIME(0/6), TIMESTAMP, DATE, json, CHAR padding,
BINARY/BLOB, unsigned BIGINT, 4-byte UTF-8, NULLs, zero dates, collations) and the same
quarantine reasons, honour the statement timeout, and keep the password out of errors.
"""

from __future__ import annotations

import time
import uuid
from contextlib import closing
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pymysql
import pytest
from tests.support.read_paths import comparable, contract, read_all

from steadyflow.config import ResilienceConfig, SourceConfig
from steadyflow.errors import AuthError, SourceTimeout, SteadyflowError
from steadyflow.extract.mysql_arrow import MysqlArrowSource
from steadyflow.extract.sql import SqlSource
from steadyflow.model import INVALID, Contract, Watermark
from steadyflow.validate.rules import validate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def config(dsn: str, statement_timeout: float = 20) -> SourceConfig:
    return SourceConfig(name="my", kind="mysql", dsn=dsn,
                        tables=[{"name": "t", "contract": "c"}],  # type: ignore[list-item]
                        resilience=ResilienceConfig(statement_timeout=statement_timeout,
                                                    retries=0))


def connect(dsn: str) -> pymysql.connections.Connection[Any]:
    parts = urlsplit(dsn)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root",
                           password="", database=parts.path.lstrip("/"), autocommit=True,
                           charset="utf8mb4")


def execute(dsn: str, *statements: str) -> None:
    with closing(connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = ''")  # zero dates may be stored
        for statement in statements:
            cur.execute(statement)


class Counting(MysqlArrowSource):
    """MysqlArrowSource that counts the pages connectorx read: the test must know the
    fast path was taken, not only that the values agree."""

    fast = 0

    def _fetch(self, table: str, sql: str) -> pa.Table:
        result = super()._fetch(table, sql)
        Counting.fast += 1
        return result


def arrow(dsn: str) -> SqlSource:
    return Counting(config(dsn))


def plain(dsn: str) -> SqlSource:
    """The pymysql path: MysqlArrowSource's fallback, and what reconcile constructs."""
    return SqlSource(config(dsn))


PATHS = {"connectorx": arrow, "pymysql": plain}
def both(dsn: str, c: Contract, size: int) -> dict[str, tuple[pa.Table, Watermark | None]]:
    Counting.fast = 0
    out = {name: read_all(make(dsn), "t", c, size) for name, make in PATHS.items()}
    assert Counting.fast > 0, "the connectorx path was not taken"
    return out


# --- 1. one value per type, whatever the path -----------------------------------------------
TYPES_DDL = """CREATE TABLE t (
    id bigint PRIMARY KEY, fixed char(8), var varchar(20), free text, doc json,
    amount decimal(12,3), big decimal(65,30), wide decimal(38,10), at datetime(6),
    whole datetime, stamp timestamp(6) NULL, day date, small smallint, mid int,
    large bigint, ubig bigint unsigned, ratio double, flag boolean, raw varbinary(8),
    blobby blob, fixedbin binary(4), latin varchar(10) CHARACTER SET latin1, yr year,
    choice enum('a','b'), bits bit(8)) DEFAULT CHARSET utf8mb4"""
TYPES_ROWS = """INSERT INTO t VALUES
    (1, 'ab  ', 'x ', 'tab\tand ''quote''', '{"b": 1,  "a": [1, 2]}', 1.5,
     12345678901234567890123456789012345.123456789012345678901234567891,
     1234567890123456789012345678.0123456789, '2024-05-01 12:00:00.123456',
     '2024-05-01 12:00:00', '2024-05-01 12:00:00.5', '2024-02-29', -32768, 2147483647,
     9223372036854775807, 18446744073709551615, 1e-300, true, X'00ff', X'deadbeef', 'ab',
     'äö', 2024, 'b', b'101'),
    (2, '1-URGENT', '', 'ünïcödé 🙂𝄞', 'null', -0.001, 0, -0.0000000001,
     '1000-01-01 00:00:00', '9999-12-31 23:59:59', '1970-01-01 00:00:01', '1000-01-01',
     0, 0, -9223372036854775808, 0, 0.30000000000000004, false, X'', X'', '',
     '', 1901, 'a', b'0'),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (4, '        ', 'a', 'b', '"s"', 999999999.999, -1, 1, '9999-12-31 23:59:59.999999',
     '2000-01-01', '2038-01-19 03:14:07.999999', '9999-12-31', 1, 1, 1, 1, -1.5, 1,
     X'c3a9', 'text in a blob', 'abcd', 'x', 2155, NULL, b'11111111')"""
TYPES_CONTRACT = contract(
    ("id", "int64"), ("fixed", "string"), ("var", "string"), ("free", "string"),
    ("doc", "string"), ("amount", "decimal(12,3)"), ("big", "string"),
    ("wide", "decimal(38,10)"), ("at", "timestamp"), ("whole", "timestamp"),
    ("stamp", "timestamp"), ("day", "date"), ("small", "int64"), ("mid", "int32"),
    ("large", "int64"), ("ubig", "string"), ("ratio", "float64"), ("flag", "bool"),
    ("raw", "string"), ("blobby", "string"), ("fixedbin", "string"), ("latin", "string"),
    ("yr", "int64"), ("choice", "string"), ("bits", "string"))


def test_every_read_path_reads_the_same_values(mysql_dsn: str) -> None:
    execute(mysql_dsn, TYPES_DDL, TYPES_ROWS)
    c = TYPES_CONTRACT
    tables = {name: rows for name, (rows, _) in both(mysql_dsn, c, 3).items()}
    source = plain(mysql_dsn)
    try:
        tables["where"], _ = source.page("t", c, None, None, 10, where=("`id` >= %s", [1]))
    finally:
        source.close()
    first = comparable(tables["connectorx"])
    for name, table in tables.items():
        assert table.schema == tables["connectorx"].schema, name
        assert comparable(table) == first, name
    one, two, three, four = first
    assert (one["fixed"], two["fixed"], four["fixed"]) == ("ab", "1-URGENT", "")  # unpadded
    assert one["var"] == "x " and one["free"] == "tab\tand 'quote'"
    assert two["free"] == "ünïcödé 🙂𝄞" and one["latin"] == "äö"
    assert one["doc"] == '{"b": 1,  "a": [1, 2]}' and two["doc"] == "null"
    assert one["amount"] == Decimal("1.500") and two["amount"] == Decimal("-0.001")
    assert one["big"] == "12345678901234567890123456789012345.123456789012345678901234567891"
    assert one["wide"] == Decimal("1234567890123456789012345678.0123456789")
    assert two["wide"] == Decimal("-0.0000000001")
    assert str(one["at"]) == "2024-05-01 12:00:00.123456+00:00"
    assert str(one["stamp"]) == "2024-05-01 12:00:00.500000+00:00"  # UTC session
    assert str(four["at"]) == "9999-12-31 23:59:59.999999+00:00"
    assert one["ubig"] == "18446744073709551615" and four["ubig"] == "1"
    assert two["ratio"] == 0.30000000000000004 and one["ratio"] == 1e-300
    assert (one["flag"], two["flag"], three["flag"]) == (True, False, None)
    assert one["raw"] is None and one[INVALID] == "raw: invalid UTF-8: '\x00\\xff'"
    assert four["raw"] == "é" and four["fixedbin"] == "abcd" and one["fixedbin"] == "ab\0\0"
    assert (one["bits"], four["bits"]) == ("5", "255")  # the number's text, not its bytes


def test_values_that_do_not_fit_cost_their_row_with_the_same_reason(mysql_dsn: str) -> None:
    execute(mysql_dsn,
            "CREATE TABLE t (id int PRIMARY KEY, amount decimal(20,6), n bigint, flag tinyint,"
            " day datetime)",
            "INSERT INTO t VALUES (1, 1.25, 1, 1, '2024-01-01'), (2, 1.255, 2, 0, '2024-01-01'),"
            " (3, 0.000001, 3000000000, 2, '2024-01-01 10:00:00'), (4, 12345678901234.5, 4,"
            " 1, '2024-01-02')")
    c = contract(("id", "int64"), ("amount", "decimal(10,2)"), ("n", "int32"),
                 ("flag", "bool"), ("day", "date"))
    tables = {name: rows for name, (rows, _) in both(mysql_dsn, c, 10).items()}
    assert comparable(tables["connectorx"]) == comparable(tables["pymysql"])
    assert tables["connectorx"].schema == tables["pymysql"].schema
    for name, table in tables.items():
        verdict = validate(table, c)
        assert verdict.good["id"].to_pylist() == [1], name
        assert sorted(map(str, verdict.bad["id"].to_pylist())) == ["2", "3", "4"], name


def test_bit_read_as_a_number_on_every_path(mysql_dsn: str) -> None:
    """BIT(1) declared bool (the classic MySQL boolean) and BIT(8) declared int64: both
    drivers give bytes (b'\\x01'), which every row quarantined as 'not a valid bool'; read
    as their number on every path (read as string, its decimal text: test above); a
    TINYINT beside it holding 1 is not touched, nor is text reading 'true'."""
    execute(mysql_dsn,
            "CREATE TABLE t (id int PRIMARY KEY, b bit(1), n bit(8), f tinyint, s varchar(9))",
            "INSERT INTO t VALUES (1, b'1', b'101', 1, 'true'), (2, b'0', b'0', 0, 'false'), "
            "(3, NULL, NULL, NULL, NULL), (4, b'1', b'11111111', 1, '1')")
    c = contract(("id", "int64"), ("b", "bool"), ("n", "int64"), ("f", "bool"),
                 ("s", "string"))
    tables = {name: rows for name, (rows, _) in both(mysql_dsn, c, 10).items()}
    source = plain(mysql_dsn)
    try:
        tables["where"], _ = source.page("t", c, None, None, 10, where=("`id` >= %s", [1]))
    finally:
        source.close()
    for name, table in tables.items():
        assert INVALID not in table.column_names, name
        assert table.column("b").to_pylist() == [True, False, None, True], name
        assert table.column("n").to_pylist() == [5, 0, None, 255], name
        assert table.column("f").to_pylist() == [True, False, None, True], name
        assert table.column("s").to_pylist() == ["true", "false", None, "1"], name
        assert table.schema == tables["connectorx"].schema, name


def test_a_zero_date_page_is_read_by_pymysql_with_the_same_values(mysql_dsn: str) -> None:
    """connectorx cannot decode '0000-00-00' (it panics): that page is read again by
    pymysql, so the row costs one quarantined value, as on the pymysql path."""
    execute(mysql_dsn, "CREATE TABLE t (id int PRIMARY KEY, at datetime(6), day date)",
            "INSERT INTO t VALUES (1, '2024-01-01', '2024-01-01'), "
            "(2, '0000-00-00 00:00:00', '2024-01-02'), (3, '2024-01-03', '0000-00-00'), "
            "(4, '2024-01-04', '2024-01-04'), (5, '2024-01-05', '2024-01-05')")
    c = contract(("id", "int64"), ("at", "timestamp"), ("day", "date"))
    Counting.fast = 0
    paged = {name: list(make(mysql_dsn).pages("t", c, None, None, 2))
             for name, make in PATHS.items()}
    assert Counting.fast == 1  # the last page; the two with a zero date went to pymysql
    fast, slow = paged["connectorx"], paged["pymysql"]
    assert [h for _, h in fast] == [h for _, h in slow]
    for (a, _), (b, _) in zip(fast, slow, strict=True):
        assert a.schema == b.schema and comparable(a) == comparable(b)
    good = [validate(rows, c).good["id"].to_pylist() for rows, _ in fast]
    assert good == [[1], [4], [5]]


# --- 2. keyset values sent back exactly -----------------------------------------------------
KEYS = {
    "decimal(38,12)": ["12345678901234567890123456.123456789012", "-0.000000000001", "0",
                       "1E+3", "12345678901234567890123456.123456789011"],
    "varchar(20)": ["'a''b'", "'a\\\\b'", "'A'", "'ö'", "'b'", "''", "'a b'", "'🙂'",
                    "'a'' OR ''1''=''1'", "'ab '"],
    "varchar(20) COLLATE utf8mb4_bin": ["'a'", "'A'", "'b'", "'B'", "'ä'", "'🙂'", "'𝄞'"],
    "varchar(20) CHARACTER SET latin1": ["'a'", "'B'", "'ä'", "'é'", "'z'"],
    "datetime(6)": ["'1000-01-01 00:00:00'", "'2024-02-29 12:00:00.000001'",
                    "'9999-12-31 23:59:59.999999'", "'1970-01-01'"],
    "datetime": ["'1000-01-01 00:00:00'", "'2024-02-29 12:00:01'", "'9999-12-31 23:59:59'"],
    "date": ["'1000-01-01'", "'2024-02-29'", "'9999-12-31'", "'1970-01-01'"],
    "bigint unsigned": ["0", "1", "9223372036854775808", "18446744073709551615"],
    "char(3)": ["'a'", "'a b'", "'ab'", "'b'"],
    "double": ["0.1", "-1e-300", "1.7976931348623157e308", "0.30000000000000004"],
}
KEY_TYPES = {"decimal(38,12)": "decimal(38,12)", "datetime(6)": "timestamp",
             "datetime": "timestamp", "date": "date", "bigint unsigned": "string",
             "double": "float64"}


@pytest.mark.parametrize("my_type", KEYS)
@pytest.mark.parametrize("path", PATHS)
def test_keyset_values_are_sent_back_exactly(mysql_dsn: str, path: str, my_type: str) -> None:
    """Page size 1: every page starts from the previous row's key as a literal (connectorx)
    or a pymysql parameter; one inexact value skips or repeats rows."""
    execute(mysql_dsn, f"CREATE TABLE t (k {my_type} PRIMARY KEY, n int)",
            *[f"INSERT INTO t VALUES ({v}, {i})" for i, v in enumerate(KEYS[my_type])])
    c = contract(("k", KEY_TYPES.get(my_type, "string")), ("n", "int64"), key=("k",),
                 cursor="k")
    with closing(connect(mysql_dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT n FROM t ORDER BY k")
        ordered = [n for (n,) in cur.fetchall()]
    Counting.fast = 0
    rows, high = read_all(PATHS[path](mysql_dsn), "t", c, 1)
    assert rows["n"].to_pylist() == ordered
    if path == "connectorx" and "\\" not in "".join(KEYS[my_type]):
        assert Counting.fast == len(ordered) + 1  # every page, the empty last one too
    source = PATHS[path](mysql_dsn)
    try:
        assert source.last_position("t", c) == high
    finally:
        source.close()
    assert high is not None and Watermark.from_json(high.to_json()) == high


def test_a_composite_time_cursor_pages_identically(mysql_dsn: str) -> None:
    """(updated_at, id) keyset with many ties on the cursor, page size 3."""
    execute(mysql_dsn, "CREATE TABLE t (id int PRIMARY KEY, at datetime(6) NOT NULL, v int)",
            "CREATE INDEX t_at ON t (at, id)",
            *[f"INSERT INTO t VALUES ({i}, '2024-01-01 00:00:0{i % 3}.{i % 2:06d}', {i})"
              for i in range(1, 41)])
    c = contract(("id", "int64"), ("at", "timestamp"), ("v", "int64"), cursor="at")
    result = both(mysql_dsn, c, 3)
    fast, slow = result["connectorx"], result["pymysql"]
    assert comparable(fast[0]) == comparable(slow[0]) and fast[1] == slow[1]
    assert sorted(fast[0]["id"].to_pylist()) == list(range(1, 41))  # type: ignore[type-var]


# --- 3. limits and secrets ------------------------------------------------------------------
def test_a_slow_page_ends_at_the_statement_timeout(mysql_dsn: str) -> None:
    """The server's max_statement_time applies to the connectorx statement too."""
    execute(mysql_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int)",
            "INSERT INTO t VALUES (1, 1), (2, 2)",
            "CREATE VIEW slow AS SELECT id, v + sleep(3) AS v FROM t")
    c = contract(("id", "int64"), ("v", "int64"))
    source = Counting(config(mysql_dsn, statement_timeout=1))
    source._plans[("slow", c)] = ("int", "int")  # a view has no index: read it anyway
    started = time.monotonic()
    try:
        with pytest.raises(SourceTimeout):
            source.page("slow", c, None, None, 10)
    finally:
        source.close()
    assert time.monotonic() - started < 5


@pytest.fixture
def secret_user(mysql_dsn: str) -> Any:
    name = f"u{uuid.uuid4().hex[:8]}"
    password = "p@ss:w/rd%20x?&#" + uuid.uuid4().hex[:6]
    database = urlsplit(mysql_dsn).path.lstrip("/")
    execute(mysql_dsn, f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'",
            f"GRANT SELECT ON `{database}`.* TO '{name}'@'%'")
    yield name, password
    execute(mysql_dsn, f"DROP USER '{name}'@'%'")


def test_a_password_in_the_url_reads_and_never_reaches_an_error(
        mysql_dsn: str, secret_user: tuple[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    from urllib.parse import quote

    name, password = secret_user
    parts = urlsplit(mysql_dsn)
    dsn = f"mysql://{name}:{quote(password, safe='')}@{parts.hostname}:{parts.port}{parts.path}"
    execute(mysql_dsn, "CREATE TABLE t (id int PRIMARY KEY, v varchar(5))",
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    c = contract(("id", "int64"), ("v", "string"))
    Counting.fast = 0
    rows, _ = read_all(Counting(config(dsn)), "t", c, 10)
    assert rows["v"].to_pylist() == ["a", "b"] and Counting.fast == 1
    source = Counting(config(dsn, statement_timeout=2))
    try:
        source.page("t", c, None, None, 10)  # the plan is made with the right password
        execute(mysql_dsn, f"ALTER USER '{name}'@'%' IDENTIFIED BY 'changed-{password}'")
        with pytest.raises(SteadyflowError) as failed:
            source._fetch("t", "SELECT 1")
    finally:
        source.close()
    # connectorx's pool retries a refused login until the page's time is up
    assert isinstance(failed.value, AuthError | SourceTimeout)
    out, err = capfd.readouterr()
    text = str(failed.value) + repr(failed.value) + str(failed.value.hint) + out + err
    for spelling in (password, quote(password, safe=""), quote(password)):
        assert spelling not in text
