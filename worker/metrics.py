"""The paper's distances and LightlyOne's diversity/coverage: pure functions on arrays.

Shapes: P_L (n, z), S_L (m, z), the rows of one (PCA) space. Every distance goes through
worker.engine (blocked, float64 accumulation); nothing here builds an m x n matrix, prints
or does I/O. `**engine_kw` is passed on to the engine: memory_budget_mb, precision, device.

Definitions (docs/method.md §1-2; paper section 3.2, equation sets 1-7):

- I_dist(S, P)_j = sum_k ||s_j - p_k||_2, a sum that grows with n = |P|.
- O_dist(S, P) = mean_j I_dist_j.
- Size-free (method.md §1.10): I_dist_j / n, the mean distance of image j to P, and its mean over S,
  o_dist_mean = O_dist / n, comparable across jobs with different |P|.
- Diversity: distance of each sample to its nearest *other* sample (by index, so exact
  duplicates give 0). A set of fewer than 2 samples has no neighbour: values empty and
  mean/min/max None.
- Coverage of inputs by outputs: distance of each input to its nearest output; max is the
  k-center covering radius (Sener & Savarese 2017, theorem 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worker import engine


def _vector(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------- distances


def image_dataset_distances(S_L: np.ndarray, P_L: np.ndarray, **engine_kw: Any) -> np.ndarray:
    """I_dist(S, P)_j = sum_k ||s_j - p_k||_2 (method.md §1.4).
    S_L (m, z), P_L (n, z) -> (m,) float64."""
    return engine.row_distance_sums(S_L, P_L, **engine_kw)


def dataset_distance(i_dist: np.ndarray) -> float:
    """O_dist(S, P) = mean_j I_dist_j (method.md §1.5).
    i_dist (m,), m >= 1 (ValueError if empty)."""
    i_dist = _vector(i_dist, "i_dist")
    if i_dist.size == 0:
        raise ValueError("i_dist: O_dist of an empty set is undefined")
    return float(i_dist.mean())


def mean_distance_per_image(i_dist: np.ndarray, n: int) -> np.ndarray:
    """Size-free distance (method.md §1.10): I_dist_j / n, the mean distance of image j to
    P's n images. (m,) -> (m,) float64."""
    if n < 1:
        raise ValueError(f"n: the primary set must hold at least one image, got {n}")
    return _vector(i_dist, "i_dist") / float(n)


def o_dist_mean(i_dist: np.ndarray, n: int) -> float:
    """Size-free O_dist (method.md §1.10): mean_j I_dist_j / n = O_dist / n, the mean distance
    over all (s, p) pairs. Compares with stats.null_o_dist_means and across |P|."""
    return dataset_distance(mean_distance_per_image(i_dist, n))


def scaled_dataset_distances(o_dist: dict[str, float]) -> dict[str, float]:
    """Table-2 scaling (method.md §1.6): O_dist_i / sum_k O_dist_k over the secondaries, so the
    values sum to 1. All O_dist zero -> equal shares 1/K; empty dict -> {}."""
    if not o_dist:
        return {}
    total = float(sum(float(v) for v in o_dist.values()))
    if total == 0.0:
        return {k: 1.0 / len(o_dist) for k in o_dist}
    return {k: float(v) / total for k, v in o_dist.items()}


def min_max_scale(x: np.ndarray) -> np.ndarray:
    """x' = (x - min) / (max - min) over one S (method.md §1.7); all zeros when max == min.
    (m,) -> (m,) float64; the maximum maps to exactly 1.0."""
    x = _vector(x, "x")
    if x.size == 0:
        return x.copy()
    lo, hi = x.min(), x.max()
    span = hi - lo
    return np.zeros_like(x) if span == 0 else (x - lo) / span


# --------------------------------------------------------------------------- summaries


def summary_stats(x: np.ndarray) -> dict[str, float | None]:
    """{mean, std, min, max, p50, p90}: std with ddof=0, percentiles numpy 'linear'.
    An empty x gives None for every field (the report's "could not be computed")."""
    x = _vector(x, "x")
    if x.size == 0:
        return dict.fromkeys(("mean", "std", "min", "max", "p50", "p90"))
    p50, p90 = np.percentile(x, [50, 90])
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
        "p50": float(p50),
        "p90": float(p90),
    }


