"""The canonical row encoding (reconcile/encoding.py) and its SQL (reconcile/engines.py) on the
two embedded engines; tests/integration/test_reconcile.py adds PostgreSQL and MariaDB."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import duckdb
import pyarrow as pa
import pytest
from tests.support.reconcile_data import (
    DDL,
    NAMES,
    duckdb_run,
    fingerprint,
    reference_hashes,
    rows,
    side,
    sqlite_run,
    stored,
)

from steadyflow.arrow_types import arrow_type
from steadyflow.extract.arrow_values import column_to_arrow
from steadyflow.model import Column
from steadyflow.reconcile.encoding import (
    canonical,
    raw_converter,
    register_sqlite,
    row_hash,
    row_term,
    row_text,
)
from steadyflow.reconcile.engines import SqliteEngine, engine_for


@pytest.mark.parametrize(("value", "ctype", "text"), [
    (None, "int64", None),
    (-12, "int64", "-12"),
    (Decimal("12.5"), "decimal(12,2)", "12.50"),
    (Decimal("-0.00"), "decimal(12,2)", "0.00"),
    (Decimal("7"), "decimal(10,0)", "7"),
    (Decimal("1E+2"), "decimal(12,2)", "100.00"),
    (datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), "timestamp", "1704164645123456"),
    (datetime(2024, 1, 2, 4, 4, 5, 123456, tzinfo=timezone(timedelta(hours=1))), "timestamp",
     "1704164645123456"),
    (datetime(2024, 1, 2, 3, 4, 5, 123456), "timestamp", "1704164645123456"),  # naive = UTC
    (datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "timestamp", "-1"),
    (date(2024, 1, 2), "date", "19724"),
    (True, "bool", "1"),
    (0.1, "float64", "100000"),
    ("a~|b", "string", "a~~~|b"),
])
def test_canonical_values(value: object, ctype: str, text: str | None) -> None:
    assert canonical(value, ctype) == text


def test_encoding_is_injective_on_separators_and_nulls() -> None:
    def enc(*values: str | None) -> str:
        return row_text([canonical(v, "string") for v in values])

    assert enc("a|", "b") != enc("a", "|b")
    assert enc("~N") != enc(None)
    assert enc("", None) != enc(None, "") != enc("", "")
    assert enc("a~", "b") != enc("a", "~b")


def test_term_is_60_bits_of_the_hash() -> None:
    enc = [canonical(1, "int64"), canonical("x", "string")]
    assert row_term(enc) == int(row_hash(enc)[:15], 16) < 2**60


@pytest.mark.parametrize(("raw", "ctype"), [
    (5, "int64"), ("5", "int64"), ("-5", "int64"), (5.0, "int64"),
    ("12.5", "decimal(12,2)"), ("12.50", "decimal(12,2)"), (12, "decimal(12,2)"),
    (12.5, "decimal(12,2)"), ("1e2", "decimal(12,2)"), ("-0.00", "decimal(12,2)"),
    ("2024-01-02 03:04:05.123456", "timestamp"), ("2024-01-02T03:04:05Z", "timestamp"),
    ("2024-01-02 03:04:05+00:00", "timestamp"), ("2024-01-02 03:04:05", "timestamp"),
    ("2024-01-02T05:04:05.1+02:00", "timestamp"), ("2024-01-02T03:04:05.123Z", "timestamp"),
    ("2024-01-01 22:04:05.123456-05:00", "timestamp"), ("2024-01-02T03:04Z", "timestamp"),
    ("2024-01-02 05:04:05+0200", "timestamp"),
    (b"caf\xc3\xa9", "string"),
    ("text", "string"), (42, "string"), (1.5, "string"),
    (1, "bool"), (0, "bool"), ("2024-01-02", "date"), (0.1, "float64"),
])
def test_raw_sqlite_values_encode_like_what_extraction_loads(raw: object, ctype: str) -> None:
    """SQLite keeps what it was given; the encoding of a raw value must equal the encoding
    of the value extraction makes of it (column_to_arrow, then validation's cast)."""
    loaded = column_to_arrow([raw], arrow_type(ctype))
    if loaded.type != arrow_type(ctype):
        loaded = pa.compute.cast(pa.compute.replace_substring_regex(
            loaded, r"(Z|[+-]00:?00)$", ""), arrow_type(ctype))
    assert raw_converter(ctype)(raw) == canonical(loaded[0].as_py(), ctype)


@pytest.mark.parametrize(("raw", "ctype"), [
    ("abc", "int64"), ("n/a", "decimal(12,2)"), ("yesterday", "timestamp"),
    (1704164645, "timestamp"), (1704164645.5, "timestamp"), (19724, "date"),
    ("2024-01-02 03:04:05.1234567", "timestamp"), ("2024-01-02 03:04", "date"),
    (b"a\xffb", "string"), (b"\x00", "decimal(12,2)"),
])
def test_unconvertible_raw_values_match_no_loaded_value(raw: object, ctype: str) -> None:
    assert raw_converter(ctype)(raw).startswith("?")


def test_sqlite_and_duckdb_compute_the_same_checksums_and_hashes() -> None:
    data = rows()
    with closing(sqlite3.connect(":memory:")) as lite, duckdb.connect() as duck:
        lite.execute(DDL["sqlite"])
        lite.executemany(f"INSERT INTO awkward VALUES ({', '.join('?' * len(NAMES))})",
                         [stored("sqlite", r) for r in data])
        duck.execute(DDL["duckdb"])
        duck.executemany(f"INSERT INTO awkward VALUES ({', '.join('?' * len(NAMES))})",
                         [stored("duckdb", r) for r in data])
        lite_aggs, lite_hashes = fingerprint(side("sqlite", sqlite_run(lite)))
        duck_aggs, duck_hashes = fingerprint(side("duckdb", duckdb_run(duck)))
    assert lite_hashes == duck_hashes == reference_hashes(data)
    assert lite_aggs == duck_aggs
    assert sum(a.rows for a in lite_aggs.values()) == len(data)


@pytest.mark.parametrize("encoding", ["UTF-16le", "UTF-16be"])
def test_a_utf16_sqlite_database_computes_the_same_checksums_and_hashes(encoding: str
                                                                        ) -> None:
    """A text's bytes (SqliteEngine._arg) are UTF-16 there: decoded before they are hashed
    (register_sqlite, SqliteEngine.utf16); its days and decimal dimensions too."""
    data = rows()
    with closing(sqlite3.connect(":memory:")) as lite:
        lite.execute(f"PRAGMA encoding = '{encoding}'")
        lite.execute(DDL["sqlite"])
        lite.executemany(f"INSERT INTO awkward VALUES ({', '.join('?' * len(NAMES))})",
                         [stored("sqlite", r) for r in data])
        utf16 = side("sqlite", sqlite_run(lite))
        assert isinstance(utf16.engine, SqliteEngine)
        utf16.engine.utf16 = True
        aggs, hashes = fingerprint(utf16)
        e = utf16.engine
        sql = f"SELECT {e.days('on_day')}, {e.scaled('price', 2)} FROM awkward ORDER BY id"
        dims = lite.execute(sql).fetchall()
        assert any(d is not None for d, _ in dims) and any(p is not None for _, p in dims)
    with closing(sqlite3.connect(":memory:")) as lite:
        lite.execute(DDL["sqlite"])
        lite.executemany(f"INSERT INTO awkward VALUES ({', '.join('?' * len(NAMES))})",
                         [stored("sqlite", r) for r in data])
        assert fingerprint(side("sqlite", sqlite_run(lite))) == (aggs, hashes)
        assert lite.execute(sql).fetchall() == dims
    assert hashes == reference_hashes(data)


def test_sqlite_invalid_predicate_flags_only_certainly_invalid_values() -> None:
    engine = engine_for("sqlite")
    qty = Column("qty", "int64", min=1)
    price = Column("price", "decimal(12,2)", min=0)
    cur = Column("currency", "string", allowed=("USD", "EUR"))
    cases = [  # (qty, price, currency, flagged?)
        (5, "12.50", "USD", False), ("5", "1e2", "EUR", False), (None, None, None, False),
        ("abc", "1.00", "USD", True), (0, "1.00", "USD", True), (5, "n/a", "USD", True),
        (5, "-5.00", "USD", True), (5, "1.00", "XXX", True), (5, " 1.00", "USD", True),
        ("-3", "1.00", "USD", True), (5, "10.00", "USD", False),
    ]
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE t (qty INTEGER, price TEXT, currency TEXT)")
        conn.executemany("INSERT INTO t VALUES (?,?,?)", [c[:3] for c in cases])
        preds, params = [], []
        for col in (qty, price, cur):
            sql, ps = engine.invalid(engine.q(col.name), col)
            preds.append(f"({sql})")
            params += ps
        flagged = [bool(r[0]) for r in conn.execute(
            f"SELECT CASE WHEN {' OR '.join(preds)} THEN 1 ELSE 0 END FROM t ORDER BY rowid",
            params)]
    assert flagged == [c[3] for c in cases]


FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 5e-324, 0.1, -1.5,
          8_999_999_999_999.999, 9e12, -9e12, 1e13, 123456789012345678.0, 9e24, 1e100,
          -1e300, 1.7976931348623157e308, -1.7976931348623157e308]


