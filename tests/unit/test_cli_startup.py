"""cli/startup.py: the console script runs its start-up without the garbage collector, and
collects again once the pipeline is built (a `run --follow` must not run without it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_pipeline

# the real console entry in a child (a fresh interpreter: nothing imported yet), with
# `_open` wrapped to report what the collector did up to the moment the pipeline exists
CHILD = """
import gc, json, sys
from steadyflow.cli import main

runs = []
gc.callbacks.append(lambda phase, info: phase == "start" and runs.append(info["generation"]))
opened = main._open

def reporting(*args, **kwargs):
    pipeline = opened(*args, **kwargs)
    print(json.dumps({"collections": list(runs), "enabled": gc.isenabled(),
                      "frozen": gc.get_freeze_count(), "modules": len(sys.modules)}),
          file=sys.stderr, flush=True)
    return pipeline

main._open = reporting
del runs[:]  # from here on: entry(), the command's imports, the pipeline built
sys.argv = ["steadyflow", "status", "-c", sys.argv[1], "--json"]
main.entry()
"""


def test_the_console_script_starts_up_without_collecting_and_collects_after(
        tmp_path: Path) -> None:
    """Importing the run path and building the pipeline is hundreds of imports; on the code
    before, the collector ran ~140 times through them (~65 ms of CPU of every command).
    After `_open` it is on again, and what start-up allocated is frozen (not walked by
    later collections)."""
    config = write_pipeline(tmp_path, [{
        "name": "store_001", "kind": "sqlite", "path": str(tmp_path / "store.db"),
        "tables": [{"name": "sales", "contract": "sales"}]}])
    proc = subprocess.run([sys.executable, "-c", CHILD, str(config)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(next(line for line in proc.stderr.splitlines()
                             if line.startswith('{"collections"')))
    assert report["modules"] > 300  # the run path really was imported in this window
    assert report["collections"] == []
    assert report["enabled"] is True
    assert report["frozen"] > 10_000


# the console entry again, counting pydantic's plugin scans (entry_points of its group) and
# reporting the environment's switch once the pipeline is built
PLUGINS_CHILD = """
import importlib.metadata, json, os, sys
scans = []
entry_points = importlib.metadata.entry_points
def counted(*args, **kwargs):
    scans.append(kwargs.get("group"))
    return entry_points(*args, **kwargs)
importlib.metadata.entry_points = counted
from steadyflow.cli import main
opened = main._open

def reporting(*args, **kwargs):
    pipeline = opened(*args, **kwargs)
    print(json.dumps({"scans": scans, "env": os.environ.get("PYDANTIC_DISABLE_PLUGINS")}),
          file=sys.stderr, flush=True)
    return pipeline

main._open = reporting
sys.argv = ["steadyflow", "status", "-c", sys.argv[1], "--json"]
main.entry()
"""


def test_the_console_script_builds_the_config_without_pydantics_plugin_scan(
        tmp_path: Path) -> None:
    """pydantic scans every installed distribution's entry points for its plugins when it
    builds the first model's validator (3-15 ms of start-up CPU); the console script builds
    the config's models with the plugins off, and leaves the environment as it was: unset
    stays unset (no process it starts, no later model, sees the switch), and a value the
    user set is theirs (kept, and pydantic reads it as it would)."""
    config = write_pipeline(tmp_path, [{
        "name": "store_001", "kind": "sqlite", "path": str(tmp_path / "store.db"),
        "tables": [{"name": "sales", "contract": "sales"}]}])
    seen = {}
    for user in (None, "someplugin"):
        env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
        if user:
            env["PYDANTIC_DISABLE_PLUGINS"] = user
        proc = subprocess.run([sys.executable, "-c", PLUGINS_CHILD, str(config)], env=env,
                              capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[2])
        assert proc.returncode == 0, proc.stderr
        seen[user] = json.loads(next(line for line in proc.stderr.splitlines()
                                     if line.startswith('{"scans"')))
    assert seen[None] == {"scans": [], "env": None}
    assert seen["someplugin"] == {"scans": ["pydantic"], "env": "someplugin"}
