"""observe/recording.py: the recorder of a process that never shows its metrics stands in
for PipelineMetrics wherever the stages record, and a pipeline built unrecorded does not
import prometheus_client."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_pipeline

from steadyflow.observe.metrics import PipelineMetrics
from steadyflow.observe.recording import Recording, Unrecorded

# the methods of PipelineMetrics that only show what was recorded
SHOWING = {"exposition", "value", "collect"}


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")}


def test_every_recording_method_has_a_do_nothing_twin_of_the_same_signature() -> None:
    recording = {name: sig for name, sig in _public(PipelineMetrics).items()
                 if name not in SHOWING}
    assert recording, "PipelineMetrics has no public methods?"
    unrecorded = _public(Unrecorded)
    assert set(unrecorded) == set(recording)
    protocol = _public(Recording)
    assert set(protocol) == set(recording)
    for name, sig in recording.items():
        assert list(unrecorded[name].parameters) == list(sig.parameters), name
        assert list(protocol[name].parameters) == list(sig.parameters), name
        assert [p.default for p in unrecorded[name].parameters.values()] == [
            p.default for p in sig.parameters.values()], name


def test_unrecorded_calls_do_nothing() -> None:
    m = Unrecorded()
    m.declare("s", "t", page_size=10, poll_interval=1.0)
    m.rows("s", "t", "extract", 5, 10)
    with m.timed("s", "t", "load"):
        pass
    m.polled("s", "t", None)
    m.stopped()


_CHILD = """
import sys
from steadyflow.run.pipeline import Pipeline
with Pipeline.from_yaml(sys.argv[1], recorded=sys.argv[2] == "1") as p:
    print(type(p.metrics).__name__, "prometheus_client" in sys.modules)
"""


def test_a_pipeline_built_unrecorded_never_imports_prometheus(tmp_path: Path) -> None:
    config = write_pipeline(tmp_path, [{"name": "store", "kind": "sqlite",
                                        "path": str(tmp_path / "store.db"),
                                        "tables": [{"name": "sales", "contract": "sales"}]}])
    seen = {}
    for recorded in ("0", "1"):
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(config), recorded],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        seen[recorded] = proc.stdout.split()
    assert seen == {"0": ["Unrecorded", "False"], "1": ["PipelineMetrics", "True"]}
