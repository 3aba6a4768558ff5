"""Blocked distance engine (numpy on the CPU, torch on CUDA): row sums, nearest neighbours,
k-center, fused passes.

All inputs are (N, z) float arrays; nothing here builds an N x M matrix for large sets.

How it works (docs/method.md §8):

- Both sets are centred jointly (distances are translation invariant), converted once to the
  working precision and augmented so that one GEMM gives squared distances directly:
  ``[a, |a|^2, 1] @ [-2b, 1, |b|^2]^T = |a|^2 + |b|^2 - 2ab``. No negative rounding
  result reaches the square root (see the near-duplicate fix-up below).
- The (m x n) distance matrix is visited in small cache-sized tiles (1024 x 256 on the CPU)
  that are reused from a per-thread buffer. On the CPU the tiles are numpy arrays and the row
  blocks are spread over a pool of one Python thread per core, each running BLAS
  single-threaded (GEMMs and ufuncs release the GIL); the tile stays in L2 between the GEMM,
  the sqrt and the row sum. On CUDA one stream processes larger torch tiles. Both routes run
  the same kernels through a small table of tile operations (_NumpyTiles, _TorchTiles);
  CPU_TILES = "torch" runs the CUDA route's torch code on the CPU (the tests do).
- ``memory_budget_mb`` bounds the tiles of all threads together, with their temporaries
  (``TILE_OVERHEAD`` x the tile bytes); besides them the engine holds one copy of the inputs
  in the working precision (O((n + m) z)), never O(n m).
- Pairs with d^2 < tau (|a|^2 + |b|^2) (near-duplicates, where the GEMM trick cancels) are
  recomputed by direct differences, so exact duplicates give exactly 0; a min-reduction per
  tile finds out cheaply whether a tile has any.
- Row sums are reduced per tile in the working precision and accumulated across tiles in
  float64. Nearest-neighbour distances are recomputed exactly in float64 for the chosen
  neighbour. k-center uses direct differences (no GEMM trick).
- TF32 is switched off for these matmuls on CUDA (and restored afterwards).
- Small calls on the CPU (at most SMALL_CALL_ELEMENTS = pairs x columns) skip the tiles:
  numpy float64 direct differences, exact. A CPU job never imports torch; torch is imported
  by the first call that runs on CUDA.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.devices import is_cpu, usable_cores


class _Torch:
    """torch, imported on first use (the module global is then the real module)."""

    def __getattr__(self, name: str) -> Any:
        import torch as module

        globals()["torch"] = module
        return getattr(module, name)


torch = _Torch()

DEFAULT_MEMORY_BUDGET_MB = 256
#: compute.memory_budget_mb "auto" on CUDA (capped at a quarter of the free device memory):
#: fewer, larger tiles; the fused 200k pass took 2.05 s instead of 5.33 s (benchmarks/GPU.md)
CUDA_AUTO_MEMORY_BUDGET_MB = 4096

#: CPU tile shape (rows x columns); about 1 MiB of float32, which fits the L2 cache. Tall
#: and narrow: OpenBLAS's GEMM with the few columns of a sweep group (k = 5..27) writes a
#: 1024 x 256 tile 2-2.5x faster than a 256 x 1024 one (fused 20k pass 1.57 -> 1.04 s with
#: the GEMV row sums and argmin row minima; benchmarks/RESULTS.md, session 6).
CPU_TILE_ROWS = 1024
CPU_TILE_COLS = 256
#: CUDA tiles are as large as the budget allows, up to this many columns.
CUDA_TILE_COLS = 16384
#: memory per tile element, in units of the element size (tile + temporaries)
TILE_OVERHEAD = 3
#: most row-block threads on the CPU: the Python glue between the numpy ops of a tile holds
#: the GIL, so more threads contend for it. On a 16-core host the fused 20k pass took 0.66 s
#: with 8 threads and 1.49 s with 16 (benchmarks/GPU.md, session 5).
CPU_MAX_WORKERS = 8
#: smallest tile (values) whatever the budget, so tiny budgets stay usable.
MIN_TILE = 16

_PRECISIONS = ("float32", "float64")
#: relative size d^2 / (|a|^2 + |b|^2) under which a pair is recomputed by differences.
#: The GEMM trick's rounding error is a few eps * (|a|^2 + |b|^2) (eps 6e-8 in float32), so
#: every exact duplicate falls below tau; above it a pair's d^2 keeps a relative error below
#: ~1e-4 (float32). 1e-2 made low-dimensional prefixes (z = 5) recompute many tiles: 2x
#: slower fused passes for no change in I_dist (benchmarks/RESULTS.md, issue 18).
_TAU = {"float32": 1e-3, "float64": 1e-4}
#: CPU calls with at most this many (pairs x columns) values run by direct differences in
#: numpy float64 (exact; no tiles, no torch)
SMALL_CALL_ELEMENTS = 1 << 22
_POOL_LOCK = threading.RLock()
_OUTER_THREADS: list[int] = []  # thread counts saved by nested _single_threaded blocks
#: a distributed backend (worker.distributed.RayDistanceBackend) for large calls, or None
_BACKEND: ContextVar = ContextVar("distance_backend", default=None)


# --------------------------------------------------------------------------- helpers


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available) -> torch.device, by the one
    device rule of worker.devices (errors name compute.device)."""
    from worker.devices import resolve_device as resolve

    return resolve(device, "compute.device")


#: with precision "auto", calls with at least this many distances use float32 tiles (float64
#: accumulation; relative error <= 1e-7 measured at 20k x 20k, benchmarks/RESULTS.md); smaller
#: ones cost little in float64 and stay exact to rounding
AUTO_FLOAT32_MIN_DISTANCES = 1 << 22


def resolve_precision(precision: str, distances: int) -> str:
    """'auto' -> 'float32' for calls of at least AUTO_FLOAT32_MIN_DISTANCES distances, else
    'float64'; other values unchanged. Resolved once per whole call, before it is split into
    row blocks, so every block (local or on Ray) uses the same precision."""
    if precision != "auto":
        return precision
    return "float32" if distances >= AUTO_FLOAT32_MIN_DISTANCES else "float64"


def _precision_name(precision: str, distances: int = 0) -> str:
    """The tiles' precision: 'float32' or 'float64'; "auto" -> float32 for calls of at least
    AUTO_FLOAT32_MIN_DISTANCES distances, else float64. ValueError for anything else."""
    if precision == "auto":
        return "float32" if distances >= AUTO_FLOAT32_MIN_DISTANCES else "float64"
    if precision not in _PRECISIONS:
        raise ValueError(
            f"compute.precision: {precision!r} is not supported; use 'auto', 'float32' or 'float64'"
        )
    return precision


def as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """x as a finite numeric (N, z) numpy array (no copy when it already is one)."""
    if "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, z), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf values")
    return arr


