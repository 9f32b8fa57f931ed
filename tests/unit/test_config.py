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


# --- refused at config time: each names the key, what is wrong and the fix -------------------

def _contract(**columns: dict[str, object]) -> dict[str, object]:
    return {**SALES_CONTRACT, "columns": {**SALES_CONTRACT["columns"], **columns}}


def _sources(*tables: dict[str, object], kind: str = "sqlite") -> list[dict[str, object]]:
    return [{"name": "s1", "kind": kind, "path": "/tmp/x.db", "tables": list(tables)}]


def _refused(raw: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    return str(err.value)


@pytest.mark.parametrize("pattern", [r"(?<=A)\d+", r"^\d+\Z", r"(a)\1", "a{2000}", "(unclosed"])
def test_a_pattern_re2_cannot_compile_is_refused(pattern: str) -> None:
    # validation runs patterns with Arrow's RE2: a Python-only regex must fail here, not
    # kill the loader at the first batch
    text = _refused(_raw(contracts={"sales": _contract(sku={"type": "string",
                                                             "pattern": pattern})}))
    assert "contracts.sales.columns.sku.pattern" in text and "RE2" in text


def test_an_re2_pattern_is_accepted() -> None:
    parse_config(_raw(contracts={"sales": _contract(sku={"type": "string",
                                                         "pattern": r"^SKU-\d{1,6}$"})}))


def test_the_same_table_twice_in_one_source_is_refused() -> None:
    text = _refused(_raw(sources=_sources({"name": "sales", "contract": "sales"},
                                          {"name": "sales", "contract": "sales",
                                           "target": "sales_copy"})))
    assert "'sales' is listed 2 times in source 's1'" in text and "keep one" in text


def test_tables_of_different_shapes_feeding_one_target_are_refused() -> None:
    other = {**SALES_CONTRACT, "columns": {**SALES_CONTRACT["columns"],
                                           "unit_price": {"type": "decimal(12,4)"}}}
    raw = _raw(contracts={"sales": SALES_CONTRACT, "sales4": other},
               sources=[*_sources({"name": "sales", "contract": "sales"}),
                        {"name": "s2", "kind": "sqlite", "path": "/tmp/y.db",
                         "tables": [{"name": "sales", "contract": "sales4"}]}])
    text = _refused(raw)
    assert "sources.s2.tables.sales and sources.s1.tables.sales" in text
    assert "target 'sales'" in text and "'target'" in text
    # the same shape from several stores into one target is how stores are merged: fine,
    # each with a filter on a key column telling its rows apart (below)
    raw["contracts"] = {"sales": SALES_CONTRACT, "sales4": SALES_CONTRACT}
    raw["sources"] = _stores({"store_id": 1}, {"store_id": 2})
    parse_config(raw)


def _stores(*filters: dict[str, object] | None) -> list[dict[str, object]]:
    """One sqlite source per filter, each loading its `sales` into the target `sales`."""
    return [{"name": f"store{i}", "kind": "sqlite", "path": f"/tmp/s{i}.db",
             "tables": [{"name": "sales", "contract": "sales",
                         **({"warehouse_filter": f} if f is not None else {})}]}
            for i, f in enumerate(filters, start=1)]


@pytest.mark.parametrize(("filters", "expect"), [
    ((None, None), "sources.store1.tables.sales has no warehouse_filter"),
    (({"store_id": 1}, None), "sources.store2.tables.sales has no warehouse_filter"),
    (({"currency": "USD"}, {"currency": "EUR"}),
     "has warehouse_filter on currency, not primary-key columns (key: store_id, sale_id)"),
    (({"store_id": 1}, {"store_id": "1"}), "can match the same row"),
    (({"store_id": 1}, {"sale_id": 7}), "can match the same row"),
])
def test_tables_sharing_a_target_need_filters_telling_their_keys_apart(
        filters: tuple[dict[str, object] | None, ...], expect: str) -> None:
    """Merged on the primary key alone, two tables with one key (shards both counting from
    1) would replace each other's rows in silence: each needs a warehouse_filter on key
    columns, with a value of its own; refused naming the tables, the target and the fix."""
    text = _refused(_raw(sources=_stores(*filters)))
    assert expect in text
    assert "'sales'" in text
    if "no warehouse_filter" in text or "not primary-key" in text:
        assert "sources.store1.tables.sales, sources.store2.tables.sales" in text
        assert "add warehouse_filter: {store_id: 42}" in text
    parse_config(_raw(sources=_stores({"store_id": 1}, {"store_id": 2, "sale_id": 1},
                                      {"store_id": "3"})))


@pytest.mark.parametrize(("flt", "expect"), [
    ({"nope": 1}, "warehouse_filter names 'nope', which is not a column"),
    ({"store_id": "three"}, "store_id: 'three' is not a valid int64"),
])
def test_a_warehouse_filter_must_name_a_column_and_hold_its_type(
        flt: dict[str, object], expect: str) -> None:
    """Load compares every row's column with the filter's value: it must be one."""
    assert expect in _refused(_raw(sources=_stores(flt)))


@pytest.mark.parametrize("cursor_type", ["string", "bool"])
def test_lookback_on_a_cursor_that_cannot_step_back_is_refused(cursor_type: str) -> None:
    contract = {**_contract(version={"type": cursor_type, "nullable": False}),
                "cursor": "version"}
    text = _refused(_raw(contracts={"sales": contract}))
    assert "sources.s1.tables.sales.lookback" in text and f"typed {cursor_type}" in text
    assert "remove lookback" in text
    # without a lookback the same cursor is accepted
    parse_config(_raw(contracts={"sales": contract},
                      sources=_sources({"name": "sales", "contract": "sales"})))


@pytest.mark.parametrize("cursor_type", ["int64", "int32", "date", "timestamp",
                                         "decimal(20,0)"])
def test_lookback_on_a_cursor_that_can_step_back_is_accepted(cursor_type: str) -> None:
    parse_config(_raw(contracts={"sales": {
        **_contract(version={"type": cursor_type, "nullable": False}), "cursor": "version"}}))


def test_a_float_cursor_or_key_is_refused() -> None:
    as_cursor = {**_contract(version={"type": "float64", "nullable": False}),
                 "cursor": "version"}
    text = _refused(_raw(contracts={"sales": as_cursor}))
    assert "contracts.sales" in text and "cursor 'version' is typed float64" in text
    assert "decimal(p,s)" in text
    as_key = _contract(sale_id={"type": "float64", "nullable": False})
    assert "primary key column 'sale_id' is typed float64" in _refused(
        _raw(contracts={"sales": as_key}))


@pytest.mark.parametrize(("change", "key", "fix"), [
    ({"buffer": {"lease": 0}}, "buffer.lease", "at least 1s"),
    ({"buffer": {"lease": "500ms"}}, "buffer.lease", "at least 1s"),
    ({"run": {"interval": 0}}, "run.interval", "more than 0 s"),
    ({"sources": [{**_sources({"name": "sales", "contract": "sales"})[0],
                   "resilience": {"statement_timeout": 0}}]}, "sources.0", "statement_timeout"),
    ({"sources": [{**_sources({"name": "sales", "contract": "sales"})[0],
                   "resilience": {"backoff_initial": "10s", "backoff_max": "1s"}}]},
     "sources.0", "raise backoff_max"),
    ({"sources": _sources({"name": "sales", "contract": "sales", "bad_page_retries": 10**6})},
     "sources.0.tables.0.bad_page_retries", "100"),
])
def test_durations_and_sizes_that_would_spin_are_refused(change: dict[str, object], key: str,
                                                         fix: str) -> None:
    text = _refused(_raw(**change))
    assert key in text and fix in text


@pytest.mark.parametrize(("change", "key", "suggestion"), [
    ({"runn": {}}, "runn", "'run'"),
    ({"warehouse": {"schemaa": "x"}}, "warehouse.schemaa", "'schema'"),
    ({"sources": [{**_sources({"name": "sales", "contract": "sales"})[0], "resilence": {}}]},
     "sources.0.resilence", "'resilience'"),
    ({"sources": _sources({"name": "sales", "contract": "sales", "lookbak": "1m"})},
     "sources.0.tables.0.lookbak", "'lookback'"),
    ({"contracts": {"sales": {**SALES_CONTRACT, "primary_keys": ["sale_id"]}}},
     "contracts.sales.primary_keys", "'primary_key'"),
    ({"sources": _sources({"name": "sales", "contract": {**SALES_CONTRACT, "curosr": "x"}})},
     "sources.0.tables.0.contract.curosr", "'cursor'"),
])
def test_an_unknown_key_gets_did_you_mean(change: dict[str, object], key: str,
                                          suggestion: str) -> None:
    text = _refused(_raw(**change))
    assert f"{key}: unknown key (did you mean {suggestion}?" in text
    assert "valid string" not in text  # no noise from the `contract: name` alternative


def test_every_expanded_value_and_dsn_password_is_registered_as_a_secret(
        tmp_path: Path) -> None:
    from steadyflow import secrets

    path = write_pipeline(tmp_path, [{"name": "s1", "kind": "http", "url": "http://h",
                                      "headers": {"X-Token": "${SF_UNIT_TOKEN}"},
                                      "tables": [{"name": "sales", "contract": "sales",
                                                  "endpoint": "/s"}]}],
                          warehouse={"kind": "postgres",
                                     "dsn": "postgresql://u:literal-pw-unit@h/db"})
    load_config(path, env={"SF_UNIT_TOKEN": "tok-unit-1234"})
    assert secrets.scrub("X-Token: tok-unit-1234") == "X-Token: ***"
    assert secrets.scrub("password literal-pw-unit") == "password ***"


@pytest.mark.parametrize("query", ["ssl_ca=/etc/ca.pem", "ssl-mode=VERIFY_IDENTITY",
                                   "ssl_verify_cert=true&ssl_verify_identity=1", "ssl=true",
                                   "sslmode=require", "TLS=1", "charset=utf8mb4&ssl_key=k"])
def test_a_mysql_dsn_asking_for_tls_is_refused_not_ignored(query: str) -> None:
    """Neither MariaDB driver is given the DSN's query, so `?ssl_ca=...&ssl-mode=VERIFY_
    IDENTITY` was ignored: the source connected in plain text to a server offering no TLS
    (Ssl_cipher '' on this machine's MariaDB) with nothing said. Refused at load, naming
    the parameters and not their values."""
    dsn = f"mysql://reader@store:3306/pos?{query}"
    text = _refused(_raw(sources=[{"name": "s1", "kind": "mysql", "dsn": dsn, "tables": [
        {"name": "sales", "contract": "sales"}]}]))
    assert "asks for TLS" in text and "/etc/ca.pem" not in text


def test_a_mysql_dsn_without_tls_parameters_and_a_postgres_sslmode_are_accepted() -> None:
    for kind, dsn in (("mysql", "mysql://reader@store:3306/pos?charset=utf8mb4"),
                      ("postgres", "postgresql://reader@store/pos?sslmode=verify-full")):
        parse_config(_raw(sources=[{"name": "s1", "kind": kind, "dsn": dsn, "tables": [
            {"name": "sales", "contract": "sales"}]}]))
