"""Which S images to label (DESIGN 3, paper section 4.3): band, farthest, k-center.

All return indices into S, deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

from worker import engine
from worker.metrics import min_max_scale


def select_band(i_dist: np.ndarray, count: int, band: tuple[float, float], seed: int) -> list[int]:
    """Seeded random `count` images whose min-max scaled I_dist lies in [lo, hi] (inclusive).
    If the band holds fewer than `count`, all of them are taken and the farthest images
    outside the band fill up the rest. Returned farthest first."""
    i_dist = np.asarray(i_dist, dtype=np.float64)
    scaled = min_max_scale(i_dist)
    lo, hi = band
    inside = np.flatnonzero((scaled >= lo) & (scaled <= hi))
    rng = np.random.default_rng(seed)
    if len(inside) >= count:
        picked = rng.choice(inside, size=count, replace=False)
    else:
        outside = np.setdiff1d(np.arange(len(i_dist)), inside)
        fill = outside[np.argsort(-i_dist[outside], kind="stable")][: count - len(inside)]
        picked = np.concatenate([inside, fill])
    return [int(i) for i in sorted(picked, key=lambda j: (-i_dist[j], j))]


def select_farthest(i_dist: np.ndarray, count: int) -> list[int]:
    """The `count` images of largest I_dist; ties go to the lower index."""
    order = np.argsort(-np.asarray(i_dist, dtype=np.float64), kind="stable")
    return [int(i) for i in order[:count]]


def select_kcenter(S_L: np.ndarray, P_L: np.ndarray, count: int, **engine_kw) -> list[int]:
    """Greedy k-center on S with P as already-chosen centres: minimises the covering
    radius of S u P (Sener & Savarese 2017)."""
    return engine.kcenter_greedy(S_L, count, P_L, **engine_kw)


def select(
    strategy: str,
    *,
    S_L: np.ndarray,
    P_L: np.ndarray,
    i_dist: np.ndarray,
    count: int,
    band: tuple[float, float] = (0.6, 1.0),
    seed: int = 0,
) -> list[int]:
    """Dispatch by strategy name; count > |S| selects all of S."""
    count = min(count, len(S_L))
    if strategy == "band":
        return select_band(i_dist, count, band, seed)
    if strategy == "farthest":
        return select_farthest(i_dist, count)
    if strategy == "kcenter":
        return select_kcenter(S_L, P_L, count)
    raise ValueError(f"unknown selection strategy {strategy!r}")


def random_subset(m: int, count: int, seed: int) -> list[int]:
    """A seeded random subset of range(m) of size min(count, m), sorted."""
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(m, size=min(count, m), replace=False))
