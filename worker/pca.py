"""Joint PCA (docs/method.md §1.1-1.2) with routes for every data shape.

X = vstack(blocks) is centred on its column mean and projected on its first z principal
axes. The blocks are never stacked or centred as a whole: every route reads them in row or
column chunks converted to float64, so memory stays bounded by `memory_budget_mb` plus the
route's own matrices. Blocks may be memory-mapped (a large precomputed .npy): the row passes
release each chunk's pages after reading it (`release_rows`), so the features of a job
larger than memory are streamed from the file, once per pass, at a bounded RSS.

Routes (recorded in ``info.route``, the fit's typed PairPca block):

- ``exact``: float64 SVD of the centred X (LAPACK gesdd through numpy); for N*q up to a few
  ten million values. The reference.
- ``gram``: eigendecomposition of the N x N Gram matrix Xc Xc^T accumulated over column
  chunks; for q >> N (flattened SAM features, 1M-D). Never forms q x q.
- ``covariance``: q x q covariance accumulated in float64 over row chunks (two passes: mean,
  then centred products); for N up to 1e6 and q <= 4096, and chosen by ``auto`` for tall data
  (N >= 16 q and N q >= 2e6) where it is an order of magnitude faster than the SVD.
- ``randomized``: randomized SVD (Halko et al. 2011) of the implicitly centred X with a
  fixed seed, oversampling 10 and power iterations with QR re-orthonormalisation; for large
  N and large q.
- ``none``: dims is None, the centred raw features.

All routes use sklearn's sign convention (``svd_flip(u_based_decision=False)``: the largest
absolute entry of each principal axis is positive), so their outputs agree with
``sklearn.decomposition.PCA(svd_solver="full")`` column by column.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.results import PairPca

ROUTES = ("auto", "exact", "gram", "covariance", "randomized")
DEFAULT_MEMORY_BUDGET_MB = 256

#: 'auto' thresholds
EXACT_MAX_VALUES = 50_000_000  # N*q of the float64 copy the exact SVD needs (400 MB)
EXACT_MAX_SIDE = 8192  # min(N, q) above this makes the SVD too slow
COVARIANCE_MAX_Q = 4096
GRAM_MAX_N = 16384
#: tall data (N >= TALL_RATIO q, N q >= TALL_MIN_VALUES) takes the covariance route under auto:
#: at 40,000 x 128 it is 12x faster than the exact SVD and gives the same distances to 2e-15
TALL_RATIO = 16
TALL_MIN_VALUES = 2_000_000
#: hard limits for explicitly requested routes (memory of the q x q or N x N matrix)
COVARIANCE_HARD_MAX_Q = 32768
GRAM_HARD_MAX_N = 65536


@dataclass
class PCAModel:
    """A fitted PCA: project(X) = (X - mean) @ components.T."""

    mean: np.ndarray  # (q,)
    components: np.ndarray  # (z, q), rows are unit principal axes, by decreasing variance
    explained_variance: np.ndarray  # (z,), ddof = 1
    explained_variance_ratio: np.ndarray  # (z,)
    route: str
    requested_dims: int | None
    n_samples: int
    warnings: list[str] = field(default_factory=list)

    @property
    def dims(self) -> int:
        return int(self.components.shape[0]) if self.route != "none" else int(self.mean.shape[0])

    def info(self) -> PairPca:
        """The fit as the report's typed PCA block (route, dims, requested_dims, explained
        variance ratio per kept component, warnings)."""
        return PairPca(
            route=self.route,
            dims=self.dims,
            requested_dims=self.requested_dims,
            explained_variance_ratio=[float(v) for v in self.explained_variance_ratio],
            warnings=list(self.warnings),
        )


# --------------------------------------------------------------------------- chunked reads


def release_rows(a: np.ndarray, start: int, stop: int) -> None:
    """Drop rows start:stop of a memory-mapped array from this process's resident memory
    (madvise DONTNEED; the pages stay in the page cache), so one pass over a file larger
    than memory keeps the process's RSS at its chunk size. No-op for in-memory arrays."""
    mm = getattr(a, "_mmap", None)
    # read-only maps only: DONTNEED would discard a copy-on-write map's changes
    if mm is None or stop <= start or a.flags.writeable or not a.flags.c_contiguous:
        return
    base = np.frombuffer(mm, dtype=np.uint8)
    begin = a[start:stop].ctypes.data - base.ctypes.data
    end = begin + (stop - start) * a.strides[0]
    page = mmap.PAGESIZE
    lo, hi = -(-begin // page) * page, end // page * page  # whole pages inside the rows
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def all_finite(a: np.ndarray, rows: int = 4096) -> bool:
    """np.isfinite(a).all() in row chunks (no n x q temporary; mapped pages released)."""
    for s in range(0, len(a), rows):
        chunk = a[s : s + rows]
        if chunk.dtype.kind == "f" and not np.isfinite(chunk).all():
            return False
        release_rows(a, s, s + len(chunk))
    return True


class _Blocks:
    """A read-only view of vstack(blocks) without stacking."""

    def __init__(self, blocks: Sequence[np.ndarray], memory_budget_mb: float):
        if not isinstance(blocks, (list, tuple)):
            blocks = [blocks]
        arrs = []
        for i, b in enumerate(blocks):
            a = b if isinstance(b, np.ndarray) else np.asarray(b)  # keeps a np.memmap
            if a.ndim != 2:
                raise ValueError(f"pca: block {i} must be 2-D (n, q), got shape {a.shape}")
            arrs.append(a)
        if not arrs:
            raise ValueError("pca: no feature blocks given")
        q = arrs[0].shape[1]
        for i, a in enumerate(arrs):
            if a.shape[1] != q:
                raise ValueError(
                    f"pca: block {i} has {a.shape[1]} features, block 0 has {q}; "
                    "all sets must come from the same extractor and pooling"
                )
            if not all_finite(a):
                raise ValueError(f"pca: block {i} contains NaN or inf features")
        self.arrays = arrs
        self.q = q
        self.n = sum(len(a) for a in arrs)
        if self.n == 0:
            raise ValueError("pca: all feature blocks are empty")
        if q == 0:
            raise ValueError("pca: features have zero dimensions")
        self.budget = float(memory_budget_mb) * 1024 * 1024

    def row_step(self, width: int | None = None) -> int:
        return max(1, int(self.budget // (8 * max(1, width or self.q) * 2)))

    def col_step(self) -> int:
        return max(1, int(self.budget // (8 * self.n * 2)))

    def row_chunks(self, mean: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """float64 row chunks of X (or X - mean), in order."""
        step = self.row_step()
        for a in self.arrays:
            for s in range(0, len(a), step):
                c = np.array(a[s : s + step], dtype=np.float64)
                release_rows(a, s, s + len(c))  # memory-mapped features: RSS stays bounded
                if mean is not None:
                    c -= mean
                yield c

    def col_chunk(self, c0: int, c1: int, mean: np.ndarray) -> np.ndarray:
        """Centred columns c0:c1 of X, float64 (N, c1 - c0)."""
        out = np.empty((self.n, c1 - c0), dtype=np.float64)
        r = 0
        for a in self.arrays:
            out[r : r + len(a)] = a[:, c0:c1]
            r += len(a)
        out -= mean[c0:c1]
        return out

    def mean(self) -> np.ndarray:
        acc = np.zeros(self.q, dtype=np.float64)
        for c in self.row_chunks():
            acc += c.sum(axis=0)
        return acc / self.n

    def total_ss(self, mean: np.ndarray) -> float:
        """Sum of squares of the centred X (= trace of Xc^T Xc)."""
        return float(sum(np.einsum("ij,ij->", c, c) for c in self.row_chunks(mean)))

    def matmul(self, m: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """(X - mean) @ m, (N, k), in row chunks."""
        out = np.empty((self.n, m.shape[1]), dtype=np.float64)
        r = 0
        for c in self.row_chunks(mean):
            out[r : r + len(c)] = c @ m
            r += len(c)
        return out

    def rmatmul(self, m: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """(X - mean)^T @ m, (q, k), in row chunks."""
        out = np.zeros((self.q, m.shape[1]), dtype=np.float64)
        r = 0
        for c in self.row_chunks(mean):
            out += c.T @ m[r : r + len(c)]
            r += len(c)
        return out


# --------------------------------------------------------------------------- routes


def _sign_flip(components: np.ndarray) -> np.ndarray:
    """sklearn's svd_flip(u_based_decision=False): largest |entry| of each axis positive."""
    if components.size == 0:
        return components
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def _complete_basis(v: np.ndarray, q: int, need: int, seed: int) -> np.ndarray:
    """Append orthonormal rows to v (k, q) until it has `need` rows (zero-variance axes)."""
    rng = np.random.default_rng(seed)
    rows = list(v)
    basis = v.copy()
    while len(rows) < need:
        cand = rng.standard_normal(q)
        for _ in range(2):  # Gram-Schmidt twice for stability
            if len(basis):
                cand -= basis.T @ (basis @ cand)
        norm = np.linalg.norm(cand)
        if norm < 1e-8:
            continue
        rows.append(cand / norm)
        basis = np.vstack(rows)
    return np.asarray(rows).reshape(need, q)


def _fit_exact(x: _Blocks, mean: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    xc = np.empty((x.n, x.q), dtype=np.float64)
    r = 0
    for c in x.row_chunks(mean):
        xc[r : r + len(c)] = c
        r += len(c)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    return vt[:z], s[:z] ** 2


def _from_eig(evals: np.ndarray, evecs: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(evals)[::-1][:z]
    return np.clip(evals[order], 0.0, None), evecs[:, order]


def _fit_gram(x: _Blocks, mean: np.ndarray, z: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.zeros((x.n, x.n), dtype=np.float64)
    step = x.col_step()
    for c0 in range(0, x.q, step):
        xc = x.col_chunk(c0, min(c0 + step, x.q), mean)
        g += xc @ xc.T  # numpy uses syrk for A @ A.T
    sq, u = _from_eig(*np.linalg.eigh(g), z)
    # principal axes: v_i = Xc^T u_i / sigma_i for the non-zero singular values
    tol = max(sq[0] if len(sq) else 0.0, 0.0) * max(x.n, x.q) * np.finfo(np.float64).eps
    keep = sq > max(tol, np.finfo(np.float64).tiny)
    k = int(keep.sum())
    v = np.zeros((0, x.q))
    if k:
        v = (x.rmatmul(u[:, :k], mean) / np.sqrt(sq[:k])).T
        # one re-orthonormalisation pass against rounding in G
        qm, rm = np.linalg.qr(v.T)
        v = (qm * np.sign(np.diag(rm))).T
    if k < z:
        v = _complete_basis(v, x.q, z, seed)
        sq = np.concatenate([sq[:k], np.zeros(z - k)])
    return v, sq


def _fit_covariance(x: _Blocks, mean: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.zeros((x.q, x.q), dtype=np.float64)
    for chunk in x.row_chunks(mean):
        c += chunk.T @ chunk  # syrk
    sq, v = _from_eig(*np.linalg.eigh(c), z)
    return v.T, sq


def _fit_randomized(
    x: _Blocks, mean: np.ndarray, z: int, seed: int, n_oversamples: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    k = min(z + n_oversamples, x.n, x.q)
    n_iter = 7 if z < 0.1 * min(x.n, x.q) else 4  # sklearn's 'auto'
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((x.q, k))
    qm, _ = np.linalg.qr(x.matmul(omega, mean))
    for _ in range(n_iter):
        qm, _ = np.linalg.qr(x.rmatmul(qm, mean))
        qm, _ = np.linalg.qr(x.matmul(qm, mean))
    b = x.rmatmul(qm, mean).T  # (k, q) = Q^T Xc
    _, s, vt = np.linalg.svd(b, full_matrices=False)
    return vt[:z], s[:z] ** 2


def _choose_route(n: int, q: int) -> str:
    if n >= TALL_RATIO * q and n * q >= TALL_MIN_VALUES and q <= COVARIANCE_MAX_Q:
        return "covariance"  # tall data: a q x q eigenproblem, ~12x faster than the SVD
    if n * q <= EXACT_MAX_VALUES and min(n, q) <= EXACT_MAX_SIDE:
        return "exact"
    if q <= COVARIANCE_MAX_Q:
        return "covariance"
    if n <= GRAM_MAX_N:
        return "gram"
    return "randomized"


# --------------------------------------------------------------------------- public API


def fit_pca(
    X: np.ndarray | Sequence[np.ndarray],
    dims: int | None,
    *,
    route: str = "auto",
    seed: int = 0,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> PCAModel:
    """Fit a PCA on X (an (N, q) array or a list of blocks stacked row-wise).

    dims None -> the identity on centred features (route 'none'). dims > min(N, q) is
    clamped, with a message in model.warnings. Components are sorted by decreasing variance,
    so the first k columns of a projection equal a k-dim PCA.
    """
    x = _Blocks(X if isinstance(X, (list, tuple)) else [X], memory_budget_mb)
    if route not in ROUTES:
        raise ValueError(f"pca route: {route!r} is not one of {', '.join(ROUTES)}")
    mean = x.mean()
    warnings: list[str] = []
    if dims is None:
        eye = np.empty((0, x.q))
        return PCAModel(mean, eye, np.empty(0), np.empty(0), "none", None, x.n, warnings)
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 1:
        raise ValueError(f"dims: must be a positive integer or null, got {dims!r}")
    requested = int(dims)
    z = min(requested, x.n, x.q)
    if z < requested:
        warnings.append(
            f"dims={requested} exceeds min(samples, features) = min({x.n}, {x.q}); using dims={z}"
        )
    chosen = _choose_route(x.n, x.q) if route == "auto" else route
    if chosen == "covariance" and x.q > COVARIANCE_HARD_MAX_Q:
        raise ValueError(
            f"pca route 'covariance' needs a {x.q}x{x.q} matrix; use 'gram', 'randomized' or "
            "'auto' for features this wide"
        )
    if chosen == "gram" and x.n > GRAM_HARD_MAX_N:
        raise ValueError(
            f"pca route 'gram' needs a {x.n}x{x.n} matrix; use 'covariance', 'randomized' or "
            "'auto' for this many samples"
        )
    if chosen == "exact":
        v, sq = _fit_exact(x, mean, z)
    elif chosen == "gram":
        v, sq = _fit_gram(x, mean, z, seed)
    elif chosen == "covariance":
        v, sq = _fit_covariance(x, mean, z)
    else:
        v, sq = _fit_randomized(x, mean, z, seed)
    v = _sign_flip(np.ascontiguousarray(v, dtype=np.float64))
    ddof = max(x.n - 1, 1)
    var = sq / ddof
    total = x.total_ss(mean) / ddof
    if total > 0:
        ratio = var / total
    else:
        ratio = np.zeros_like(var)
        warnings.append("all features are constant: zero total variance")
    return PCAModel(mean, v, var, ratio, chosen, requested, x.n, warnings)


def project(
    model: PCAModel, X: np.ndarray, *, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB
) -> np.ndarray:
    """(X - model.mean) @ model.components.T as float64 (n, z); centred X for route 'none'."""
    arr = X if isinstance(X, np.ndarray) else np.asarray(X)  # keeps a np.memmap
    if arr.ndim != 2 or arr.shape[1] != model.mean.shape[0]:
        raise ValueError(
            f"pca: cannot project an array of shape {arr.shape}: the model was fitted on "
            f"{model.mean.shape[0]} features"
        )
    if model.route == "none":
        return np.asarray(arr, dtype=np.float64) - model.mean
    out = np.empty((len(arr), model.components.shape[0]), dtype=np.float64)
    step = max(1, int(memory_budget_mb * 1024 * 1024 // (16 * max(1, arr.shape[1]))))
    vt = model.components.T
    for s in range(0, len(arr), step):
        out[s : s + step] = (np.asarray(arr[s : s + step], dtype=np.float64) - model.mean) @ vt
        release_rows(arr, s, s + step)
    return out


def joint_pca(
    blocks: list[np.ndarray],
    dims: int | None,
    *,
    route: str = "auto",
    seed: int = 0,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    also: Sequence[np.ndarray] = (),
) -> tuple[list[np.ndarray], PairPca]:
    """One PCA fitted on vstack(blocks), each block projected. See the module docstring.

    Returns (projected, info): projected[i] is (len(blocks[i]), z) float64, followed by the
    projections of the `also` arrays, which the fit does not see (the labelled images of
    selection.labelled); info is the fit's PairPca (route, dims, requested_dims,
    explained_variance_ratio, warnings).
    """
    if not isinstance(blocks, (list, tuple)):
        raise ValueError("pca: blocks must be a list of (n_i, q) arrays")
    model = fit_pca(list(blocks), dims, route=route, seed=seed, memory_budget_mb=memory_budget_mb)
    projected = [project(model, b, memory_budget_mb=memory_budget_mb) for b in [*blocks, *also]]
    return projected, model.info()
