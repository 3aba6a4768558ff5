"""The paper's distances and LightlyOne's diversity/coverage: pure functions on arrays.

Shapes: P_L (n, z), S_L (m, z). Distances go through worker.engine (blocked, float64 sums);
nothing here builds an n x m matrix or does I/O.
"""

from __future__ import annotations

import numpy as np

from worker import engine


def image_dataset_distances(S_L: np.ndarray, P_L: np.ndarray, **engine_kw) -> np.ndarray:
    """I_dist(S, P)_j = sum_k ||s_j - p_k||_2 (DESIGN 1.4, paper eq. set 1-7). Shape (m,)."""
    return engine.row_distance_sums(S_L, P_L, **engine_kw)


def dataset_distance(i_dist: np.ndarray) -> float:
    """O_dist(S, P) = mean_j I_dist_j (DESIGN 1.5)."""
    return float(np.mean(np.asarray(i_dist, dtype=np.float64)))


def mean_distance_per_image(i_dist: np.ndarray, n: int) -> np.ndarray:
    """Size-free distance: I_dist_j / n, the mean distance of image j to P."""
    return np.asarray(i_dist, dtype=np.float64) / float(n)


def scaled_dataset_distances(o_dist: dict[str, float]) -> dict[str, float]:
    """Table-2 scaling (DESIGN 1.6): each O_dist over the sum across secondaries."""
    total = float(sum(o_dist.values()))
    if total == 0.0:
        return {k: 1.0 / len(o_dist) for k in o_dist}
    return {k: float(v) / total for k, v in o_dist.items()}


def min_max_scale(x: np.ndarray) -> np.ndarray:
    """x' = (x - min) / (max - min) (DESIGN 1.7); all zeros when max == min."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    span = x.max() - x.min()
    return np.zeros_like(x) if span == 0 else (x - x.min()) / span


def summary_stats(x: np.ndarray) -> dict[str, float]:
    """mean, std (population, ddof=0), min, max, p50, p90 (numpy linear percentiles)."""
    x = np.asarray(x, dtype=np.float64)
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
        "p50": float(np.percentile(x, 50)),
        "p90": float(np.percentile(x, 90)),
    }


def sorted_splits(
    i_dist: np.ndarray, parts: int, scores: np.ndarray | None = None
) -> list[dict[str, float | int | None]]:
    """Sort by I_dist ascending, split into `parts` near-equal parts (np.array_split);
    per part the mean, std (ddof=0) and count of I_dist, and of `scores` (e.g. per-image
    F) when given: table 3's F(mu, sigma) cells (DESIGN 1.8)."""
    i_dist = np.asarray(i_dist, dtype=np.float64)
    order = np.argsort(i_dist, kind="stable")
    out = []
    for idx in np.array_split(order, parts):
        part: dict[str, float | int | None] = {
            "mean": float(i_dist[idx].mean()) if len(idx) else None,
            "std": float(i_dist[idx].std()) if len(idx) else None,
            "count": int(len(idx)),
        }
        if scores is not None:
            s = np.asarray(scores, dtype=np.float64)[idx]
            part["score_mean"] = float(s.mean()) if len(idx) else None
            part["score_std"] = float(s.std()) if len(idx) else None
        out.append(part)
    return out


def diversity(X: np.ndarray, **engine_kw) -> dict:
    """Distance of each sample to its nearest OTHER sample of the set, excluded by index
    (exact duplicates give 0). {mean, min, max, values (N,)}; a one-sample set has no
    neighbour: values empty, mean/min/max None."""
    X = np.asarray(X)
    if len(X) < 2:
        return {"mean": None, "min": None, "max": None, "values": np.zeros(0)}
    values, _ = engine.nearest_distances(X, X, exclude_self=True, **_nn_kw(engine_kw))
    return {
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "values": values,
    }


def coverage(inputs: np.ndarray, outputs: np.ndarray, **engine_kw) -> dict:
    """For each input sample, the distance to its nearest output sample: {mean, max, values}.
    The max is the k-center covering radius (Sener & Savarese 2017, theorem 1)."""
    values, _ = engine.nearest_distances(inputs, outputs, **_nn_kw(engine_kw))
    return {"mean": float(values.mean()), "max": float(values.max()), "values": values}


def histogram(values: np.ndarray, bins: int) -> dict[str, list]:
    """Counts of `values` in `bins` equal-width bins over their range."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _nn_kw(engine_kw: dict) -> dict:
    return {k: v for k, v in engine_kw.items() if k in ("memory_budget_mb", "device")}