def sorted_splits(
    i_dist: np.ndarray, parts: int, scores: np.ndarray | None = None
) -> list[dict[str, float | int | None]]:
    """Intra-dataset analysis (method.md §1.8, paper section 4.2.1, table 3).

    Images sorted by I_dist ascending (stable: ties keep index order), cut into `parts`
    near-equal parts with np.array_split (the first parts take the extra images). Per part:
    {mean, std, count} of I_dist (std ddof=0) and, when `scores` (m,) is given (e.g. the
    per-image F-score), {score_mean, score_std}: table 3's F(mu, sigma) cell. An empty part
    (parts > m) has count 0 and None statistics.
    """
    i_dist = _vector(i_dist, "i_dist")
    if int(parts) < 1:
        raise ValueError(f"parts: must be >= 1, got {parts}")
    s = None
    if scores is not None:
        s = _vector(scores, "scores")
        if s.shape != i_dist.shape:
            raise ValueError(f"scores: shape {s.shape} does not match i_dist {i_dist.shape}")
    order = np.argsort(i_dist, kind="stable")
    out: list[dict[str, float | int | None]] = []
    for idx in np.array_split(order, int(parts)):
        empty = len(idx) == 0
        part: dict[str, float | int | None] = {
            "mean": None if empty else float(i_dist[idx].mean()),
            "std": None if empty else float(i_dist[idx].std()),
            "count": int(len(idx)),
        }
        if s is not None:
            part["score_mean"] = None if empty else float(s[idx].mean())
            part["score_std"] = None if empty else float(s[idx].std())
        out.append(part)
    return out


# --------------------------------------------------------------------------- diversity


