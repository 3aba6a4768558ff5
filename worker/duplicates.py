"""Exact and near duplicates between P and S (moved out of worker.stats; docs/method.md §4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from worker import engine

NEAR_DUPLICATE_FRACTION = 0.1  # near duplicate: closer than 0.1 x median NN distance in P


# --------------------------------------------------------------------------- duplicates


def near_duplicate_threshold(
    P: np.ndarray, fraction: float = NEAR_DUPLICATE_FRACTION, **engine_kw: Any
) -> float:
    """Calibrated near-duplicate threshold: `fraction` x the median over P of each image's
    distance to its nearest other image of P (engine.nearest_distances). 0.0 when |P| < 2."""
    P = np.asarray(P)
    if len(P) < 2:
        return 0.0
    d, _ = engine.nearest_distances(P, P, exclude_self=True, **engine_kw)
    return float(fraction * np.median(d))


def threshold_from_nearest(
    p_nearest_other: np.ndarray, fraction: float = NEAR_DUPLICATE_FRACTION
) -> float:
    """near_duplicate_threshold from P's precomputed nearest-other distances (n,)
    (engine.self_pass(P).distance): fraction x their median; 0.0 when n < 2."""
    d = np.asarray(p_nearest_other, dtype=np.float64)
    return float(fraction * np.median(d)) if len(d) >= 2 else 0.0


def exact_duplicate_pairs(hashes: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of items with the same content hash within one set. A group of k
    identical items gives k - 1 pairs, each later item paired with the group's first."""
    first: dict[str, int] = {}
    pairs = []
    for j, h in enumerate(hashes):
        if h in first:
            pairs.append((first[h], j))
        else:
            first[h] = j
    return pairs


def near_duplicate_pairs(
    X: np.ndarray,
    threshold: float,
    *,
    nearest: tuple[np.ndarray, np.ndarray] | None = None,
    **engine_kw: Any,
) -> list[tuple[int, int, float]]:
    """Within one set X (N, z): each item's nearest other item (by index; ties to the lower
    index) when closer than `threshold` or at distance 0, as (i, j, distance) with i < j,
    each pair once, sorted. Found with engine.nearest_distances (no N x N matrix), or from
    `nearest` = (distances (N,), indices (N,)) of a pass already made (engine.self_pass)."""
    X = np.asarray(X)
    if len(X) < 2:
        return []
    if nearest is None:
        d, nn = engine.nearest_distances(X, X, exclude_self=True, **engine_kw)
    else:
        d, nn = np.asarray(nearest[0]), np.asarray(nearest[1])
    found: dict[tuple[int, int], float] = {}
    for j in np.flatnonzero((d < threshold) | (d == 0)):
        k = int(nn[j])
        found.setdefault((min(int(j), k), max(int(j), k)), float(d[j]))
    return sorted((a, b, dist) for (a, b), dist in found.items())


def find_duplicates(
    S: np.ndarray,
    P: np.ndarray,
    *,
    ids: Sequence[str],
    primary_ids: Sequence[str],
    hashes: Sequence[str] | None = None,
    primary_hashes: Sequence[str] | None = None,
    threshold: float | None = None,
    within_nearest: tuple[np.ndarray, np.ndarray] | None = None,
    primary_nearest: tuple[np.ndarray, np.ndarray] | None = None,
    **engine_kw: Any,
) -> dict[str, Any]:
    """Exact and near duplicates within S and between S and P (method.md §4.4). S (m, z), P (n, z).

    within_nearest / primary_nearest: (distances (m,), indices (m,)) of S's nearest other
    S row and of its nearest P row, when the passes were already made (engine.self_pass,
    engine.pair_pass); otherwise they are computed here.

    threshold None -> near_duplicate_threshold(P). Exact means equal content hashes (only
    when hashes are given); near means distance < threshold or distance == 0.
    - within: exact_duplicate_pairs(hashes) together with near_duplicate_pairs(S), each pair
      once, {id_a, id_b, distance, exact}, in S order; exact if the two hashes are equal.
    - with_primary: at most one entry per S image, in S order: {id, primary_id, distance,
      exact}; the first P image with the same hash if there is one (exact), else its nearest
      P image when that is a near duplicate.
    Returns {threshold, within, with_primary}. Distances are float64 in the given space.
    """
    S, P = np.asarray(S), np.asarray(P)
    if len(ids) != len(S) or len(primary_ids) != len(P):
        raise ValueError("ids / primary_ids must align with the rows of S / P")
    if (hashes is not None and len(hashes) != len(S)) or (
        primary_hashes is not None and len(primary_hashes) != len(P)
    ):
        raise ValueError("hashes / primary_hashes must align with the rows of S / P")
    t = near_duplicate_threshold(P, **engine_kw) if threshold is None else float(threshold)

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
        return float(np.sqrt(diff @ diff))

    pairs: dict[tuple[int, int], float] = {}
    if hashes is not None:
        for a, b in exact_duplicate_pairs(hashes):
            pairs[(a, b)] = dist(S[a], S[b])
    for a, b, d in near_duplicate_pairs(S, t, nearest=within_nearest, **engine_kw):
        pairs.setdefault((a, b), d)
    within = [
        {
            "id_a": ids[a],
            "id_b": ids[b],
            "distance": d,
            "exact": bool(hashes is not None and hashes[a] == hashes[b]),
        }
        for (a, b), d in sorted(pairs.items())
    ]

    with_primary = []
    if len(S) and len(P):
        p_index: dict[str, int] = {}
        for k, h in enumerate(primary_hashes or []):
            p_index.setdefault(h, k)
        if primary_nearest is None:
            d, nn = engine.nearest_distances(S, P, **engine_kw)
        else:
            d, nn = np.asarray(primary_nearest[0]), np.asarray(primary_nearest[1])
        for j in range(len(S)):
            k = p_index.get(hashes[j]) if hashes is not None else None
            if k is not None:
                entry = {"id": ids[j], "primary_id": primary_ids[k], "distance": dist(S[j], P[k])}
                with_primary.append({**entry, "exact": True})
            elif d[j] < t or d[j] == 0:
                k = int(nn[j])
                entry = {"id": ids[j], "primary_id": primary_ids[k], "distance": float(d[j])}
                with_primary.append({**entry, "exact": False})
    return {"threshold": t, "within": within, "with_primary": with_primary}
