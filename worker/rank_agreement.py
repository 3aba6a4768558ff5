"""Rank agreement: Kendall tau, Spearman and the agreement of extractors (moved out of
worker.stats).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np

# --------------------------------------------------------------------------- rank agreement


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b of two paired sequences (scipy.stats.kendalltau); None when fewer than
    2 pairs or undefined (a constant sequence)."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau: lengths differ ({len(a)} and {len(b)})")
    if len(a) < 2:
        return None
    from scipy import stats as sstats  # 0.5 s to import: only when ranks are compared

    return _finite_or_none(sstats.kendalltau(a, b).statistic)


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho (scipy.stats.spearmanr, average ranks for ties); None when fewer than 2
    pairs or undefined (a constant sequence)."""
    if len(a) != len(b):
        raise ValueError(f"spearman: lengths differ ({len(a)} and {len(b)})")
    if len(a) < 2:
        return None
    from scipy import stats as sstats

    return _finite_or_none(sstats.spearmanr(a, b).statistic)


def rank_correlations(a: Sequence[float], b: Sequence[float]) -> dict[str, float | None]:
    """{spearman, kendall_tau} of two paired sequences (None when undefined)."""
    return {"spearman": spearman(a, b), "kendall_tau": kendall_tau(a, b)}


def model_agreement(
    o_dist: dict[str, dict[str, float]], i_dist: dict[str, dict[str, Sequence[float]]]
) -> dict[str, Any]:
    """Agreement between extractors (method.md §4.6). o_dist[model][secondary] -> O_dist;
    i_dist[model][secondary] -> per-image I_dist (same image order for every model).

    pairs[]: for each pair of models, rank correlations of O_dist across secondaries and of
    per-image I_dist within each secondary. rank_differs: secondaries whose rank by O_dist
    (1 = farthest; ties by secondary order) is not the same under every model.
    """
    models = list(o_dist)
    if not models:
        return {"pairs": [], "rank_differs": []}
    names = list(o_dist[models[0]])
    pairs = []
    for a, b in combinations(models, 2):
        pairs.append(
            {
                "model_a": a,
                "model_b": b,
                "o_dist": rank_correlations(
                    [o_dist[a][s] for s in names], [o_dist[b][s] for s in names]
                ),
                "i_dist": {s: rank_correlations(i_dist[a][s], i_dist[b][s]) for s in names},
            }
        )
    ranks = {
        mdl: {s: r for r, s in enumerate(sorted(names, key=lambda x: -o_dist[mdl][x]))}
        for mdl in models
    }
    differing = [s for s in names if len({ranks[mdl][s] for mdl in models}) > 1]
    return {"pairs": pairs, "rank_differs": differing}
