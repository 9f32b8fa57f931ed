"""Every PostgreSQL read path gives the same rows, in keyset order, with the same values.

Paths: ADBC pages (PgArrowSource), its psycopg fallback, SqlSource pages (what reconcile
and repair construct) and `where` pages (reconcile's key lookups). Each must read every row
exactly once whatever the key type, give identical canonical values for the same row, cost
one row (not the page) for a date PostgreSQL holds and no path can ('infinity'), and the
ADBC path must find its own socket whatever other threads do meanwhile.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal

import psycopg
import pytest
from tests.support.faultproxy import FaultProxy
from tests.support.read_paths import comparable, contract, read_all

from steadyflow.config import SourceConfig
from steadyflow.errors import SchemaError, SourceUnavailable
from steadyflow.extract.pg_arrow import (
    TYPES_SERVER,
    PgArrowSource,
    _only_to,
    _shutdown,
    _unix_host,
)
from steadyflow.extract.sql import SqlSource
from steadyflow.model import INVALID, Contract, Watermark
from steadyflow.validate.rules import validate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def config(dsn: str) -> SourceConfig:
    return SourceConfig(name="pg", kind="postgres", dsn=dsn,
                        tables=[{"name": "t", "contract": "c"}])  # type: ignore[list-item]


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def adbc(dsn: str) -> PgArrowSource:
    return PgArrowSource(config(dsn))


def fallback(dsn: str) -> PgArrowSource:
    """PgArrowSource as it runs when its ADBC socket is not identified."""
    source = PgArrowSource(config(dsn))
    source._adbc_usable = False
    return source


def plain(dsn: str) -> SqlSource:
    """What reconcile and repair construct."""
    return SqlSource(config(dsn))


PATHS = {"adbc": adbc, "psycopg fallback": fallback, "SqlSource": plain}
# --- 1. keyset order is the column's order, not its text's ------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_numeric_key_pages_in_numeric_order_on_every_path(pg_dsn: str, path: str) -> None:
    """numeric is read as text; ORDER BY "id" would sort '10' before '2' while the keyset
    predicate compares numbers: 22 of 30 rows arrived and a re-run found nothing."""
    execute(pg_dsn, "CREATE TABLE t (id numeric(10,0) PRIMARY KEY, v text)",
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 30) g")
    c = contract(("id", "decimal(10,0)"), ("v", "string"))
    rows, high = read_all(PATHS[path](pg_dsn), "t", c, 10)
    assert rows["id"].to_pylist() == [Decimal(i) for i in range(1, 31)]
    assert high == Watermark(cursor=Decimal(30), key=())
    again, _ = read_all(PATHS[path](pg_dsn), "t", c, 10, after=Watermark(Decimal(20), ()))
    assert again["id"].to_pylist() == [Decimal(i) for i in range(21, 31)]
    source = PATHS[path](pg_dsn)
    try:
        assert source.last_position("t", c) == Watermark(cursor=Decimal(30), key=())
    finally:
        source.close()


def test_where_pages_order_by_the_column(pg_dsn: str) -> None:
    execute(pg_dsn, "CREATE TABLE t (id numeric(10,0) PRIMARY KEY, v text)",
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 30) g")
    c = contract(("id", "decimal(10,0)"), ("v", "string"))
    source = plain(pg_dsn)
    try:
        rows, _ = source.page("t", c, None, None, 5, where=('"id" > %s', [Decimal(7)]))
    finally:
        source.close()
    assert rows["id"].to_pylist() == [Decimal(i) for i in range(8, 13)]


@pytest.mark.parametrize("path", PATHS)
def test_a_domain_over_an_enum_key_pages_in_declaration_order_on_every_path(
        pg_dsn: str, path: str) -> None:
    """PostgreSQL has no `d > unknown` for a domain over an ENUM (the ENUM's operators
    are polymorphic): every page after the first failed on every path."""
    execute(pg_dsn, "CREATE TYPE mood AS ENUM ('z', 'm', 'a', 'b')",
            "CREATE DOMAIN dm AS mood",
            "CREATE TABLE t (k dm, n int, v text, PRIMARY KEY (k, n))",
            "INSERT INTO t SELECT k, n, k::text || n FROM unnest('{z,m,a,b}'::mood[]) k, "
            "generate_series(1, 3) n")
    c = contract(("k", "string"), ("n", "int64"), ("v", "string"), key=("k", "n"),
                 cursor="k")
    rows, high = read_all(PATHS[path](pg_dsn), "t", c, 5)
    assert rows["v"].to_pylist() == [f"{k}{n}" for k in "zmab" for n in (1, 2, 3)]
    assert high == Watermark(cursor="b", key=(3,))
    source = plain(pg_dsn)
    try:  # reconcile's and repair's key lookups (`where`), after a checkpoint
        rows, _ = source.page("t", c, Watermark("m", (3,)), None, 10,
                              where=('CAST("k" AS mood) = %s', ["b"]))
    finally:
        source.close()
    assert rows["v"].to_pylist() == ["b1", "b2", "b3"]


# --- 2. one canonical value per type, whatever the path -----------------------------------
TYPES_DDL = """CREATE TABLE t (
    id int8 PRIMARY KEY, fixed char(8), var varchar(20), free text, doc json, docb jsonb,
    uid uuid, amount numeric(12,3), big numeric, at timestamptz, naive timestamp, day date,
    small int2, mid int4, large int8, ratio float8, flag bool)"""
TYPES_ROWS = """INSERT INTO t VALUES
    (1, 'ab', 'x ', 'tab	and ''quote''', '{"b": 1,  "a": [1, 2]}', '{"b": 1, "a": 2}',
     'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 1.5, 123456789012345678901234567.123456789,
     '2024-05-01 12:00:00.123456+02', '2024-05-01 12:00:00.5', '2024-02-29',
     -32768, 2147483647, 9223372036854775807, 'NaN', true),
    (2, '1-URGENT', '', 'ünïcödé 🙂', 'null', '[]', '00000000-0000-0000-0000-000000000000',
     -0.001, 0, '0001-01-01 00:00:00+00', '9999-12-31 23:59:59.999999', '0001-01-01',
     0, 0, -9223372036854775808, 'Infinity', false),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     '-Infinity', NULL),
    (4, '        ', 'a', 'b', '"s"', '{"k": "v"}', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
     999999999.999, 'NaN', '1970-01-01 00:00:00+00', '1970-01-01', '9999-12-31', 1, 1, 1,
     1e-300, true)"""
TYPES_CONTRACT = contract(
    ("id", "int64"), ("fixed", "string"), ("var", "string"), ("free", "string"),
    ("doc", "string"), ("docb", "string"), ("uid", "string"), ("amount", "decimal(12,3)"),
    ("big", "string"), ("at", "timestamp"), ("naive", "timestamp"), ("day", "date"),
    ("small", "int64"), ("mid", "int32"), ("large", "int64"), ("ratio", "float64"),
    ("flag", "bool"))


def test_every_read_path_reads_the_same_canonical_values(pg_dsn: str) -> None:
    execute(pg_dsn, TYPES_DDL, TYPES_ROWS)
    c = TYPES_CONTRACT
    tables = {name: read_all(make(pg_dsn), "t", c, 3)[0] for name, make in PATHS.items()}
    source = plain(pg_dsn)
    try:
        tables["where"], _ = source.page("t", c, None, None, 10, where=('"id" >= %s', [1]))
    finally:
        source.close()
    first = comparable(tables["adbc"])
    for name, table in tables.items():
        assert table.schema == tables["adbc"].schema, name
        assert comparable(table) == first, name
    one, two, _, four = first
    assert (one["fixed"], two["fixed"], four["fixed"]) == ("ab", "1-URGENT", "")  # unpadded
    assert one["var"] == "x " and one["free"] == "tab\tand 'quote'"
    assert one["doc"] == '{"b": 1,  "a": [1, 2]}'  # json: the stored text
    assert one["docb"] == '{"a": 2, "b": 1}' and two["doc"] == "null"  # jsonb: normalized
    assert one["uid"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert one["big"] == "123456789012345678901234567.123456789" and four["big"] == "NaN"
    assert one["amount"] == Decimal("1.500") and two["amount"] == Decimal("-0.001")
    assert str(one["at"]) == "2024-05-01 10:00:00.123456+00:00"
    assert str(one["naive"]) == "2024-05-01 12:00:00.500000+00:00"  # naive = UTC
    assert one["ratio"] == "NaN" and two["ratio"] == math.inf
    assert first[2]["ratio"] == -math.inf


def test_numeric_nan_in_a_decimal_column_is_quarantined_on_every_path(pg_dsn: str) -> None:
    execute(pg_dsn, "CREATE TABLE t (id int8 PRIMARY KEY, amount numeric)",
            "INSERT INTO t VALUES (1, 1.25), (2, 'NaN'), (3, 'Infinity'), (4, 1.255), (5, 7)")
    c = contract(("id", "int64"), ("amount", "decimal(10,2)"))
    for name, make in PATHS.items():
        verdict = validate(read_all(make(pg_dsn), "t", c, 10)[0], c)
        assert verdict.good["id"].to_pylist() == [1, 5], name
        assert verdict.good["amount"].to_pylist() == [Decimal("1.25"), Decimal("7.00")]
        assert verdict.bad["id"].to_pylist() == ["2", "3", "4"], name


# --- 3. the ADBC socket, found whatever other threads do ----------------------------------
@pytest.fixture
def sockets_churning() -> Iterator[None]:
    """Another thread opening and closing sockets as fast as it can (as psycopg connects
    and HTTP clients do in a running pipeline)."""
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            held = [socket.socket() for _ in range(4)]
            for s in held:
                s.close()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


def ten_rows(dsn: str) -> Contract:
    execute(dsn, "CREATE TABLE t (id int8 PRIMARY KEY)",
            "INSERT INTO t SELECT generate_series(1, 10)")
    return contract(("id", "int64"))


def read_then_cut(source: PgArrowSource, c: Contract,
                  check: Callable[[PgArrowSource, int], None]) -> None:
    """A page through ADBC with its socket identified (and `check`ed), then that socket
    shut down as the watchdog does: the source's next page fails retryably."""
    try:
        rows, _ = source.page("t", c, None, None, 100)
        assert rows.num_rows == 10
        assert source._adbc_usable and source._socket is not None
        fd, link = source._socket
        check(source, fd)
        _shutdown(fd, link)
        with pytest.raises(SourceUnavailable):
            source.page("t", c, None, None, 100)
    finally:
        source.close()