def diversity(X: np.ndarray, **engine_kw: Any) -> dict[str, Any]:
    """LightlyOne diversity (method.md §2.1): values_i = min_{j != i} ||x_i - x_j||_2, the nearest
    OTHER sample excluded by index (exact duplicates give 0). X (N, z).

    Returns {mean, min, max, values (N,) float64}. N < 2: no neighbour exists, so values is
    empty and mean/min/max are None.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X: expected a 2-D array (N, z), got shape {X.shape}")
    if len(X) < 2:
        return diversity_from_nearest(np.zeros(0))
    values, _ = engine.nearest_distances(X, X, exclude_self=True, **engine_kw)
    return diversity_from_nearest(values)


def diversity_from_nearest(values: np.ndarray) -> dict[str, Any]:
    """Diversity from precomputed nearest-other distances (e.g. engine.self_pass(X).distance):
    {mean, min, max, values (N,)}; fewer than 2 samples (no finite value) -> None fields."""
    values = _vector(values, "values")
    if len(values) < 2:
        return {"mean": None, "min": None, "max": None, "values": np.zeros(0)}
    return {
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "values": values,
    }


def pool_diversity(
    P: np.ndarray, Q: np.ndarray, p_nearest_other: np.ndarray, **engine_kw: Any
) -> dict[str, Any]:
    """diversity(vstack([P, Q])) without a pass over P x P: P (n, z), Q (k, z), and
    p_nearest_other (n,) = each P row's nearest-other distance within P (engine.self_pass).

    values = [min(p_nearest_other_i, min_q ||p_i - q||) for P rows;
              min(min_p ||q_j - p||, min_{l != j} ||q_j - q_l||) for Q rows]:
    O(k (n + k)) distances instead of O((n + k)^2). Same {mean, min, max, values}."""
    P, Q = np.asarray(P), np.asarray(Q)
    d_self = _vector(p_nearest_other, "p_nearest_other")
    if d_self.shape != (len(P),):
        raise ValueError(f"p_nearest_other: shape {d_self.shape} does not match P ({len(P)})")
    if len(Q) == 0:
        return diversity_from_nearest(d_self if len(P) >= 2 else np.zeros(0))
    if len(P) == 0:
        return diversity(Q, **engine_kw)
    p_to_q, _ = engine.nearest_distances(P, Q, **engine_kw)
    q_to_p, _ = engine.nearest_distances(Q, P, **engine_kw)
    if len(Q) >= 2:
        q_self, _ = engine.nearest_distances(Q, Q, exclude_self=True, **engine_kw)
        q_to_p = np.minimum(q_to_p, q_self)
    return diversity_from_nearest(np.concatenate([np.minimum(d_self, p_to_q), q_to_p]))


def coverage(inputs: np.ndarray, outputs: np.ndarray, **engine_kw: Any) -> dict[str, Any]:
    """Coverage of `inputs` (m, z) by `outputs` (k, z) (method.md §2.2): values_j = min_i
    ||in_j - out_i||_2. Returns {mean, max, values (m,)}; max is the k-center covering radius.
    No inputs, or no outputs (nothing covers), -> mean/max None (values inf when no outputs)."""
    inputs, outputs = np.asarray(inputs), np.asarray(outputs)
    values, _ = engine.nearest_distances(inputs, outputs, **engine_kw)
    return coverage_from_nearest(values, len(outputs))


def coverage_from_nearest(values: np.ndarray, n_outputs: int) -> dict[str, Any]:
    """Coverage from precomputed nearest-output distances (m,) (e.g. engine.pair_pass's
    nearest_distance): {mean, max, values}; no inputs or no outputs -> mean/max None."""
    values = _vector(values, "values")
    if len(values) == 0 or n_outputs == 0:
        return {"mean": None, "max": None, "values": values}
    return {"mean": float(values.mean()), "max": float(values.max()), "values": values}


def histogram(values: np.ndarray, bins: int) -> dict[str, list]:
    """Counts in `bins` equal-width bins over [min, max] of the finite values (np.histogram;
    the last bin is closed). {edges: bins + 1 floats, counts: bins ints}; no finite values ->
    empty lists. Non-finite values are left out."""
    if int(bins) < 1:
        raise ValueError(f"bins: must be >= 1, got {bins}")
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(values, bins=int(bins))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def class_distances(i_dist: np.ndarray, labels: list[str | None], n_primary: int) -> list[dict]:
    """Per class c: count, o_dist_c = mean of I_dist over the samples labelled c, and
    o_dist_mean_c = o_dist_c / n_primary. i_dist (m,), labels (m,) (None = no class, left out).
    Sorted by class name."""
    values = np.asarray(i_dist, dtype=np.float64)
    out = []
    for name in sorted({lab for lab in labels if lab is not None}):
        sel = values[[k for k, lab in enumerate(labels) if lab == name]]
        o = float(sel.mean()) if len(sel) else None
        mean = o_dist_mean(sel, n_primary) if o is not None and n_primary else None
        out.append({"name": name, "count": int(len(sel)), "o_dist": o, "o_dist_mean": mean})
    return out


# --------------------------------------------------------------------------- energy distance


def energy_from_sums(
    cross_sum: float, within_s_sum: float, within_p_sum: float, m: int, n: int
) -> dict[str, float]:
    """Energy distance (Szekely and Rizzo; method.md §12.1) from three distance sums, as a
    V-statistic (every ordered pair, self-pairs at distance 0 included):

        cross            = E|s - p|  = cross_sum / (m n)      (= o_dist_mean, §1.10)
        within_secondary = E|s - s'| = within_s_sum / m^2
        within_primary   = E|p - p'| = within_p_sum / n^2
        distance         = 2 cross - within_secondary - within_primary   (>= 0)
        coefficient      = distance / (2 cross)  in [0, 1] (0 when cross is 0)

    cross_sum = sum of the S x P row sums (I_dist), within_*_sum = sum of the S x S / P x P
    row sums. The V-statistic is the energy distance of the two empirical distributions: never
    negative (rounding aside, clamped at 0) and exactly 0 for identical sets; it exceeds the
    population value by about E|s - s'| / m + E|p - p'| / n on average.
    """
    if m < 1 or n < 1:
        raise ValueError(f"energy distance needs images on both sides, got m={m}, n={n}")
    cross = float(cross_sum) / (m * n)
    ws = float(within_s_sum) / (m * m)
    wp = float(within_p_sum) / (n * n)
    distance = max(0.0, 2.0 * cross - ws - wp)
    return {
        "distance": distance,
        "cross": cross,
        "within_secondary": ws,
        "within_primary": wp,
        "coefficient": distance / (2.0 * cross) if cross > 0 else 0.0,
    }


def energy_distance(S_L: np.ndarray, P_L: np.ndarray, **engine_kw: Any) -> dict[str, float]:
    """energy_from_sums of S_L (m, z) and P_L (n, z): one S x P, one S x S and one P x P pass
    of engine.row_distance_sums (float64 accumulation)."""
    S_L, P_L = np.asarray(S_L), np.asarray(P_L)
    cross = engine.row_distance_sums(S_L, P_L, **engine_kw).sum()
    ws = engine.row_distance_sums(S_L, S_L, **engine_kw).sum()
    wp = engine.row_distance_sums(P_L, P_L, **engine_kw).sum()
    return energy_from_sums(cross, ws, wp, len(S_L), len(P_L))


SPREAD_TOLERANCE = 0.1  # |within_secondary / within_primary - 1| below this: "as varied as P"


def energy_explanation(terms: dict[str, float]) -> str:
    """The energy decomposition in words (method.md §12.2): whether S is shifted (its images
    are farther from P's than either set's images are from each other) and whether it is less
    or more varied than P (its own mean pairwise distance against P's)."""
    cross, ws, wp = terms["cross"], terms["within_secondary"], terms["within_primary"]
    d = terms["distance"]
    parts = []
    if cross > max(ws, wp) * (1 + 1e-12) and d > 0:
        parts.append(
            f"S is shifted: an S image lies {cross:.4g} from a P image on average, farther "
            f"than P's images lie from each other ({wp:.4g}) and S's from each other ({ws:.4g})"
        )
    if wp > 0:
        ratio = ws / wp
        if ratio < 1 - SPREAD_TOLERANCE:
            parts.append(
                f"S is less varied than P: its images lie {ratio:.0%} as far from each other "
                f"as P's ({ws:.4g} vs {wp:.4g}), so o_dist_mean understates how far it is"
            )
        elif ratio > 1 + SPREAD_TOLERANCE:
            parts.append(
                f"S is more varied than P: its images lie {ratio:.0%} as far from each other "
                f"as P's ({ws:.4g} vs {wp:.4g})"
            )
    if not parts:
        parts.append(
            f"S is as varied as P and not shifted: cross distance {cross:.4g} against spreads "
            f"{ws:.4g} (S) and {wp:.4g} (P)"
        )
    return (
        f"Energy distance {d:.4g} = 2 x {cross:.4g} - {ws:.4g} - {wp:.4g}. " + "; ".join(parts)
    ) + "."


# --------------------------------------------------------------------------- novelty


def kth_nearest_distances(
    queries: np.ndarray,
    points: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    **engine_kw: Any,
) -> np.ndarray:
    """Distance from each query (m, z) to its k-th nearest point (n, z), float64 (m,).

    exclude_self: queries and points are the same set and row j ignores point j (by index:
    leave-one-out). k = 1 goes through engine.nearest_distances (tiled); k > 1 through
    direct float64 differences in row blocks (memory ~ 64 MB per block). A query with fewer
    than k admissible points gets inf."""
    queries, points = np.asarray(queries, np.float64), np.asarray(points, np.float64)
    if int(k) < 1:
        raise ValueError(f"novelty k: must be at least 1, got {k}")
    available = len(points) - (1 if exclude_self else 0)
    if k > available:
        return np.full(len(queries), np.inf)
    if k == 1:
        d, _ = engine.nearest_distances(queries, points, exclude_self=exclude_self, **engine_kw)
        return d
    n, z = points.shape
    mean = points.mean(axis=0) if n else np.zeros(z)
    pc = points - mean
    qc = queries - mean
    out = np.empty(len(queries))
    step = max(1, int(64 * 1024 * 1024 // (8 * max(1, n) * max(1, z))))
    for s in range(0, len(queries), step):
        e = min(s + step, len(queries))
        d = np.sqrt(((qc[s:e, None, :] - pc[None, :, :]) ** 2).sum(-1))
        if exclude_self:
            d[np.arange(e - s), np.arange(s, e)] = np.inf
        out[s:e] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def novelty_threshold(loo: np.ndarray, quantile: float) -> float:
    """P's novelty threshold (method.md §12.3): the q-quantile of P's leave-one-out k-NN
    distances `loo` (n,), numpy method 'higher' (an order statistic, so an in-distribution
    image exceeds it with probability at most 1 - q)."""
    loo = _vector(loo, "loo")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"novelty quantile: must lie in (0, 1), got {quantile}")
    finite = loo[np.isfinite(loo)]
    if finite.size == 0:
        raise ValueError("novelty: P needs at least k + 1 images for leave-one-out distances")
    return float(np.quantile(finite, quantile, method="higher"))


def novelty_scores(d: np.ndarray, loo: np.ndarray) -> dict[str, np.ndarray]:
    """Per S image, its k-NN distance to P `d` (m,) against P's leave-one-out k-NN distances
    `loo` (n,) (method.md §12.3):

        novelty_j  = #{i : loo_i < d_j} / n               (in [0, 1]; higher = more novel)
        p_value_j  = (1 + #{i : loo_i >= d_j}) / (n + 1)  (conformal, in (0, 1])

    Returns {novelty (m,), p_value (m,)}."""
    d = _vector(d, "d")
    loo = np.sort(_vector(loo, "loo"))
    n = loo.size
    below = np.searchsorted(loo, d, side="left")  # #{loo < d}
    return {"novelty": below / n, "p_value": (1.0 + (n - below)) / (n + 1.0)}


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): 1 for k <= 0, else I_p(k, n - k + 1)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    from scipy.special import betainc

    return float(betainc(k, n - k + 1, p))


def novelty_summary(d: np.ndarray, loo: np.ndarray, quantile: float) -> dict[str, Any]:
    """Novelty of a set (method.md §12.3): an image is novel when d_j > threshold (P's
    q-quantile); novel_fraction against the base rate 1 - q, with the one-sided binomial
    p-value P(X >= novel_count), X ~ Binomial(m, 1 - q) = I_{1-q}(k, m - k + 1), the
    regularised incomplete beta (scipy.special, so scipy.stats is not imported). Returns
    {threshold, novel (m,) bool, novel_count, novel_fraction, base_rate, p_value}."""

    d = _vector(d, "d")
    threshold = novelty_threshold(loo, quantile)
    novel = d > threshold
    count = int(novel.sum())
    m = int(d.size)
    base = 1.0 - float(quantile)
    return {
        "threshold": threshold,
        "novel": novel,
        "novel_count": count,
        "novel_fraction": count / m if m else None,
        "base_rate": base,
        "p_value": binomial_upper_tail(count, m, base) if m else None,
    }
