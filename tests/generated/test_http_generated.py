"""Correct on ANY data, HTTP sources: hypothesis draws the records' shape and values, the page
size and the ORDER in which a real loopback API serves them (ascending by cursor,
descending, by id, shuffled), whether it honours `updated_since`, the lookback, and the
pagination: next tokens carrying their own filter, or offsets steadyflow counts itself
with an overlap of 1-3 records, in which case records are also deleted DURING a run's walk
(before a drawn request is answered); and with either pagination, records are updated
during a walk (to a cursor above every other). Neither for the shuffled order, which any
write reshuffles (no walk by position is possible there). The pipeline runs twice with changes in
between; the warehouse, read through its own driver, must hold exactly the API's records
(bad ones in quarantine; a record deleted at the API may stay loaded).
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support import gen, oracle
from tests.support.gen import Col, Table
from tests.support.hypo import exhaustive_examples, generated, tier_timeout
from tests.support.loopback_http import send_json, serve_get

from steadyflow.config import parse_config
from steadyflow.run.pipeline import Pipeline

ORDERS = ("ascending", "descending", "by_id", "shuffled")
CI_EXAMPLES = int(os.environ.get("STEADYFLOW_GENERATED_EXAMPLES", "12"))
HTTP_EXHAUSTIVE_EXAMPLES = exhaustive_examples(300)
_counter = itertools.count()


class Api:
    """Serves `records` (JSON-ready dicts) page by page in the drawn order."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.order = "ascending"
        self.honour_since = True
        self.cursor_kind = "ts"
        self.seed = 0
        self.requests = 0
        self.deletes: dict[int, list[int]] = {}  # request number -> positions deleted
        self.deleted: list[Any] = []
        # request number -> (position, new cursor as served, as the test keeps it)
        self.updates: dict[int, list[tuple[int, Any, Any]]] = {}
        self.updated: list[tuple[Any, Any]] = []  # (key, new cursor) as applied

    def ordered(self, since: str | None) -> list[dict[str, Any]]:
        rows = list(self.records)
        if since is not None and self.honour_since:
            floor = self._cursor(since)
            rows = [r for r in rows if self._cursor(r["cur"]) >= floor]

        def by_cursor(r: dict[str, Any]) -> tuple[Any, ...]:
            return (self._cursor(r["cur"]), json.dumps(r["k0"]))
        if self.order == "ascending":
            rows.sort(key=by_cursor)
        elif self.order == "descending":
            rows.sort(key=by_cursor, reverse=True)
        elif self.order == "by_id":
            rows.sort(key=lambda r: json.dumps(r["k0"]))
        else:
            rows.sort(key=lambda r: json.dumps(r["k0"]))
            random.Random(self.seed).shuffle(rows)
        return rows

    def _cursor(self, value: Any) -> Any:
        if self.cursor_kind == "ts":
            return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return int(value)

    def page(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """A token carries the chain's filter and position (as real APIs' cursors do); an
        offset (`pagination: offset`) comes with the filter on every request."""
        self.requests += 1
        if self.requests in self.deletes:  # positions in the served order, from the back
            rows = self.ordered(None)
            for at in sorted(self.deletes[self.requests], reverse=True):
                if at < len(rows):
                    key = rows.pop(at)["k0"]
                    self.records = [r for r in self.records if r["k0"] != key]
                    self.deleted.append(key)
        for at, served, kept in self.updates.get(self.requests, []):
            rows = self.ordered(None)
            if at < len(rows):
                key = rows[at]["k0"]
                self.records = [{**r, "cur": served} if r["k0"] == key else r
                                for r in self.records]
                self.updated.append((key, kept))
        limit = int(query.get("limit", ["100"])[0])
        token = query.get("after", [None])[0]
        if "offset" in query:
            offset, since = int(query["offset"][0]), query.get("updated_since", [None])[0]
        elif token is None:
            offset, since = 0, query.get("updated_since", [None])[0]
        else:
            head, _, rest = token.partition("|")
            offset, since = int(head), rest or None
        rows = self.ordered(since)
        chunk = rows[offset:offset + limit]
        more = offset + limit < len(rows)
        return {"data": chunk, "next": f"{offset + limit}|{since or ''}" if more else None}


@pytest.fixture
def api() -> Iterator[tuple[Api, str]]:
    state = Api()
    url, stop = serve_get(lambda handler: send_json(handler, json.dumps(
        state.page(parse_qs(urlsplit(handler.path).query))).encode()))
    yield state, url
    stop()


# --- records as an API spells them -----------------------------------------------------------
HTTP_VALUE_KINDS = ("int64", "dec", "text", "ts", "date", "float", "bool", "json")


def json_value(col: Col, value: Any) -> Any:
    if value is None:
        return None
    if col.kind == "ts":
        return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    if col.kind == "date":
        return value.isoformat()
    if col.kind == "dec":
        return str(value)
    if col.kind == "json":
        return value  # a nested document: the contract column is a string of its JSON
    return value


@st.composite
def http_table(draw: st.DrawFn, name: str) -> Table:
    key = Col("k0", draw(st.sampled_from(["int64", "text"])), nullable=False)
    cursor = Col("cur", draw(st.sampled_from(["ts", "int64"])), nullable=False)
    cols = [key, cursor]
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(HTTP_VALUE_KINDS))
        p, s = (draw(st.integers(1, 18)), 0) if kind == "dec" else (0, 0)
        if kind == "dec":
            s = draw(st.integers(0, min(p, 6)))
        cols.append(Col(f"v{i}", kind, p=p, s=s))
    return Table(name, cols, ["k0"], "cur")


