"""What the wire carries, on a real loopback API (tests/support/paged_api): gzip bodies
garbled on the way. Each test compares the warehouse, read with DuckDB's own driver, with
the records the server holds.
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
    warehouse,
)

from steadyflow.config import expand_env
from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def serve() -> Iterator[Callable[[OffsetApi], str]]:
    yield from serving()


def _checkpoint(tmp_path: Path, url: str) -> str | None:
    with Pipeline(config(tmp_path, url)) as pipeline:
        mark = pipeline.state.checkpoint("api", "t")
    return None if mark is None else f"{mark.cursor:%Y-%m-%dT%H:%M:%S.%fZ}/{mark.key}"


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
