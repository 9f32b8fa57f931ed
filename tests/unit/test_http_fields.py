"""What an API record's fields become in the contract's columns (found by the generated
HTTP suite: a nested document in a string column was stored as a Python repr)."""

from __future__ import annotations

import json

from steadyflow.config import TableConfig
from steadyflow.extract.http import RawPage, parse_page
from steadyflow.model import Column, Contract

CONTRACT = Contract(columns=(Column("id", "int64", nullable=False),
                             Column("at", "int64", nullable=False),
                             Column("attrs", "string"), Column("flag", "string")),
                    primary_key=("id",), cursor="at")


def test_nested_documents_and_booleans_in_string_columns_are_json_text() -> None:
    body = json.dumps({"data": [
        {"id": 1, "at": 5, "attrs": {"size": "L", "tags": ["a", "é"]}, "flag": True},
        {"id": 2, "at": 6, "attrs": [1, None], "flag": "yes"}], "next": None}).encode()
    table = TableConfig(name="t", contract="c", endpoint="/t")
    page = parse_page(table, CONTRACT, RawPage("GET /t", 200, "application/json", body))
    attrs = page.rows["attrs"].to_pylist()
    assert [json.loads(a) for a in attrs] == [{"size": "L", "tags": ["a", "é"]}, [1, None]]
    assert page.rows["flag"].to_pylist() == ["true", "yes"]


def test_a_key_time_finer_than_the_microsecond_costs_its_record_not_a_merge() -> None:
    """A cursor or other time finer than the microsecond is cut to it (extract/http.py:
    micro_time); a KEY time cut so would make records apart by nanoseconds one row in the
    warehouse, one silently replacing the other. Such a record is rejected with its
    reason; nine digits ending in zeros are exact and land."""
    contract = Contract(columns=(Column("at", "timestamp", nullable=False),
                                 Column("seen", "timestamp", nullable=False)),
                        primary_key=("at",), cursor="seen")
    body = json.dumps({"data": [
        {"at": "2026-01-01T00:00:00.123456789Z", "seen": "2026-01-01T00:00:05.1Z"},
        {"at": "2026-01-01T00:00:00.123456000Z", "seen": "2026-01-01T00:00:05.123456789Z"},
    ], "next": None}).encode()
    table = TableConfig(name="t", contract="c", endpoint="/t")
    page = parse_page(table, contract, RawPage("GET /t", 200, "application/json", body))
    assert [r.reason for r in page.rejected] == [
        "payload: at is a key time finer than the microsecond "
        "('2026-01-01T00:00:00.123456789Z'), which a timestamp column cannot hold: records "
        "apart by less would share one key (declare the key column string)"]
    assert [f"{t:%S.%f}" for t in page.rows["at"].to_pylist()] == ["00.123456"]
    assert [f"{t:%S.%f}" for t in page.rows["seen"].to_pylist()] == ["05.123456"]
