"""Yardsticks for the distances (issue 8): null calibration, MMD, FID, KID, duplicates,
rank agreement. Pure functions on arrays; no I/O.

Shapes: P (n, z), S (m, z), both in the same (PCA) space.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy import stats as sstats

from worker import engine

MMD_MAX_SAMPLES = 1000  # per set; larger sets are subsampled (seeded) for the MMD test
NEAR_DUPLICATE_FRACTION = 0.1  # near duplicate: closer than 0.1 x median NN distance in P


def null_o_dist_means(P: np.ndarray, repeats: int, seed: int) -> np.ndarray:
    """O_dist (size-free: mean of I_dist / n_B) between random halves A, B of P, `repeats`
    times: how far P is from itself. Shape (repeats,); empty when |P| < 4."""
    n = len(P)
    if n < 4:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    out = np.empty(repeats)
    for r in range(repeats):
        order = rng.permutation(n)
        a, b = P[order[: n // 2]], P[order[n // 2 :]]
        out[r] = engine.row_distance_sums(a, b).mean() / len(b)
    return out


def o_dist_ratio(o_dist_mean: float, null: np.ndarray) -> float | None:
    """o_dist_mean(S, P) / mean of the null: 1 is "as far as P is from itself"."""
    if len(null) == 0 or null.mean() == 0:
        return None
    return float(o_dist_mean / null.mean())


def o_dist_percentile(o_dist_mean: float, null: np.ndarray) -> float | None:
    """Percent of null values strictly below the observed o_dist_mean."""
    if len(null) == 0:
        return None
    return float(100.0 * np.mean(null < o_dist_mean))


def _sq_dists(X: np.ndarray) -> np.ndarray:
    sq = (X * X).sum(1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * X @ X.T, 0.0)


def median_heuristic(X: np.ndarray, Y: np.ndarray) -> float:
    """sigma = median of the Euclidean distances between all distinct pairs of X u Y."""
    Z = np.vstack([X, Y]).astype(np.float64)
    Z = Z - Z.mean(0)
    d = np.sqrt(_sq_dists(Z)[np.triu_indices(len(Z), k=1)])
    return float(np.median(d))


def _mmd2_from_kernel(K: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for label columns a (N, P) in {0, 1} (1 = X) over a kernel with unit
    diagonal: Sxx/(n(n-1)) + Syy/(m(m-1)) - 2 Sxy/(nm), off-diagonal sums."""
    b = 1.0 - a
    n, m = a.sum(0), b.sum(0)
    Ka, Kb = K @ a, K @ b
    diag = np.diag(K)[:, None]
    sxx = (a * Ka).sum(0) - (a * diag).sum(0)
    syy = (b * Kb).sum(0) - (b * diag).sum(0)
    sxy = (a * Kb).sum(0)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (n * m)


def mmd_unbiased(X: np.ndarray, Y: np.ndarray, sigma: float) -> float:
    """Unbiased MMD^2 with k(x, y) = exp(-||x - y||^2 / (2 sigma^2)) (Gretton et al. 2012)."""
    Z = np.vstack([X, Y]).astype(np.float64)
    Z = Z - Z.mean(0)
    K = np.exp(-_sq_dists(Z) / (2.0 * sigma**2))
    a = np.zeros((len(Z), 1))
    a[: len(X)] = 1.0
    return float(_mmd2_from_kernel(K, a)[0])


def mmd_test(
    X: np.ndarray, Y: np.ndarray, permutations: int, seed: int, sigma: float | None = None
) -> dict:
    """Gaussian-kernel MMD^2 (unbiased), median-heuristic sigma, permutation p-value
    (1 + #{perm >= obs}) / (1 + permutations). Sets above MMD_MAX_SAMPLES are subsampled."""
    rng = np.random.default_rng(seed)
    if len(X) > MMD_MAX_SAMPLES:
        X = X[np.sort(rng.choice(len(X), MMD_MAX_SAMPLES, replace=False))]
    if len(Y) > MMD_MAX_SAMPLES:
        Y = Y[np.sort(rng.choice(len(Y), MMD_MAX_SAMPLES, replace=False))]
    if len(X) < 2 or len(Y) < 2:
        return {"statistic": None, "p_value": None, "sigma": None, "permutations": 0}
    sigma = median_heuristic(X, Y) if sigma is None else sigma
    if sigma <= 0:
        return {"statistic": 0.0, "p_value": 1.0, "sigma": 0.0, "permutations": 0}
    Z = np.vstack([X, Y]).astype(np.float64)
    Z = Z - Z.mean(0)
    K = np.exp(-_sq_dists(Z) / (2.0 * sigma**2))
    labels = np.zeros((len(Z), 1))
    labels[: len(X)] = 1.0
    observed = float(_mmd2_from_kernel(K, labels)[0])
    exceed = 0
    for start in range(0, permutations, 100):
        cols = min(100, permutations - start)
        perm = np.stack([rng.permutation(labels[:, 0]) for _ in range(cols)], axis=1)
        exceed += int((_mmd2_from_kernel(K, perm) >= observed).sum())
    return {
        "statistic": observed,
        "p_value": (1 + exceed) / (1 + permutations),
        "sigma": sigma,
        "permutations": permutations,
    }