@pytest.mark.parametrize(("value", "text"), [
    (float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "-Inf"), (-0.0, "0"),
    (1e13, "E1:10000000"), (-1e13, "E1:-10000000"),
    (1.7976931348623157e308, "E25:179769313486231"),
])
def test_floats_beyond_micro_units_have_an_encoding(value: float, text: str) -> None:
    assert canonical(value, "float64") == text


def test_every_float_encodes_alike_in_python_duckdb_and_sqlite() -> None:
    """NaN, infinities, -0.0 and magnitudes whose micro-units overflow a bigint: one
    encoding per value on every engine (the SQL engines: tests/integration/
    test_reconcile_floats.py)."""
    want = [canonical(v, "float64") for v in FLOATS]
    duck, lite = engine_for("duckdb"), engine_for("sqlite")
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE f (i INTEGER, x DOUBLE)")
        conn.executemany("INSERT INTO f VALUES (?, ?)", list(enumerate(FLOATS)))
        got = [r[0] for r in conn.execute(
            f"SELECT {duck.canon('x', 'float64')} FROM f ORDER BY i").fetchall()]
    assert got == want
    with closing(sqlite3.connect(":memory:")) as conn:
        register_sqlite(conn)
        conn.execute("CREATE TABLE f (x REAL)")
        finite = [v for v in FLOATS if v == v]  # SQLite stores NaN as NULL
        conn.executemany("INSERT INTO f VALUES (?)", [(v,) for v in finite])
        got = [r[0] for r in conn.execute(
            f"SELECT {lite.canon('x', 'float64')} FROM f ORDER BY rowid").fetchall()]
    assert got == [canonical(v, "float64") for v in finite]


DECIMALS = [("decimal(3,3)", "-0.241"), ("decimal(3,3)", "0"), ("decimal(1,1)", "0.5"),
            ("decimal(38,38)", "-0.5"), ("decimal(38,10)", "1234567890123456789012345678.5"),
            ("decimal(18,0)", "-999999999999999999"), ("decimal(5,2)", "-1.5")]


@pytest.mark.parametrize(("ctype", "value"), DECIMALS)
def test_every_decimal_encodes_alike_in_python_duckdb_and_sqlite(ctype: str, value: str
                                                                 ) -> None:
    """DuckDB prints a DECIMAL(p,p) as '.241' (every other engine: '0.241'), and Python's
    default 28-digit context could not quantize a decimal(38,s): both were mismatches."""
    want = canonical(Decimal(value), ctype)
    assert want is not None and Decimal(want) == Decimal(value)
    with duckdb.connect() as conn:
        sql = engine_for("duckdb").canon(f"CAST('{value}' AS {ctype.upper()})", ctype)
        assert conn.execute(f"SELECT {sql}").fetchone() == (want,)
    assert raw_converter(ctype)(value) == want  # a SQLite text decimal
