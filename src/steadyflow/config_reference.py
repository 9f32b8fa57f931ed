"""Write the pipeline config reference (docs/config-reference.md) from the pydantic models.

    python -m steadyflow.config_reference > docs/config-reference.md

The models in config.py are the only source: each model's docstring, and each field's
type, constraints, default and `Field(description=...)`. A hand-written reference drifts
from the code the first time a key is added; tests/unit/test_config_reference.py
regenerates this one and fails when the committed file differs.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Le, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from steadyflow.config import PipelineConfig, _duration

TOP = "(top level)"
COMMAND = "python -m steadyflow.config_reference > docs/config-reference.md"

INTRO = f"""\
# Pipeline config reference

<!-- generated from src/steadyflow/config.py by `{COMMAND}`;
     tests/unit/test_config_reference.py fails when this file differs: edit the models,
     not this file -->

A pipeline is one YAML file (`steadyflow run -c pipeline.yml`). It is validated completely
before anything runs; every problem is reported with its key (`sources.0.tables.0.lookback:
...`), and an unknown key is refused with the closest known one ("did you mean").

- **Secrets** are written as `${{VAR}}` references, filled from the environment when the
  file is loaded (a missing variable is an error naming it). Every filled-in value and every
  DSN password is scrubbed from logs, state, the status page and landed raw pages. A
  password written into a DSN literally is accepted but warned about at every load.
- **Durations** are a number of seconds or a string with a unit: `500ms`, `30s`, `2m`,
  `1h`, `7d`.
- **Paths** that are relative are relative to the config file's folder.

Sections below follow the file's nesting; `[]` is an item of a list, `<name>` a key of a
mapping.
"""


def render(root: type[BaseModel] = PipelineConfig) -> str:
    """The whole reference as Markdown: one section per model, reached from `root`."""
    parts = [INTRO]
    for where, model in _models(root, TOP, set()):
        parts.append(_section(where, model))
    return "\n".join(parts)


def _models(model: type[BaseModel], where: str, seen: set[type[BaseModel]]
            ) -> Iterator[tuple[str, type[BaseModel]]]:
    """Each model once, depth first in field order, with the YAML path it is found at."""
    if model in seen:
        return
    seen.add(model)
    yield where, model
    for name, field in model.model_fields.items():
        key = field.alias or name
        prefix = "" if where == TOP else f"{where}."
        for path, inner in _nested(field.annotation, f"{prefix}{key}"):
            yield from _models(inner, path, seen)


def _nested(annotation: Any, path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """The models inside a field's type, with the path of each (`[]`, `.<name>`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield path, annotation
        return
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        yield from _nested(args[0], path)
    elif origin is list:
        yield from _nested(args[0], f"{path}[]")
    elif origin is dict:
        yield from _nested(args[1], f"{path}.<{_singular(path)}>")
    elif origin in (Union, types.UnionType):
        for arg in args:
            yield from _nested(arg, path)


def _singular(path: str) -> str:
    last = path.rsplit(".", 1)[-1]
    return {"contracts": "name", "columns": "column"}.get(last, "key")


def _section(where: str, model: type[BaseModel]) -> str:
    title = "Top level" if where == TOP else f"`{where}`"
    lines = [f"## {title}: {model.__name__}", ""]
    doc = inspect.cleandoc(model.__doc__ or "")
    if doc:
        lines += [doc, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    durations = _duration_fields(model)
    for name, field in model.model_fields.items():
        kind = "duration" if name in durations else _type(field.annotation)
        limits = _limits(field)
        lines.append("| " + " | ".join([
            f"`{field.alias or name}`",
            _cell(kind + (f" ({limits})" if limits else "")),
            _cell(_default(field)),
            _cell(field.description or ""),
        ]) + " |")
    return "\n".join(lines) + "\n"


def _duration_fields(model: type[BaseModel]) -> set[str]:
    """Fields parsed by config._duration (they take '30s', '2m'): shown as `duration`."""
    found: set[str] = set()
    for decorator in model.__pydantic_decorators__.field_validators.values():
        if decorator.func is _duration or getattr(decorator.func, "__func__", None) is _duration:
            found.update(decorator.info.fields)
    return found


def _type(annotation: Any) -> str:
    """A field's type as a YAML author reads it."""
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "mapping (see below)"
        return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
            annotation, annotation.__name__)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin is Annotated:
        return _type(args[0])
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping of {_type(args[0])} → {_type(args[1])}"
    if origin in (Union, types.UnionType):
        kinds = " or ".join(_type(a) for a in args if a is not type(None))
        return f"{kinds}, or null" if type(None) in args else kinds
    return str(annotation)


def _limits(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        if isinstance(item, Ge):
            found.append(f"≥ {item.ge}")
        elif isinstance(item, Le):
            found.append(f"≤ {item.le}")
        elif isinstance(item, MinLen):
            found.append(f"at least {item.min_length}")
    return ", ".join(found)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "its defaults"
    if value is None:
        return "null"
    if value in ({}, []):
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    """One Markdown table cell: on one line, `|` escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
