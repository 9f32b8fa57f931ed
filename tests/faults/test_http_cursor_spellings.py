"""Cursors an API spells in ways that compare differently from the numbers they are, on a
real loopback server: the warehouse, read with DuckDB's own driver, must equal the records
the server holds after every run, or the run must fail naming the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from tests.support.paged_api import OffsetApi, Page, Query, serving

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(60)]


class Versions(OffsetApi):
    """Records with a numeric version `v` sent as a JSON string ("9", "10"), answered in
    one page from `updated_since` (compared as numbers, as the API's database does;
    strictly after it if `exclusive`)."""

    def page(self, query: Query) -> Page:
        self.requests += 1
        since = query.get("updated_since", [None])[0]
        rows = sorted((r for r in self.records.values()
                       if since is None or Decimal(r["v"]) > Decimal(since)
                       or (Decimal(r["v"]) == Decimal(since) and not self.exclusive)),
                      key=lambda r: (Decimal(r["v"]), r["id"]))
        return {"data": rows, "next": None}


@pytest.fixture
def serve() -> Iterator[Callable[[OffsetApi], str]]:
    yield from serving()


def run(tmp: Path, url: str) -> RunSummary:
    config = parse_config({
        "name": "spellings", "base_dir": str(tmp), "state_dir": str(tmp / "state"),
        "landing": {"path": str(tmp / "landing")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "w"},
        "contracts": {"t": {"primary_key": ["id"], "cursor": "v", "columns": {
            "id": {"type": "int64", "nullable": False},
            "v": {"type": "decimal(12,2)", "nullable": False}}}},
        "sources": [{"name": "api", "kind": "http", "url": url, "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "t", "endpoint": "/items",
                                 "cursor_order": "ascending"}]}]})
    with Pipeline(config) as pipeline:
        return pipeline.run_once(raise_on_error=False)


def test_a_decimal_cursor_sent_as_strings_compares_as_numbers(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Versions 8, 9, 10 as the strings "8", "9", "10": the walk's high was the greatest
    TEXT, "9", so the checkpoint stayed at 9 and the records written next, "11" and "12"
    (below "9" as text), were dropped by every run, each one ok. They compare as the
    decimals they spell now."""
    api = Versions(0)
    api.records = {i: {"id": i, "v": str(i)} for i in (8, 9, 10)}
    url = serve(api)
    for version in ("11", "12.5", "100"):
        summary = run(tmp_path, url)
        assert summary.ok, summary.errors
        con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
        try:
            got = dict(con.execute("SELECT id, v FROM w.t").fetchall())
        finally:
            con.close()
        assert got == {i: Decimal(r["v"]) for i, r in api.records.items()}
        new = max(api.records) + 1
        api.records[new] = {"id": new, "v": version}


def test_a_record_tying_a_decimal_checkpoint_arrives_from_an_api_whose_since_is_exclusive(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """`updated_after` semantics and a decimal cursor: a record written after the run with
    the checkpoint's very version (another id) was never answered, every run ok (the
    start is stepped back for times, dates and integers only). A decimal start is now
    stepped back by one; what that adds before the start is dropped."""
    api = Versions(0)
    api.exclusive = True
    api.records = {i: {"id": i, "v": f"{i}.25"} for i in (1, 2, 3)}
    url = serve(api)
    assert run(tmp_path, url).ok
    api.records[4] = {"id": 4, "v": "3.25"}  # ties the checkpoint's version
    summary = run(tmp_path, url)
    assert summary.ok, summary.errors
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        got = dict(con.execute("SELECT id, v FROM w.t").fetchall())
    finally:
        con.close()
    assert got == {i: Decimal(r["v"]) for i, r in api.records.items()}