def http_values(col: Col) -> st.SearchStrategy[Any]:
    if col.kind == "float":
        return st.floats(allow_nan=False, allow_infinity=False)
    if col.kind == "text":
        return st.text(gen.text_alphabet("postgres", False), max_size=20)
    if col.kind == "ts":
        return st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)
                            ).map(lambda d: d.replace(tzinfo=UTC))
    return gen.value_strategy(col, "postgres")


def check_http_case(data: st.DataObject, tmp_root: Path, api: Api, url: str, wh_kind: str,
                    wh_where: str) -> None:
    n = next(_counter)
    tmp = tmp_root / f"http{n}"
    tmp.mkdir()
    table = data.draw(http_table(f"h{n}"), label="table")
    api.order = data.draw(st.sampled_from(ORDERS), label="order")
    api.honour_since = data.draw(st.booleans(), label="honours since")
    api.cursor_kind = table.col("cur").kind
    api.seed = n
    page_size = data.draw(st.sampled_from([1, 2, 3, 7, 100]), label="page_size")
    lookback = data.draw(st.sampled_from([0.0, 60.0]), label="lookback")
    paging: dict[str, Any] = {}
    if data.draw(st.booleans(), label="offset pagination"):
        paging = {"pagination": "offset", "overlap": data.draw(st.integers(1, 3),
                                                                label="overlap")}
    if api.order in ("ascending", "descending"):  # told the order, or left to settle
        paging["cursor_order"] = data.draw(st.sampled_from(["unknown", api.order]),
                                           label="cursor_order")
    unit = data.draw(st.sampled_from(["us", "ms", "s"]), label="unit")
    schema = f"hw{n}"
    contract = {"primary_key": ["k0"], "cursor": "cur", "columns": {
        c.name: {"type": c.contract_type, "nullable": c.nullable} for c in table.cols}}
    warehouse = ({"kind": "duckdb", "path": str(tmp / "wh.duckdb"), "schema": schema}
                 if wh_kind == "duckdb" else {"kind": "postgres", "dsn": wh_where,
                                              "schema": schema})
    raw = {"name": "generated-http", "base_dir": str(tmp), "state_dir": str(tmp / "state"),
           "landing": {"path": str(tmp / "landing")}, "warehouse": warehouse,
           "contracts": {table.name: contract},
           "sources": [{"name": "api", "kind": "http", "url": url,
                        "resilience": {"retries": 0},
                        "tables": [{"name": table.name, "contract": table.name,
                                    "endpoint": "/items", "page_size": page_size,
                                    "min_page_size": 1, "lookback": lookback,
                                    **paging}]}]}
    latest: dict[Any, dict[str, Any]] = {}
    taken: set[Any] = set()
    gone: list[dict[str, Any]] = []  # the last version of each record deleted mid-walk

    def walk(label: str, step: int) -> Any:
        """Run the pipeline; on an offset walk, delete records before drawn requests, at
        positions among the first pages served (mostly records read already: those shift
        the rest); with either pagination, update one (its cursor `step` on, above every
        other), then run once more without writes (an updated record a newest-first walk
        had passed comes with the next run). Two events at most: each may cost a walk, a
        third shift fails the poll."""
        api.requests, api.deletes, api.deleted, api.updates, api.updated = 0, {}, [], {}, []
        if api.order != "shuffled" and len(latest) > 1:
            for request in data.draw(st.lists(st.integers(2, 5), max_size=2, unique=True),
                                     label=f"{label}: writes before"):
                if paging and data.draw(st.booleans(), label=f"{label}: a delete"):
                    api.deletes[request] = data.draw(st.lists(
                        st.integers(0, 2 * page_size), min_size=1, max_size=2, unique=True),
                        label=f"{label}: positions deleted")
                else:
                    kept = gen.cursor_value(table.col("cur"), step + request, unit)
                    api.updates[request] = [(at, json_value(table.col("cur"), kept), kept)
                                            for at in data.draw(st.lists(
                                                st.integers(0, 4 * page_size), min_size=1,
                                                max_size=2, unique=True),
                                                label=f"{label}: positions updated")]
        summary = run(raw)
        for key, kept in api.updated:
            if key in latest:
                latest[key]["cur"] = kept
        gone.extend(latest.pop(key) for key in api.deleted if key in latest)
        if api.updated:  # a record updated behind a newest-first walk: the next run's
            api.deletes, api.updates = {}, {}
            assert summary.ok, (label, summary.errors)
            summary = run(raw)  # a quiet one
        return summary

    def add(count: int, first_step: int) -> None:
        for _ in range(count):
            key = data.draw(gen.value_strategy(table.col("k0"), "mysql", key=True)
                            if table.col("k0").kind == "text"
                            else st.integers(-(2**63), 2**63 - 1))
            if key in taken:
                continue
            taken.add(key)
            step = first_step + data.draw(st.integers(0, 3))
            row = {"k0": key, "cur": gen.cursor_value(table.col("cur"), step, unit)}
            for c in table.cols[2:]:
                row[c.name] = None if data.draw(st.booleans()) and data.draw(
                    st.booleans()) else data.draw(http_values(c))
            latest[key] = row

    def publish() -> None:
        api.records = [{c.name: json_value(c, r[c.name]) for c in table.cols}
                       for r in latest.values()]

    def check(label: str, summary: Any) -> None:
        """After each run: every record the API serves, in its last version (a record
        deleted at the API mid-walk may stay loaded: incremental runs see no deletes)."""
        assert summary.ok, (label, summary.errors)
        expected = oracle._rows(table, [tuple(canon_json(c, r[c.name]) for c in table.cols)
                                        for r in latest.values()])
        where = wh_where if wh_kind == "postgres" else str(tmp / "wh.duckdb")
        actual = oracle.read_warehouse(wh_kind, where, schema, table)
        deleted = oracle._rows(table, [tuple(canon_json(c, r[c.name]) for c in table.cols)
                                       for r in gone])
        actual = {k: v for k, v in actual.items() if k in expected or k not in deleted}
        problem = oracle.diff(expected, actual)
        shape = ", ".join(f"{c.name} {c.kind}" for c in table.cols)
        assert not problem, (f"{label}: {table.name} ({shape}; order {api.order}, since "
                             f"honoured {api.honour_since}, page_size {page_size}, lookback "
                             f"{lookback}, {paging or 'token pagination'}, deleted mid-walk "
                             f"{[r['k0'] for r in gone]}):\n{problem}")

    try:
        add(data.draw(st.integers(0, 12)), 0)
        publish()
        check("run 1", walk("run 1", 50))  # below what is written between the runs
        for key in data.draw(st.lists(st.sampled_from(sorted(latest, key=repr)), max_size=3,
                                      unique=True) if latest else st.just([])):
            row = latest[key]
            row["cur"] = gen.cursor_value(table.col("cur"), 60 + data.draw(st.integers(0, 3)),
                                          unit)
            for c in table.cols[2:]:
                row[c.name] = data.draw(http_values(c))
        add(data.draw(st.integers(0, 4)), 70)
        if lookback:
            add(data.draw(st.integers(0, 2)), 0)  # late: at or behind run 1's checkpoint
        publish()
        check("run 2", walk("run 2", 90))
    finally:
        if wh_kind == "postgres":
            with psycopg.connect(wh_where, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())


