"""docs/config-reference.md is generated from the config models and cannot drift from them."""

import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from steadyflow import config
from steadyflow.config_reference import COMMAND, render

DOC = Path(__file__).parents[2] / "docs" / "config-reference.md"


def _models() -> list[type[BaseModel]]:
    return [m for m in vars(config).values()
            if isinstance(m, type) and issubclass(m, config._Strict) and m is not config._Strict]


def test_committed_reference_is_current() -> None:
    assert DOC.read_text() == render(), (
        f"docs/config-reference.md is stale: regenerate it with `{COMMAND}`")


def test_every_model_and_field_is_in_the_reference() -> None:
    text = render()
    for model in _models():
        assert f": {model.__name__}\n" in text, f"{model.__name__} is not reached from the top"
        for name, field in model.model_fields.items():
            assert f"| `{field.alias or name}` |" in text, f"{model.__name__}.{name}"


def test_every_model_and_field_says_what_it_is() -> None:
    """A new key without a description would reach the reference as a blank row."""
    missing = [f"{m.__name__}.{name}" for m in _models()
               for name, field in m.model_fields.items() if not field.description]
    missing += [m.__name__ for m in _models() if not (m.__doc__ or "").strip()]
    assert not missing, f"add a docstring or Field(description=...) to: {missing}"


def test_durations_are_shown_as_durations() -> None:
    text = render()
    assert "| `lookback` | duration (≥ 0) | `0` |" in text
    assert "| `lease` | duration (≥ 0) | `120` |" in text
    assert "| `page_size` | integer (≥ 1) | `122880` |" in text


def test_the_module_writes_it_to_stdout() -> None:
    proc = subprocess.run([sys.executable, "-m", "steadyflow.config_reference"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout == render()
