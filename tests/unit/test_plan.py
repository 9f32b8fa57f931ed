from __future__ import annotations

from steadyflow.merge import duckdb as duck
from steadyflow.merge import postgres as pg
from steadyflow.merge.plan import plan
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
