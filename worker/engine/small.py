"""Small CPU calls (at most planning.SMALL_CALL_ELEMENTS = pairs x columns): the same
quantities as the tiled kernels by direct differences in numpy float64, exact, no tiles."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from worker.interrupt import stoppable


def squared_by_columns(a: np.ndarray, b: np.ndarray, bounds: list[int]) -> Iterator[np.ndarray]:
    """For each prefix in `bounds` (increasing), ||a_i[:p] - b_j[:p]||^2 (m, n) float64 by
    direct differences, accumulated over the column groups."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    sq = np.zeros((len(a), len(b)))
    lo = 0
    for hi in bounds:
        diff = a[:, None, lo:hi] - b[None, :, lo:hi]
        sq += np.einsum("ijk,ijk->ij", diff, diff)
        lo = hi
        yield sq


def neighbour_distances(a: np.ndarray, b: np.ndarray, idx: np.ndarray, width: int) -> np.ndarray:
    """||a_i[:width] - b_idx[i][:width]||_2 in float64 from the original vectors, inf where
    idx is -1 (the exact distance to each row's chosen neighbour). (m,) float64."""
    dist = np.full(len(idx), np.inf, dtype=np.float64)
    ok = np.flatnonzero(idx >= 0)
    step = max(1, (32 * 1024 * 1024) // max(1, 16 * width))
    for s in range(0, len(ok), step):
        sel = ok[s : s + step]
        diff = np.asarray(a[sel, :width], np.float64) - np.asarray(b[idx[sel], :width], np.float64)
        dist[sel] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return dist


def small_nearest(
    a: np.ndarray, b: np.ndarray, sq: np.ndarray, width: int, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest row of b for each row of a from their squared distances sq (m, n) over the
    first `width` columns: (distance, index), lowest index on ties; exclude_self: row i skips
    column i; no admissible column -> inf, -1."""
    m, n = sq.shape
    if exclude_self and m:
        sq = sq.copy()
        np.fill_diagonal(sq, np.inf)
    idx = np.full(m, -1, dtype=np.int64)
    if n:
        best = np.argmin(sq, axis=1)
        found = np.isfinite(sq[np.arange(m), best])
        idx[found] = best[found]
    return neighbour_distances(a, b, idx, width), idx


def small_pair_pass(
    a: np.ndarray, b: np.ndarray, sums_at: list[int], near: int | None, exclude_self: bool
) -> tuple[dict[int, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """pair_pass's quantities for a small call: (i_dist per prefix, nearest distance, nearest
    index). With exclude_self (a is b) row j sums the later rows k > j only (each unordered
    pair once, as the tiled pass)."""
    bounds = sorted({*sums_at, *([near] if near is not None else [])})
    i_dist: dict[int, np.ndarray] = {}
    dist = idx = None
    for p, sq in zip(bounds, squared_by_columns(a, b, bounds), strict=True):
        if p in sums_at:
            roots = np.sqrt(sq)
            i_dist[p] = (np.triu(roots, 1) if exclude_self else roots).sum(axis=1)
        if p == near:
            dist, idx = small_nearest(a, b, sq, p, exclude_self)
    for p in sums_at:
        i_dist.setdefault(p, np.zeros(len(a)))
    return i_dist, dist, idx


def small_kcenter(x_np: np.ndarray, k: int, min_d: np.ndarray | None) -> list[int]:
    """kcenter_greedy's loop in numpy float64 (min_d: distances to the given centres)."""
    x = np.asarray(x_np, dtype=np.float64)
    x = x - x.mean(axis=0)
    first = None
    if min_d is None:
        first = int(np.argmax(np.einsum("ij,ij->i", x, x)))
        min_d = np.full(len(x), np.inf)
    min_d = np.array(min_d, dtype=np.float64)
    chosen: list[int] = []
    for it in stoppable(range(k)):
        j = first if (it == 0 and first is not None) else int(np.argmax(min_d))
        chosen.append(j)
        diff = x - x[j]
        np.minimum(min_d, np.sqrt(np.einsum("ij,ij->i", diff, diff)), out=min_d)
        min_d[j] = -1.0
    return chosen
