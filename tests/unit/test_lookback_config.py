"""`lookback_mode`: adaptive where the source can tell its open transactions and the cursor is
a time they compare with; refused, naming the key and the fix, where it would be ignored."""

from __future__ import annotations

import pytest
from tests.conftest import SALES_CONTRACT

from steadyflow.config import adaptive_lookback, parse_config
from steadyflow.errors import ConfigError


def _config(kind: str, mode: str | None, cursor_type: str = "timestamp") -> dict[str, object]:
    contract = {**SALES_CONTRACT, "columns": {**SALES_CONTRACT["columns"],
                                              "version": {"type": cursor_type,
                                                          "nullable": False}},
                "cursor": "version"}
    table: dict[str, object] = {"name": "sales", "contract": "sales"}
    if mode is not None:
        table["lookback_mode"] = mode
    source: dict[str, object] = {"name": "s1", "kind": kind, "tables": [table]}
    if kind == "sqlite":
        source["path"] = "/tmp/x.db"
    elif kind == "http":
        source["url"] = "http://127.0.0.1:1"
        table["endpoint"] = "/sales"
    else:
        source["dsn"] = f"{'postgresql' if kind == 'postgres' else 'mysql'}://u@127.0.0.1/d"
    return {"contracts": {"sales": contract}, "sources": [source]}


def _adaptive(raw: dict[str, object]) -> bool:
    config = parse_config(raw)
    source, table, _ = next(iter(config.tables()))
    return adaptive_lookback(source, table, config.contract_of(table))


@pytest.mark.parametrize(("kind", "cursor_type", "adaptive"), [
    ("postgres", "timestamp", True), ("mysql", "timestamp", True),
    ("postgres", "int64", True), ("mysql", "int32", True), ("postgres", "date", False),
    ("postgres", "decimal(12,2)", False), ("sqlite", "int64", False),
    ("sqlite", "timestamp", False), ("http", "timestamp", False)])
def test_auto_is_the_default_and_adaptive_only_where_it_applies(
        kind: str, cursor_type: str, adaptive: bool) -> None:
    assert _adaptive(_config(kind, None, cursor_type)) is adaptive
    assert _adaptive(_config(kind, "fixed", cursor_type)) is False


@pytest.mark.parametrize(("kind", "cursor_type"), [
    ("sqlite", "timestamp"), ("http", "timestamp"), ("postgres", "date")])
def test_adaptive_where_it_would_be_ignored_is_refused(kind: str, cursor_type: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(kind, "adaptive", cursor_type))
    text = str(err.value)
    assert "sources.s1.tables.sales.lookback_mode" in text and "lookback_mode: fixed" in text


def test_adaptive_is_accepted_on_a_database_with_a_timestamp_cursor() -> None:
    assert _adaptive(_config("mysql", "adaptive")) is True
