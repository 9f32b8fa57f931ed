"""The public surface changes only on purpose: adding or removing an export fails here."""

import steadyflow


def test_public_surface() -> None:
    assert sorted(steadyflow.__all__) == [
        "BatchRef", "ConfigError", "Contract", "FatalError", "Pipeline", "PipelineConfig",
        "QuarantineError", "RetryableError", "RunSummary", "SteadyflowError", "Watermark",
        "load_config",
    ]
    for name in steadyflow.__all__:
        assert getattr(steadyflow, name) is not None
