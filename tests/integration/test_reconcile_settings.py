"""A PostgreSQL bucket query is a hash aggregate, and the session is given back as it was.

Grouped by an expression of the key, the planner takes one group per row and sorts every
row by bucket (spilling to disk past work_mem) where a hash table of the buckets does;
engines.PostgresEngine.bucket_settings turns sorts off around each bucket query only, and
sides.SqlSide puts the session's own values back after it (the warehouse connection is the
pipeline's; the source's also reads rows by key).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from steadyflow.model import Column, Contract
from steadyflow.reconcile.bisect import Range
from steadyflow.reconcile.engines import engine_for
from steadyflow.reconcile.sides import Dim, SqlSide

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CONTRACT = Contract(columns=(Column("id", "int64", False), Column("name", "string"),
                             Column("at", "timestamp", False)),
                    primary_key=("id",), cursor="at")


@pytest.mark.parametrize("before", ["on", "off"])
def test_bucket_query_is_hashed_and_the_session_keeps_its_settings(pg_dsn: str,
                                                                   before: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, name text, at timestamptz "
                     "NOT NULL)")
        conn.execute("INSERT INTO t SELECT g, 'n' || g, timestamptz '2025-01-01' "
                     "+ g * interval '1 second' FROM generate_series(1, 50000) g")
        conn.execute("ANALYZE t")  # the key is unique: one bucket expected per row
        conn.execute("SELECT set_config('enable_sort', %s, false)", [before])
        # the smallest work_mem: with one group per row expected, a hash table "spills",
        # so the planner sorts, as it does for millions of rows at the default 4MB
        conn.execute("SET work_mem = '64kB'")
        plans: list[str] = []

        def run(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
            if sql.startswith("SELECT b, inv"):  # the bucket query: its plan, as it runs
                plans.append("\n".join(r[0] for r in conn.execute(
                    f"EXPLAIN {sql}", params).fetchall()))
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]

        side = SqlSide(engine_for("postgres"), '"t"', CONTRACT, run, [Dim("id")])
        rng = Range((), 1, 50001)
        aggs = side.aggregate(rng, rng.split(1024))
        assert sum(a.rows for a in aggs.values()) == 50000
        assert len(plans) == 1 and "HashAggregate" in plans[0], plans
        assert "Sort" not in plans[0], plans[0]
        (after,), = conn.execute("SELECT current_setting('enable_sort')").fetchall()
        assert after == before
