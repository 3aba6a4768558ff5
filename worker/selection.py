"""Which S images to label next (docs/method.md §3, paper section 4.3): band, farthest, k-center.

Every function returns indices into S (ints), deterministic for a given seed
(numpy.random.default_rng(seed)). A count above |S| selects all of S; a count of 0 selects
nothing. Shapes: S_L (m, z), P_L (n, z), i_dist (m,).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worker import engine
from worker.metrics import min_max_scale

STRATEGIES = ("band", "farthest", "kcenter")


def _count(count: int, m: int) -> int:
    count = int(count)
    if count < 0:
        raise ValueError(f"selection.counts: a count must be >= 0, got {count}")
    return min(count, m)


def select_band(
    i_dist: np.ndarray, count: int, band: tuple[float, float] = (0.6, 1.0), seed: int = 0
) -> list[int]:
    """Paper section 4.3: `count` images drawn at random (seeded, without replacement) among
    those whose min-max scaled I_dist x' (method.md §1.7) lies in [lo, hi], both ends inclusive.

    When the band holds fewer than `count` images, all of them are taken and the rest is
    filled with the images outside the band closest to it (smallest gap in x' to [lo, hi];
    ties to the larger I_dist, then the lower index). For a band that ends at 1, as the
    paper's [0.6, 1], these are the next farthest images below the band.
    Returned ordered by I_dist descending (ties: lower index first).
    """
    i_dist = np.asarray(i_dist, dtype=np.float64)
    lo, hi = (float(b) for b in band)
    if not lo <= hi:
        raise ValueError(f"selection.band: expected [lo, hi] with lo <= hi, got {list(band)}")
    count = _count(count, len(i_dist))
    scaled = min_max_scale(i_dist)
    inside = np.flatnonzero((scaled >= lo) & (scaled <= hi))
    if len(inside) >= count:
        picked = np.random.default_rng(seed).choice(inside, size=count, replace=False)
    else:
        outside = np.setdiff1d(np.arange(len(i_dist)), inside)
        gap = np.maximum(lo - scaled[outside], scaled[outside] - hi)
        # lexsort: last key is primary -> gap, then -i_dist, then index
        order = np.lexsort((outside, -i_dist[outside], gap))
        picked = np.concatenate([inside, outside[order][: count - len(inside)]])
    return [int(j) for j in sorted(picked.tolist(), key=lambda j: (-i_dist[j], j))]


def select_farthest(i_dist: np.ndarray, count: int) -> list[int]:
    """The `count` images of largest I_dist, farthest first; ties go to the lower index."""
    i_dist = np.asarray(i_dist, dtype=np.float64)
    order = np.argsort(-i_dist, kind="stable")
    return [int(j) for j in order[: _count(count, len(i_dist))]]


def select_kcenter(S_L: np.ndarray, P_L: np.ndarray, count: int, **engine_kw: Any) -> list[int]:
    """Greedy k-center (Sener & Savarese 2017) on S with every image of P counted as an
    already-chosen centre: each pick is the S image farthest from all centres so far, which
    greedily minimises the covering radius of S u P. In pick order (engine.kcenter_greedy)."""
    S_L = np.asarray(S_L)
    centers = None if P_L is None or len(P_L) == 0 else P_L
    picks = engine.kcenter_greedy(S_L, _count(count, len(S_L)), centers, **engine_kw)
    return [int(j) for j in picks]


def select(
    strategy: str,
    *,
    S_L: np.ndarray,
    P_L: np.ndarray,
    i_dist: np.ndarray,
    count: int,
    band: tuple[float, float] = (0.6, 1.0),
    seed: int = 0,
    **engine_kw: Any,
) -> list[int]:
    """Dispatch by strategy name: 'band', 'farthest' or 'kcenter' (see the functions above).
    Returns min(count, |S|) indices into S."""
    if len(i_dist) != len(S_L):
        raise ValueError(f"i_dist has {len(i_dist)} entries but S_L has {len(S_L)} rows")
    if strategy == "band":
        return select_band(i_dist, count, band, seed)
    if strategy == "farthest":
        return select_farthest(i_dist, count)
    if strategy == "kcenter":
        return select_kcenter(S_L, P_L, count, **engine_kw)
    raise ValueError(
        f"selection.strategy: unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"
    )


def random_subset(m: int, count: int, seed: int) -> list[int]:
    """min(count, m) distinct indices of range(m), drawn uniformly (seeded), sorted ascending.
    The baseline for a selection's diversity (LightlyOne)."""
    m = int(m)
    count = _count(count, m)
    if count == 0:
        return []
    rng = np.random.default_rng(seed)
    return sorted(int(j) for j in rng.choice(m, size=count, replace=False))