def test_adbc_finds_its_socket_while_other_threads_open_sockets(
        pg_dsn: str, sockets_churning: None) -> None:
    c = ten_rows(pg_dsn)

    def the_server_sees_it(source: PgArrowSource, fd: int) -> None:
        with source.adbc.cursor() as cur:
            cur.execute("SELECT inet_client_port()")
            server_sees = cur.fetchone()[0]
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as dup:
            assert dup.getsockname()[1] == server_sees

    for _ in range(10):
        read_then_cut(adbc(pg_dsn), c, the_server_sees_it)


def test_adbc_finds_its_socket_behind_a_proxy_while_other_connections_open(
        pg_dsn: str) -> None:
    """Behind a proxy the server names the proxy's socket, so only the sockets new around
    connect can tell; an in-process proxy adds two of its own at that moment, and another
    thread keeps connecting to another port. Before, such a source fell back to psycopg
    (3-6 of 20 tables in bench/scale.py's runs)."""
    c = ten_rows(pg_dsn)
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    listener = socket.create_server(("127.0.0.1", 0))
    elsewhere = listener.getsockname()
    stop = threading.Event()

    def connect_elsewhere() -> None:
        while not stop.is_set():
            with contextlib.ExitStack() as held, contextlib.suppress(OSError):
                for _ in range(4):
                    held.enter_context(socket.create_connection(elsewhere))

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                listener.accept()[0].close()

    def leads_to_the_proxy(source: PgArrowSource, fd: int) -> None:
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as dup:
            assert dup.getpeername()[1] == proxy.port
        with source.adbc.cursor() as cur:  # the session set up in one statement
            cur.execute("SELECT current_setting('TimeZone'), "
                        "current_setting('statement_timeout'), "
                        "current_setting('tcp_keepalives_count')")
            assert cur.fetchone() == ("UTC", "1min", "3")

    threads = [threading.Thread(target=f, daemon=True) for f in (connect_elsewhere, accept)]
    with FaultProxy("127.0.0.1", int(params.get("port") or 5432)) as proxy:
        for thread in threads:
            thread.start()
        try:
            behind = psycopg.conninfo.make_conninfo(pg_dsn, host="127.0.0.1", port=proxy.port)
            for _ in range(5):
                read_then_cut(adbc(behind), c, leads_to_the_proxy)
        finally:
            stop.set()
            listener.close()
            for thread in threads:
                thread.join(timeout=5)


