"""Timeline trace of one `steadyflow run` (session 13, h-full): bench/timeline.py starts it.

Loaded by every interpreter started with this directory on PYTHONPATH (sitecustomize); it
does nothing without SF_TIMELINE (the output file). It wraps the full-load path's steps
(the pipeline's stages, the extractor's probe, page reads and publishes, the landing's
encode and write, the loader's groups, transform and DuckDB transactions) as each module is
imported, without importing anything itself, so the start-up imports are timed as they
are. Every step writes one tab-separated line: name, thread, start and end in seconds since
SF_T0 (the parent's time.time() at spawn), and the thread CPU it took. Also: each thread's
CPU when it ends, each garbage collection over 5 ms, and the process CPU at os._exit.
Not for production: the wrappers cost a few microseconds per step.
"""

from __future__ import annotations

import gc
import importlib.abc
import os
import sys
import threading
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

PATH = os.environ.get("SF_TIMELINE")
STEPS = {
    "steadyflow.config": ["load_config"],
    "steadyflow.run.pipeline": ["Pipeline.__init__", "Pipeline.run_once", "Pipeline.sweep",
                                "Pipeline._open_warehouse", "Pipeline.extract",
                                "Pipeline.load", "Pipeline.close"],
    "steadyflow.run.extract": ["open_source", "TableExtractor.run", "TableExtractor.backfill",
                               "TableExtractor._cursor_pass", "TableExtractor._read_page",
                               "TableExtractor.publish"],
    "steadyflow.extract.sql": ["SqlSource.probe", "SqlSource.poll_end"],
    "steadyflow.land.parquet": ["LandingZone.encode", "LandingZone.store_prepared"],
    "steadyflow.run.load": ["BatchLoader.handle_all", "BatchLoader._mark", "transform"],
    "steadyflow.merge.duckdb": ["DuckdbWarehouse.__init__", "DuckdbWarehouse.ensure_table",
                                "DuckdbWarehouse._load_group_once",
                                "DuckdbWarehouse._load_parts", "DuckdbWarehouse.close"],
}


class Trace:
    def __init__(self, path: str) -> None:
        self.path = path
        self.t0 = float(os.environ.get("SF_T0") or time.time())
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.gc_started = threading.local()

    def emit(self, name: str, start: float, end: float, cpu: float,
             thread: str | None = None) -> None:
        line = "\t".join([name, thread or threading.current_thread().name,
                          f"{start - self.t0:.6f}", f"{end - self.t0:.6f}", f"{cpu:.6f}"])
        with self.lock:
            self.lines.append(line)

    def flush(self) -> None:
        with self.lock:
            lines, self.lines = self.lines, []
        with open(self.path, "a") as out:
            out.writelines(line + "\n" for line in lines)

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        original = owner.__dict__[attr]
        if not callable(original):
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.time(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.emit(name, wall, time.time(), time.thread_time() - cpu)

        setattr(owner, attr, timed)

    def patch(self, module: ModuleType, steps: Sequence[str]) -> None:
        for step in steps:
            *path, attr = step.split(".")
            owner: Any = module
            for part in path:
                owner = getattr(owner, part)
            if attr in owner.__dict__:
                self.wrap(owner, attr, step)

    def collected(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.gc_started.at = (time.time(), time.thread_time())
            return
        wall, cpu = getattr(self.gc_started, "at", (time.time(), time.thread_time()))
        if time.time() - wall > 0.005:
            self.emit(f"gc{info['generation']}", wall, time.time(), time.thread_time() - cpu)


class Finder(importlib.abc.MetaPathFinder):
    """Patches a traced module right after it ran, whichever thread imports it."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in STEPS:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        run = spec.loader.exec_module
        trace = self.trace

        def exec_module(module: ModuleType) -> None:
            wall = time.time()
            run(module)
            trace.emit(f"import {name}", wall, time.time(), 0.0)
            trace.patch(module, STEPS[name])

        spec.loader.exec_module = exec_module
        return spec


def install(trace: Trace) -> None:
    sys.meta_path.insert(0, Finder(trace))
    gc.callbacks.append(trace.collected)
    thread_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        wall = time.time()
        try:
            thread_run(self)
        finally:
            trace.emit("thread", wall, time.time(), time.thread_time(), self.name)

    threading.Thread.run = run  # type: ignore[method-assign]
    real_exit = os._exit

    def exit_now(code: int) -> None:  # the CLI ends with os._exit: atexit would not run
        now = time.time()
        trace.emit("thread", trace.t0, now, time.thread_time(), "MainThread")
        trace.emit("process", trace.t0, now, time.process_time(), "-")
        trace.flush()
        real_exit(code)

    os._exit = exit_now
    import atexit

    atexit.register(trace.flush)


if PATH:
    install(Trace(PATH))