def _sqrtm_psd(A: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh((A + A.T) / 2.0)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def fid(X: np.ndarray, Y: np.ndarray) -> float | None:
    """Frechet distance of Gaussians fitted to X and Y (Heusel et al. 2017):
    ||mu_x - mu_y||^2 + Tr(Sx + Sy - 2 (Sx^1/2 Sy Sx^1/2)^1/2), via symmetric eigh."""
    if len(X) < 2 or len(Y) < 2:
        return None
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    sx = np.atleast_2d(np.cov(X, rowvar=False))
    sy = np.atleast_2d(np.cov(Y, rowvar=False))
    root = _sqrtm_psd(sx)
    w = np.linalg.eigvalsh(root @ sy @ root)
    cross = np.sqrt(np.clip(w, 0, None)).sum()
    diff = X.mean(0) - Y.mean(0)
    return float(max(diff @ diff + np.trace(sx) + np.trace(sy) - 2.0 * cross, 0.0))


def kid(
    X: np.ndarray, Y: np.ndarray, seed: int, subsets: int = 50, subset_size: int = 1000
) -> dict:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the kernel
    k(x, y) = (x.y / d + 1)^3, averaged over random subsets. {mean, std}."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    size = min(subset_size, len(X), len(Y))
    if size < 2:
        return {"mean": None, "std": None}
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    values = []
    for _ in range(subsets):
        x = X[rng.choice(len(X), size, replace=False)]
        y = Y[rng.choice(len(Y), size, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        n = size
        values.append(
            (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
            + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2.0 * kxy.mean()
        )
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def near_duplicate_threshold(P: np.ndarray) -> float:
    """NEAR_DUPLICATE_FRACTION x the median nearest-other distance within P (0 if |P| < 2)."""
    if len(P) < 2:
        return 0.0
    d, _ = engine.nearest_distances(P, P, exclude_self=True)
    return float(NEAR_DUPLICATE_FRACTION * np.median(d))


def find_duplicates(
    S: np.ndarray,
    P: np.ndarray,
    *,
    ids: list[str],
    primary_ids: list[str],
    hashes: list[str] | None = None,
    primary_hashes: list[str] | None = None,
    threshold: float | None = None,
) -> dict:
    """Exact (same content hash, or distance exactly 0 without hashes) and near (distance
    below the calibrated threshold) duplicates, within S and between S and P.

    {threshold, within[] {id_a, id_b, distance, exact}, with_primary[] {id, primary_id,
    distance, exact}}; each within-pair listed once (id_a before id_b in S order)."""
    t = near_duplicate_threshold(P) if threshold is None else threshold
    within, with_primary = [], []
    if len(S) >= 2:
        d, nn = engine.nearest_distances(S, S, exclude_self=True)
        seen = set()
        for j in range(len(S)):
            k = int(nn[j])
            exact = hashes is not None and hashes[j] == hashes[k]
            if (exact or d[j] < t or d[j] == 0) and (min(j, k), max(j, k)) not in seen:
                seen.add((min(j, k), max(j, k)))
                a, b = min(j, k), max(j, k)
                within.append(
                    {
                        "id_a": ids[a],
                        "id_b": ids[b],
                        "distance": float(d[j]),
                        "exact": bool(exact or (hashes is None and d[j] == 0)),
                    }
                )
    if hashes is not None:
        listed = {(w["id_a"], w["id_b"]) for w in within}
        by_hash: dict[str, list[int]] = {}
        for j, h in enumerate(hashes):
            by_hash.setdefault(h, []).append(j)
        for group in by_hash.values():
            for a, b in combinations(group, 2):
                if (ids[a], ids[b]) not in listed:
                    within.append({"id_a": ids[a], "id_b": ids[b], "distance": 0.0, "exact": True})
    d, nn = engine.nearest_distances(S, P)
    p_index = {h: i for i, h in enumerate(primary_hashes or [])}
    for j in range(len(S)):
        exact_i = p_index.get(hashes[j]) if hashes is not None and primary_hashes else None
        if exact_i is not None:
            with_primary.append(
                {"id": ids[j], "primary_id": primary_ids[exact_i], "distance": 0.0, "exact": True}
            )
        elif d[j] < t or d[j] == 0:
            with_primary.append(
                {
                    "id": ids[j],
                    "primary_id": primary_ids[int(nn[j])],
                    "distance": float(d[j]),
                    "exact": bool(d[j] == 0 and hashes is None),
                }
            )
    within.sort(key=lambda w: (w["id_a"], w["id_b"]))
    return {"threshold": t, "within": within, "with_primary": with_primary}


def rank_correlations(a: list[float], b: list[float]) -> dict:
    """Spearman rho and Kendall tau of two paired lists (None when undefined)."""
    if len(a) < 2:
        return {"spearman": None, "kendall_tau": None}
    rho = sstats.spearmanr(a, b).statistic
    tau = sstats.kendalltau(a, b).statistic
    clean = lambda v: None if v is None or not np.isfinite(v) else float(v)  # noqa: E731
    return {"spearman": clean(rho), "kendall_tau": clean(tau)}


def model_agreement(
    o_dist: dict[str, dict[str, float]], i_dist: dict[str, dict[str, list[float]]]
) -> dict:
    """Rank agreement between extractors: of O_dist across secondaries, and of per-image
    I_dist within each secondary; secondaries whose rank differs between models flagged."""
    labels = list(o_dist)
    names = list(next(iter(o_dist.values())))
    pairs = []
    for a, b in combinations(labels, 2):
        entry = {"model_a": a, "model_b": b}
        entry["o_dist"] = rank_correlations(
            [o_dist[a][n] for n in names], [o_dist[b][n] for n in names]
        )
        entry["i_dist"] = {n: rank_correlations(i_dist[a][n], i_dist[b][n]) for n in names}
        pairs.append(entry)
    ranks = {
        m: {n: r for r, n in enumerate(sorted(names, key=lambda x: -o_dist[m][x]))} for m in labels
    }
    differing = [n for n in names if len({ranks[m][n] for m in labels}) > 1]
    return {"pairs": pairs, "rank_differs": differing}
