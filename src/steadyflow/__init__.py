"""steadyflow: store databases and HTTP APIs into a warehouse, exactly once.

    from steadyflow import Pipeline
    with Pipeline.from_yaml("pipeline.yml") as pipeline:
        summary = pipeline.run_once()
"""

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

__all__ = [
    "BatchRef",
    "ConfigError",
    "Contract",
    "FatalError",
    "Pipeline",
    "PipelineConfig",
    "QuarantineError",
    "RetryableError",
    "RunSummary",
    "SteadyflowError",
    "Watermark",
    "load_config",
]
