"""The adaptation models' names, in one place (docs/method.md §5.1). No imports, so
`worker.job` can check a gate's `model` without loading the adaptation code.

- `M`: the baseline, trained on P;
- `M{q}`: P plus q selected images of every selectable secondary, q in adaptation.counts;
- `M_B{q}`: the largest M{q}'s training set plus q images with empty masks (negatives).
"""

from __future__ import annotations

BASELINE = "M"


def adapted(q: int) -> str:
    """Name of the model trained on P plus q selected images of every selectable secondary."""
    return f"M{int(q)}"


def with_negatives(q: int) -> str:
    """Name of the model that adds q images with empty masks to the largest M{q}."""
    return f"M_B{int(q)}"


def model_names(counts: list[int], negative_counts: list[int] | None = None) -> list[str]:
    """Every model of a job in training order: M, M{q} (q ascending), M_B{q} (q ascending)."""
    names = [BASELINE, *(adapted(q) for q in sorted(set(counts)))]
    names += [with_negatives(q) for q in sorted(set(negative_counts or []))]
    return names
