"""Typed reports from short sketches: tests of history, compare and the store describe only the
fields they read; every other required field of worker.results.Report is filled with a
neutral value (null where allowed, else an empty list/dict, 0 or ""), so a sketch keeps
validating when the schema grows."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

from worker.results import SCHEMA_VERSION, Report


def _neutral(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _neutral(args[0])
    if origin in (typing.Union, types.UnionType):
        if type(None) in args:
            return None
        return _neutral(args[0])
    if origin is typing.Literal:
        return args[0]
    if origin in (list, tuple) or annotation in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return [_neutral(a) for a in args]
        return []
    if origin is dict or annotation is dict:
        return {}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return fill(annotation, {})
    if annotation is bool:
        return False
    if annotation in (int, float):
        return 0
    return ""


def fill(model: type[BaseModel], data: dict) -> dict:
    """`data` with every missing required field of `model` given a neutral value, recursively
    (nested models, and lists of nested models, are filled too)."""
    out = dict(data)
    hints = typing.get_type_hints(model, include_extras=True)
    for name, info in model.model_fields.items():
        ann = hints.get(name, info.annotation)
        if name not in out:
            if info.is_required():
                out[name] = _neutral(ann)
            continue
        out[name] = _fill_value(ann, out[name])
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _fill_value(annotation: Any, value: Any) -> Any:
    models = _models_in(annotation)
    if not models:
        return value
    if isinstance(value, dict):
        return fill(models[0], value)
    if isinstance(value, list):
        return [fill(models[0], v) if isinstance(v, dict) else v for v in value]
    return value


def report_dict(sketch: dict) -> dict:
    """A complete report.json mapping from a sketch (see the module docstring)."""
    base = {"schema_version": SCHEMA_VERSION, "passed": True}
    return fill(Report, {**base, **sketch})


def typed_report(sketch: dict) -> Report:
    """A typed Report from a sketch."""
    return Report.model_validate(report_dict(sketch))
