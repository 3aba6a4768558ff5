"""Seeded very sparse random projection of feature vectors (`model.reduce`).

Johnson-Lindenstrauss: a random linear map R from d to k dimensions keeps every pairwise
squared distance of n points within a factor 1 +- eps with high probability once
k >= 4 ln(n) / (eps^2 / 2 - eps^3 / 3) (Dasgupta & Gupta 2003; `jl_eps` inverts it). The map
here is the "very sparse" one of Li, Hastie & Church (2006): each entry of the k x d matrix
is +sqrt(s / k) or -sqrt(s / k) with probability 1 / (2s) each and 0 otherwise, s = sqrt(d),
so E[||R x||^2] = ||x||^2 and the matrix has about k sqrt(d) non-zeros (1.8 M for
d = 200,000 and k = 4,096: 22 MB, built in about a second, applied at about 2k sqrt(d)
multiply-adds per image). For features that are not extremely sparse its distortion is that
of a dense Gaussian map (the extra variance term is 3 (s - 3) / d of the Gaussian one).

The matrix depends only on (seed, d, k) through numpy's PCG64 generator, so every run,
machine and process builds the same one; the cache key names it (worker.extractors).
docs/method.md §9 states the measured effect on I_dist, O_dist and the ranking.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from worker.pca import release_rows

#: part of the cache key: bump when the construction below changes
PROJECTION_VERSION = 1


def jl_eps(n: int, k: int) -> float:
    """The eps with k = 4 ln(n) / (eps^2 / 2 - eps^3 / 3): the documented bound on the
    relative change of any pairwise squared distance among n points, mapped to k dims."""
    need = 4.0 * math.log(max(n, 2)) / k
    lo, hi = 0.0, 1.0
    if hi**2 / 2 - hi**3 / 3 < need:
        return float("inf")
    for _ in range(100):
        mid = (lo + hi) / 2
        if mid**2 / 2 - mid**3 / 3 < need:
            lo = mid
        else:
            hi = mid
    return hi


class RandomProjection:
    """x (n, d) -> x @ R.T (n, k) float32, R the seeded very sparse matrix above."""

    def __init__(self, d: int, k: int, seed: int) -> None:
        if d < 1 or k < 1:
            raise ValueError(f"random projection needs d >= 1 and k >= 1, got d={d}, k={k}")
        self.d, self.k, self.seed = int(d), int(k), int(seed)
        s = max(1.0, math.sqrt(d))
        rng = np.random.default_rng([PROJECTION_VERSION, self.seed, self.d, self.k])
        total = self.d * self.k
        nnz = int(rng.binomial(total, 1.0 / s)) if s > 1 else total
        flat = np.sort(rng.choice(total, size=nnz, replace=False, shuffle=False))
        signs = rng.integers(0, 2, size=nnz).astype(np.float32) * 2 - 1
        values = signs * np.float32(math.sqrt(s / self.k))
        rows, cols = np.divmod(flat, self.d)  # row = output dim, col = input feature
        # (k, d) CSR, applied as R @ x.T so the sparse side drives the product
        self.matrix = sp.csr_matrix((values, (rows, cols)), shape=(self.k, self.d))

    def __call__(self, x: np.ndarray, chunk: int = 256) -> np.ndarray:
        """(n, d) -> (n, k) float32, in row chunks (x may be a memory-mapped array)."""
        x = np.asarray(x) if not isinstance(x, np.memmap) else x
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"random projection: expected (n, {self.d}), got {x.shape}")
        out = np.empty((x.shape[0], self.k), dtype=np.float32)
        for s in range(0, x.shape[0], chunk):
            block = np.asarray(x[s : s + chunk], dtype=np.float32)
            out[s : s + len(block)] = (self.matrix @ block.T).T
            release_rows(x, s, s + len(block))  # a memory-mapped input: bounded RSS
        return out


class ReducedExtractor:
    """Another extractor's features through a RandomProjection (model.reduce), made on the
    first batch, when the feature width is known. prepare/embed_prepared pass through, so
    the embedding stage keeps its threads, and the cache stores the projected vectors."""

    def __init__(self, base, dims: int, seed: int) -> None:
        self.base, self.dims, self.seed = base, int(dims), int(seed)
        self._projection: RandomProjection | None = None
        self.info = base.info  # the same dict: feature_dim is set on the first batch
        self.info["reduce"] = {"method": "random", "dims": self.dims, "seed": self.seed}
        self.cache_key = f"{base.cache_key}|reduce=random-v{PROJECTION_VERSION}:{dims}:{seed}"
        self.num_workers = getattr(base, "num_workers", None)
        self.batch_size = getattr(base, "batch_size", None)
        if hasattr(base, "prepare") and hasattr(base, "embed_prepared"):
            self.prepare = base.prepare
            self.embed_prepared = lambda inputs: self._project(base.embed_prepared(inputs))

    def _project(self, feats: np.ndarray) -> np.ndarray:
        feats = np.asarray(feats, dtype=np.float32)
        if not len(feats):
            return np.zeros((0, self.dims), dtype=np.float32)
        if self._projection is None:
            self._projection = RandomProjection(feats.shape[1], self.dims, self.seed)
        self.info["reduce"]["input_dim"] = self._projection.d
        out = self._projection(feats)
        self.info["feature_dim"] = self.dims
        return out

    def embed(self, images) -> np.ndarray:
        return self._project(self.base.embed(images))

    def __getattr__(self, name: str):  # model, image_processor, ... of the base extractor
        if name == "base":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)


def reduce_sets(sets: list, dims: int, seed: int) -> dict:
    """Precomputed embeddings (EmbeddedSet) projected in place, in row chunks (a memory-mapped
    array is read once); returns report.json's `model.reduce`."""
    d = int(sets[0].vectors.shape[1])
    projection = RandomProjection(d, dims, seed)
    for s in sets:
        s.vectors = projection(s.vectors)
    return {"method": "random", "dims": int(dims), "seed": int(seed), "input_dim": d}
