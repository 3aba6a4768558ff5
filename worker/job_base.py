"""Shared pieces of the job models (worker/job.py): extractor names, field checks and `Strict`,
the base of every job model.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, get_args, get_origin

from pydantic import field_validator

from worker.base import Model

EXTRACTOR_NAMES = (
    "hog",
    "precomputed",
    "sam",
    "clipseg",
    "efficientnet",
    "clip",
    "dinov2",
    "convnextv2",
    "swinv2",
    "trained",
)


def check_device(v: str) -> str:
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError("device must be auto, cpu, cuda or cuda:N")


def check_location(v: str | None) -> str | None:
    """A path or URI given in the job: not empty or blank, no NUL, no line breaks."""
    if v is None:
        return v
    if not v.strip():
        raise ValueError("must not be empty; give a path (relative to the job file) or s3:// URI")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in v):
        raise ValueError("contains a control character or an invalid (surrogate) character")
    return v


def check_text(v: str | None) -> str | None:
    """A free-text value (checkpoint, revision, prompt): not empty, valid UTF-8 text."""
    if v is None:
        return v
    if not v.strip():
        raise ValueError("must not be empty; remove the key to use the default")
    if any(unicodedata.category(c) == "Cs" for c in v):
        raise ValueError("contains an invalid (surrogate) character")
    return v


def check_counts(v: list[int]) -> list[int]:
    """A non-empty list of positive integers, sorted, repeats removed."""
    if not v or any(c < 1 for c in v):
        raise ValueError("counts must be a non-empty list of positive integers")
    return sorted(set(v))


#: the smallest image side each extractor can work on (hog: two 16-pixel cells make a block;
#: the transformer and CNN families need at least a few patches / downsampling steps)
MIN_IMAGE_SIZE = {"hog": 32}
DEFAULT_MIN_IMAGE_SIZE = 32


def _wants_number(annotation: object) -> bool:
    """Whether a field's type takes a number but not a boolean (int, float, in unions)."""
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _wants_number(args[0])
    if args and get_origin(annotation) not in (list, tuple, dict):
        return bool not in args and any(_wants_number(a) for a in args)
    return annotation in (int, float)


def _bool_for_number(annotation: object, value: object) -> bool:
    """True when `value` (or an item of it) is a YAML boolean where a number is expected."""
    if isinstance(value, bool):
        return _wants_number(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _bool_for_number(args[0], value)
    if isinstance(value, list) and origin in (list, tuple) and args:
        return any(_bool_for_number(args[0], v) for v in value)
    if args and origin not in (list, tuple, dict):  # a union: any list member decides
        return any(_bool_for_number(a, value) for a in args if get_origin(a) in (list, tuple))
    return False


class Strict(Model):
    """Base of the job's models: inf and NaN are refused in every float field (no bound, band
    or rate can be infinite), unknown keys too, and yes/no where a number is expected."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, v: object, info) -> object:
        """YAML reads yes/no/on/off/true/false as booleans, and pydantic would take them as
        1 and 0: `keep: yes` became 1 and pruned runs. A number field refuses them."""
        if isinstance(v, (bool, list)) and info.field_name in cls.model_fields:
            if _bool_for_number(cls.model_fields[info.field_name].annotation, v):
                raise ValueError(
                    "expected a number, got a yes/no value (YAML reads yes, no, on, off, true "
                    "and false as booleans); write the number"
                )
        return v
