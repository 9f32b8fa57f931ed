"""Fixtures of the integration tests that load a warehouse directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(params=["postgres", "duckdb"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The warehouse under test: a fresh PostgreSQL database's DSN or a DuckDB file path
    (tests/support/warehouses.py opens and reads either)."""
    if request.param == "postgres":
        yield request.getfixturevalue("pg_dsn")
    else:
        yield str(tmp_path / "wh.duckdb")
