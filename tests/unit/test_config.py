from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import SALES_CONTRACT, write_pipeline

from steadyflow.config import load_config, parse_config
from steadyflow.errors import ConfigError


def _raw(**over: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "contracts": {"sales": SALES_CONTRACT},
        "sources": [{"name": "s1", "kind": "sqlite", "path": "/tmp/x.db",
                     "tables": [{"name": "sales", "contract": "sales", "lookback": "5m"}]}],
    }
    raw.update(over)
    return raw


def test_valid_config_parses_durations_and_contract() -> None:
    config = parse_config(_raw())
    (_, table, ref), = config.tables()
    assert table.lookback == 300.0
    assert ref.target == "sales"
    contract = config.contract_of(table)
    assert contract.primary_key == ("store_id", "sale_id")
    assert contract.order_by == ("updated_at", "store_id", "sale_id")


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"bogus": 1}, "bogus"),
        ({"contracts": {"sales": {**SALES_CONTRACT, "cursor": "nope"}}}, "'nope'"),
        ({"contracts": {"sales": {**SALES_CONTRACT, "columns": {
            **SALES_CONTRACT["columns"], "qty": {"type": "integer"}}}}}, "unknown type"),
        ({"sources": [{"name": "s1", "kind": "postgres", "tables": [
            {"name": "sales", "contract": "sales"}]}]}, "needs 'dsn'"),
        ({"sources": [{"name": "s1", "kind": "sqlite", "path": "x", "tables": [
            {"name": "sales", "contract": "missing"}]}]}, "unknown contract"),
        ({"sources": [{"name": "bad name;", "kind": "sqlite", "path": "x", "tables": [
            {"name": "sales", "contract": "sales"}]}]}, "not a plain identifier"),
    ],
)
def test_bad_config_names_key_and_problem(change: dict[str, object], expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_raw(**change))
    assert expect in str(err.value)


def test_missing_env_var_is_named_and_secret_is_not_echoed(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, [{"name": "s1", "kind": "postgres",
                                      "dsn": "postgresql://u:${SF_TEST_PW}@h/db",
                                      "tables": [{"name": "sales", "contract": "sales"}]}])
    with pytest.raises(ConfigError, match="SF_TEST_PW"):
        load_config(path, env={})
    config = load_config(path, env={"SF_TEST_PW": "hunter2-secret"})
    assert config.sources[0].dsn == "postgresql://u:hunter2-secret@h/db"
    bad = path.read_text().replace("lookback", "lookbak")
    path.write_text(bad.replace("tables:", "tables:\n", 1) if "lookbak" in bad else
                    bad + "\nrun: {interval: soon}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"SF_TEST_PW": "hunter2-secret"})
    assert "hunter2-secret" not in str(err.value)


def test_sqlite_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, [{"name": "s1", "kind": "sqlite", "path": "stores/a.db",
                                      "tables": [{"name": "sales", "contract": "sales"}]}])
    assert load_config(path).sources[0].path == str(tmp_path / "stores" / "a.db")
