"""`schema_drift: add`: the type of an added source column and the warehouse DDL it gets."""

from __future__ import annotations

from steadyflow.merge.duckdb import quote as duck_quote
from steadyflow.merge.plan import plan
from steadyflow.merge.postgres import quote as pg_quote
from steadyflow.model import Column, Contract, drift_type


def test_drift_type_maps_only_unambiguous_types() -> None:
    for declared, expected in [
        ("integer", "int64"), ("bigint", "int64"), ("smallint", "int64"), ("int(11)", "int64"),
        ("INT UNSIGNED", "int64"), ("bigint unsigned", "string"), ("tinyint(1)", "int64"),
        ("numeric(5,2)", "decimal(5,2)"), ("DECIMAL(12, 4)", "decimal(12,4)"),
        ("numeric(7)", "decimal(7,0)"), ("numeric", "string"), ("numeric(50,2)", "string"),
        ("timestamp with time zone", "timestamp"), ("timestamp(3) without time zone",
                                                    "timestamp"),
        ("timestamptz", "timestamp"), ("datetime(6)", "timestamp"), ("TIMESTAMP", "timestamp"),
        ("text", "string"), ("character varying(20)", "string"), ("varchar(255)", "string"),
        ("double precision", "float64"), ("float", "float64"), ("real", "float64"),
        ("boolean", "bool"), ("bool", "bool"),
        ("uuid", "string"), ("jsonb", "string"), ("date", "string"), ("integer[]", "string"),
        ("", "string"), (None, "string"),
    ]:
        assert drift_type(declared) == expected, declared


def test_added_columns_extend_the_contract_and_get_add_column_statements() -> None:
    base = Contract(columns=(Column("id", "int64", nullable=False), Column("at", "timestamp")),
                    primary_key=("id",), cursor="at")
    assert base.with_added(None) is base and base.with_added([["ID", "string"]]) is base
    ext = base.with_added([["discount", "decimal(5,2)"], ["Chan nel", "string"]])
    assert ext.names == ("id", "at", "discount", "Chan nel")
    assert all(c.nullable and c.added and c.min is None for c in ext.columns[2:])
    assert plan(base, "wh", "sales", "s", "d", pg_quote, "postgres").add_columns == ()
    pg = plan(ext, "wh", "sales", "s", "d", pg_quote, "postgres").add_columns
    assert pg == ('ALTER TABLE "wh"."sales" ADD COLUMN IF NOT EXISTS "discount" NUMERIC(5,2)',
                  'ALTER TABLE "wh"."sales" ADD COLUMN IF NOT EXISTS "Chan nel" TEXT')
    duck = plan(ext, "main", "sales", "s", "d", duck_quote, "duckdb").add_columns
    assert duck[1] == 'ALTER TABLE "main"."sales" ADD COLUMN IF NOT EXISTS "Chan nel" VARCHAR'
