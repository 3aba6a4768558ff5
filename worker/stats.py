"""Yardsticks for the distances (docs/method.md §4): null calibration, MMD two-sample test,
FID, KID, exact and near duplicates, rank agreement. Pure functions on arrays; no printing, no I/O.

Shapes: P (n, z), S (m, z), both rows of the same (PCA) space; X (n, d), Y (m, d) likewise.
Memory stays bounded for large sets: nearest neighbours and distance sums go through
worker.engine (blocked); kernel sums are computed in row blocks of at most KERNEL_BLOCK_MB;
the MMD test and the median heuristic subsample to documented caps (seeded).

Definitions chosen here (docs/method.md §4 documents them):

- Null calibration: P is split at random into halves A (floor(n/2)) and B (the rest), `repeats`
  times; each null value is the size-free O_dist between the halves,
  mean_{a in A} I_dist(A, B)_a / |B| = the mean distance over all (a, b) pairs. It compares
  with a secondary's o_dist_mean = O_dist(S, P) / n (metrics.o_dist_mean).
  ratio = o_dist_mean / mean(null); percentile = 100 * #{null < o_dist_mean} / repeats.
- MMD^2: Gaussian kernel k(x, y) = exp(-||x - y||^2 / (2 sigma^2)), unbiased estimator
  (Gretton et al. 2012, eq. 3). sigma = median heuristic: the median of the Euclidean
  (not squared) distances over all distinct pairs i < j of the pooled sample X u Y (after
  the MMD subsampling, and of at most MEDIAN_MAX_SAMPLES pooled points); if that median is 0
  the median of the positive distances is used. p-value = (1 + #{perm >= obs}) / (1 + n_perm)
  over random relabellings of the pooled sample. Sets above MMD_MAX_SAMPLES are subsampled.
- FID (Heusel et al. 2017): ||mu_x - mu_y||^2 + Tr(Sx + Sy - 2 (Sx^1/2 Sy Sx^1/2)^1/2), sample
  covariances (ddof=1); the square root through symmetric eigendecompositions.
- KID (Binkowski et al. 2018): unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 over `subsets`
  random subsets of size min(subset_size, n, m); mean and std (ddof=0) over the subsets.
- Duplicates: exact = same content hash (SHA-256 of the file). Near = nearest other image
  closer than the threshold, or at distance exactly 0; the default threshold is
  NEAR_DUPLICATE_FRACTION x the median nearest-other-image distance within P.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from worker import engine, metrics
from worker.duplicates import (  # noqa: F401
    NEAR_DUPLICATE_FRACTION,
    exact_duplicate_pairs,
    find_duplicates,
    near_duplicate_pairs,
    near_duplicate_threshold,
    threshold_from_nearest,
)
from worker.interrupt import stoppable
from worker.rank_agreement import (  # noqa: F401
    _finite_or_none,
    kendall_tau,
    model_agreement,
    rank_correlations,
    spearman,
)

NULL_MIN_SIZE = 4  # a null calibration needs at least 2 images in each half
NULL_MAX_SAMPLES = 2000  # P rows drawn per null repeat (halves of 1000): cost O(repeats * 1e6)
MMD_MAX_SAMPLES = 1000  # per set; larger sets are subsampled (seeded) for the MMD test
MEDIAN_MAX_SAMPLES = 1000  # pooled points whose pairwise distances give the median heuristic
KERNEL_BLOCK_MB = 32  # memory for one block of kernel rows, and for one batch of permutations
#: multiply-adds in one batch of the energy test's permutations (about 0.1 s): each batch is a
#: safe point where a stop asked for by a signal takes effect (worker.interrupt)
ENERGY_BATCH_WORK = 1 << 28


def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, d), got shape {arr.shape}")
    return arr


def subsample_pair(
    X: np.ndarray, Y: np.ndarray, max_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """X and Y each cut to at most max_samples rows by a seeded draw without replacement,
    kept in their order (X drawn first): the bound the permutation tests share."""
    if len(X) > max_samples:
        X = X[np.sort(rng.choice(len(X), max_samples, replace=False))]
    if len(Y) > max_samples:
        Y = Y[np.sort(rng.choice(len(Y), max_samples, replace=False))]
    return X, Y


def _pair(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X, Y = _matrix(X, "X"), _matrix(Y, "Y")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"X and Y must have the same width, got {X.shape[1]} and {Y.shape[1]}")
    return X, Y


# --------------------------------------------------------------------------- null calibration


def null_sample_size(n: int, max_samples: int = NULL_MAX_SAMPLES) -> int:
    """Rows of P each null repeat uses: min(n, max_samples) (halves of k // 2 and the rest)."""
    return int(min(int(n), int(max_samples)))


def null_o_dist_means(
    P: np.ndarray,
    repeats: int,
    seed: int,
    *,
    max_samples: int = NULL_MAX_SAMPLES,
    **engine_kw: Any,
) -> np.ndarray:
    """Null distribution of the size-free O_dist: per repeat, a seeded random draw of
    k = min(n, max_samples) rows of P split into halves A (k // 2) and B (the rest); value
    r = mean_{a in A} I_dist(A, B)_a / |B|, the mean of ||a - b|| over all pairs. P (n, z) ->
    (repeats,) float64; empty when n < NULL_MIN_SIZE. For n <= max_samples every row is
    used (a random split of all of P); above, each repeat is an unbiased estimate of the same
    mean pairwise distance of P from (k/2)^2 pairs, so the cost is bounded by
    repeats * (max_samples / 2)^2 distances whatever n is."""
    P = np.asarray(P)
    n = len(P)
    if n < NULL_MIN_SIZE or repeats < 1:
        return np.zeros(0)
    k = max(NULL_MIN_SIZE, null_sample_size(n, max_samples))
    rng = np.random.default_rng(seed)
    out = np.empty(int(repeats))
    for r in stoppable(range(int(repeats))):
        order = rng.permutation(n)[:k]
        a, b = P[order[: k // 2]], P[order[k // 2 :]]
        out[r] = metrics.o_dist_mean(engine.row_distance_sums(a, b, **engine_kw), len(b))
    return out


def o_dist_ratio(o_dist_mean: float, null: np.ndarray) -> float | None:
    """o_dist_mean(S, P) / mean(null): 1 means "as far from P as P is from itself".
    None when the null is empty or its mean is 0."""
    null = np.asarray(null, dtype=np.float64)
    if null.size == 0 or null.mean() == 0:
        return None
    return float(o_dist_mean / null.mean())


def o_dist_percentile(o_dist_mean: float, null: np.ndarray) -> float | None:
    """Percent (0-100) of null values strictly below the observed o_dist_mean; None if empty."""
    null = np.asarray(null, dtype=np.float64)
    if null.size == 0:
        return None
    return float(100.0 * np.mean(null < o_dist_mean))


def null_calibration(
    P: np.ndarray,
    o_dist_mean: float,
    *,
    repeats: int,
    seed: int,
    max_samples: int = NULL_MAX_SAMPLES,
    **engine_kw: Any,
) -> dict[str, Any]:
    """{null (list), null_mean, ratio, percentile, subsample} for one secondary's o_dist_mean;
    subsample = {size: rows of P per repeat, of: n, repeats}."""
    null = null_o_dist_means(P, repeats, seed, max_samples=max_samples, **engine_kw)
    n = len(P)
    return {
        "null": [float(v) for v in null],
        "null_mean": float(null.mean()) if null.size else None,
        "ratio": o_dist_ratio(o_dist_mean, null),
        "percentile": o_dist_percentile(o_dist_mean, null),
        "subsample": {
            "size": null_sample_size(n, max_samples) if null.size else 0,
            "of": int(n),
            "repeats": int(null.size),
        },
    }


# --------------------------------------------------------------------------- kernels, MMD


def _row_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Row slices such that a (rows x n_cols) float64 block and its temporaries fit in
    KERNEL_BLOCK_MB."""
    rows = max(1, int(KERNEL_BLOCK_MB * 1024 * 1024 // (3 * 8 * max(1, n_cols))))
    for s in stoppable(range(0, n_rows, rows)):
        yield slice(s, min(s + rows, n_rows))


def _sq_dist_block(A: np.ndarray, B: np.ndarray, sqa: np.ndarray, sqb: np.ndarray) -> np.ndarray:
    """||a - b||^2 for a block of (centred) rows, clamped at 0. (ra, d), (rb, d) -> (ra, rb)."""
    d2 = A @ B.T
    d2 *= -2.0
    d2 += sqa[:, None]
    d2 += sqb[None, :]
    return np.maximum(d2, 0.0, out=d2)


def _pairwise_upper_distances(Z: np.ndarray) -> np.ndarray:
    """Euclidean distances of all pairs i < j of Z (N, d), in blocks: N (N - 1) / 2 values."""
    Z = Z - Z.mean(axis=0)
    sq = np.einsum("ij,ij->i", Z, Z)
    parts = []
    for blk in _row_blocks(len(Z), len(Z)):
        d2 = _sq_dist_block(Z[blk], Z, sq[blk], sq)
        rows = np.arange(blk.start, blk.stop)[:, None]
        parts.append(np.sqrt(d2[np.arange(len(Z))[None, :] > rows]))
    return np.concatenate(parts) if parts else np.zeros(0)


def median_heuristic(
    X: np.ndarray, Y: np.ndarray, *, seed: int = 0, max_samples: int = MEDIAN_MAX_SAMPLES
) -> float:
    """sigma = median of ||z_i - z_j||_2 over all distinct pairs i < j of the pooled Z = X u Y
    (Euclidean, not squared). Above `max_samples` pooled points, a seeded uniform subsample
    of that size is used. A zero median (mostly duplicates) falls back to the median of the
    positive distances; all points identical -> 0.0."""
    X, Y = _pair(X, Y)
    Z = np.vstack([X, Y])
    if len(Z) > max_samples:
        Z = Z[np.sort(np.random.default_rng(seed).choice(len(Z), max_samples, replace=False))]
    d = _pairwise_upper_distances(Z)
    if d.size == 0:
        return 0.0
    med = float(np.median(d))
    if med == 0.0:
        pos = d[d > 0]
        med = float(np.median(pos)) if pos.size else 0.0
    return med


def _gaussian_quadratic_forms(
    Z: np.ndarray, sigma: float, labels: np.ndarray, *, with_row_sums: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """For the Gaussian kernel K of Z (N, d) and 0/1 label columns A (N, B), in row blocks
    (K itself is never held): diag(A^T K A) (B,), and K 1 (N,) when with_row_sums. K_ii = 1."""
    sq = np.einsum("ij,ij->i", Z, Z)
    quad = np.zeros(labels.shape[1])
    row_sums = np.empty(len(Z)) if with_row_sums else None
    scale = -1.0 / (2.0 * sigma**2)
    for blk in _row_blocks(len(Z), len(Z)):
        k = _sq_dist_block(Z[blk], Z, sq[blk], sq)
        k[np.arange(k.shape[0]), np.arange(blk.start, blk.stop)] = 0.0  # exact diagonal
        k *= scale
        np.exp(k, out=k)
        quad += np.einsum("ib,ib->b", labels[blk], k @ labels)
        if row_sums is not None:
            row_sums[blk] = k.sum(axis=1)
    return quad, row_sums


def _mmd2_from_forms(
    quad: np.ndarray, a_dot_r: np.ndarray, total: float, n: int, m: int
) -> np.ndarray:
    """Unbiased MMD^2 from a^T K a, a^T K 1 and 1^T K 1 with unit diagonal (b = 1 - a):
    (aKa - n)/(n(n-1)) + (bKb - m)/(m(m-1)) - 2 aKb/(nm), aKb = aK1 - aKa,
    bKb = 1K1 - 2 aK1 + aKa."""
    kxx = quad - n
    kxy = a_dot_r - quad
    kyy = total - 2.0 * a_dot_r + quad - m
    return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy / (n * m)


def _centred_pool(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    Z = np.vstack([X, Y])
    return Z - Z.mean(axis=0)


def mmd_unbiased(X: np.ndarray, Y: np.ndarray, sigma: float) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with k(x, y) = exp(-||x - y||^2 / (2
    sigma^2)): sum_{i != j} k(x_i, x_j) / (n(n-1)) + sum_{i != j} k(y_i, y_j) / (m(m-1))
    - 2 sum_{i, j} k(x_i, y_j) / (nm). X (n, d), Y (m, d), n, m >= 2; no subsampling."""
    X, Y = _pair(X, Y)
    n, m = len(X), len(Y)
    if n < 2 or m < 2:
        raise ValueError("mmd_unbiased: each set needs at least 2 samples")
    if not sigma > 0:
        raise ValueError(f"sigma: must be > 0, got {sigma}")
    a = np.zeros((n + m, 1))
    a[:n] = 1.0
    quad, r = _gaussian_quadratic_forms(_centred_pool(X, Y), sigma, a, with_row_sums=True)
    return float(_mmd2_from_forms(quad, a[:, 0] @ r, float(r.sum()), n, m)[0])


def mmd_test(
    X: np.ndarray,
    Y: np.ndarray,
    permutations: int,
    seed: int,
    sigma: float | None = None,
    *,
    max_samples: int = MMD_MAX_SAMPLES,
) -> dict[str, Any]:
    """Two-sample test (method.md §4.2): unbiased Gaussian MMD^2 and its permutation p-value.

    Each set above `max_samples` is first subsampled (seeded, uniform without replacement).
    sigma None -> median_heuristic of the pooled (subsampled) sample. p-value =
    (1 + #{perm >= obs}) / (1 + permutations); each permutation relabels the pooled sample
    uniformly at random (same set sizes); ">=" allows a 1e-12 relative rounding slack.
    Returns {statistic (MMD^2), p_value, sigma, permutations, n_x, n_y}. Fewer than 2 samples
    in a set -> statistic/p_value/sigma None; permutations == 0 -> p_value None; all pooled
    points identical (sigma 0) -> statistic 0.0, p_value 1.0, sigma None.
    Memory: O((n + m) * (d + batch)) plus blocks of KERNEL_BLOCK_MB; time O((n + m)^2 * perms).
    """
    X, Y = _pair(X, Y)
    permutations = int(permutations)
    rng = np.random.default_rng(seed)
    X, Y = subsample_pair(X, Y, max_samples, rng)
    n, m = len(X), len(Y)
    out: dict[str, Any] = {
        "statistic": None,
        "p_value": None,
        "sigma": None,
        "permutations": permutations,
        "n_x": n,
        "n_y": m,
    }
    if n < 2 or m < 2:
        out["permutations"] = 0
        return out
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma: must be > 0, got {sigma}")
    if sigma is None:
        sigma = median_heuristic(X, Y, seed=seed)
    if not sigma > 0:
        out.update(statistic=0.0, p_value=1.0 if permutations > 0 else None)
        return out
    Z = _centred_pool(X, Y)
    N = n + m
    observed = np.zeros((N, 1))
    observed[:n] = 1.0
    quad, r = _gaussian_quadratic_forms(Z, sigma, observed, with_row_sums=True)
    total = float(r.sum())
    stat = float(_mmd2_from_forms(quad, observed[:, 0] @ r, total, n, m)[0])
    out.update(statistic=stat, sigma=float(sigma))
    if permutations <= 0:
        return out
    batch = max(1, min(permutations, int(KERNEL_BLOCK_MB * 1024 * 1024 // (8 * N))))
    slack = 1e-12 * max(1.0, abs(stat), total / (N * N))
    exceed = 0
    for start in stoppable(range(0, permutations, batch)):
        cols = min(batch, permutations - start)
        labels = np.zeros((N, cols))
        for c in range(cols):
            labels[rng.permutation(N)[:n], c] = 1.0
        q, _ = _gaussian_quadratic_forms(Z, sigma, labels, with_row_sums=False)
        perm = _mmd2_from_forms(q, labels.T @ r, total, n, m)
        exceed += int(np.count_nonzero(perm >= stat - slack))
    out["p_value"] = (1 + exceed) / (1 + permutations)
    return out


# --------------------------------------------------------------------------- energy test


def _energy_from_forms(
    quad: np.ndarray, lin: np.ndarray, total: float, n: int, m: int
) -> np.ndarray:
    """Energy V-statistics for label columns a (1 on the n X rows): quad = a^T D a, lin =
    a^T r (r = row sums of D), total = 1^T D 1. With b = 1 - a: a^T D b = lin - quad and
    b^T D b = total - 2 lin + quad, so E = 2 a^T D b / (n m) - a^T D a / n^2 - b^T D b / m^2."""
    cross = lin - quad
    yy = total - 2.0 * lin + quad
    return 2.0 * cross / (n * m) - quad / (n * n) - yy / (m * m)


def energy_test(
    X: np.ndarray,
    Y: np.ndarray,
    permutations: int,
    seed: int,
    *,
    max_samples: int = MMD_MAX_SAMPLES,
) -> dict[str, Any]:
    """Energy two-sample test (method.md §12.1): permutation p-value of the energy distance
    (V-statistic, metrics.energy_from_sums) of X (n, d) against Y (m, d).

    Each set above `max_samples` is first subsampled (seeded, uniform without replacement),
    as for the MMD test; the pooled (n + m)^2 distance matrix is built once (scipy cdist,
    float64) and each permutation relabels the pooled sample uniformly at random (same set
    sizes). p = (1 + #{perm >= obs}) / (1 + permutations), ">=" with a 1e-12 relative slack;
    the smallest attainable p is 1 / (1 + permutations). Returns {statistic (on the sample
    tested), p_value, permutations, n_x, n_y}; fewer than 2 samples in a set or permutations
    0 -> p_value None. Memory O((n + m)^2); time O((n + m)^2 * permutations)."""
    from scipy.spatial.distance import cdist

    X, Y = _pair(X, Y)
    permutations = int(permutations)
    rng = np.random.default_rng(seed)
    X, Y = subsample_pair(X, Y, max_samples, rng)
    n, m = len(X), len(Y)
    out: dict[str, Any] = {
        "statistic": None,
        "p_value": None,
        "permutations": permutations,
        "n_x": n,
        "n_y": m,
    }
    if n < 1 or m < 1:
        out["permutations"] = 0
        return out
    Z = _centred_pool(X, Y)
    D = cdist(Z, Z)
    r = D.sum(axis=1)
    total = float(r.sum())
    N = n + m
    stat = float(
        _energy_from_forms(np.array([D[:n, :n].sum()]), np.array([r[:n].sum()]), total, n, m)[0]
    )
    out["statistic"] = max(0.0, stat)
    if permutations <= 0 or n < 2 or m < 2:
        out["permutations"] = permutations if n >= 2 and m >= 2 else 0
        return out
    batch = min(permutations, int(KERNEL_BLOCK_MB * 1024 * 1024 // (8 * N)))
    batch = max(1, min(batch, ENERGY_BATCH_WORK // (N * N)))
    slack = 1e-12 * max(1.0, abs(stat), total / (N * N))
    exceed = 0
    for start in stoppable(range(0, permutations, batch)):
        cols = min(batch, permutations - start)
        labels = np.zeros((N, cols))
        for c in range(cols):
            labels[rng.permutation(N)[:n], c] = 1.0
        quad = np.einsum("ij,ij->j", labels, D @ labels)
        perm = _energy_from_forms(quad, labels.T @ r, total, n, m)
        exceed += int(np.count_nonzero(perm >= stat - slack))
    out["p_value"] = (1 + exceed) / (1 + permutations)
    return out


# --------------------------------------------------------------------------- many tests

P_ADJUSTMENTS = ("holm", "bh")


def adjust_p_values(p: Sequence[float | None], method: str = "holm") -> list[float | None]:
    """p-values adjusted for multiple testing over one family (method.md §12.4); None entries
    are not tested and stay None (the family is the others, k of them).

    holm (Holm 1979, step-down; controls the family-wise error rate): with p sorted ascending,
        adj_(i) = max_{j <= i} min(1, (k - j + 1) p_(j));
    bh (Benjamini-Hochberg 1995, step-up; controls the false discovery rate):
        adj_(i) = min_{j >= i} min(1, k p_(j) / j).
    Ties keep their input order; the output is in input order."""
    if method not in P_ADJUSTMENTS:
        raise ValueError(f"p adjustment: unknown method {method!r}; use one of holm, bh")
    idx = [i for i, v in enumerate(p) if v is not None]
    out: list[float | None] = [None] * len(p)
    k = len(idx)
    if k == 0:
        return out
    vals = np.array([float(p[i]) for i in idx], dtype=np.float64)
    order = np.argsort(vals, kind="stable")
    sorted_p = vals[order]
    ranks = np.arange(1, k + 1)
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (k - ranks + 1) * sorted_p))
    else:
        adj = np.minimum.accumulate(np.minimum(1.0, k * sorted_p / ranks)[::-1])[::-1]
    for pos, o in enumerate(order):
        out[idx[o]] = float(adj[pos])
    return out


# --------------------------------------------------------------------------- FID, KID


def _sqrtm_psd(A: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root through eigh (negative rounding eigenvalues clipped to 0)."""
    w, V = np.linalg.eigh((A + A.T) / 2.0)
    return (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T


def fid(X: np.ndarray, Y: np.ndarray) -> float | None:
    """Frechet distance of Gaussians fitted to X (n, d) and Y (m, d) (Heusel et al. 2017):
    ||mu_x - mu_y||^2 + Tr(Sx) + Tr(Sy) - 2 Tr((Sx^1/2 Sy Sx^1/2)^1/2), covariances ddof=1.

    Tr((Sx^1/2 Sy Sx^1/2)^1/2) = sum of sqrt(eigenvalues) of the symmetric Sx^1/2 Sy Sx^1/2
    (eigh; no scipy sqrtm). When d^2 > n m the same trace is taken from the Gram side: it
    equals the sum of singular values of Xc Yc^T / sqrt((n-1)(m-1)) (the nonzero eigenvalues
    of Sx Sy and of (Xc Yc^T)(Xc Yc^T)^T / ((n-1)(m-1)) coincide), so no d x d matrix is built.
    None when a set has fewer than 2 samples. Clamped at 0 (rounding).
    """
    X, Y = _pair(X, Y)
    n, m, d = len(X), len(Y), X.shape[1]
    if n < 2 or m < 2:
        return None
    mx, my = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - mx, Y - my
    tr_x = float(np.einsum("ij,ij->", Xc, Xc)) / (n - 1)
    tr_y = float(np.einsum("ij,ij->", Yc, Yc)) / (m - 1)
    if d * d <= n * m:
        sx, sy = Xc.T @ Xc / (n - 1), Yc.T @ Yc / (m - 1)
        root = _sqrtm_psd(sx)
        inner = root @ sy @ root
        w = np.linalg.eigvalsh((inner + inner.T) / 2.0)
        cross = float(np.sqrt(np.clip(w, 0.0, None)).sum())
    else:
        s = np.linalg.svd(Xc @ Yc.T, compute_uv=False)
        cross = float(s.sum()) / np.sqrt((n - 1) * (m - 1))
    diff = mx - my
    return float(max(diff @ diff + tr_x + tr_y - 2.0 * cross, 0.0))


def kid(
    X: np.ndarray, Y: np.ndarray, seed: int, subsets: int = 50, subset_size: int = 1000
) -> dict[str, float | int | None]:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic
    polynomial kernel k(x, y) = (x.y / d + 1)^3, on `subsets` pairs of random subsets
    (seeded, each without replacement) of size s = min(subset_size, n, m):
    sum_{i != j} kxx / (s(s-1)) + sum_{i != j} kyy / (s(s-1)) - 2 mean(kxy).
    Returns {mean, std (ddof=0), subset_size: s, subsets} over the subsets; mean/std None when
    s < 2. The cost is bounded by subsets * s^2 kernel values (or subsets * s * d^3, below)
    whatever n and m are. Memory O(s^2) or O(s d^2)."""
    X, Y = _pair(X, Y)
    size = min(int(subset_size), len(X), len(Y))
    if size < 2 or subsets < 1:
        return {"mean": None, "std": None, "subset_size": max(size, 0), "subsets": 0}
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    values = np.empty(int(subsets))
    pairs = size * (size - 1)
    for t in stoppable(range(int(subsets))):
        x = X[rng.choice(len(X), size, replace=False)]
        y = Y[rng.choice(len(Y), size, replace=False)]
        if d * d < size:
            mx, my = _poly3_moments(x), _poly3_moments(y)
            xx, yy, xy = _poly3_sum_m(mx, mx, d), _poly3_sum_m(my, my, d), _poly3_sum_m(mx, my, d)
            tx, ty = _poly3_trace(x, d), _poly3_trace(y, d)
        else:
            xx, tx = _poly3_sum(x, x, d)
            yy, ty = _poly3_sum(y, y, d)
            xy, _ = _poly3_sum(x, y, d)
        values[t] = (xx - tx) / pairs + (yy - ty) / pairs - 2.0 * xy / (size * size)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "subset_size": int(size),
        "subsets": int(subsets),
    }


def _poly3_trace(a: np.ndarray, d: int) -> float:
    """Trace of (a a^T / d + 1)^3: sum_i (|a_i|^2 / d + 1)^3."""
    return float(np.sum((1.0 + np.einsum("ij,ij->i", a, a) / d) ** 3))


def _poly3_moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(s, 1^T x (d,), x^T x (d, d), third-moment tensor T[p, q, r] = sum_i x_ip x_iq x_ir
    flattened (d^3,)) of x (s, d): what sum (x y^T / d + 1)^3 needs (see _poly3_sum)."""
    s, d = x.shape
    third = ((x[:, :, None] * x[:, None, :]).reshape(s, d * d).T @ x).ravel()
    return s, x.sum(axis=0), x.T @ x, third


def _poly3_sum_m(ma: tuple, mb: tuple, d: int) -> float:
    """Sum of all entries of (a b^T / d + 1)^3 from the moments of a and b (_poly3_moments):
    s_a s_b + 3 (1^T a)(1^T b) / d + 3 <a^T a, b^T b>_F / d^2 + <T_a, T_b> / d^3."""
    g1 = float(ma[1] @ mb[1]) / d
    g2 = float(np.sum(ma[2] * mb[2])) / d**2
    g3 = float(ma[3] @ mb[3]) / d**3
    return ma[0] * mb[0] + 3.0 * g1 + 3.0 * g2 + g3


def _poly3_sum(a: np.ndarray, b: np.ndarray, d: int) -> tuple[float, float]:
    """Sum of all entries of K = (a b^T / d + 1)^3 (a (s, d), b (s, d)) and its trace
    (meaningful when a is b).

    For d^2 < s the sum comes from moments instead of the s x s matrix, with g = a_i.b_j / d:
    sum (1 + g)^3 = s_a s_b + 3 sum g + 3 sum g^2 + sum g^3, where sum g = (1^T a)(1^T b) / d,
    sum g^2 = <a^T a, b^T b>_F / d^2 and sum g^3 = <T_a, T_b> / d^3 with the third-moment
    tensors T[p, q, r] = sum_i a_ip a_iq a_ir: O(s d^3) instead of O(s^2 d), and exact.
    """
    trace = float(np.sum((1.0 + np.einsum("ij,ij->i", a, b) / d) ** 3))
    if d * d < min(len(a), len(b)):
        return _poly3_sum_m(_poly3_moments(a), _poly3_moments(b), d), trace
    k = a @ b.T
    k *= 1.0 / d
    k += 1.0
    cube = k * k
    cube *= k
    return float(cube.sum()), trace
