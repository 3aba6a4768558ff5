"""One tester for every metric, the way torchmetrics' MetricTester checks its metrics: each
metric is run on the same input worlds and compared with its independent reference (numpy
float64 by direct differences, tests/helpers/reference.py), then checked for the properties
it claims:

- row order: permuting the rows of the inputs permutes a per-row output the same way (rows
  of the first argument) and leaves a scalar output unchanged;
- symmetry: f(S, P) == f(P, S) (two-set scalar metrics where it holds);
- zero on identical inputs: f(X, X) == 0 (where it holds).

A metric joins with one MetricCase (tests/test_metric_properties.py lists them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MetricCase:
    """A metric under test. metric / reference: the worker function and its independent
    reference, called with the same arrays (arity 1: f(X); arity 2: f(S, P)) and returning a
    float or an (m,) array; output: "scalar" or "rows" (one value per row of the first
    argument)."""

    name: str
    metric: Callable[..., Any]
    reference: Callable[..., Any]
    arity: int = 2
    output: str = "scalar"
    symmetric: bool = False
    zero_on_identical: bool = False
    rtol: float = 1e-10
    atol: float = 1e-12


def worlds(arity: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """The inputs every metric runs on: a hand-sized pair, shifted and scaled Gaussians, a
    set with exact duplicates (within it and across the sets), one column, and a pair large
    enough for the engine's tiled path (m n z above SMALL_CALL_ELEMENTS)."""
    rng = np.random.default_rng(seed)
    p_hand = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    s_hand = np.array([[1.0, 1.0], [3.0, 3.0]])
    dup_p = rng.normal(size=(30, 4))
    dup_s = np.vstack([dup_p[:5], rng.normal(size=(20, 4)) + 1.0, dup_p[:2]])
    pairs = [
        (s_hand, p_hand),
        (rng.normal(size=(40, 6)) * 3.0 + 5.0, rng.normal(size=(35, 6))),
        (dup_s, dup_p),
        (rng.normal(size=(25, 1)), rng.normal(size=(18, 1)) * 0.5),
        (rng.normal(size=(600, 20)) + 0.2, rng.normal(size=(400, 20))),
    ]
    if arity == 1:
        return [(s,) for s, _ in pairs]
    return pairs


def _close(got: Any, want: Any, case: MetricCase, what: str) -> None:
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64),
        np.asarray(want, dtype=np.float64),
        rtol=case.rtol,
        atol=case.atol,
        err_msg=f"{case.name}: {what}",
    )


def check_metric(case: MetricCase, seed: int = 0) -> None:
    """Every check `case` claims, on every world; AssertionError naming the metric and the
    check that failed."""
    assert case.output in ("scalar", "rows") and case.arity in (1, 2)
    rng = np.random.default_rng(seed + 1)
    for args in worlds(case.arity, seed):
        got = case.metric(*args)
        _close(got, case.reference(*args), case, f"reference, shapes {[a.shape for a in args]}")
        perms = [rng.permutation(len(a)) for a in args]
        moved = case.metric(*[a[p] for a, p in zip(args, perms, strict=True)])
        want = np.asarray(got)[perms[0]] if case.output == "rows" else got
        _close(moved, want, case, "row order")
        if case.symmetric:
            _close(case.metric(args[1], args[0]), got, case, "symmetry")
        if case.zero_on_identical:
            _close(case.metric(args[0], args[0]), 0.0, case, "zero on identical inputs")
