"""The SQL of a keyset page bounded at the end of its cursor pass, per dialect: the upper
bound is compared by the database (row values, or MariaDB's expanded OR form), with the
noted position's values as parameters, beside the lower bound or the lookback's."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from steadyflow.config import SourceConfig, TableConfig
from steadyflow.extract.sql import SqlSource
from steadyflow.model import Column, Contract, Watermark

CONTRACT = Contract(
    columns=(Column("a", "string", nullable=False), Column("b", "int64", nullable=False),
             Column("v", "timestamp", nullable=False), Column("n", "decimal(10,2)")),
    primary_key=("a", "b"), cursor="v")
T1 = datetime(2024, 1, 1, 12, tzinfo=UTC)
T9 = datetime(2024, 1, 9, 12, tzinfo=UTC)
AFTER = Watermark(cursor=T1, key=("x", 1))
UPTO = Watermark(cursor=T9, key=("Z", 7))


def source(kind: str) -> SqlSource:
    where = {"sqlite": {"path": "s.db"}, "postgres": {"dsn": "postgresql://h/d"},
             "mysql": {"dsn": "mysql://h/d"}}[kind]
    src = SqlSource(SourceConfig(name="s", kind=kind, tables=[  # type: ignore[arg-type]
        TableConfig(name="t", contract="c")], **where))
    # MariaDB's select list reads the declared types (a BIT column is selected as its
    # number): no server here, so none is BIT, as a catalog without the table would say
    src._declared["t"] = {}
    src._casts["t"] = {}  # nor is any a PostgreSQL domain over an ENUM (compare_casts)
    return src


def test_postgres_page_ends_at_the_noted_position_as_a_row_value() -> None:
    query, params = source("postgres").page_query("t", CONTRACT, AFTER, None, 10, upto=UPTO)
    assert ' WHERE ("v", "a", "b") > (%s, %s, %s) AND ("v", "a", "b") <= (%s, %s, %s) ' \
        'ORDER BY "t"."v", "t"."a", "t"."b" LIMIT 10' in query
    assert params == [T1, "x", 1, T9, "Z", 7]
    # without a bound (reconcile, the key-order initial load) the query is as it was
    query, params = source("postgres").page_query("t", CONTRACT, AFTER, None, 10)
    assert "<=" not in query and params == [T1, "x", 1]


def test_postgres_compares_a_domain_over_an_enum_as_the_enum() -> None:
    """`d > unknown` does not exist for a domain over an ENUM: the column is cast to the
    ENUM on both bounds and the lookback's, never in ORDER BY (its index order)."""
    src = source("postgres")
    src._casts["t"] = {"a": 'other."Mood"'}
    query, _ = src.page_query("t", CONTRACT, AFTER, None, 10, upto=UPTO)
    a = 'CAST("a" AS other."Mood")'
    assert f'WHERE ("v", {a}, "b") > (%s, %s, %s) AND ("v", {a}, "b") <= (%s, %s, %s) ' \
        'ORDER BY "t"."v", "t"."a", "t"."b"' in query
    src._casts["t"] = {"v": "mood"}
    query, _ = src.page_query("t", CONTRACT, None, T1, 10)
    assert 'WHERE CAST("v" AS mood) >= %s ORDER BY' in query


def test_sqlite_page_ends_at_the_noted_stored_text() -> None:
    """A SQLite text cursor's position is the stored text itself, sent back as it is."""
    upto = Watermark(cursor="2024-01-09T12:00:00Z", key=("Z", 7))
    query, params = source("sqlite").page_query("t", CONTRACT, None, None, 5, upto=upto)
    assert query.endswith(' WHERE (`v`, `a`, `b`) <= (?, ?, ?) '
                          'ORDER BY `t`.`v`, `t`.`a`, `t`.`b` LIMIT 5')
    assert params == ["2024-01-09T12:00:00Z", "Z", 7]


def test_mariadb_page_ends_at_the_noted_position_in_the_expanded_form() -> None:
    """Expanded OR form (an index range scan on MariaDB), `<=` only on the last column;
    times as naive UTC, as the lower bound sends them."""
    query, params = source("mysql").page_query("t", CONTRACT, AFTER, None, 10, upto=UPTO)
    lower = "((`v` > %s) OR (`v` = %s AND `a` > %s) OR (`v` = %s AND `a` = %s AND `b` > %s))"
    upper = ("((`v` < %s) OR (`v` = %s AND `a` < %s) OR "
             "(`v` = %s AND `a` = %s AND `b` <= %s))")
    assert f" WHERE {lower} AND {upper} ORDER BY " in query
    naive1, naive9 = T1.replace(tzinfo=None), T9.replace(tzinfo=None)
    assert params == [naive1, naive1, "x", naive1, "x", 1, naive9, naive9, "Z", naive9, "Z", 7]


@pytest.mark.parametrize("kind", ["postgres", "mysql", "sqlite"])
def test_lookback_page_is_bounded_too(kind: str) -> None:
    """The lookback re-read (`cursor >= since`) ends at the same noted position."""
    db = source(kind)
    query, params = db.page_query("t", CONTRACT, None, T1, 10, upto=UPTO)
    d = db.dialect
    assert f" WHERE {d.ident('v')} >= {d.placeholder} AND {d.keyset_upto(CONTRACT.order_by)}" \
        " ORDER BY " in query
    assert params[1:] == d.keyset_params([d.to_param(v) for v in UPTO.as_tuple()])


@pytest.mark.parametrize("kind", ["postgres", "mysql", "sqlite"])
def test_a_cursor_only_key_bounds_one_column(kind: str) -> None:
    """A table keyed by its cursor: the bound is on that one column, `<=`."""
    contract = Contract(columns=(Column("n", "decimal(10,2)", nullable=False),),
                        primary_key=("n",), cursor="n")
    db = source(kind)
    upto = Watermark(cursor=Decimal("30.00"), key=())
    query, params = db.page_query("t", contract, None, None, 3, upto=upto)
    n = db.dialect.ident("n")
    assert any(f" WHERE {form} ORDER BY " in query for form in
               (f"({n}) <= ({db.dialect.placeholder})", f"(({n} <= %s))"))
    assert params == [Decimal("30.00")]

