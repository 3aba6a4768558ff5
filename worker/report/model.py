"""report.json: the versioned contract CI gates parse (docs/report-json.md).

- `generate_schema()` builds the JSON Schema (draft 2020-12) from worker.results.Report;
  `load_schema()` returns the shipped copy (report.schema.json), which a test keeps equal;
- `clean_numbers(obj)` turns numpy scalars/arrays into plain Python and refuses NaN/inf;
- `validate_report(report)` checks a report.json dict as a consumer would (JSON Schema) and
  raises ValueError naming the JSON path of the first problem;
- `to_json_bytes(report)` / `write_report_json(report, path)` serialise a typed Report (valid
  by construction) or a dict (validated first); the write is atomic.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from worker.results import SCHEMA_VERSION, Report

__all__ = ["SCHEMA_VERSION", "Report", "generate_schema", "load_schema", "validate_report"]

SCHEMA_FILE = "report.schema.json"
SCHEMA_ID = "urn:dataset-distance-worker:report.schema.json"


def _open_objects(node: Any) -> Any:
    """Drop `additionalProperties: false`: consumers of a 1.x schema accept later 1.y fields."""
    if isinstance(node, dict):
        return {
            k: _open_objects(v)
            for k, v in node.items()
            if not (k == "additionalProperties" and v is False)
        }
    if isinstance(node, list):
        return [_open_objects(v) for v in node]
    return node


def generate_schema() -> dict:
    """report.json's JSON Schema, generated from worker.results.Report (validation mode:
    a field is required unless the report may leave it out)."""
    body = _open_objects(Report.model_json_schema(ref_template="#/$defs/{model}"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "dataset-distance-worker report.json",
        **body,
    }


def schema_text() -> str:
    """The generated schema as the shipped file holds it (indent 2, trailing newline)."""
    return json.dumps(generate_schema(), indent=2, ensure_ascii=False) + "\n"


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("worker.report").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def load_schema() -> dict:
    """The report.json JSON Schema shipped in the package (a fresh dict on every call)."""
    return json.loads(_schema_text())


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator

    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    if key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


def clean_numbers(obj: Any, _path: str = "$") -> Any:
    """A copy of `obj` made of plain JSON types only.

    numpy scalars become int/float/bool, numpy arrays and tuples become lists, dict keys
    become str. NaN and +-inf are refused (ValueError naming the JSON path): the caller must
    replace a value that could not be computed by None, with a reason elsewhere.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{_path}: {obj!r} is not a valid JSON number; use null instead")
        return float(obj)
    if isinstance(obj, dict):
        return {str(k): clean_numbers(v, _join(_path, k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_numbers(v, _join(_path, i)) for i, v in enumerate(obj)]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        np = None
    if np is not None:
        if isinstance(obj, np.ndarray):
            return clean_numbers(obj.tolist(), _path)
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return clean_numbers(float(obj), _path)
        if isinstance(obj, np.str_):
            return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise ValueError(f"{_path}: {type(obj).__name__} is not a JSON type")


def _first_non_finite(obj: Any, path: str = "$") -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _first_non_finite(v, _join(path, k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _first_non_finite(v, _join(path, i))
            if found:
                return found
    return None


def _error_path(error) -> str:
    path = "$"
    for key in error.absolute_path:
        path = _join(path, key)
    return path


def validate_report(report: dict) -> None:
    """Raise ValueError("report.json: <json path>: <problem>") unless `report` fits the schema.

    NaN and infinity are refused too (JSON Schema alone would accept them as numbers).
    """
    bad = _first_non_finite(report)
    if bad:
        raise ValueError(f"report.json: {bad}: NaN/infinity is not allowed; use null")
    errors = list(_validator().iter_errors(report))
    if not errors:
        return
    # The first problem in document order; ties broken by the most specific message.
    errors.sort(key=lambda e: (_error_path(e), -len(e.absolute_schema_path)))
    from jsonschema.exceptions import best_match

    first = errors[0]
    same_place = [e for e in errors if list(e.absolute_path) == list(first.absolute_path)]
    chosen = best_match(same_place) or first
    raise ValueError(f"report.json: {_error_path(chosen)}: {chosen.message}")


def to_json_bytes(report: Report | dict) -> bytes:
    """UTF-8 JSON, indent 2, keys in field (or insertion) order, no NaN; ends with a newline.

    A typed Report is dumped as is (it was validated when built); a dict is cleaned first."""
    if isinstance(report, Report):
        return report.model_dump_json(indent=2).encode("utf-8") + b"\n"
    text = json.dumps(
        clean_numbers(report), indent=2, sort_keys=False, allow_nan=False, ensure_ascii=False
    )
    return (text + "\n").encode("utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temp file next to `path`, fsync it, then os.replace it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report_json(report: Report | dict, path: str | Path) -> Path:
    """Write `report` atomically to `path`; a dict is validated against the schema first."""
    if isinstance(report, Report):
        return atomic_write_bytes(path, to_json_bytes(report))
    plain = clean_numbers(report)
    validate_report(plain)
    return atomic_write_bytes(path, to_json_bytes(plain))


def _type_name(prop: dict) -> str:
    """A short type for the contract table: 'number', 'string or null', '[ImageResult]'."""
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " or ".join(_type_name(p) for p in prop["anyOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"[{_type_name(prop.get('items', {}))}]"
    if kind == "object" and "additionalProperties" in prop:
        return f"{{name: {_type_name(prop['additionalProperties'])}}}"
    return {"integer": "integer", "number": "number"}.get(kind, kind)


def schema_markdown() -> str:
    """The field-by-field contract (docs/report-json.md), generated from the schema: one table
    per block, each field with its type, whether it is always present, and its description."""
    schema = generate_schema()
    blocks = [("Report", schema)] + sorted(schema["$defs"].items())
    lines = []
    for name, block in blocks:
        lines += [f"### {name}", "", (block.get("description") or "").split("\n")[0], ""]
        lines += ["| field | type | always | description |", "|---|---|---|---|"]
        required = set(block.get("required", []))
        for field, prop in block.get("properties", {}).items():
            ref = prop.get("$ref", "").rsplit("/", 1)[-1]
            text = prop.get("description") or schema["$defs"].get(ref, {}).get("description", "")
            text = text.split("\n")[0].replace("|", "\\|")
            always = "yes" if field in required else "no"
            lines.append(f"| `{field}` | {_type_name(prop)} | {always} | {text} |")
        lines.append("")
    return "\n".join(lines)
