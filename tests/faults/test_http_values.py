"""Values an API spells that a careless reader changes on the way to the warehouse, on a
real loopback server: each test compares the warehouse, read with DuckDB's own driver, with
the text the server sent, parsed by the test itself (never by steadyflow's code).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.support.loopback_http import send_json, serve_get

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline, RunSummary

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def serve() -> Iterator[Callable[[bytes], str]]:
    stops: list[Callable[[], None]] = []

    def start(body: bytes) -> str:
        url, stop = serve_get(lambda handler: send_json(handler, body))
        stops.append(stop)
        return url

    yield start
    for stop in stops:
        stop()


def run(tmp: Path, url: str, columns: dict[str, Any], key: str = "id") -> RunSummary:
    config = parse_config({
        "name": "values", "base_dir": str(tmp), "state_dir": str(tmp / "state"),
        "landing": {"path": str(tmp / "landing")},
        "warehouse": {"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": "w"},
        "contracts": {"t": {"primary_key": [key], "cursor": "updated_at", "columns": {
            **({"id": {"type": "int64", "nullable": False}} if key == "id" else {}),
            "updated_at": {"type": "timestamp", "nullable": False}, **columns}}},
        "sources": [{"name": "api", "kind": "http", "url": url,
                     "resilience": {"retries": 0},
                     "tables": [{"name": "t", "contract": "t", "endpoint": "/items",
                                 "cursor_order": "ascending"}]}]})
    with Pipeline(config) as pipeline:
        return pipeline.run_once(raise_on_error=False)


def column(tmp: Path, name: str) -> dict[int, Any]:
    con = duckdb.connect(str(tmp / "wh.duckdb"), read_only=True)
    try:
        return dict(con.execute(f"SELECT id, {name} FROM w.t").fetchall())
    finally:
        con.close()


def test_a_json_number_with_more_digits_than_a_double_lands_exactly_in_a_decimal(
        tmp_path: Path, serve: Callable[[bytes], str]) -> None:
    """JSON numbers were read as Python floats before any column saw them: an amount of
    12345678901234567.89 in a decimal(20,2) column landed as 12345678901234568.00, the
    run ok (money changed on the way). A decimal column now gets the number the API
    wrote, digit for digit (and a string column, in a contract with a decimal one)."""
    amounts = ["12345678901234567.89", "0.10", "99999999999999999.99", "-1.5e3",
               "123456789012345678"]
    records = ",".join(
        f'{{"id": {i}, "updated_at": "2026-01-01T00:00:0{i}Z", "amount": {a}, "text": {a}}}'
        for i, a in enumerate(amounts))
    url = serve(f'{{"data": [{records}], "next": null}}'.encode())
    summary = run(tmp_path, url, {"amount": {"type": "decimal(20,2)"},
                                  "text": {"type": "string"}})
    assert summary.ok, summary.errors
    assert column(tmp_path, "amount") == {i: Decimal(a) for i, a in enumerate(amounts)}
    assert {i: Decimal(t) for i, t in column(tmp_path, "text").items()} == \
        {i: Decimal(a) for i, a in enumerate(amounts)}


@pytest.mark.parametrize("kind", ["float64", "int64", "decimal(10,2)"])
def test_a_json_boolean_in_a_number_column_is_quarantined_not_a_number(
        tmp_path: Path, serve: Callable[[bytes], str], kind: str) -> None:
    """Type drift: a field that is a number in most records and `false` in one. Arrow reads
    a boolean as a number without a word: `false` in a float64 column landed as 0.0, the
    run ok (the API never said 0). It is now quarantined with its reason; the other
    records load as sent."""
    url = serve(b'{"data": [{"id": 1, "updated_at": "2026-01-01T00:00:01Z", "v": 2.5},'
                b' {"id": 2, "updated_at": "2026-01-01T00:00:02Z", "v": false},'
                b' {"id": 3, "updated_at": "2026-01-01T00:00:03Z", "v": 1}], "next": null}')
    summary = run(tmp_path, url, {"v": {"type": kind}})
    # int64: record 1's 2.5 is no integer either
    assert summary.quarantined_rows == (2 if kind == "int64" else 1), summary
    expected = {1: 2.5, 3: 1} if kind != "int64" else {3: 1}
    assert {i: float(v) for i, v in column(tmp_path, "v").items()} == expected


def test_a_fraction_in_an_integer_column_is_quarantined_not_truncated(
        tmp_path: Path, serve: Callable[[bytes], str]) -> None:
    """Type drift from int to float in one field: Arrow converts 2.5 to an int64 2 without
    a word, so the warehouse held 2, the run ok. A fraction is now quarantined with its
    reason; a whole number spelled as a float (4.0), or as text ("3"), is that integer."""
    url = serve(b'{"data": [{"id": 1, "updated_at": "2026-01-01T00:00:01Z", "n": 1},'
                b' {"id": 2, "updated_at": "2026-01-01T00:00:02Z", "n": 2.5},'
                b' {"id": 3, "updated_at": "2026-01-01T00:00:03Z", "n": "3"},'
                b' {"id": 4, "updated_at": "2026-01-01T00:00:04Z", "n": 4.0},'
                b' {"id": 5, "updated_at": "2026-01-01T00:00:05Z", "n": null}], "next": null}')
    summary = run(tmp_path, url, {"n": {"type": "int64"}})
    assert summary.quarantined_rows == 1, summary
    assert column(tmp_path, "n") == {1: 1, 3: 3, 4: 4, 5: None}


def test_a_key_that_only_looks_like_digits_costs_its_record_not_the_table(
        tmp_path: Path, serve: Callable[[bytes], str]) -> None:
    """An id of "--1" or "²" passed the integer check (str.isdigit after stripping every
    '-') and int() refused it: ValueError, the table failed on every run naming no record,
    nothing of the page loaded. Such a record is now rejected (quarantined) alone."""
    url = serve('{"data": [{"id": 1, "updated_at": "2026-01-01T00:00:01Z"},'
                ' {"id": "--1", "updated_at": "2026-01-01T00:00:02Z"},'
                ' {"id": "²", "updated_at": "2026-01-01T00:00:03Z"},'
                ' {"id": "4", "updated_at": "2026-01-01T00:00:04Z"}], "next": null}'
                .encode())
    summary = run(tmp_path, url, {})
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 2, summary
    assert sorted(column(tmp_path, "id")) == [1, 4]


def test_json_numbers_in_string_and_integer_columns_keep_their_digits(
        tmp_path: Path, serve: Callable[[bytes], str]) -> None:
    """With no decimal column in the contract, JSON numbers were read as doubles: a
    string column's 12345678901234567.89 landed as '1.2345678901234568e+16', its 1e400
    as 'inf' and its 1e-400 as '0.0', an integer column's 9007199254740993.0 as
    9007199254740992, each run ok. A string or integer column holding a fraction now
    gets the digits the API wrote (the page is read again, exactly)."""
    sent = ["12345678901234567.89", "1e400", "1e-400", "9007199254740993.0",
            "1.0000000000000001e16", "0.1"]
    records = ",".join(
        f'{{"id": {i}, "updated_at": "2026-01-01T00:00:0{i}Z", "text": {a}, "n": {n}}}'
        for i, (a, n) in enumerate(zip(sent, [*sent[3:5], "7", "8", "9", "10"],
                                       strict=True)))
    url = serve(f'{{"data": [{records}], "next": null}}'.encode())
    summary = run(tmp_path, url, {"text": {"type": "string"}, "n": {"type": "int64"}})
    assert summary.ok, summary.errors
    expected = json.loads(f"[{records}]", parse_float=Decimal)  # the test's own reading
    assert {i: Decimal(t) for i, t in column(tmp_path, "text").items()} == \
        {r["id"]: r["text"] for r in expected}
    assert column(tmp_path, "n") == {r["id"]: int(r["n"]) for r in expected}


def test_a_json_number_past_a_doubles_range_is_quarantined_not_infinity(
        tmp_path: Path, serve: Callable[[bytes], str]) -> None:
    """JSON has no infinity: 1e400 is a finite number no float64 holds. It landed as inf
    (the run ok); it is now quarantined with its reason. Python's own Infinity constant
    (an extension some APIs write) is still an infinity."""
    url = serve(b'{"data": [{"id": 1, "updated_at": "2026-01-01T00:00:01Z", "v": 1e400},'
                b' {"id": 2, "updated_at": "2026-01-01T00:00:02Z", "v": -1e400},'
                b' {"id": 3, "updated_at": "2026-01-01T00:00:03Z", "v": Infinity},'
                b' {"id": 4, "updated_at": "2026-01-01T00:00:04Z", "v": 2.5}], "next": null}')
    summary = run(tmp_path, url, {"v": {"type": "float64"}})
    assert summary.ok, summary.errors
    assert summary.quarantined_rows == 2, summary
    assert column(tmp_path, "v") == {3: float("inf"), 4: 2.5}


def test_two_string_keys_a_double_cannot_tell_apart_stay_two_rows(
        tmp_path: Path, serve: Callable[[bytes], str]) -> None:
    """A string key the API writes as a JSON number: 12345678901234567.89 and ...88 were
    both read as the double 1.2345678901234568e+16, one key, and one record was lost
    (loaded: '1.2345678901234568e+16' only, run ok). Each is now its own row, spelled as
    the API wrote it."""
    codes = ["12345678901234567.89", "12345678901234567.88"]
    records = ",".join(f'{{"code": {c}, "updated_at": "2026-01-01T00:00:0{i}Z"}}'
                       for i, c in enumerate(codes))
    url = serve(f'{{"data": [{records}], "next": null}}'.encode())
    summary = run(tmp_path, url, {"code": {"type": "string", "nullable": False}}, key="code")
    assert summary.ok, summary.errors
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        assert sorted(r[0] for r in con.execute("SELECT code FROM w.t").fetchall()) == \
            sorted(codes)
    finally:
        con.close()
