"""A follow's first load (`run --follow`, a worker: run_once, then the follow) does not poll
an empty buffer finely.

run_once's loader looks at the buffer every 20 ms while extraction runs, so a `run` ends
as soon as its last batch is loaded. When a follow comes after, nobody waits for that end,
and the fine look only costs: a JetStream get lives at least MIN_FETCH, so an idle loader
sent ten pull requests a second (bench/NOTES.md, session 14, h-scale: 19-20 empty pulls
per worker in a 4-worker scale run, 4-7 after). Measured here by the gets an idle loader
makes while the first page's landing is held up 2 s (a failpoint sleep), SQLite buffer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.items import make_source, write_config

from steadyflow.ports import Buffer
from steadyflow.run.pipeline import Pipeline

pytestmark = pytest.mark.integration

PAUSE = 2.0


class CountedGets:
    """The pipeline's own buffer, its gets counted until the first one returns a batch."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.empty = 0
        self.got = threading.Event()

    def get(self, wait: float = 0.0) -> Any:
        delivery = self.buffer.get(wait)
        if delivery is None and not self.got.is_set():
            self.empty += 1
        elif delivery is not None:
            self.got.set()
        return delivery

    def __getattr__(self, name: str) -> Any:
        return getattr(self.buffer, name)


def test_a_follows_first_load_waits_for_batches_without_polling_finely(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_source(tmp_path / "shop.db", 100)
    cfg = write_config(tmp_path, {"path": "landing"})
    monkeypatch.setenv("STEADYFLOW_FAILPOINT", f"extract.before_land:1:sleep{PAUSE:g}")
    with Pipeline.from_yaml(cfg) as pipeline:
        counted = CountedGets(pipeline.buffer)
        pipeline.buffer = counted  # type: ignore[assignment]
        runner = threading.Thread(target=pipeline.run, kwargs={"follow": True})
        started = time.monotonic()
        runner.start()
        try:
            assert counted.got.wait(60), "the first batch never reached the loader"
            waited = time.monotonic() - started
        finally:
            pipeline.stop()
            runner.join(60)
    assert waited >= PAUSE
    # idle ~2 s: a follower's 0.25 s waits make ~8 gets; run_once's 20 ms ones made ~100
    assert counted.empty <= 2 * waited / 0.25, f"{counted.empty} empty gets in {waited:.1f}s"
