"""steadyflow: store databases and HTTP APIs into a warehouse, exactly once.

    from steadyflow import Pipeline
    with Pipeline.from_yaml("pipeline.yml") as pipeline:
        summary = pipeline.run_once()

`run_once()` raises RunFailed (carrying the RunSummary) when a table failed; pass
`raise_on_error=False` to get the summary with its errors instead.

The names below are imported on first use (PEP 562): `import steadyflow.errors`, which
every command does, must not pay for pyarrow, DuckDB and the drivers before it needs them.
`__dir__` lists them, so `dir(steadyflow)` and completion show what `__all__` exports.
`__version__` is the installed distribution's version, read on first use; a source tree
that was never installed (only on sys.path) reports "0+unknown" rather than failing.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

# Arrow's C++ default memory pool (mimalloc in the wheels) is chosen from this variable once,
# before any pyarrow module can ask for it; a follow run kept ~20 MiB of every spike in it
# for good (run/memory.py). A value set by the user wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

if TYPE_CHECKING:
    from steadyflow.config import PipelineConfig, load_config
    from steadyflow.errors import (
        ConfigError,
        FatalError,
        QuarantineError,
        RetryableError,
        RunFailed,
        SteadyflowError,
    )
    from steadyflow.model import BatchRef, Contract, Watermark
    from steadyflow.run.pipeline import Pipeline, RunSummary

    __version__: str

_HOME = {
    "PipelineConfig": "steadyflow.config", "load_config": "steadyflow.config",
    "ConfigError": "steadyflow.errors", "FatalError": "steadyflow.errors",
    "QuarantineError": "steadyflow.errors", "RetryableError": "steadyflow.errors",
    "RunFailed": "steadyflow.errors", "SteadyflowError": "steadyflow.errors",
    "BatchRef": "steadyflow.model", "Contract": "steadyflow.model",
    "Watermark": "steadyflow.model",
    "Pipeline": "steadyflow.run.pipeline", "RunSummary": "steadyflow.run.pipeline",
}

__all__ = [
    "BatchRef", "ConfigError", "Contract", "FatalError", "Pipeline", "PipelineConfig",
    "QuarantineError", "RetryableError", "RunFailed", "RunSummary", "SteadyflowError",
    "Watermark", "__version__", "load_config",
]

UNKNOWN_VERSION = "0+unknown"  # PEP 440: sorts below every release


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name not in _HOME:
        raise AttributeError(f"module 'steadyflow' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _version() -> str:
    """The installed distribution's version (pyproject's `version`), cached on the module."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("steadyflow")
    except PackageNotFoundError:
        found = UNKNOWN_VERSION
    globals()["__version__"] = found  # later reads skip __getattr__
    return found