def canon_json(col: Col, value: Any) -> Any:
    """The Python value the API meant, as the oracle canonicalises source values."""
    if value is None:
        return None
    if col.kind == "dec":
        return Decimal(value)
    if col.kind == "ts":
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return value


def run(raw: dict[str, Any]) -> Any:
    with Pipeline(parse_config(raw)) as pipeline:
        return pipeline.run_once()


def _run(wh_kind: str, examples: int, api: tuple[Api, str], request: pytest.FixtureRequest,
         tmp_path: Path) -> None:
    state, url = api
    wh_where = request.getfixturevalue("pg_dsn") if wh_kind == "postgres" else ""

    @generated(examples)
    @given(st.data())
    def case(data: st.DataObject) -> None:
        check_http_case(data, tmp_path, state, url, wh_kind, wh_where)

    case()


@pytest.mark.integration
@pytest.mark.parametrize("wh_kind", ("duckdb", "postgres"))
def test_generated_api_records_arrive_exactly(wh_kind: str, api: tuple[Api, str],
                                              request: pytest.FixtureRequest,
                                              tmp_path: Path) -> None:
    _run(wh_kind, CI_EXAMPLES, api, request, tmp_path)


@pytest.mark.exhaustive
@tier_timeout(HTTP_EXHAUSTIVE_EXAMPLES)
@pytest.mark.parametrize("wh_kind", ("duckdb", "postgres"))
def test_generated_api_records_exhaustive(wh_kind: str, api: tuple[Api, str],
                                          request: pytest.FixtureRequest,
                                          tmp_path: Path) -> None:
    _run(wh_kind, HTTP_EXHAUSTIVE_EXAMPLES, api, request, tmp_path)

