"""A real `steadyflow run` process SIGKILLed in the middle of an API walk: the checkpoint
must not have moved past any record of the pages not yet read, and the next run must make
the warehouse (read with DuckDB's own driver) equal the server's records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from tests.support.paged_api import (
    OffsetApi,
    config,
    raw_config,
    run,
    served,
    serving,
    warehouse,
)

from steadyflow.run.pipeline import Pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def serve() -> Iterator[Callable[[OffsetApi], str]]:
    yield from serving()


def pipeline_file(tmp: Path, url: str) -> Path:
    """The same pipeline as paged_api.config (3 records a page), as a file for the CLI."""
    raw = raw_config(tmp, url, cursor_order="descending")
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("kill_at", [2, 3])
def test_sigkill_mid_walk_moves_no_checkpoint_past_unread_pages(
        tmp_path: Path, serve: Callable[[OffsetApi], str], kill_at: int) -> None:
    """Newest first, 12 records, 3 a page: the process is killed while page `kill_at` is
    being answered (pages before it landed and published). The checkpoint must still be
    where the run started (none): had it moved to page 1's newest record, records on the
    later pages would be behind it for good."""
    api = OffsetApi(12, order="desc")
    asked, release = threading.Event(), threading.Event()

    def hold(api: OffsetApi) -> None:
        if api.requests == kill_at:
            asked.set()
            release.wait(30)

    api.before = hold
    url = serve(api)
    proc = subprocess.Popen([sys.executable, "-m", "steadyflow", "run", "-c",
                             str(pipeline_file(tmp_path, url))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ))
    try:
        assert asked.wait(60), "the run never asked for the page to be killed at"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Pipeline(config(tmp_path, url)) as pipeline:
        assert pipeline.state.checkpoint("api", "t") is None
    api.before = None
    summary = run(tmp_path, url, cursor_order="descending")
    assert summary.ok, summary.errors
    assert warehouse(tmp_path) == served(api)
