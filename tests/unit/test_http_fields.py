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
