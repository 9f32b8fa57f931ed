"""The public surface changes only on purpose: adding or removing an export fails here.

Also what a library user relies on beyond the names: `__version__`, `dir()`, the `py.typed`
marker that makes type checkers read the package's annotations, and a failed run that
raises instead of returning a summary nobody checks.
"""

import sqlite3
from contextlib import closing
from importlib.metadata import version
from pathlib import Path

import pytest
from tests.conftest import write_pipeline

import steadyflow
from steadyflow.errors import RunFailed, SteadyflowError


def test_public_surface() -> None:
    assert sorted(steadyflow.__all__) == [
        "BatchRef", "ConfigError", "Contract", "FatalError", "Pipeline", "PipelineConfig",
        "QuarantineError", "RetryableError", "RunFailed", "RunSummary", "SteadyflowError",
        "Watermark", "__version__", "load_config",
    ]
    for name in steadyflow.__all__:
        assert getattr(steadyflow, name) is not None


def test_dir_lists_the_lazy_exports() -> None:
    """PEP 562 names exist only through __getattr__: without __dir__, dir() and completion
    in a REPL or an IDE do not show `Pipeline`."""
    assert set(steadyflow.__all__) <= set(dir(steadyflow))


def test_version_is_the_installed_distribution() -> None:
    assert steadyflow.__version__ == version("steadyflow")
    from steadyflow import __version__  # the `from` form goes through __getattr__ too

    assert __version__ == steadyflow.__version__


def test_py_typed_marker_ships() -> None:
    """PEP 561: without the marker, mypy treats every steadyflow import as untyped."""
    assert (Path(steadyflow.__file__).parent / "py.typed").is_file()
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"py.typed"' in text  # package-data, so a wheel carries it


def _failing_pipeline(tmp_path: Path) -> Path:
    """One SQLite store that has no `sales` table: the table fails with a SchemaError."""
    with closing(sqlite3.connect(tmp_path / "store.db")) as db:
        db.execute("CREATE TABLE other (id INTEGER PRIMARY KEY)")
    return write_pipeline(tmp_path, [{"name": "store", "kind": "sqlite", "path": "store.db",
                                      "tables": [{"name": "sales", "contract": "sales"}]}])


def test_a_failed_table_raises_from_run_once(tmp_path: Path) -> None:
    with steadyflow.Pipeline.from_yaml(_failing_pipeline(tmp_path)) as pipeline:
        with pytest.raises(RunFailed) as caught:
            pipeline.run_once()
    error = caught.value
    assert isinstance(error, SteadyflowError)
    assert error.failed_tables == ["store.sales"]
    assert error.table == "store.sales" and "sales" in error.message
    assert error.summary is not None and not error.summary.ok
    assert error.errors == error.summary.errors and error.hint


def test_run_once_returns_the_summary_when_asked_not_to_raise(tmp_path: Path) -> None:
    with steadyflow.Pipeline.from_yaml(_failing_pipeline(tmp_path)) as pipeline:
        summary = pipeline.run_once(raise_on_error=False)
        assert summary.failed_tables == ["store.sales"] and not summary.ok
        # `run`, which the CLI and `serve` call, keeps returning the summary
        assert pipeline.run().failed_tables == ["store.sales"]
