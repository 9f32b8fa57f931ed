"""Warehouse target names that DuckDB reads as another table.

Measured on the previous src (two SQLite sources into DuckDB, every run ok): targets
'orders' and 'Orders' loaded one DuckDB table, source a's rows 1-3 replaced by source b's;
and a source table `_steadyflow_tomb_orders` (target by default its name) loaded rows
into `orders`' tombstone table, so `orders` rows 1 and 2 were never loaded. The config now
refuses both, naming the tables, the targets and the fix."""

from __future__ import annotations

import pytest
from tests.conftest import SALES_CONTRACT

from steadyflow.config import parse_config
from steadyflow.errors import ConfigError


def raw(*tables: tuple[str, str, dict[str, object]]) -> dict[str, object]:
    """One sqlite source per (source, table, extra table keys)."""
    return {"name": "tn", "state_dir": "/tmp/tn-state", "landing": {"path": "/tmp/tn-l"},
            "warehouse": {"kind": "duckdb", "path": "/tmp/tn.duckdb", "schema": "main"},
            "contracts": {"sales": SALES_CONTRACT},
            "sources": [{"name": s, "kind": "sqlite", "path": f"/tmp/tn-{s}.db",
                         "tables": [{"name": t, "contract": "sales", **extra}]}
                        for s, t, extra in tables]}


@pytest.mark.parametrize("extra", [{}, {"warehouse_filter": {"store_id": 1}}])
def test_targets_differing_only_in_case_are_refused(extra: dict[str, object]) -> None:
    other = {"warehouse_filter": {"store_id": 2}} if extra else {}
    with pytest.raises(ConfigError) as err:
        parse_config(raw(("a", "orders", extra), ("b", "Orders", other)))
    text = str(err.value)
    assert "sources.b.tables.Orders loads target 'Orders'" in text
    assert "sources.a.tables.orders loads 'orders'" in text
    assert "differ only in case" in text and "spell them alike" in text


@pytest.mark.parametrize(("table", "extra", "target"), [
    ("_steadyflow_tomb_orders", {}, "_steadyflow_tomb_orders"),
    ("ledger", {"target": "_Steadyflow_Ledger"}, "_Steadyflow_Ledger"),
])
def test_a_target_named_like_steadyflows_own_tables_is_refused(
        table: str, extra: dict[str, object], target: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw(("a", "orders", {}), ("b", table, extra)))
    text = str(err.value)
    assert f"sources.b.tables.{table}: target {target!r}: names starting with _steadyflow_" \
        in text and "set 'target' to another name" in text


def test_the_same_spelling_and_a_plain_target_are_accepted() -> None:
    """The controls: one spelling shared with filters (stores merged into one table), and a
    source table with the reserved prefix loading a target of another name."""
    parse_config(raw(("a", "Orders", {"warehouse_filter": {"store_id": 1}}),
                     ("b", "Orders", {"warehouse_filter": {"store_id": 2}}),
                     ("c", "_steadyflow_tomb_orders", {"target": "tomb_orders"})))


def test_a_target_named_like_a_state_table_in_a_shared_schema_is_refused() -> None:
    """State and warehouse in one PostgreSQL schema (allowed: StateConfig): a target
    `sequence` was the state's sequence table, every load failing with a hint to ALTER it.
    Refused naming the table, the target and the schema; another schema is accepted."""
    config = raw(("a", "sequence", {}))
    dsn = "postgresql://u@h/db"
    config["state"] = {"kind": "postgres", "dsn": dsn, "schema": "shared"}
    config["warehouse"] = {"kind": "postgres", "dsn": dsn, "schema": "shared"}
    with pytest.raises(ConfigError) as err:
        parse_config(config)
    assert ("sources.a.tables.sequence: target 'sequence' is a state table of schema "
            "'shared'") in str(err.value)
    config["warehouse"] = {"kind": "postgres", "dsn": dsn, "schema": "wh"}
    parse_config(config)
