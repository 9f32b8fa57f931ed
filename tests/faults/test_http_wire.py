"""What the wire carries, on a real loopback API (tests/support/paged_api): times spelled to
the nanosecond (Go's RFC3339Nano), and gzip bodies garbled on the way. Each test compares
the warehouse, read with DuckDB's own driver, with the records the server holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.paged_api import (
    OffsetApi,
    config,
    run,
    serving,
    stamp,
    warehouse,
)

from steadyflow.config import expand_env
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def serve() -> Iterator[Callable[[OffsetApi], str]]:
    yield from serving()


def _at(second: int, fraction: str) -> str:
    """A UTC time of T0 + `second` with `fraction` as Go writes it ("" for none)."""
    whole = stamp(second).split(".")[0]
    return f"{whole}.{fraction}Z" if fraction else f"{whole}Z"


def _cut(text: str) -> str:
    """`text` as a timestamp column holds it: the fraction cut to six digits."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return f"{whole}.{fraction[:6].ljust(6, '0')}Z"


def _checkpoint(tmp_path: Path, url: str) -> str | None:
    with Pipeline(config(tmp_path, url)) as pipeline:
        mark = pipeline.state.checkpoint("api", "t")
    return None if mark is None else f"{mark.cursor:%Y-%m-%dT%H:%M:%S.%fZ}/{mark.key}"


def test_nanosecond_times_land_cut_to_the_microsecond_and_skip_no_later_tie(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """A Go API stamps `updated_at` with up to nine fraction digits, trailing zeros
    dropped. A text cast refuses more than six, so every such record was quarantined:
    the whole API. Each lands cut (never rounded: .999999999 stays in its second) to the
    microsecond, and the cursor is cut the same way, so a record written after the run
    within the checkpoint's microsecond with a lower key (the API's `since` exclusive,
    compared in nanoseconds) arrives with the next run, and a run with nothing new leaves
    the checkpoint where it was."""
    api = OffsetApi(0)
    api.exclusive = True
    for key, spelled in enumerate([_at(1, "123456789"), _at(2, "1234567"), _at(3, "5"),
                                   _at(4, ""), _at(5, "999999999"), _at(5, "9999995")],
                                  start=1):
        api.records[key] = {"id": key, "updated_at": spelled, "qty": key}
    url = serve(api)

    def expected() -> dict[int, tuple[str, int]]:
        return {i: (_cut(r["updated_at"]), r["qty"]) for i, r in api.records.items()}

    first = run(tmp_path, url)
    assert first.ok and first.quarantined_rows == 0, (first.errors, first)
    assert warehouse(tmp_path) == expected()
    assert _checkpoint(tmp_path, url) == "2026-01-01T00:00:05.999999Z/(6,)"
    api.records[0] = {"id": 0, "updated_at": _at(5, "9999999"), "qty": 100}
    second = run(tmp_path, url)
    assert second.ok, second.errors
    assert warehouse(tmp_path) == expected()
    assert _checkpoint(tmp_path, url) == "2026-01-01T00:00:05.999999Z/(6,)"
    third = run(tmp_path, url)
    assert third.ok, third.errors
    assert warehouse(tmp_path) == expected()
    assert _checkpoint(tmp_path, url) == "2026-01-01T00:00:05.999999Z/(6,)"


def test_a_garbled_gzip_body_is_retried_and_the_walk_completes(
        tmp_path: Path, serve: Callable[[OffsetApi], str]) -> None:
    """Every answer gzip-encoded, the second one garbled on the way: httpx's DecodingError
    was no transport error, so the table failed at once, its retries unused. It is retried
    like a dropped connection: the page is asked again and every record arrives."""
    api = OffsetApi(7)
    api.gzip, api.garbled = True, {2}
    url = serve(api)
    summary = run(tmp_path, url, retries=3)
    assert summary.ok, summary.errors
    assert api.requests == 4, api.asked  # three pages, the second asked twice
    assert warehouse(tmp_path) == {i: (r["updated_at"], r["qty"])
                                   for i, r in api.records.items()}


def test_gzip_bodies_garbled_every_time_fail_naming_the_url_not_the_key(
        tmp_path: Path, serve: Callable[[OffsetApi], str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbled on every attempt: the retries (2) are spent with backoff, then the table
    fails naming the URL it asked, its query's key scrubbed, checkpoint unmoved."""
    key = "k3y-0f-the-gz1p-api"
    monkeypatch.setenv("SF_WIRE_TEST_KEY", key)
    api = OffsetApi(7)
    api.gzip, api.garbled = True, set(range(1, 100))
    url = serve(api)
    # filled in as a config file's ${VAR} is (which registers it as a secret)
    params = {"api_key": expand_env("${SF_WIRE_TEST_KEY}")}
    summary = run(tmp_path, url, retries=2, params=params)
    assert not summary.ok
    assert api.requests == 3, api.asked
    text = " ".join(str(e) for e in summary.errors)
    assert f"{url}/items?" in text and "decoded" in text and "table=t" in text, text
    assert key not in text and "api_key=***" in text, text
    assert _checkpoint(tmp_path, url) is None
