"""Independent references for the tests: brute-force float64 numpy, scikit-learn, hand vectors.

Nothing here imports `worker`: every function recomputes a number the way docs/method.md
defines it, by the most direct route (full distance matrices by direct differences, no GEMM
trick, no blocking, no torch), so a test comparing worker output with it can fail. Use it on
small inputs only: `pairwise` builds the whole (m, n) matrix.

Sections cited are those of docs/method.md.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

# --------------------------------------------------------------------------- hand vectors

#: method.md §1.12: PCA with z = 2 on 2-D data is a rotation, so distances are the raw ones.
P_HAND = np.array([[0, 0], [2, 0], [0, 2]], dtype=np.float64)
S_HAND = np.array([[1, 1], [3, 3]], dtype=np.float64)
I_DIST_HAND = np.array([4.242641, 10.567196])  # sqrt(2) + 2 sqrt(2); sqrt(18) + 2 sqrt(10)
O_DIST_HAND = 7.404918

#: method.md §2.5: nearest other sample of each row is [1, 1, 2, 1, 1, sqrt(117)].
X_HAND = np.array([[0, 0], [1, 0], [0, 2], [4, 0], [4, 1], [10, 10]], dtype=np.float64)
DIVERSITY_VALUES_HAND = np.array([1.0, 1.0, 2.0, 1.0, 1.0, np.sqrt(117.0)])
DIVERSITY_HAND = {"mean": 2.802776, "min": 1.0, "max": 10.816654}

#: method.md §5.6: two 3x3 probability maps (x 255) and masks -> ODS F = 5/6 at t = 0.12.
ODS_PROBS_HAND = [
    np.array([[200, 150, 100], [120, 50, 0], [0, 0, 0]], dtype=np.uint8),
    np.array([[60, 40, 30], [10, 0, 0], [0, 0, 0]], dtype=np.uint8),
]
ODS_MASKS_HAND = [
    np.array([[1, 1, 1], [0, 0, 0], [0, 0, 0]]),
    np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]]),
]
ODS_HAND = {"ods_f": 5 / 6, "ods_threshold": 0.12, "precision": 5 / 7, "recall": 1.0}


# --------------------------------------------------------------------------- distances


def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """D[j, k] = ||a_j - b_k||_2 by direct differences in float64. (m, z), (n, z) -> (m, n)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def i_dist(S: np.ndarray, P: np.ndarray) -> np.ndarray:
    """method.md §1.4: I_dist_j = sum_k ||s_j - p_k||_2. (m, z), (n, z) -> (m,)."""
    return pairwise(S, P).sum(axis=1)


def o_dist(S: np.ndarray, P: np.ndarray) -> float:
    """method.md §1.5: O_dist = mean_j I_dist_j."""
    return float(i_dist(S, P).mean())


def o_dist_mean(S: np.ndarray, P: np.ndarray) -> float:
    """method.md §1.10: the mean of D over all (s, p) pairs = O_dist / n."""
    return float(pairwise(S, P).mean())


def nearest(
    queries: np.ndarray, points: np.ndarray, *, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index of each query's nearest point (first index on ties). With
    exclude_self (queries is points) the query's own row is excluded by index, not by
    distance == 0, so exact duplicates give 0."""
    d = pairwise(queries, points)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    idx = np.argmin(d, axis=1)
    return d[np.arange(len(d)), idx], idx


def nearest_other(X: np.ndarray) -> np.ndarray:
    """method.md §2.1 diversity values: min_{j != i} ||x_i - x_j||_2. (N, z) -> (N,)."""
    return nearest(X, X, exclude_self=True)[0]


def coverage(inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """method.md §2.2 coverage values: min_i ||in_j - out_i||_2. (m, z), (k, z) -> (m,)."""
    return pairwise(inputs, outputs).min(axis=1)


def kcenter(x: np.ndarray, k: int, centers: np.ndarray | None = None) -> list[int]:
    """method.md §3.3 greedy k-center, plain numpy, with the engine's conventions: with
    centres, each pick is the point farthest from every centre and pick so far (first index
    on ties); without, the first pick is the point farthest from the mean."""
    x = np.asarray(x, dtype=np.float64)
    has_centers = centers is not None and len(centers) > 0
    if has_centers:
        min_d = pairwise(x, centers).min(axis=1)
    else:
        min_d = np.full(len(x), np.inf)
        first = int(np.argmax(np.linalg.norm(x - x.mean(axis=0), axis=1)))
    chosen: list[int] = []
    for it in range(min(k, len(x))):
        j = first if (it == 0 and not has_centers) else int(np.argmax(min_d))
        chosen.append(j)
        min_d = np.minimum(min_d, np.linalg.norm(x - x[j], axis=1))
        min_d[j] = -1.0
    return chosen


# --------------------------------------------------------------------------- PCA


def sk_pca(x: np.ndarray, dims: int) -> PCA:
    """scikit-learn's exact PCA (LAPACK SVD; svd_flip sign convention) fitted on x."""
    return PCA(n_components=dims, svd_solver="full").fit(np.asarray(x, dtype=np.float64))


def joint_pca(blocks: list[np.ndarray], dims: int | None) -> list[np.ndarray]:
    """method.md §1.1-1.2: one PCA fitted on vstack(blocks), projected, split back by rows.
    dims None: the centred raw features (route 'none')."""
    x = np.vstack([np.asarray(b, dtype=np.float64) for b in blocks])
    y = x - x.mean(axis=0) if dims is None else sk_pca(x, dims).transform(x)
    cuts = np.cumsum([len(b) for b in blocks])[:-1]
    return np.split(y, cuts)


def pair_o_dist(P: np.ndarray, S: np.ndarray, dims: int | None) -> float:
    """O_dist(S, P) in the joint z = dims PCA space of [P; S] (method.md §1)."""
    pl, sl = joint_pca([P, S], dims)
    return o_dist(sl, pl)


def pair_i_dist(P: np.ndarray, S: np.ndarray, dims: int | None) -> np.ndarray:
    """I_dist(S, P) in the joint z = dims PCA space of [P; S] (method.md §1)."""
    pl, sl = joint_pca([P, S], dims)
    return i_dist(sl, pl)


def scaled(o: dict[str, float]) -> dict[str, float]:
    """method.md §1.6 table-2 scaling, written out: each value over the sum."""
    total = sum(o.values())
    return {k: v / total for k, v in o.items()}


# --------------------------------------------------------------------------- energy, novelty


def energy_terms(s: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """method.md §12.1 by brute force: V-statistic means of the full distance matrices."""
    cross = pairwise(s, p).mean()
    ws = pairwise(s, s).mean()
    wp = pairwise(p, p).mean()
    return {
        "distance": 2 * cross - ws - wp,
        "cross": cross,
        "within_secondary": ws,
        "within_primary": wp,
    }


def loo_knn(p: np.ndarray, k: int) -> np.ndarray:
    """Each P row's distance to its k-th nearest OTHER P row (method.md §12.3)."""
    d = pairwise(p, p)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def knn(s: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """Each S row's distance to its k-th nearest P row."""
    return np.sort(pairwise(s, p), axis=1)[:, k - 1]
