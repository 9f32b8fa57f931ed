"""An API record field spelled like a contract column but for case ("Attrs" for the
contract's `attrs`). JSON names are case-sensitive and the column is read by its exact
name, so every record's attrs was null; the drift check folded names, so "Attrs" was not
reported either: the column's values were lost with every run ok, even with
schema_drift: stop. The page now reports the field as drift (its policy then warns or
stops, naming it)."""

from __future__ import annotations

import json

from steadyflow.config import TableConfig
from steadyflow.extract.http import RawPage, parse_page
from steadyflow.model import Column, Contract

CONTRACT = Contract(columns=(Column("id", "int64", nullable=False),
                             Column("at", "int64", nullable=False), Column("attrs", "string")),
                    primary_key=("id",), cursor="at")


def test_a_field_differing_only_in_case_is_drift() -> None:
    body = json.dumps({"data": [{"id": 1, "at": 5, "Attrs": "L"},
                                {"id": 2, "at": 6, "attrs": "M", "ID": 9}],
                       "next": None}).encode()
    table = TableConfig(name="t", contract="c", endpoint="/t")
    page = parse_page(table, CONTRACT, RawPage("GET /t", 200, "application/json", body))
    assert page.rows["attrs"].to_pylist() == [None, "M"]
    assert page.extra_fields == ["Attrs", "ID"]
