from __future__ import annotations

from steadyflow.merge import duckdb as duck
from steadyflow.merge import postgres as pg
from steadyflow.merge.plan import narrower_columns, plan
from steadyflow.model import Column, Contract

CONTRACT = Contract(
    columns=(Column("id", "int64", nullable=False), Column("order", "string"),
             Column("updated_at", "timestamp", nullable=False)),
    primary_key=("id",), cursor="updated_at")


def test_postgres_plan_upserts_with_later_extraction_winning() -> None:
    p = plan(CONTRACT, "wh", "sales", "stage", "dels", pg.quote, "postgres")
    assert 'ON CONFLICT ("id") DO UPDATE' in p.merge
    assert '"wh"."sales"."_steadyflow_seq" <= EXCLUDED."_steadyflow_seq"' in p.merge
    assert '"_steadyflow_seq" BIGINT' in p.create_table
    assert "DISTINCT ON (\"id\")" in p.merge  # a batch's own duplicates collapse first
    assert '"order" TEXT' in p.create_table and 'PRIMARY KEY ("id")' in p.create_table


def test_duckdb_plan_merges() -> None:
    p = plan(CONTRACT, "main", "sales", "stage", "dels", duck.quote, "duckdb")
    assert p.merge.startswith('MERGE INTO "main"."sales"')
    assert 's."_steadyflow_seq" >= t."_steadyflow_seq"' in p.merge
    assert p.delete.startswith('DELETE FROM "main"."sales" WHERE ("id") IN')


def test_identifiers_are_quoted_not_pasted() -> None:
    assert duck.quote('we"ird') == '"we""ird"'
    assert pg.quote('we"ird') == '"we""ird"'


def test_a_target_column_narrower_than_its_contract_type_is_named() -> None:
    """A contract widened after its target was created (int32 to int64, decimal(10,2) to
    decimal(12,4)): both warehouses converted into the old column silently (1.2345 stored
    as 1.23); a wider or unconstrained column, or one of a type it cannot judge, holds."""
    contract = Contract(columns=(
        Column("id", "int64", nullable=False), Column("n", "int32"),
        Column("d", "decimal(12,4)"), Column("k", "decimal(18,0)"), Column("s", "string")),
        primary_key=("id",), cursor="id")
    fits = {"id": "BIGINT", "n": "integer", "d": "numeric(14,4)", "k": "bigint", "s": "text"}
    assert narrower_columns(contract, fits) == []
    assert narrower_columns(contract, {"id": "numeric", "n": "HUGEINT", "d": "numeric",
                                       "k": "DECIMAL(18,0)", "s": "USER_DEFINED"}) == []
    narrow = {"id": "integer", "n": "smallint", "d": "numeric(10,2)", "k": "DOUBLE",
              "s": "bigint"}
    assert narrower_columns(contract, narrow) == [
        ("id", "integer", "int64"), ("n", "smallint", "int32"),
        ("d", "numeric(10,2)", "decimal(12,4)"), ("k", "DOUBLE", "decimal(18,0)"),
        ("s", "bigint", "string")]  # text into a number column: see the string test below
    assert narrower_columns(contract, {"d": "DECIMAL(12,5)", "k": "int"}) == [
        ("d", "DECIMAL(12,5)", "decimal(12,4)"), ("k", "int", "decimal(18,0)")]
    assert narrower_columns(contract, {"id": "numeric(19,0)", "n": "decimal(12,2)"}) == []
    assert narrower_columns(contract, {"id": "numeric(18,0)"}) == [
        ("id", "numeric(18,0)", "int64")]


def test_a_date_for_a_timestamp_and_a_number_type_for_a_float_are_named() -> None:
    """int64 widened to float64 (DuckDB stored 1.5 as 2; PostgreSQL refused the batch)
    and date to timestamp (10:30 on a day stored as the day)."""
    contract = Contract(columns=(
        Column("id", "int64", nullable=False), Column("f", "float64"),
        Column("at", "timestamp")), primary_key=("id",), cursor="id")
    for fits in ({"f": "DOUBLE", "at": "TIMESTAMP WITH TIME ZONE"},
                 {"f": "double precision", "at": "timestamp without time zone"},
                 {"f": "numeric", "at": "TIMESTAMP"}):
        assert narrower_columns(contract, fits) == []
    assert narrower_columns(contract, {"f": "BIGINT", "at": "DATE"}) == [
        ("f", "BIGINT", "float64"), ("at", "DATE", "timestamp")]
    assert [n for n, _, _ in narrower_columns(contract, {"f": "FLOAT"})] == ["f"]
    assert [n for n, _, _ in narrower_columns(contract, {"f": "numeric(30,10)"})] == ["f"]


def test_a_number_time_or_bool_type_for_a_string_is_named() -> None:
    """A string contract column over a BIGINT target ('007' stored as 7), and the other
    types that convert text; any text type (or one this cannot judge) holds it."""
    contract = Contract(columns=(Column("id", "int64", nullable=False), Column("s", "string")),
                        primary_key=("id",), cursor="id")
    for fits in ("VARCHAR", "text", "character varying(20)", "citext", "json", "MY_TYPE"):
        assert narrower_columns(contract, {"s": fits}) == [], fits
    for narrow in ("BIGINT", "integer", "UBIGINT", "DOUBLE", "double precision",
                   "numeric(10,2)", "DECIMAL(18,3)", "date", "TIMESTAMP WITH TIME ZONE",
                   "time without time zone", "BOOLEAN", "uuid", "interval"):
        assert narrower_columns(contract, {"s": narrow}) == [("s", narrow, "string")], narrow


def test_a_bool_column_holds_only_a_bool() -> None:
    """An integer over a BOOLEAN target: DuckDB stored 2 as true."""
    contract = Contract(columns=(Column("id", "int64", nullable=False), Column("b", "bool"),
                                 Column("n", "int64"), Column("f", "float64")),
                        primary_key=("id",), cursor="id")
    assert narrower_columns(contract, {"b": "BOOLEAN"}) == []
    assert narrower_columns(contract, {"n": "BOOLEAN", "f": "boolean"}) == [
        ("n", "BOOLEAN", "int64"), ("f", "boolean", "float64")]


def test_each_target_has_a_tombstone_table_of_its_own_within_postgres_63_bytes() -> None:
    """PostgreSQL cuts a longer name without a word: two long targets sharing a prefix
    would have shared one tombstone table (each other's deleted keys held back)."""
    from steadyflow.merge.plan import tomb_table
    assert tomb_table("sales") == "_steadyflow_tomb_sales"
    long_a, long_b = "a" * 50 + "_orders", "a" * 50 + "_orderz"
    names = {tomb_table(long_a), tomb_table(long_b)}
    assert len(names) == 2 and all(len(n.encode()) <= 63 for n in names)
    p = plan(CONTRACT, "wh", "sales", "stage", "dels", pg.quote, "postgres")
    assert '"wh"."_steadyflow_tomb_sales"' in p.create_tomb
    assert 'PRIMARY KEY ("id")' in p.create_tomb and '"order"' not in p.create_tomb
