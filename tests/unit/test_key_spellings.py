"""extract/key_spellings.py: which sets of SQLite key texts let one value be spelled twice.

The integration side (a table refused, a later page failing the table) is in
tests/integration/test_text_keys.py; here the rule itself, value by value."""

from __future__ import annotations

import pyarrow as pa
import pytest

from steadyflow.extract.key_spellings import Spellings, of_arrow, of_values, problem, twins


def check(ctype: str, *values: object) -> str | None:
    found = problem(of_values(values, ctype), ctype)
    return None if found is None else found[0]


@pytest.mark.parametrize(("ctype", "values"), [
    ("decimal(10,2)", ["1", "1.5", "2.25", "-3", "0"]),
    ("decimal(10,2)", ["1.00", "1.50", "-0.25"]),
    ("decimal(10,2)", [1, 1.5, 2.0]),  # numbers: SQLite compares them as numbers
    ("int64", ["1", "-20", "0"]),
    ("timestamp", ["2024-01-01T00:00:00", "2024-01-01T00:00:00.500000"]),
    ("timestamp", ["2024-01-01 00:00:00.1Z", "2024-01-01 00:00:00.25Z"]),
    ("date", ["2024-01-01", "2024-12-31"]),
    ("string", ["1", "01", "1.0"]),  # text keyed by its text: every spelling its own key
    ("decimal(10,2)", ["1.5", "abc"]),  # 'abc' is no decimal: its row is quarantined
])
def test_one_spelling_per_value_passes(ctype: str, values: list[object]) -> None:
    assert check(ctype, *values) is None


@pytest.mark.parametrize(("ctype", "values", "named"), [
    ("decimal(10,2)", ["1.0", "1.00"], "('1.0', '1.00')"),
    ("decimal(10,2)", ["1.5", "2.50"], "('1.5', '2.50')"),  # no pair yet, but '2.5' may come
    ("decimal(10,2)", ["1.5", "01.5"], "'01.5'"),
    ("decimal(10,2)", ["+1.5"], "'+1.5'"),
    ("decimal(10,2)", ["0", "-0"], "'-0'"),
    ("decimal(10,2)", ["1e2"], "'1e2'"),
    ("int64", ["1", "01"], "'01'"),
    ("timestamp", ["2024-01-01T00:00:00", "2024-01-01 00:00:01"], "separators"),
    ("timestamp", ["2024-01-01 00:00:00Z", "2024-01-01 00:00:01"], "zone suffixes"),
    ("timestamp", ["2024-01-01 00:00:00.5", "2024-01-01 00:00:00.50"], "more than one width"),
    ("timestamp", ["2024-01-01 00:00:00", "2024-01-01 00:00:00.000"], "more than one width"),
    ("float64", ["1.0"], "no text is the only spelling"),
    ("string", [1, "1"], "stored as integer and text"),
    ("int64", [1.0, "2"], "stored as integer and text"),
])
def test_two_spellings_of_a_value_are_named(ctype: str, values: list[object],
                                            named: str) -> None:
    found = check(ctype, *values)
    assert found is not None and named in found, found


def test_pages_add_to_what_the_column_held() -> None:
    """Each page is judged with the spellings seen before it, not alone."""
    seen = of_values(["1.5", "2.5"], "decimal(10,2)")
    assert problem(seen, "decimal(10,2)") is None
    page = of_arrow(pa.chunked_array([["3.50"]]), "decimal(10,2)")
    assert problem(page, "decimal(10,2)") is None
    assert problem(seen.merge(page), "decimal(10,2)") == (
        "spells values with 1 significant fraction digit in more than one width "
        "('1.5', '3.50')", ["1.5", "3.50"])
    assert seen.merge(Spellings()) is seen
    numbers = of_arrow(pa.chunked_array([[1, 2]]), "decimal(10,2)")
    assert problem(seen.merge(numbers), "decimal(10,2)") == (
        "holds values stored as integer and text", [])


@pytest.mark.parametrize(("ctype", "values", "text", "expected"), [
    ("decimal(10,2)", ["1.5", "2.50"], "2.50", ["2.5"]),
    ("decimal(10,2)", ["1.5", "2.50"], "01.5", ["1.5", "1.50"]),
    ("decimal(10,2)", [], "1e2", ["100"]),
    ("decimal(10,2)", [], "-0.0", ["0"]),
    ("int64", [], "+01", ["1"]),
    ("timestamp", ["2024-01-01 00:00:00", "2024-01-01T00:00:00.5"],
     "2024-01-01T00:00:00.500", ["2024-01-01 00:00:00.5", "2024-01-01T00:00:00.5"]),
    ("timestamp", ["2024-01-01 00:00:00Z"], "2024-01-01T00:00:00",
     ["2024-01-01 00:00:00Z"]),
    ("timestamp", ["2024-01-01 00:00:00+00:00", "2024-01-01 00:00:00+01:00"],
     "2024-01-01 01:00:00+01:00", ["2024-01-01 00:00:00+00:00"]),
    ("float64", [], "1.0", []),
    ("timestamp", ["9999-12-31 23:00:00Z", "9999-12-31 00:00:00+02:00"],
     "9999-12-31 23:30:00Z", []),  # no +02:00 spelling: past year 9999
    ("timestamp", ["0010-01-01 00:00:00", "0010-01-01T00:00:00"], "0010-01-01 00:00:00",
     ["0010-01-01T00:00:00"]),  # a year below 1000 in four digits
])
def test_twins_are_the_other_spellings_of_one_value(ctype: str, values: list[str], text: str,
                                                    expected: list[str]) -> None:
    """What an error looks up to name an actual pair the table holds."""
    assert twins(text, ctype, of_values(values, ctype).forms) == expected
