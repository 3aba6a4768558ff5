"""Blocked distance engine (torch, CPU or CUDA): row sums, nearest neighbours, k-center.

All inputs are (N, z) float arrays; nothing here builds an N x M matrix for large sets:
work is done in row blocks whose size follows a memory budget.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_MEMORY_BUDGET_MB = 256


def _block_rows(n_cols: int, memory_budget_mb: float, bytes_per_value: int = 8) -> int:
    """Rows per block so that a (rows x n_cols) block stays within the budget."""
    budget = memory_budget_mb * 1024 * 1024
    return max(1, int(budget // max(1, n_cols * bytes_per_value * 3)))


def _as_tensor(x: np.ndarray, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)


def _block_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows of a and b: sqrt(max(|a|^2 + |b|^2 - 2ab, 0))."""
    a_sq = (a * a).sum(dim=1, keepdim=True)
    d2 = a_sq + b_sq[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0).sqrt_()


def row_distance_sums(
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
) -> np.ndarray:
    """I_dist: out[j] = sum_k ||rows[j] - cols[k]||_2, accumulated in float64. Shape (m,)."""
    dtype = torch.float64 if precision == "float64" else torch.float32
    b = _as_tensor(cols, dtype, device)
    b_sq = (b * b).sum(dim=1)
    out = np.empty(len(rows), dtype=np.float64)
    step = _block_rows(len(cols), memory_budget_mb)
    for start in range(0, len(rows), step):
        a = _as_tensor(rows[start : start + step], dtype, device)
        out[start : start + step] = _block_distances(a, b, b_sq).sum(dim=1, dtype=torch.float64).cpu().numpy()
    return out


def nearest_distances(
    queries: np.ndarray,
    points: np.ndarray,
    *,
    exclude_self: bool = False,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each query to its nearest point, and that point's index. Shapes (m,), (m,).

    exclude_self: queries and points are the same set; row j ignores column j (by index,
    so exact duplicates still count as distance 0).
    """
    b = _as_tensor(points, torch.float64, device)
    b_sq = (b * b).sum(dim=1)
    dist = np.empty(len(queries), dtype=np.float64)
    index = np.empty(len(queries), dtype=np.int64)
    step = _block_rows(len(points), memory_budget_mb)
    for start in range(0, len(queries), step):
        a = _as_tensor(queries[start : start + step], torch.float64, device)
        d = _block_distances(a, b, b_sq)
        if exclude_self:
            rows = torch.arange(d.shape[0], device=d.device)
            d[rows, rows + start] = float("inf")
        values, idx = d.min(dim=1)
        dist[start : start + step] = values.cpu().numpy()
        index[start : start + step] = idx.cpu().numpy()
    return dist, index


def kcenter_greedy(
    candidates: np.ndarray,
    k: int,
    centers: np.ndarray | None = None,
    *,
    device: str = "cpu",
) -> list[int]:
    """Greedy k-center (Sener & Savarese 2017): pick k candidate indices, each the candidate
    farthest from all centres so far; `centers` (e.g. P) count as already chosen.
    O(k * N) distance evaluations with an incrementally updated min-distance vector.
    Ties go to the lowest index. Without centres the first pick is the candidate farthest
    from the candidates' mean.
    """
    x = _as_tensor(candidates, torch.float64, device)
    k = min(k, len(candidates))
    if centers is not None and len(centers):
        min_d, _ = nearest_distances(candidates, centers, device=device)
        min_d = torch.as_tensor(min_d, dtype=torch.float64, device=device)
    else:
        min_d = ((x - x.mean(dim=0, keepdim=True)) ** 2).sum(dim=1).sqrt()
    chosen: list[int] = []
    for _ in range(k):
        j = int(torch.argmax(min_d))
        chosen.append(j)
        d = ((x - x[j]) ** 2).sum(dim=1).sqrt()
        min_d = torch.minimum(min_d, d)
        min_d[j] = -1.0
    return chosen