def test_a_unix_socket_dsn_never_takes_another_threads_tcp_socket_for_adbcs() -> None:
    """With the DSN's host a socket directory, ADBC's socket is a unix one: a TCP socket to
    the same port that another thread opened meanwhile (the state store, the warehouse on
    the same server) must not be taken for it, or a timeout would shut that connection."""
    with contextlib.ExitStack() as held:
        listener = held.enter_context(socket.create_server(("127.0.0.1", 0)))
        port = listener.getsockname()[1]
        theirs = held.enter_context(socket.create_connection(("127.0.0.1", port)))
        ours, _ = (held.enter_context(s) for s in socket.socketpair(socket.AF_UNIX))
        new = [(s.fileno(), os.readlink(f"/proc/self/fd/{s.fileno()}")) for s in (ours, theirs)]
        assert _only_to(new, {port}, unix=True) == new[0]
        assert _only_to(new, {port}, unix=False) == new[1]
    assert _unix_host("host=/var/run/postgresql port=5432 dbname=x")
    assert _unix_host("dbname=x")
    assert not _unix_host("postgresql://u@127.0.0.1:5432/x")
    assert not _unix_host("hostaddr=127.0.0.1 dbname=x")


# --- 4. dates and times no path can hold cost one row ------------------------------------
def test_infinite_and_out_of_range_times_cost_one_row_on_every_path(pg_dsn: str) -> None:
    execute(pg_dsn,
            "CREATE TABLE t (id int8 PRIMARY KEY, at timestamptz, naive timestamp, day date)",
            """INSERT INTO t VALUES
               (1, '2024-01-01 00:00:00+00', '2024-01-01', '2024-01-01'),
               (2, 'infinity', '2024-01-01', '2024-01-01'),
               (3, '2024-01-01', '-infinity', 'infinity'),
               (4, '10000-01-01 00:00:00+00', '2024-01-01', '-infinity'),
               (5, '0044-03-15 BC', '9999-12-31 23:59:59.999999', '20000-01-01'),
               (6, '2024-01-02', '2024-01-02', '2024-01-02')""")
    c = contract(("id", "int64"), ("at", "timestamp"), ("naive", "timestamp"),
                 ("day", "date"))
    tables = {name: read_all(make(pg_dsn), "t", c, 4)[0] for name, make in PATHS.items()}
    source = plain(pg_dsn)
    try:
        tables["where"], _ = source.page("t", c, None, None, 10, where=('"id" > %s', [0]))
    finally:
        source.close()
    expected = [None,
                "at: 'infinity' is outside 0001..9999",
                "naive: '-infinity' is outside 0001..9999",
                "at: year 10000 is outside 0001..9999",
                "at: year 44 BC is outside 0001..9999",
                None]
    for name, table in tables.items():
        assert table[INVALID].to_pylist() == expected, name
        assert comparable(table) == comparable(tables["adbc"]), name
        assert table["at"].null_count == 3 and table["day"].null_count == 3, name
        verdict = validate(table, c)
        assert verdict.good["id"].to_pylist() == [1, 6], name
        assert verdict.bad["id"].to_pylist() == ["2", "3", "4", "5"], name


