"""A password written into a DSN is warned about, naming the key and the fix, never shown."""

import logging
from pathlib import Path

import pytest
from tests.conftest import write_pipeline

from steadyflow.config import load_config


def _load(tmp_path: Path, dsn: str, caplog: pytest.LogCaptureFixture,
          warehouse_dsn: str | None = None) -> list[str]:
    warehouse = {"kind": "postgres", "dsn": warehouse_dsn} if warehouse_dsn else None
    path = write_pipeline(tmp_path, [{"name": "store_042", "kind": "postgres", "dsn": dsn,
                                      "tables": [{"name": "sales", "contract": "sales"}]}],
                          warehouse=warehouse)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="steadyflow.config"):
        load_config(path, env={"PW": "from-env-secret"})
    return [r.getMessage() for r in caplog.records if r.name == "steadyflow.config"]


@pytest.mark.parametrize("dsn", [
    "postgresql://reader:literal-pw-9@h:5432/pos",
    "postgresql://reader@h/pos?password=literal-pw-9",
    "host=h user=reader password=literal-pw-9 dbname=pos",
    "host=h user=reader password='literal pw-9' dbname=pos",
])
def test_a_literal_password_is_warned_naming_key_and_fix(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, dsn: str) -> None:
    (message,) = _load(tmp_path, dsn, caplog)
    assert "sources.store_042.dsn holds a literal password" in message
    assert "${STORE_042_PASSWORD}" in message and "export STORE_042_PASSWORD=" in message
    assert "literal" in message and "pw-9" not in message  # the value is never shown


def test_the_warehouse_dsn_is_checked_too(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    messages = _load(tmp_path, "postgresql://reader:${PW}@h/pos", caplog,
                     warehouse_dsn="postgresql://loader:wh-literal@wh/analytics")
    assert len(messages) == 1 and "warehouse.dsn" in messages[0]
    assert "${WAREHOUSE_PASSWORD}" in messages[0] and "wh-literal" not in messages[0]


@pytest.mark.parametrize("dsn", [
    "postgresql://reader:${PW}@h:5432/pos",  # the recommended form
    "postgresql://reader@h/pos",  # no password (trust, .pgpass, PGPASSWORD)
    "${PW}",  # the whole DSN from the environment
    "host=h user=reader password=${PW} dbname=pos",
])
def test_references_and_no_password_are_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              dsn: str) -> None:
    assert _load(tmp_path, dsn, caplog) == []
