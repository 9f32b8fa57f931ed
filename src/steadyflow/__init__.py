"""steadyflow: store databases and HTTP APIs into a warehouse, exactly once.

    from steadyflow import Pipeline
    with Pipeline.from_yaml("pipeline.yml") as pipeline:
        summary = pipeline.run_once()

The names below are imported on first use (PEP 562): `import steadyflow.errors`, which
every command does, must not pay for pyarrow, DuckDB and the drivers before it needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steadyflow.config import PipelineConfig, load_config
    from steadyflow.errors import (
        ConfigError,
        FatalError,
        QuarantineError,
        RetryableError,
        SteadyflowError,
    )
    from steadyflow.model import BatchRef, Contract, Watermark
    from steadyflow.run.pipeline import Pipeline, RunSummary

_HOME = {
    "PipelineConfig": "steadyflow.config", "load_config": "steadyflow.config",
    "ConfigError": "steadyflow.errors", "FatalError": "steadyflow.errors",
    "QuarantineError": "steadyflow.errors", "RetryableError": "steadyflow.errors",
    "SteadyflowError": "steadyflow.errors",
    "BatchRef": "steadyflow.model", "Contract": "steadyflow.model",
    "Watermark": "steadyflow.model",
    "Pipeline": "steadyflow.run.pipeline", "RunSummary": "steadyflow.run.pipeline",
}

__all__ = [
    "BatchRef", "ConfigError", "Contract", "FatalError", "Pipeline", "PipelineConfig",
    "QuarantineError", "RetryableError", "RunSummary", "SteadyflowError", "Watermark",
    "load_config",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'steadyflow' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)