def test_the_reason_names_the_year_postgresql_stores_at_its_extremes(pg_dsn: str) -> None:
    """ADBC shifts PostgreSQL's binary times (since 2000) to 1970 with wrapping arithmetic,
    and the reason took its year from the wrapped number: a timestamp in the last 30 years
    PostgreSQL holds, up to its greatest in year 294276, was named 'year 290279 BC'.
    Every path now names the year the source holds (dates, 32-bit, never wrapped)."""
    execute(pg_dsn, "CREATE TABLE t (id int8 PRIMARY KEY, at timestamptz, day date)",
            """INSERT INTO t VALUES
               (1, '294276-12-31 23:59:59.999999+00', '5874897-12-31'),
               (2, '4713-01-01 00:00:00+00 BC', '4713-01-01 BC'),
               (3, '200000-06-01 00:00:00+00', '3000000-01-01'),
               (4, '2024-01-01', '2024-01-01')""")
    c = contract(("id", "int64"), ("at", "timestamp"), ("day", "date"))
    expected = ["at: year 294276 is outside 0001..9999", "at: year 4713 BC is outside 0001..9999",
                "at: year 200000 is outside 0001..9999", None]
    days = ["day: year 5874897 is outside 0001..9999", "day: year 4713 BC is outside 0001..9999",
            "day: year 3000000 is outside 0001..9999", None]
    for name, make in PATHS.items():
        table = read_all(make(pg_dsn), "t", c, 10)[0]
        assert table[INVALID].to_pylist() == expected, name
        only_days = read_all(make(pg_dsn), "t", contract(("id", "int64"), ("day", "date")),
                             10)[0]
        assert only_days[INVALID].to_pylist() == days, name


@pytest.mark.parametrize("stored", ["infinity", "10000-01-01 00:00:00+00"])
@pytest.mark.parametrize("path", PATHS)
def test_a_cursor_no_path_can_hold_is_refused_loudly(pg_dsn: str, path: str,
                                                     stored: str) -> None:
    execute(pg_dsn, "CREATE TABLE t (id int8 PRIMARY KEY, at timestamptz NOT NULL)",
            "CREATE INDEX t_at ON t (at, id)",
            "INSERT INTO t SELECT g, '2024-01-01'::timestamptz + g * interval '1 s' "
            "FROM generate_series(1, 10) g")
    c = contract(("id", "int64"), ("at", "timestamp"), cursor="at")
    source = PATHS[path](pg_dsn)
    try:
        source.probe("t", c)  # fine so far
        execute(pg_dsn, f"INSERT INTO t VALUES (11, '{stored}')")
        if isinstance(source, PgArrowSource):
            source.close()  # a probe stands for its connection (sql.PROBE_EVERY): a new one
            with pytest.raises(SchemaError, match="at holds") as probed:
                source.probe("t", c)
            assert "UPDATE t SET at" in (probed.value.hint or "")
        with pytest.raises(SchemaError, match="is outside 0001..9999"):  # never skipped
            read_all(source, "t", c, 11)  # a full page ending on it: the next starts after
    finally:
        source.close()