def check_pair(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    """ValueError unless a and b have the same number of columns."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{na} and {nb} must have the same number of columns, got {a.shape[1]} and {b.shape[1]}"
        )


@contextmanager
def _no_tf32(device: torch.device) -> Iterator[None]:
    """Disable TF32 for matmuls on CUDA for the duration of the block, then restore it."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _joint_mean(arrays: list[np.ndarray]) -> np.ndarray:
    total = sum(len(a) for a in arrays)
    z = arrays[0].shape[1]
    if total == 0:
        return np.zeros(z)
    acc = np.zeros(z, dtype=np.float64)
    for a in arrays:
        if len(a):
            acc += a.sum(axis=0, dtype=np.float64)
    return acc / total


def _scale(arrays: list[np.ndarray], mean: np.ndarray) -> float:
    """A power of two at or below the largest |x - mean| over the call's inputs (1.0 when
    they are all equal): the tiles hold (x - mean) / scale, so float32 squares neither
    overflow (|x| > 1e19) nor underflow (|x| < 1e-19) whatever the data's magnitude. Dividing
    by a power of two is exact, so where nothing overflows the tiles' numbers are those of the
    unscaled data times 2^-k: the same rounding, and sums scale back exactly."""
    peak = 0.0
    for a in arrays:
        if a.size:
            hi = np.max(a, axis=0).astype(np.float64) - mean
            lo = mean - np.min(a, axis=0).astype(np.float64)
            peak = max(peak, float(np.max(hi)), float(np.max(lo)))
    if not (0.0 < peak < np.inf):
        return 1.0
    return float(2.0 ** np.floor(np.log2(peak)))


def _centred(
    x: np.ndarray, mean: np.ndarray, dtype: str, *, augment: str, scale: float = 1.0
) -> np.ndarray:
    """(x - mean) / scale in `dtype` ('float32' / 'float64'), with two extra columns for the
    GEMM trick: augment='rows' -> [a, |a|^2, 1]; augment='cols' -> [-2b, 1, |b|^2];
    augment='none' -> a. Converted in row chunks so no full float64 temporary is made.
    The squared norms are taken in float64 from the already rounded values."""
    n, z = x.shape
    extra = 0 if augment == "none" else 2
    out = np.empty((n, z + extra), dtype=dtype)
    step = max(1, (32 * 1024 * 1024) // max(1, 8 * z))
    for s in range(0, n, step):
        chunk = ((np.asarray(x[s : s + step], dtype=np.float64) - mean) / scale).astype(dtype)
        if augment == "none":
            out[s : s + step] = chunk
            continue
        sq = np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64).astype(dtype)
        if augment == "rows":
            out[s : s + step, :z] = chunk
            out[s : s + step, z] = sq
            out[s : s + step, z + 1] = 1.0
        else:
            out[s : s + step, :z] = chunk * -2.0
            out[s : s + step, z] = 1.0
            out[s : s + step, z + 1] = sq
    return out


def auto_memory_budget_mb(device: str) -> float:
    """compute.memory_budget_mb "auto": DEFAULT_MEMORY_BUDGET_MB on the CPU; on CUDA
    CUDA_AUTO_MEMORY_BUDGET_MB, at most a quarter of the device's free memory."""
    if is_cpu(device, "compute.device"):
        return DEFAULT_MEMORY_BUDGET_MB
    free, _ = torch.cuda.mem_get_info(resolve_device(device))
    return float(max(DEFAULT_MEMORY_BUDGET_MB, min(CUDA_AUTO_MEMORY_BUDGET_MB, free / 4 / 2**20)))


def _check_budget(memory_budget_mb: float) -> None:
    if memory_budget_mb is None or not memory_budget_mb > 0:
        raise ValueError(f"compute.memory_budget_mb must be > 0, got {memory_budget_mb!r}")


@dataclass(frozen=True)
class _Plan:
    tile_rows: int
    tile_cols: int
    workers: int


def _plan(
    n_rows: int,
    n_cols: int,
    itemsize: int,
    memory_budget_mb: float,
    cuda: bool,
    *,
    workers: int | None = None,
) -> _Plan:
    """Tile shape and thread count such that all tiles together stay within the budget.
    workers: CPU threads (None: one per core)."""
    _check_budget(memory_budget_mb)
    budget = float(memory_budget_mb) * 1024 * 1024
    n_rows, n_cols = max(1, n_rows), max(1, n_cols)
    # bytes per tile element: the tile itself plus temporaries that are at most as large
    # (near-duplicate fix-up: thresholds, mask, gathered rows; argmin on a row subset)
    per_elem = TILE_OVERHEAD * itemsize
    if cuda:
        workers = 1
        elems = max(1, int(budget // per_elem))
        cols = min(n_cols, CUDA_TILE_COLS, elems)
        rows = min(n_rows, max(1, elems // cols))
    else:
        if workers is None:
            workers = _cpu_count()
        # per worker: one tile plus one row vector; never below MIN_TILE values
        elems = max(MIN_TILE, int(budget // (workers * per_elem)))
        cols = min(n_cols, CPU_TILE_COLS, max(MIN_TILE, elems // 4))
        # narrow inputs get taller tiles, so a tile always holds about the same work
        tall = max(CPU_TILE_ROWS, (CPU_TILE_ROWS * CPU_TILE_COLS) // cols)
        rows = min(n_rows, tall, max(1, elems // (cols + 1)))
        if workers > 1:  # at least one row block per worker
            rows = min(rows, max(1, -(-n_rows // workers)))
        workers = max(1, min(workers, -(-n_rows // rows)))
    return _Plan(tile_rows=rows, tile_cols=cols, workers=workers)


@contextmanager
def _single_threaded(device: torch.device) -> Iterator[None]:
    """On CPU run torch with one intra-op thread for the block, then restore the count.

    Small ops with several OpenMP threads cost milliseconds of wake-ups when the cores are
    shared with other processes; one thread per tile (or per memory-bound pass) does not.
    """
    if device.type != "cpu":
        yield
        return
    with _POOL_LOCK:
        old = torch.get_num_threads()
        _OUTER_THREADS.append(old)
        try:
            torch.set_num_threads(1)
            yield
        finally:
            _OUTER_THREADS.pop()
            torch.set_num_threads(old)


def _available_threads() -> int:
    """torch's thread count as the caller set it (not the 1 used inside engine calls)."""
    return max(1, _OUTER_THREADS[0] if _OUTER_THREADS else torch.get_num_threads())


def _cpu_count() -> int:
    """Row-block threads for the numpy tiles: the cores this process may run on (its affinity
    mask), at most CPU_MAX_WORKERS and at most OMP_NUM_THREADS when that is set (as torch
    would; Ray sets it to 1 in its workers, which run side by side)."""
    cores = usable_cores()
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        cores = min(cores, int(omp))
    return max(1, min(cores, CPU_MAX_WORKERS))


# --------------------------------------------------------------------------- tile operations


@functools.lru_cache(maxsize=64)
def _constant(n: int, kind: str, dtype: str) -> np.ndarray:
    """A read-only np.ones(n) or np.arange(n) in `dtype`, made once per size (the tiles'
    row-sum vector and gather rows)."""
    out = np.ones(n, dtype=dtype) if kind == "ones" else np.arange(n, dtype=dtype)
    out.flags.writeable = False
    return out


class _NumpyTiles:
    """Tile operations on numpy arrays: the CPU route. No torch import, and on these small
    tiles as fast as torch's CPU ops or faster (benchmarks/RESULTS.md, session 5). Row blocks
    run in a thread pool with BLAS single-threaded (numpy releases the GIL in GEMMs and
    ufuncs)."""

    cuda = False
    #: addmm goes through a scratch tile (numpy's matmul has no accumulate)
    addmm_scratch = True

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(name)

    def asarray(self, x: np.ndarray) -> np.ndarray:
        return x

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return x

    def full(self, n: int, value: float, dtype) -> np.ndarray:
        return np.full(n, value, dtype=dtype)

    def empty(self, n: int, dtype) -> np.ndarray:
        return np.empty(n, dtype=dtype)

    def tile(self, buf: np.ndarray, r: int, c: int) -> np.ndarray:
        return buf[: r * c].reshape(r, c)

    def mm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        """out = a @ b.T (b holds the column side row-wise)."""
        np.matmul(a, b.T, out=out)

    def addmm(self, t: np.ndarray, a: np.ndarray, b: np.ndarray, scratch: np.ndarray) -> None:
        """t += a @ b.T, through `scratch` (same shape as t)."""
        np.matmul(a, b.T, out=scratch)
        t += scratch

    def row_min(self, t: np.ndarray) -> np.ndarray:
        return self.row_min_index(t)[0]

    def row_min_index(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's minimum and its first column: argmin, then a gather (on a 1024 x 256
        tile 2x faster than numpy's min along the rows)."""
        idx = t.argmin(axis=1)
        return t[_constant(len(idx), "arange", "int64"), idx], idx

    def sqrt_(self, t: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.sqrt(t, out=t if out is None else out)

    def row_sum(self, t: np.ndarray, out: np.ndarray) -> None:
        """out = t @ 1: BLAS's GEMV, 2-3x numpy's row sum on a tile; vector accumulators over
        at most CPU_TILE_COLS terms, the tiles' sums then accumulate in float64."""
        np.matmul(t, _constant(t.shape[1], "ones", t.dtype.name), out=out)

    def nonzero(self, mask: np.ndarray) -> tuple[np.ndarray, ...]:
        return np.nonzero(mask)

    def argmin_rows(self, t: np.ndarray) -> np.ndarray:
        return t.argmin(axis=1)

    def sq_sum_rows(self, d: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", d, d)

    def fill_diagonal(self, t: np.ndarray, offset: int, value: float) -> None:
        i = np.arange(max(0, -offset), min(t.shape[0], t.shape[1] - offset))
        t[i, i + offset] = value

    def point_distances(self, x: np.ndarray, point: np.ndarray) -> np.ndarray:
        """||x_i - point|| by direct differences in x's precision, as float64."""
        diff = x - point
        return np.sqrt(np.einsum("ij,ij->i", diff, diff)).astype(np.float64)

    def argmax(self, x: np.ndarray) -> int:
        return int(np.argmax(x))

    def minimum_(self, x: np.ndarray, y: np.ndarray) -> None:
        np.minimum(x, y, out=x)

    @contextmanager
    def single_threaded(self) -> Iterator[None]:
        """BLAS on one thread for the call: the row-block pool gives the parallelism."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            yield

    def thread_setup(self) -> None:
        pass

    def workers(self) -> int:
        return _cpu_count()

    @contextmanager
    def exact_matmul(self) -> Iterator[None]:
        yield


class _TorchTiles:
    """The same operations on torch tensors: the CUDA route (and the CPU, when CPU_TILES is
    "torch", which runs the CUDA code path without a GPU)."""

    addmm_scratch = False

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def dtype(self, name: str) -> torch.dtype:
        return getattr(torch, name)

    def asarray(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, device=self.device)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()

    def full(self, n: int, value: float, dtype) -> torch.Tensor:
        return torch.full((n,), value, dtype=dtype, device=self.device)

    def empty(self, n: int, dtype) -> torch.Tensor:
        return torch.empty(n, dtype=dtype, device=self.device)

    def tile(self, buf: torch.Tensor, r: int, c: int) -> torch.Tensor:
        return buf[: r * c].view(r, c)

    def mm(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        torch.mm(a, b.t(), out=out)

    def addmm(self, t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scratch) -> None:
        t.addmm_(a, b.t())

    def row_min(self, t: torch.Tensor) -> torch.Tensor:
        return t.amin(dim=1)

    def row_min_index(self, t: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Row minima only: _take_better finds the columns of the rows that improve."""
        return self.row_min(t), None

    def sqrt_(self, t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return t.sqrt_() if out is None else torch.sqrt(t, out=out)

    def row_sum(self, t: torch.Tensor, out: torch.Tensor) -> None:
        torch.sum(t, dim=1, out=out)

    def nonzero(self, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.nonzero(mask, as_tuple=True)

    def argmin_rows(self, t: torch.Tensor) -> torch.Tensor:
        return t.argmin(dim=1)

    def sq_sum_rows(self, d: torch.Tensor) -> torch.Tensor:
        return d.pow(2).sum(dim=1)

    def fill_diagonal(self, t: torch.Tensor, offset: int, value: float) -> None:
        t.diagonal(offset=offset).fill_(value)

    def point_distances(self, x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, point[None, :], compute_mode="donot_use_mm_for_euclid_dist")
        return d.squeeze(1).double()

    def argmax(self, x: torch.Tensor) -> int:
        return int(torch.argmax(x))

    def minimum_(self, x: torch.Tensor, y: torch.Tensor) -> None:
        torch.minimum(x, y, out=x)

    def single_threaded(self):
        return _single_threaded(self.device)

    def thread_setup(self) -> None:
        torch.set_num_threads(1)

    def workers(self) -> int:
        return _available_threads()

    def exact_matmul(self):
        return _no_tf32(self.device)


#: the CPU's tile route: "numpy" (the default; no torch import) or "torch" (the CUDA route's
#: torch code on the CPU: the tests run it so the CUDA kernels are covered without a GPU)
CPU_TILES = "numpy"
_NUMPY_TILES = _NumpyTiles()


def _tile_ops(device: str | torch.device) -> _NumpyTiles | _TorchTiles:
    """The tile operations for `device` (compute.device): numpy on the CPU (unless CPU_TILES
    says torch), torch on CUDA."""
    if CPU_TILES == "numpy" and is_cpu(device, "compute.device"):
        return _NUMPY_TILES
    return _TorchTiles(resolve_device(device))


def _cpu_single_threaded(fn: Callable) -> Callable:
    """Run the whole call with single-threaded ops in the calling thread (torch intra-op
    threads, or BLAS threads for numpy); the parallelism comes from the row-block pool."""

    @functools.wraps(fn)
    def wrapper(*args, device: str = "cpu", **kwargs):
        with _tile_ops(device).single_threaded():
            return fn(*args, device=device, **kwargs)

    return wrapper


def _run_row_blocks(n_rows: int, plan: _Plan, ops, make_buffer: Callable, fn: Callable) -> None:
    """Call fn(start, stop, buffer) for each row block; on the CPU spread over a thread pool.

    On the CPU every tile runs single-threaded (several threads on one small tile cost more in
    wake-ups than they gain) and the row blocks are shared by `plan.workers` Python threads;
    callers run inside ops.single_threaded() (the _cpu_single_threaded kernels), which
    restores the process-wide thread settings afterwards. On CUDA the blocks run in order on
    the current stream.
    """
    starts = list(range(0, n_rows, plan.tile_rows))

    def serial() -> None:
        buf = make_buffer()
        for s in starts:
            fn(s, min(s + plan.tile_rows, n_rows), buf)

    if ops.cuda:
        serial()
        return

    local = threading.local()

    def task(s: int) -> None:
        if not getattr(local, "ready", False):
            ops.thread_setup()
            local.buf = make_buffer()
            local.ready = True
        fn(s, min(s + plan.tile_rows, n_rows), local.buf)

    if plan.workers <= 1 or len(starts) <= 1:
        serial()
    else:
        with ThreadPoolExecutor(max_workers=plan.workers) as pool:
            for _ in pool.map(task, starts):
                pass


def _col_sq_max(b, tile_cols: int) -> list[float]:
    """Largest |b|^2 within each column tile (for the cheap near-duplicate test)."""
    sq = b[:, -1]
    return [float(sq[c : c + tile_cols].max()) for c in range(0, sq.shape[0], tile_cols)]


def _fix_small(ops, t, ai, b, c0: int, limit: float, tau: float, tile_min=None) -> bool:
    """Replace squared distances of near-duplicate pairs in the tile by exact ones.

    |a|^2 + |b|^2 - 2ab loses about log10(S / d^2) digits where S = |a|^2 + |b|^2; entries
    with d^2 < tau * S are recomputed by direct differences, so exact duplicates give 0 and
    close pairs keep full relative precision. `limit` bounds tau * S over the tile, so the
    common case costs one min-reduction (or none, given `tile_min`). True if t changed.
    """
    if (float(t.min()) if tile_min is None else tile_min) >= limit:
        return False
    z = ai.shape[1] - 2
    r, c = t.shape
    changed = False
    step = max(1, r // 4)  # temporaries stay below the tile's own size
    for r0 in range(0, r, step):
        tr = t[r0 : r0 + step]
        thr = ai[r0 : r0 + step, z : z + 1] + b[c0 : c0 + c, z + 1]
        thr *= tau
        ri, ci = ops.nonzero(tr < thr)
        del thr
        hits = max(1, (step * c) // max(1, 2 * z))
        for h in range(0, len(ri), hits):
            rr, cc = ri[h : h + hits], ci[h : h + hits]
            diff = ai[r0 + rr, :z] + 0.5 * b[c0 + cc, :z]  # a - b, as b holds -2b
            tr[rr, cc] = ops.sq_sum_rows(diff)
            changed = True
    return changed


# --------------------------------------------------------------------------- small calls


def _small_call(
    m: int, n: int, z: int, memory_budget_mb: float, precision: str, device: str
) -> bool:
    """True when a call over m x n pairs of z columns takes the numpy path: m n z at most
    SMALL_CALL_ELEMENTS on the CPU. Checks the settings as the tiled path would."""
    if m * n * max(1, z) > SMALL_CALL_ELEMENTS:
        return False
    if not is_cpu(device, "compute.device"):
        return False
    _check_budget(memory_budget_mb)
    _precision_name(precision)
    return True


def _squared_by_columns(a: np.ndarray, b: np.ndarray, bounds: list[int]) -> Iterator[np.ndarray]:
    """For each prefix in `bounds` (increasing), ||a_i[:p] - b_j[:p]||^2 (m, n) float64 by
    direct differences, accumulated over the column groups."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    sq = np.zeros((len(a), len(b)))
    lo = 0
    for hi in bounds:
        diff = a[:, None, lo:hi] - b[None, :, lo:hi]
        sq += np.einsum("ijk,ijk->ij", diff, diff)
        lo = hi
        yield sq


def _neighbour_distances(a: np.ndarray, b: np.ndarray, idx: np.ndarray, width: int) -> np.ndarray:
    """||a_i[:width] - b_idx[i][:width]||_2 in float64 from the original vectors, inf where
    idx is -1 (the exact distance to each row's chosen neighbour). (m,) float64."""
    dist = np.full(len(idx), np.inf, dtype=np.float64)
    ok = np.flatnonzero(idx >= 0)
    step = max(1, (32 * 1024 * 1024) // max(1, 16 * width))
    for s in range(0, len(ok), step):
        sel = ok[s : s + step]
        diff = np.asarray(a[sel, :width], np.float64) - np.asarray(b[idx[sel], :width], np.float64)
        dist[sel] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return dist


def _small_nearest(
    a: np.ndarray, b: np.ndarray, sq: np.ndarray, width: int, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest row of b for each row of a from their squared distances sq (m, n) over the
    first `width` columns: (distance, index), lowest index on ties; exclude_self: row i skips
    column i; no admissible column -> inf, -1."""
    m, n = sq.shape
    if exclude_self and m:
        sq = sq.copy()
        np.fill_diagonal(sq, np.inf)
    idx = np.full(m, -1, dtype=np.int64)
    if n:
        best = np.argmin(sq, axis=1)
        found = np.isfinite(sq[np.arange(m), best])
        idx[found] = best[found]
    return _neighbour_distances(a, b, idx, width), idx


def _small_pair_pass(
    a: np.ndarray, b: np.ndarray, sums_at: list[int], near: int | None
) -> PairPassResult:
    bounds = sorted({*sums_at, *([near] if near is not None else [])})
    i_dist: dict[int, np.ndarray] = {}
    dist = idx = None
    for p, sq in zip(bounds, _squared_by_columns(a, b, bounds), strict=True):
        if p in sums_at:
            i_dist[p] = np.sqrt(sq).sum(axis=1)
        if p == near:
            dist, idx = _small_nearest(a, b, sq, p, exclude_self=False)
    for p in sums_at:
        i_dist.setdefault(p, np.zeros(len(a)))
    return PairPassResult(
        i_dist=i_dist, nearest_distance=dist, nearest_index=idx, nearest_dims=near
    )


def _small_kcenter(x_np: np.ndarray, k: int, min_d: np.ndarray | None) -> list[int]:
    """kcenter_greedy's loop in numpy float64 (min_d: distances to the given centres)."""
    x = np.asarray(x_np, dtype=np.float64)
    x = x - x.mean(axis=0)
    first = None
    if min_d is None:
        first = int(np.argmax(np.einsum("ij,ij->i", x, x)))
        min_d = np.full(len(x), np.inf)
    min_d = np.array(min_d, dtype=np.float64)
    chosen: list[int] = []
    for it in range(k):
        j = first if (it == 0 and first is not None) else int(np.argmax(min_d))
        chosen.append(j)
        diff = x - x[j]
        np.minimum(min_d, np.sqrt(np.einsum("ij,ij->i", diff, diff)), out=min_d)
        min_d[j] = -1.0
    return chosen


# --------------------------------------------------------------------------- backends


@contextmanager
def distance_backend(backend) -> Iterator[None]:
    """Route large row_distance_sums / nearest_distances calls to `backend` in this block.

    `backend` has takes(m, n) -> bool and the two functions with this module's signatures
    (worker.distributed.RayDistanceBackend splits the rows into blocks and runs each with
    `block_row_distance_sums` / `block_nearest_distances`). The numbers stay those of the
    local engine: every block is centred by the whole call's mean.
    """
    token = _BACKEND.set(backend)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def _delegate(m: int, n: int):
    backend = _BACKEND.get()
    return backend if backend is not None and backend.takes(m, n) else None


def call_center(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """The mean every tile of one call is centred by: of [a; b], or of a alone (self-queries).
    Shape (z,) float64. Distances do not depend on it; rounding does, so blocks share it."""
    return _joint_mean([a] if b is None else [a, b])


def block_row_distance_sums(
    rows: np.ndarray, cols: np.ndarray, center: np.ndarray, **engine_kw: Any
) -> np.ndarray:
    """row_distance_sums for one row block of a larger call, centred by the call's `center`.
    engine_kw: memory_budget_mb, precision, device."""
    return _row_distance_sums(rows, cols, center=center, **engine_kw)


def block_nearest_distances(
    queries: np.ndarray,
    points: np.ndarray,
    center: np.ndarray,
    *,
    exclude_self: bool = False,
    row_offset: int = 0,
    **engine_kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """nearest_distances for queries[row_offset:...] of a larger call: with exclude_self,
    block row i skips point row_offset + i. engine_kw: memory_budget_mb, precision, device."""
    return _nearest_distances(
        queries,
        points,
        exclude_self=exclude_self,
        center=center,
        row_offset=row_offset,
        **engine_kw,
    )


# --------------------------------------------------------------------------- public API


def row_distance_sums(
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
) -> np.ndarray:
    """I_dist: out[j] = sum_k ||rows[j] - cols[k]||_2, accumulated in float64. Shape (m,).

    precision: 'float32' (fast, relative error ~1e-7) or 'float64' (~1e-15).
    device: 'cpu', 'cuda', 'cuda:N' or 'auto'.
    Inside `distance_backend(...)`, a call the backend takes runs there in row blocks.
    """
    rows, cols = as_matrix(rows, "rows"), as_matrix(cols, "cols")
    check_pair(rows, cols, "rows", "cols")
    precision = resolve_precision(precision, len(rows) * len(cols))
    kw = {"memory_budget_mb": memory_budget_mb, "precision": precision, "device": device}
    backend = _delegate(len(rows), len(cols))
    if backend is not None:
        return backend.row_distance_sums(rows, cols, **kw)
    if _small_call(len(rows), len(cols), rows.shape[1], memory_budget_mb, precision, device):
        (sq,) = _squared_by_columns(rows, cols, [rows.shape[1]])
        return np.sqrt(sq).sum(axis=1)
    return _row_distance_sums(rows, cols, **kw)


@_cpu_single_threaded
def _row_distance_sums(
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
    workers: int | None = None,
    center: np.ndarray | None = None,
) -> np.ndarray:
    a_np, b_np = as_matrix(rows, "rows"), as_matrix(cols, "cols")
    check_pair(a_np, b_np, "rows", "cols")
    m, n = len(a_np), len(b_np)
    ops, name = _tile_ops(device), _precision_name(precision, m * n)
    dtype = ops.dtype(name)
    out = ops.full(m, 0.0, ops.dtype("float64"))
    if m == 0 or n == 0:
        return ops.to_numpy(out)
    mean = call_center(a_np, b_np) if center is None else np.array(center, dtype=np.float64)
    scale = _scale([a_np, b_np], mean)
    a = ops.asarray(_centred(a_np, mean, name, augment="rows", scale=scale))
    b = ops.asarray(_centred(b_np, mean, name, augment="cols", scale=scale))  # mm with b.T
    workers = ops.workers() if workers is None else workers
    plan = _plan(m, n, np.dtype(name).itemsize, memory_budget_mb, ops.cuda, workers=workers)
    tr, tc = plan.tile_rows, plan.tile_cols

    def make_buffer():
        return ops.empty(tr * tc + tr, dtype)

    tau = _TAU[name]
    col_max = _col_sq_max(b, tc)

    def block(s: int, e: int, buf) -> None:
        r = e - s
        ai = a[s:e]
        row_max = float(ai[:, -2].max())
        acc = buf[tr * tc : tr * tc + r]
        total = out[s:e]
        for k, c0 in enumerate(range(0, n, tc)):
            c1 = min(c0 + tc, n)
            t = ops.tile(buf, r, c1 - c0)
            ops.mm(ai, b[c0:c1], out=t)
            # after the fix-up every entry is >= 0 (entries below tau * S were recomputed
            # exactly, the others are >= tau * S >= 0), so no clamp pass is needed
            _fix_small(ops, t, ai, b, c0, tau * (row_max + col_max[k]), tau)
            ops.sqrt_(t)
            ops.row_sum(t, out=acc)
            total += acc

    with ops.exact_matmul():
        _run_row_blocks(m, plan, ops, make_buffer, block)
    return ops.to_numpy(out) * scale


def nearest_distances(
    queries: np.ndarray,
    points: np.ndarray,
    *,
    exclude_self: bool = False,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each query to its nearest point, and that point's index. Shapes (m,), (m,).

    exclude_self: queries and points are the same set; row j ignores column j (by index,
    so exact duplicates still count as distance 0). A query with no admissible point
    (exclude_self with a single point, or no points at all) gets distance inf, index -1.
    Ties go to the lowest index, except among exact duplicates of the nearest point, where
    GEMM rounding may pick any copy. The returned distance is recomputed in float64 from the
    original vectors for the chosen neighbour; `precision` only affects which neighbour
    wins among near-ties. Inside `distance_backend(...)`, a call the backend takes runs
    there in row blocks.
    """
    if exclude_self and len(queries) != len(points):
        raise ValueError(
            "exclude_self=True needs queries and points to be the same set "
            f"(got {len(queries)} and {len(points)} rows)"
        )
    queries, points = as_matrix(queries, "queries"), as_matrix(points, "points")
    check_pair(queries, points, "queries", "points")
    precision = resolve_precision(precision, len(queries) * len(points))
    kw = {"memory_budget_mb": memory_budget_mb, "precision": precision, "device": device}
    backend = _delegate(len(queries), len(points))
    if backend is not None:
        return backend.nearest_distances(queries, points, exclude_self=exclude_self, **kw)
    if _small_call(
        len(queries), len(points), queries.shape[1], memory_budget_mb, precision, device
    ):
        z = queries.shape[1]
        (sq,) = _squared_by_columns(queries, points, [z])
        return _small_nearest(queries, points, sq, z, exclude_self)
    return _nearest_distances(queries, points, exclude_self=exclude_self, **kw)


def _take_better(ops, t, v, vi, bv, bi, c0: int) -> None:
    """Rows of tile `t` (columns from c0) whose minimum `v` (at columns `vi`, or None) beats
    the best so far `bv`: update `bv` and the column index `bi`. Strict <, so earlier columns
    win ties; without `vi` the argmin runs only on the rows this tile improves, or on the
    whole tile when many do."""
    better = v < bv
    if bool(better.any()):
        (rows,) = ops.nonzero(better)
        if vi is not None:
            ix = vi[rows]
        elif len(rows) > t.shape[0] // 4:
            ix = ops.argmin_rows(t)[rows]
        else:
            ix = ops.argmin_rows(t[rows])
        bi[rows] = ix + c0
        bv[rows] = v[rows]


@_cpu_single_threaded
def _nearest_distances(
    queries: np.ndarray,
    points: np.ndarray,
    *,
    exclude_self: bool = False,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
    workers: int | None = None,
    center: np.ndarray | None = None,
    row_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    q_np, p_np = as_matrix(queries, "queries"), as_matrix(points, "points")
    check_pair(q_np, p_np, "queries", "points")
    m, n = len(q_np), len(p_np)
    ops, name = _tile_ops(device), _precision_name(precision, m * n)
    dtype = ops.dtype(name)
    best = ops.full(m, float("inf"), dtype)
    best_idx = ops.full(m, -1, ops.dtype("int64"))
    if m and n:
        if center is not None:
            mean = np.array(center, dtype=np.float64)
        else:
            mean = call_center(p_np) if exclude_self else call_center(q_np, p_np)
        scale = _scale([q_np, p_np], mean)
        a = ops.asarray(_centred(q_np, mean, name, augment="rows", scale=scale))
        b = ops.asarray(_centred(p_np, mean, name, augment="cols", scale=scale))
        workers = ops.workers() if workers is None else workers
        plan = _plan(m, n, np.dtype(name).itemsize, memory_budget_mb, ops.cuda, workers=workers)
        tr, tc = plan.tile_rows, plan.tile_cols
        inf = float("inf")

        def make_buffer():
            return ops.empty(tr * tc, dtype)

        tau = _TAU[name]
        col_max = _col_sq_max(b, tc)

        def block(s: int, e: int, buf) -> None:
            r = e - s
            ai = a[s:e]
            row_max = float(ai[:, -2].max())
            bv, bi = best[s:e], best_idx[s:e]
            for k, c0 in enumerate(range(0, n, tc)):
                c1 = min(c0 + tc, n)
                t = ops.tile(buf, r, c1 - c0)
                ops.mm(ai, b[c0:c1], out=t)
                g0, g1 = row_offset + s, row_offset + e  # this tile's rows in the whole call
                if exclude_self and c0 < g1 and g0 < c1:
                    ops.fill_diagonal(t, g0 - c0, inf)
                # numpy: argmin and a gather (faster than min along the rows); torch: the
                # minimum alone, the argmin only on the rows this tile improves (few once the
                # first tiles are done)
                v, vi = ops.row_min_index(t)
                limit = tau * (row_max + col_max[k])
                if _fix_small(ops, t, ai, b, c0, limit, tau, tile_min=float(v.min())):
                    v, vi = ops.row_min_index(t)
                _take_better(ops, t, v, vi, bv, bi, c0)

        with ops.exact_matmul():
            _run_row_blocks(m, plan, ops, make_buffer, block)

    idx = np.asarray(ops.to_numpy(best_idx), dtype=np.int64)
    return _neighbour_distances(q_np, p_np, idx, q_np.shape[1]), idx


# --------------------------------------------------------------------------- fused passes


@dataclass(frozen=True)
class PairPassResult:
    """Every S x P quantity of one fused pass (issue 18).

    i_dist[z]: I_dist over the first z columns, (m,) float64, for each requested prefix z.
    nearest_distance / nearest_index: each row's nearest column row over the first
    `nearest_dims` columns, (m,) float64 / int64 (as nearest_distances), or None if not asked.
    """

    i_dist: dict[int, np.ndarray]
    nearest_distance: np.ndarray | None = None
    nearest_index: np.ndarray | None = None
    nearest_dims: int | None = None


@dataclass(frozen=True)
class SelfPassResult:
    """One S x S pass: each row's nearest OTHER row (by index), read by diversity and by
    within-set near duplicates. distance (N,) float64, index (N,) int64 (inf / -1 if N < 2)."""

    distance: np.ndarray
    index: np.ndarray


def _prefix_plan(
    z: int, prefixes: list[int] | tuple[int, ...] | None, nearest: bool | int
) -> tuple[list[int], int | None]:
    """Sorted unique prefixes for the sums, and the nearest prefix (None when not asked)."""
    sums = sorted({int(p) for p in prefixes}) if prefixes is not None else [z]
    near = None
    if nearest is not False and nearest is not None:
        near = z if nearest is True else int(nearest)
    for p in [*sums, *([near] if near is not None else [])]:
        if not 1 <= p <= z:
            raise ValueError(f"prefixes / nearest: {p} is outside 1..{z} (the inputs' columns)")
    return sums, near


def pair_pass(
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    prefixes: list[int] | tuple[int, ...] | None = None,
    nearest: bool | int = False,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
) -> PairPassResult:
    """One fused pass over the (m x n) tiles of rows (S, (m, z)) x cols (P, (n, z)).

    prefixes: column counts z_1 < ... (nested leading dimensions, e.g. a PCA sweep's first z
    components of the widest fit); for each, I_dist[z_i]_j = sum_k ||s_j[:z_i] - p_k[:z_i]||_2.
    None -> all z columns. nearest: True (all columns) or a prefix z_i -> each row's nearest
    column row in that prefix, as nearest_distances. Per tile the squared distances are built
    incrementally over the column groups [z_{i-1}, z_i) (one GEMM each, accumulated), so every
    prefix comes from the same tile visit; each prefix then pays one sqrt and row sum.
    Equals the separate row_distance_sums / nearest_distances calls on the sliced columns
    (same centring: the joint mean's prefix) to rounding. Inside `distance_backend(...)`, a
    call the backend takes runs there in row blocks.
    """
    rows, cols = as_matrix(rows, "rows"), as_matrix(cols, "cols")
    check_pair(rows, cols, "rows", "cols")
    precision = resolve_precision(precision, len(rows) * len(cols))
    kw = {"memory_budget_mb": memory_budget_mb, "precision": precision, "device": device}
    backend = _delegate(len(rows), len(cols))
    if backend is not None:
        return backend.pair_pass(rows, cols, prefixes=prefixes, nearest=nearest, **kw)
    if _small_call(len(rows), len(cols), rows.shape[1], memory_budget_mb, precision, device):
        return _small_pair_pass(rows, cols, *_prefix_plan(rows.shape[1], prefixes, nearest))
    return _pair_pass(rows, cols, prefixes=prefixes, nearest=nearest, **kw)


def block_pair_pass(
    rows: np.ndarray, cols: np.ndarray, center: np.ndarray, **kw: Any
) -> PairPassResult:
    """pair_pass for one row block of a larger call, centred by the call's `center`.
    kw: prefixes, nearest, memory_budget_mb, precision, device."""
    return _pair_pass(rows, cols, center=center, **kw)


def concat_pair_results(parts: list[PairPassResult]) -> PairPassResult:
    """The PairPassResult of consecutive row blocks, in order (for distributed backends)."""
    first = parts[0]
    near = first.nearest_index is not None
    return PairPassResult(
        i_dist={p: np.concatenate([r.i_dist[p] for r in parts]) for p in first.i_dist},
        nearest_distance=np.concatenate([r.nearest_distance for r in parts]) if near else None,
        nearest_index=np.concatenate([r.nearest_index for r in parts]) if near else None,
        nearest_dims=first.nearest_dims,
    )


def self_pass(
    x: np.ndarray,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
) -> SelfPassResult:
    """One S x S pass: nearest other row of x (N, z) by index (nearest_distances with
    exclude_self), shared by diversity and within-set near duplicates."""
    x = np.asarray(x)
    if len(x) < 2:
        n = len(x)
        return SelfPassResult(np.full(n, np.inf), np.full(n, -1, dtype=np.int64))
    d, i = nearest_distances(
        x,
        x,
        exclude_self=True,
        memory_budget_mb=memory_budget_mb,
        precision=precision,
        device=device,
    )
    return SelfPassResult(d, i)


def _group_blocks(
    x: np.ndarray, mean: np.ndarray, bounds: list[int], dtype: str, ops, *, side: str, scale: float
) -> tuple[Any, list[Any], Any]:
    """Centred x in `dtype` (N, z), its augmented column groups, and the cumulative squared
    norms per prefix (N, groups) (float64 sums of the rounded values, stored in `dtype`), as
    `ops` arrays. side='rows': group g -> [a_g, |a_g|^2, 1]; side='cols': [-2 b_g, 1, |b_g|^2]."""
    raw = _centred(x, mean, dtype, augment="none", scale=scale)
    groups, cums = [], []
    cum = np.zeros(len(raw), dtype=np.float64)
    one = np.ones((len(raw), 1), dtype=dtype)
    for lo, hi in zip([0, *bounds[:-1]], bounds, strict=True):
        part = raw[:, lo:hi]
        sq = np.einsum("ij,ij->i", part, part, dtype=np.float64).astype(dtype)
        cum = cum + sq
        cums.append(cum.astype(dtype))
        if side == "rows":
            group = np.concatenate([part, sq[:, None], one], axis=1)
        else:
            group = np.concatenate([part * -2.0, one, sq[:, None]], axis=1)
        groups.append(ops.asarray(group))
    sq_all = np.stack(cums, axis=1) if cums else np.zeros((len(raw), 0), dtype=dtype)
    return ops.asarray(raw), groups, ops.asarray(sq_all)


def _fix_small_prefix(
    ops,
    t,
    a_raw,
    a_sq,
    b_raw,
    b_sq,
    zp: int,
    limit: float,
    tau: float,
    tile_min: float | None = None,
    row_min=None,
) -> bool:
    """_fix_small for a prefix: entries with d^2 < tau (|a|^2 + |b|^2) (norms of the first zp
    columns) are recomputed from direct differences of those columns. a_raw (r, z) / a_sq (r,)
    are the tile's rows, b_raw / b_sq its columns; row_min (r,): t's row minima if known.
    True if t changed.

    Past the tile test (min < limit) only rows whose minimum is below tau (|a_i|^2 + max |b|^2)
    are scanned entry by entry: at low prefixes (z = 5) the tile test passes often while few
    rows hold a near duplicate."""
    if (float(t.min()) if tile_min is None else tile_min) >= limit:
        return False
    r, c = t.shape
    low = ops.row_min(t) if row_min is None else row_min
    (rows,) = ops.nonzero(low < (a_sq + float(b_sq.max())) * tau)
    changed = False
    step = max(1, r // 4)
    for s0 in range(0, len(rows), step):
        part = rows[s0 : s0 + step]
        thr = a_sq[part, None] + b_sq[None, :]
        thr *= tau
        ri, ci = ops.nonzero(t[part] < thr)
        del thr
        hits = max(1, (step * c) // max(1, 2 * zp))
        for h in range(0, len(ri), hits):
            rr, cc = part[ri[h : h + hits]], ci[h : h + hits]
            diff = a_raw[rr, :zp] - b_raw[cc, :zp]
            t[rr, cc] = ops.sq_sum_rows(diff)
            changed = True
    return changed


@_cpu_single_threaded
def _pair_pass(
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    prefixes: list[int] | tuple[int, ...] | None = None,
    nearest: bool | int = False,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
    workers: int | None = None,
    center: np.ndarray | None = None,
) -> PairPassResult:
    a_np, b_np = as_matrix(rows, "rows"), as_matrix(cols, "cols")
    check_pair(a_np, b_np, "rows", "cols")
    m, n = len(a_np), len(b_np)
    ops, name = _tile_ops(device), _precision_name(precision, m * n)
    dtype = ops.dtype(name)
    sums_at, near = _prefix_plan(a_np.shape[1], prefixes, nearest)
    bounds = sorted({*sums_at, *([near] if near is not None else [])})
    out = {p: ops.full(m, 0.0, ops.dtype("float64")) for p in sums_at}
    best = ops.full(m, float("inf"), dtype)
    best_idx = ops.full(m, -1, ops.dtype("int64"))
    scale = 1.0
    if m and n and bounds:
        mean = call_center(a_np, b_np) if center is None else np.array(center, dtype=np.float64)
        mean = mean[: bounds[-1]]
        a_np, b_np = a_np[:, : bounds[-1]], b_np[:, : bounds[-1]]
        scale = _scale([a_np, b_np], mean)
        a_raw, a_groups, a_sq = _group_blocks(
            a_np, mean, bounds, name, ops, side="rows", scale=scale
        )
        b_raw, b_groups, b_sq = _group_blocks(
            b_np, mean, bounds, name, ops, side="cols", scale=scale
        )
        # the accumulated tile, and a second one: the sqrt copy when a sum is taken before
        # the last group, numpy's GEMM output before it is added (ops.addmm)
        second = (sums_at and sums_at[0] < bounds[-1]) or (ops.addmm_scratch and len(bounds) > 1)
        n_buf = 2 if second else 1
        itemsize = n_buf * np.dtype(name).itemsize
        workers = ops.workers() if workers is None else workers
        plan = _plan(m, n, itemsize, memory_budget_mb, ops.cuda, workers=workers)
        tr, tc = plan.tile_rows, plan.tile_cols
        tau = _TAU[name]
        col_max = [
            [float(b_sq[c : c + tc, g].max()) for c in range(0, n, tc)] for g in range(len(bounds))
        ]
        last = len(bounds) - 1
        in_sums = [p in out for p in bounds]

        def make_buffer():
            return ops.empty(n_buf * tr * tc + tr, dtype)

        def block(s: int, e: int, buf) -> None:
            r = e - s
            row_max = [float(a_sq[s:e, g].max()) for g in range(len(bounds))]
            acc = buf[n_buf * tr * tc : n_buf * tr * tc + r]
            bv, bi = best[s:e], best_idx[s:e]
            for k, c0 in enumerate(range(0, n, tc)):
                c1 = min(c0 + tc, n)
                t = ops.tile(buf, r, c1 - c0)
                w = ops.tile(buf[tr * tc :], r, c1 - c0) if n_buf == 2 else None
                for g, zp in enumerate(bounds):
                    if g == 0:
                        ops.mm(a_groups[0][s:e], b_groups[0][c0:c1], out=t)
                    else:
                        ops.addmm(t, a_groups[g][s:e], b_groups[g][c0:c1], w)
                    limit = tau * (row_max[g] + col_max[g][k])
                    v = vi = None
                    if zp == near:
                        v, vi = ops.row_min_index(t)
                        tile_min = float(v.min())
                    else:
                        tile_min = None
                    changed = _fix_small_prefix(
                        ops,
                        t,
                        a_raw[s:e],
                        a_sq[s:e, g],
                        b_raw[c0:c1],
                        b_sq[c0:c1, g],
                        zp,
                        limit,
                        tau,
                        tile_min,
                        v,
                    )
                    if zp == near:
                        if changed:
                            v, vi = ops.row_min_index(t)
                        _take_better(ops, t, v, vi, bv, bi, c0)
                    if not in_sums[g]:
                        continue
                    if g == last:
                        ops.row_sum(ops.sqrt_(t), out=acc)
                    else:
                        ops.row_sum(ops.sqrt_(t, out=w), out=acc)
                    out[zp][s:e] += acc

        with ops.exact_matmul():
            _run_row_blocks(m, plan, ops, make_buffer, block)

    dist = idx = None
    if near is not None:
        idx = np.asarray(ops.to_numpy(best_idx), dtype=np.int64)
        dist = _neighbour_distances(a_np, b_np, idx, near)
    return PairPassResult(
        i_dist={p: ops.to_numpy(v) * scale for p, v in out.items()},
        nearest_distance=dist,
        nearest_index=idx,
        nearest_dims=near,
    )


def kcenter_greedy(
    candidates: np.ndarray,
    k: int,
    centers: np.ndarray | None = None,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
) -> list[int]:
    """Greedy k-center (Sener & Savarese 2017): pick k candidate indices, each the candidate
    farthest from all centres so far; `centers` (e.g. P) count as already chosen.
    O(k * N) distance evaluations with an incrementally updated min-distance vector.
    Ties go to the lowest index. Without centres the first pick is the candidate farthest
    from the candidates' mean. k is clamped to the number of candidates.
    """
    x_np = as_matrix(candidates, "candidates")
    if centers is not None:
        c_np = as_matrix(centers, "centers")
        check_pair(x_np, c_np, "candidates", "centers")
    else:
        c_np = None
    k = min(int(k), len(x_np))
    if k <= 0:
        return []
    kw = {"memory_budget_mb": memory_budget_mb, "precision": precision, "device": device}
    n_centers = 0 if c_np is None else len(c_np)
    if _small_call(len(x_np), k + n_centers, x_np.shape[1], **kw):
        min_d = nearest_distances(x_np, c_np, **kw)[0] if n_centers else None
        return _small_kcenter(x_np, k, min_d)
    return _kcenter_greedy(x_np, k, c_np, **kw)


@_cpu_single_threaded
def _kcenter_greedy(
    x_np: np.ndarray,
    k: int,
    c_np: np.ndarray | None,
    *,
    memory_budget_mb: float,
    precision: str,
    device: str,
) -> list[int]:
    work = len(x_np) * (k + (0 if c_np is None else len(c_np)))
    ops, name = _tile_ops(device), _precision_name(precision, work)
    # distances from each pick are direct differences, not the GEMM trick, so duplicates
    # give exactly 0 and the order matches a plain float64 implementation
    first = None
    with ops.exact_matmul():
        if c_np is not None and len(c_np):
            # before x exists, so the two working copies are never held at the same time
            d0, _ = nearest_distances(
                x_np, c_np, memory_budget_mb=memory_budget_mb, precision=precision, device=device
            )
            mean = _joint_mean([x_np])
            scale = _scale([x_np], mean)
            min_d = ops.asarray(np.array(d0, dtype=np.float64) / scale)
            x = _centred(x_np, mean, name, augment="none", scale=scale)
        else:
            mean = _joint_mean([x_np])
            x = _centred(x_np, mean, name, augment="none", scale=_scale([x_np], mean))
            # the mean only seeds the first pick; it is not a centre afterwards
            first = int(np.argmax(np.einsum("ij,ij->i", x, x, dtype=np.float64)))
            min_d = ops.full(len(x), float("inf"), ops.dtype("float64"))
        x = ops.asarray(x)
        chunk = max(1, int(memory_budget_mb * 1024 * 1024 // (8 * max(1, x.shape[1]))))
        chosen: list[int] = []
        # one memory-bound pass per pick, single-threaded (the _cpu_single_threaded decorator)
        _kcenter_loop(ops, x, k, first, min_d, chunk, chosen)
    return chosen


def _kcenter_loop(ops, x, k: int, first: int | None, min_d, chunk: int, chosen: list) -> None:
    """The O(k N) greedy loop; min_d (float64) is updated in place after each pick."""
    for it in range(k):
        j = first if (it == 0 and first is not None) else ops.argmax(min_d)
        chosen.append(j)
        xj = x[j]
        for s in range(0, len(x), chunk):
            part = min_d[s : s + chunk]
            ops.minimum_(part, ops.point_distances(x[s : s + chunk], xj))
        min_d[j] = -1.0
