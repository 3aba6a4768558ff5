"""The self pass: one S x S fused pass giving each row's nearest OTHER row and its summed
distance to the later rows (diversity, within-set near duplicates, the within-set terms
E|x - x'| of the energy distance, from each unordered pair once)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.engine.pair import dispatch
from worker.engine.planning import DEFAULT_MEMORY_BUDGET_MB, as_matrix


@dataclass(frozen=True)
class SelfPassResult:
    """One S x S pass over x (N, z).

    distance / index: each row's nearest OTHER row (by index), (N,) float64 / int64, as
    nearest_distances(x, x, exclude_self=True) (inf / -1 if N < 2).
    later_sums: sum_{k > j} ||x_j - x_k||_2, (N,) float64 (zeros if N < 2): each unordered
    pair once, so 2 * later_sums.sum() / (N (N - 1)) is E|x - x'| over distinct pairs (the
    square roots of the pairs below the diagonal are never taken)."""

    distance: np.ndarray
    index: np.ndarray
    later_sums: np.ndarray

    @property
    def pair_sum(self) -> float:
        """sum_{j != k} ||x_j - x_k||_2 over ordered pairs (2 * later_sums.sum())."""
        return 2.0 * float(self.later_sums.sum())


def self_pass(
    x: np.ndarray,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
) -> SelfPassResult:
    """One S x S pass over x (N, z): the nearest other row by index (exact duplicates count as
    distance 0) and each row's summed distance to the later rows, from the same tiles (the
    fused pair pass with exclude_self). Inside `distance_backend(...)`, a call the backend
    takes runs there in row blocks."""
    x = as_matrix(x, "x")
    n = len(x)
    if n < 2:
        return SelfPassResult(np.full(n, np.inf), np.full(n, -1, dtype=np.int64), np.zeros(n))
    res = dispatch(x, x, None, True, True, memory_budget_mb, precision, device)
    return SelfPassResult(res.nearest_distance, res.nearest_index, res.i_dist[x.shape[1]])