def table_reads(dsn: str) -> tuple[int, int]:
    """(scans, rows read by sequential scans) of table t, as PostgreSQL counted them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(idx_scan, 0) + seq_scan, seq_tup_read "
                           "FROM pg_stat_user_tables WHERE relname = 't'").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_the_check_for_dates_no_path_can_hold_reads_the_index_ends_not_the_rows(
        pg_dsn: str) -> None:
    """The probe asks for the cursor's least and greatest values (each from one end of its
    index), not for any row outside 0001..9999: on a table PostgreSQL has no statistics for
    (never analyzed: autovacuum off, as on the bench's server, or a table just filled) that
    `WHERE at < ... OR at > ... LIMIT 1` was planned as a sequential scan and read every
    row to find none, in every probe (each BUSY_PROBE_EVERY while rows flow): 128 ms at
    400k rows, growing with the table. PostgreSQL's own counters say what the probe read."""
    rows = 20_000
    execute(pg_dsn, "CREATE TABLE t (id int8 PRIMARY KEY, at timestamptz NOT NULL) "
            "WITH (autovacuum_enabled = false)",
            f"INSERT INTO t SELECT g, '2024-01-01'::timestamptz + g * interval '1 s' "
            f"FROM generate_series(1, {rows}) g",
            "CREATE INDEX t_at ON t (at, id)")
    c = contract(("id", "int64"), ("at", "timestamp"), cursor="at")
    scans, seq_read = table_reads(pg_dsn)
    source = adbc(pg_dsn)
    try:
        source.probe("t", c)
    finally:
        source.close()  # its sessions end: their counts reach the statistics
    for _ in range(100):  # the probe's scans are counted
        now = table_reads(pg_dsn)
        if now[0] > scans:
            break
        threading.Event().wait(0.1)
    assert now[0] > scans, "the probe's session never reported its scans"
    assert now[1] - seq_read < rows, f"the probe read {now[1] - seq_read} rows of {rows}"


NOT_NULL_BROKEN = {
    # legacy inheritance: a child may drop the NOT NULL its parent declares, and the
    # parent's rows include the child's
    "inheritance child": (
        "CREATE TABLE t (id int8 PRIMARY KEY, at timestamptz NOT NULL)",
        "CREATE TABLE t_old () INHERITS (t)",
        "ALTER TABLE t_old ALTER at DROP NOT NULL, ALTER id DROP NOT NULL",
        "INSERT INTO t VALUES (1, '2024-01-01')",
        "INSERT INTO t_old VALUES (2, NULL)"),
    # a foreign table's NOT NULL is not enforced: the rows are what the far end holds
    "foreign table": (
        "CREATE EXTENSION IF NOT EXISTS file_fdw",
        "CREATE SERVER files FOREIGN DATA WRAPPER file_fdw",
        "CREATE FOREIGN TABLE t (id int8 NOT NULL, at timestamptz NOT NULL) SERVER files "
        "OPTIONS (program 'printf \"1,2024-01-01\\n2,\\n\"', format 'csv')"),
    # a partitioned table's NOT NULL is its partitions', but a foreign partition does not
    # enforce it; the planner trusts it on the parent and refutes `at IS NULL` unread
    "foreign partition": (
        "CREATE EXTENSION IF NOT EXISTS file_fdw",
        "CREATE SERVER files FOREIGN DATA WRAPPER file_fdw",
        "CREATE TABLE t (id int8 NOT NULL, at timestamptz NOT NULL) PARTITION BY RANGE (id)",
        "CREATE TABLE t_low PARTITION OF t FOR VALUES FROM (0) TO (100)",
        "CREATE INDEX ON t (at, id)",
        "INSERT INTO t VALUES (1, '2024-01-01')",
        "CREATE FOREIGN TABLE t_far PARTITION OF t FOR VALUES FROM (100) TO (200) SERVER "
        "files OPTIONS (program 'printf \"101,2024-01-01\\n102,\\n\"', format 'csv')"),
    # the same through postgres_fdw, one level down (a partitioned partition)
    "postgres_fdw sub-partition": (
        "CREATE EXTENSION IF NOT EXISTS postgres_fdw",
        "CREATE SERVER loop FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', "
        "port '5432', dbname '{dbname}')",
        "CREATE USER MAPPING FOR CURRENT_USER SERVER loop OPTIONS (user 'postgres')",
        "CREATE TABLE far (id int8, at timestamptz)",
        "INSERT INTO far VALUES (101, '2024-01-01'), (102, NULL)",
        "CREATE TABLE t (id int8 NOT NULL, at timestamptz NOT NULL) PARTITION BY RANGE (id)",
        "CREATE TABLE t_low PARTITION OF t FOR VALUES FROM (0) TO (100)",
        "CREATE TABLE t_high PARTITION OF t FOR VALUES FROM (100) TO (300) "
        "PARTITION BY RANGE (id)",
        "CREATE FOREIGN TABLE t_far PARTITION OF t_high FOR VALUES FROM (100) TO (200) "
        "SERVER loop OPTIONS (table_name 'far')",
        "INSERT INTO t_low VALUES (1, '2024-01-01')"),
    # a legacy inheritance child that is a foreign table: its NOT NULL copied from the
    # parent, not enforced, and trusted by constraint exclusion on the parent
    "foreign inheritance child": (
        "CREATE EXTENSION IF NOT EXISTS file_fdw",
        "CREATE SERVER files FOREIGN DATA WRAPPER file_fdw",
        "CREATE TABLE t (id int8 PRIMARY KEY, at timestamptz NOT NULL)",
        "INSERT INTO t VALUES (1, '2024-01-01')",
        "CREATE FOREIGN TABLE t_far () INHERITS (t) SERVER files "
        "OPTIONS (program 'printf \"101,2024-01-01\\n102,\\n\"', format 'csv')"),
}


@pytest.mark.parametrize("shape", NOT_NULL_BROKEN)
def test_a_not_null_the_server_does_not_enforce_is_looked_at(pg_dsn: str, shape: str) -> None:
    """The probe skips its look for NULL cursors (and keys) where the catalog says NOT
    NULL; but attnotnull proves nothing of an inheritance child that dropped it, nor of a
    foreign table (its constraints are not enforced). A NULL cursor that is not refused is
    never matched by a keyset predicate: its row is lost without a word."""
    dbname = pg_dsn.rsplit("/", 1)[1]
    execute(pg_dsn, *(sql.replace("{dbname}", dbname) for sql in NOT_NULL_BROKEN[shape]))
    c = contract(("id", "int64"), ("at", "timestamp"), cursor="at")
    for make in PATHS.values():
        source = make(pg_dsn)
        try:
            with pytest.raises(SchemaError, match=r"column at \(timestamp\) holds NULLs"):
                source.probe("t", c)
        finally:
            source.close()


def test_a_null_key_in_an_inheritance_child_is_refused(pg_dsn: str) -> None:
    """The same for a key column: the parent's PRIMARY KEY is NOT NULL, its child's copy
    of the column need not be, and the child's rows are the parent's."""
    execute(pg_dsn, "CREATE TABLE t (id int8 PRIMARY KEY, at timestamptz NOT NULL)",
            "CREATE TABLE t_old () INHERITS (t)",
            "ALTER TABLE t_old ALTER id DROP NOT NULL",
            "INSERT INTO t VALUES (1, '2024-01-01')",
            "INSERT INTO t_old VALUES (NULL, '2024-01-02')")
    c = contract(("id", "int64"), ("at", "timestamp"), cursor="at")
    for make in PATHS.values():
        source = make(pg_dsn)
        try:
            with pytest.raises(SchemaError, match="key column id holds NULLs"):
                source.probe("t", c)
        finally:
            source.close()


def test_a_null_key_in_a_foreign_partition_is_refused(pg_dsn: str) -> None:
    """The same for a partitioned table's key column: a foreign partition does not
    enforce the NOT NULL it declares, and `id IS NULL` on the parent is refuted unread."""
    execute(pg_dsn, "CREATE EXTENSION IF NOT EXISTS file_fdw",
            "CREATE SERVER files FOREIGN DATA WRAPPER file_fdw",
            "CREATE TABLE t (id int8 NOT NULL, at timestamptz NOT NULL) "
            "PARTITION BY RANGE (at)",
            "CREATE TABLE t_new PARTITION OF t FOR VALUES FROM ('2024-01-01') TO (MAXVALUE)",
            "INSERT INTO t VALUES (1, '2024-01-02')",
            "CREATE FOREIGN TABLE t_old PARTITION OF t FOR VALUES FROM (MINVALUE) TO "
            "('2024-01-01') SERVER files OPTIONS (program "
            "'printf \"2,2023-01-01\\n,2023-01-02\\n\"', format 'csv')")
    c = contract(("id", "int64"), ("at", "timestamp"), cursor="at")
    for make in PATHS.values():
        source = make(pg_dsn)
        try:
            with pytest.raises(SchemaError, match="key column id holds NULLs"):
                source.probe("t", c)
        finally:
            source.close()


# --- 5. keyset values sent back exactly -------------------------------------------------
KEYS = {
    "numeric(38,12)": ["'12345678901234567890123456.123456789012'", "'-0.000000000001'",
                       "'0'", "'1E+3'", "'12345678901234567890123456.123456789011'"],
    "text": ["E'a''b'", "E'a\\\\b'", "E'a\\\\'", "'A'", "'a'", "'ä'", "''", "E'\\\\'''",
             "'a b'", "'a'' OR ''1''=''1'"],
    "uuid": ["gen_random_uuid()" for _ in range(7)],
    "date": ["'0001-01-01'", "'2024-02-29'", "'9999-12-31'", "'1970-01-01'"],
    "char(3)": ["'a'", "'a b'", "'ab'", "'b'"],
}
KEY_TYPES = {"numeric(38,12)": "decimal(38,12)", "text": "string", "uuid": "string",
             "date": "date", "char(3)": "string"}


@pytest.mark.parametrize("pg_type", KEYS)
@pytest.mark.parametrize("path", PATHS)
def test_keyset_values_are_sent_back_exactly(pg_dsn: str, path: str, pg_type: str) -> None:
    """Page size 1: every page starts from the previous row's key as a literal (ADBC) or
    parameter (psycopg); one inexact value skips or repeats rows."""
    execute(pg_dsn, f"CREATE TABLE t (k {pg_type} PRIMARY KEY, n int)",
            *[f"INSERT INTO t VALUES ({v}, {i})" for i, v in enumerate(KEYS[pg_type])])
    c = contract(("k", KEY_TYPES[pg_type]), ("n", "int64"), key=("k",), cursor="k")
    with psycopg.connect(pg_dsn) as conn:
        ordered = [n for (n,) in conn.execute("SELECT n FROM t ORDER BY k")]
    rows, high = read_all(PATHS[path](pg_dsn), "t", c, 1)
    assert rows["n"].to_pylist() == ordered
    source = PATHS[path](pg_dsn)  # where an initial load hands over: the same position
    try:
        assert source.last_position("t", c) == high
    finally:
        source.close()
    assert high is not None and Watermark.from_json(high.to_json()) == high  # storable


# --- 6. ADBC's types: PostgreSQL's own from the driver's table, others from the server -----
def test_an_adbc_connect_does_not_read_the_servers_type_catalog(pg_dsn: str) -> None:
    """Reading the server's type catalog, every ADBC connect downloaded every type and
    every relation's attributes (174 KB from a fresh database, more from a store with
    many tables) and built them into the driver's table: a worker spent 12% of its CPU on
    bench/scale.py's full load doing so, and behind 20 ms round trips a connect took
    0.24 s, not 0.12. PostgreSQL's own types are in the driver: a connect is ~1 KB, and
    the pages read the same values as psycopg does."""
    execute(pg_dsn, TYPES_DDL, TYPES_ROWS)
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    with FaultProxy("127.0.0.1", int(params.get("port") or 5432)) as proxy:
        behind = psycopg.conninfo.make_conninfo(pg_dsn, host="127.0.0.1", port=proxy.port)
        source = adbc(behind)
        try:
            before = proxy.bytes_down
            source.adbc  # noqa: B018 - connect
            assert proxy.bytes_down - before < 10_000
            rows, _ = source.page("t", TYPES_CONTRACT, None, None, 10)
        finally:
            source.close()
    assert comparable(rows) == comparable(read_all(fallback(pg_dsn), "t", TYPES_CONTRACT,
                                                   10)[0])


@pytest.mark.parametrize("column", ["mood", "pair", "mood[]"])
def test_a_type_outside_postgresqls_own_is_read_with_the_servers_catalog(
        pg_dsn: str, column: str) -> None:
    """The driver's table gives an enum, a composite (or an array of one) as opaque bytes,
    where the server's catalog types it: such a page is read again with the catalog, and
    so is every later page of the source, as every connect did before. A table declaring
    such a column is read through psycopg (`ADBC_SAME_TYPES`); ADBC meets one only when
    the column's type changed after the probe read the declared types: here between two
    pages."""
    execute(pg_dsn, "CREATE TYPE mood AS ENUM ('7', 'x')",
            "CREATE TYPE pair AS (x int, y text)",
            "CREATE TABLE t (id int8 PRIMARY KEY, v int8)",
            "INSERT INTO t SELECT g, NULL FROM generate_series(1, 5) g")
    c = contract(("id", "int64"), ("v", "int64"))
    server, source = adbc(pg_dsn), adbc(pg_dsn)
    server._types = TYPES_SERVER
    firsts = [s.page("t", c, None, None, 2) for s in (server, source)]
    execute(pg_dsn, f"ALTER TABLE t ALTER v TYPE {column} USING NULL",
            {"mood": "UPDATE t SET v = '7'",
             "pair": "UPDATE t SET v = ROW(id, 'y')",
             "mood[]": "UPDATE t SET v = ARRAY['7', 'x']::mood[]"}[column])
    expected, _ = read_all(server, "t", c, 2, firsts[0][1])
    rows, high = read_all(source, "t", c, 2, firsts[1][1])
    assert comparable(rows) == comparable(expected)
    assert rows.schema == expected.schema
    assert source._types == TYPES_SERVER and high == Watermark(cursor=5, key=())


# --- 7. a timestamp read into a date column ------------------------------------------------
@pytest.mark.parametrize("pg_type", ["timestamp", "timestamptz"])
def test_a_time_of_day_in_a_date_column_costs_its_row_on_every_path(
        pg_dsn: str, pg_type: str) -> None:
    """Arrow's cast to date32 drops a time of day without a word: through ADBC
    '2020-01-02 03:00' was loaded as 2020-01-02, a value the source does not hold, where
    the psycopg path quarantines the row (a time of day: not a date). A midnight (UTC)
    is that date on both; out-of-range and NULL rows are what they were."""
    execute(pg_dsn, f"CREATE TABLE t (id int8 PRIMARY KEY, d {pg_type})",
            "INSERT INTO t VALUES (1, '2020-01-02 00:00:00+00'), (2, '2020-01-02 03:00+00'),"
            " (3, NULL), (4, '2020-01-02 00:00:00.000001+00'), (5, 'infinity'),"
            " (6, '2020-01-02 23:59:59+00')")
    c = contract(("id", "int64"), ("d", "date"))
    rows = {path: comparable(read_all(make(pg_dsn), "t", c, 4)[0])
            for path, make in PATHS.items()}
    assert rows["adbc"] == rows["psycopg fallback"] == rows["SqlSource"]
    assert [r["d"] is None for r in rows["adbc"]] == [False, True, True, True, True, True]


# --- 8. a column of a type ADBC decodes unlike psycopg --------------------------------------
ODD_TYPES = {  # type: (contract type, a value)
    "money": ("float64", "1.50"),  # ADBC: the cents, 150.0
    "money ": ("int64", "1"),  # ADBC: 100
    "bytea": ("int64", "'\\x31'"),  # ADBC: 1
    "bit(1)": ("bool", "'1'"),
    "inet": ("int64", "'1.2.3.4'"),
    "xid": ("int64", "'7'"),
    "int8[]": ("int64", "'{1}'"),
    "timetz": ("timestamp", "'03:00+02'"),
    "ean13": ("int64", "'9780262510875'"),  # ADBC: every page refused (no binary output)
}


@pytest.mark.parametrize("pg_type", ODD_TYPES)
def test_a_column_adbc_decodes_unlike_psycopg_reads_the_same_on_every_path(
        pg_dsn: str, pg_type: str) -> None:
    """A column read as itself (a number, bool, date or time contract) of a type whose
    binary form ADBC decodes otherwise than psycopg gave other values on the fast path:
    money under float64 was its cents (1.50 loaded as 150.0) where psycopg's '$1.50' is
    quarantined, bytes '1' became the number 1, and a type without a binary output
    function (isn's ean13) failed every page of its table. A table with such a column is
    read through psycopg: the same values whichever path runs."""
    kind, value = ODD_TYPES[pg_type]
    execute(pg_dsn, "CREATE EXTENSION IF NOT EXISTS isn",
            f"CREATE TABLE t (id int8 PRIMARY KEY, v {pg_type})",
            f"INSERT INTO t VALUES (1, {value}), (2, NULL), (3, {value})")
    c = contract(("id", "int64"), ("v", kind))
    expected = comparable(read_all(fallback(pg_dsn), "t", c, 2)[0])
    assert comparable(read_all(adbc(pg_dsn), "t", c, 2)[0]) == expected


def test_a_column_whose_type_changes_between_pages_reads_the_same_on_every_path(
        pg_dsn: str) -> None:
    """The declared types are read once per table (kept between the polls of `run
    --follow`): a column changed to money after they were read was loaded as its cents
    through ADBC (1.50 as 150.0). Each page's own column types are checked too."""
    execute(pg_dsn, "CREATE TABLE t (id int8 PRIMARY KEY, v float8)",
            "INSERT INTO t SELECT g, g + 0.5 FROM generate_series(1, 6) g")
    c = contract(("id", "int64"), ("v", "float64"))
    sources = [adbc(pg_dsn), fallback(pg_dsn)]
    firsts = [s.page("t", c, None, None, 2) for s in sources]
    execute(pg_dsn, "ALTER TABLE t ALTER v TYPE money USING v::numeric::money")
    rests = [read_all(s, "t", c, 2, first[1])[0] for s, first in zip(sources, firsts,
                                                                     strict=True)]
    assert comparable(rests[0]) == comparable(rests[1])
    assert comparable(firsts[0][0]) == comparable(firsts[1][0])
