"""Planning a call: input checks, the one precision rule, centring and scaling, the tile
shape and thread count within the memory budget, and running the row blocks.

Nothing here computes a distance; worker.engine.pair and worker.engine.kcenter do.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from worker.devices import is_cpu, usable_cores
from worker.interrupt import check, stoppable

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

PRECISIONS = ("float32", "float64")
#: relative size d^2 / (|a|^2 + |b|^2) under which a pair is recomputed by differences.
#: The GEMM trick's rounding error is a few eps * (|a|^2 + |b|^2) (eps 6e-8 in float32), so
#: every exact duplicate falls below tau; above it a pair's d^2 keeps a relative error below
#: ~1e-4 (float32). 1e-2 made low-dimensional prefixes (z = 5) recompute many tiles: 2x
#: slower fused passes for no change in I_dist (benchmarks/RESULTS.md, issue 18).
TAU = {"float32": 1e-3, "float64": 1e-4}
#: CPU calls with at most this many (pairs x columns) values run by direct differences in
#: numpy float64 (exact; no tiles, no torch)
SMALL_CALL_ELEMENTS = 1 << 22
#: with precision "auto", calls with at least this many distances use float32 tiles (float64
#: accumulation; relative error <= 1e-7 measured at 20k x 20k, benchmarks/RESULTS.md); smaller
#: ones cost little in float64 and stay exact to rounding
AUTO_FLOAT32_MIN_DISTANCES = 1 << 22


# --------------------------------------------------------------------------- inputs


def resolve_precision(precision: str, distances: int = 0) -> str:
    """The tiles' precision, 'float32' or 'float64': "auto" -> float32 for calls of at least
    AUTO_FLOAT32_MIN_DISTANCES distances, else float64; ValueError for anything else. The
    public calls resolve it once per whole call, before it is split into row blocks, so every
    block (local or on Ray) uses the same precision."""
    if precision == "auto":
        return "float32" if distances >= AUTO_FLOAT32_MIN_DISTANCES else "float64"
    if precision not in PRECISIONS:
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


def check_budget(memory_budget_mb: float) -> None:
    if memory_budget_mb is None or not memory_budget_mb > 0:
        raise ValueError(f"compute.memory_budget_mb must be > 0, got {memory_budget_mb!r}")


def auto_memory_budget_mb(device: str) -> float:
    """compute.memory_budget_mb "auto": DEFAULT_MEMORY_BUDGET_MB on the CPU; on CUDA
    CUDA_AUTO_MEMORY_BUDGET_MB, at most a quarter of the device's free memory."""
    if is_cpu(device, "compute.device"):
        return DEFAULT_MEMORY_BUDGET_MB
    import torch

    from worker.devices import resolve_device

    free, _ = torch.cuda.mem_get_info(resolve_device(device, "compute.device"))
    return float(max(DEFAULT_MEMORY_BUDGET_MB, min(CUDA_AUTO_MEMORY_BUDGET_MB, free / 4 / 2**20)))


def small_call(
    m: int, n: int, z: int, memory_budget_mb: float, precision: str, device: str
) -> bool:
    """True when a call over m x n pairs of z columns takes the direct float64 differences
    of worker.engine.small: m n z at most SMALL_CALL_ELEMENTS on the CPU. Checks the settings
    as the tiled path would."""
    if m * n * max(1, z) > SMALL_CALL_ELEMENTS:
        return False
    if not is_cpu(device, "compute.device"):
        return False
    check_budget(memory_budget_mb)
    resolve_precision(precision)
    return True


# --------------------------------------------------------------------------- centring


def joint_mean(arrays: list[np.ndarray]) -> np.ndarray:
    total = sum(len(a) for a in arrays)
    z = arrays[0].shape[1]
    if total == 0:
        return np.zeros(z)
    acc = np.zeros(z, dtype=np.float64)
    for a in arrays:
        if len(a):
            acc += a.sum(axis=0, dtype=np.float64)
    return acc / total


def call_center(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """The mean every tile of one call is centred by: of [a; b], or of a alone (self-queries).
    Shape (z,) float64. Distances do not depend on it; rounding does, so blocks share it."""
    return joint_mean([a] if b is None else [a, b])


def scale_of(arrays: list[np.ndarray], mean: np.ndarray) -> float:
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


def centred(x: np.ndarray, mean: np.ndarray, dtype: str, *, scale: float = 1.0) -> np.ndarray:
    """(x - mean) / scale in `dtype` ('float32' / 'float64'), converted in row chunks so no
    full float64 temporary is made."""
    n, z = x.shape
    out = np.empty((n, z), dtype=dtype)
    step = max(1, (32 * 1024 * 1024) // max(1, 8 * z))
    for s in range(0, n, step):
        out[s : s + step] = ((np.asarray(x[s : s + step], dtype=np.float64) - mean) / scale).astype(
            dtype
        )
    return out


# --------------------------------------------------------------------------- tiles and threads


@dataclass(frozen=True)
class Plan:
    tile_rows: int
    tile_cols: int
    workers: int


def cpu_count() -> int:
    """Row-block threads for the numpy tiles: the cores this process may run on (its affinity
    mask), at most CPU_MAX_WORKERS and at most OMP_NUM_THREADS when that is set (as torch
    would; Ray sets it to 1 in its workers, which run side by side)."""
    cores = usable_cores()
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        cores = min(cores, int(omp))
    return max(1, min(cores, CPU_MAX_WORKERS))


def plan(
    n_rows: int,
    n_cols: int,
    itemsize: int,
    memory_budget_mb: float,
    cuda: bool,
    *,
    workers: int | None = None,
) -> Plan:
    """Tile shape and thread count such that all tiles together stay within the budget.
    workers: CPU threads (None: one per core)."""
    check_budget(memory_budget_mb)
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
            workers = cpu_count()
        # per worker: one tile plus one row vector; never below MIN_TILE values
        elems = max(MIN_TILE, int(budget // (workers * per_elem)))
        cols = min(n_cols, CPU_TILE_COLS, max(MIN_TILE, elems // 4))
        # narrow inputs get taller tiles, so a tile always holds about the same work
        tall = max(CPU_TILE_ROWS, (CPU_TILE_ROWS * CPU_TILE_COLS) // cols)
        rows = min(n_rows, tall, max(1, elems // (cols + 1)))
        if workers > 1:  # at least one row block per worker
            rows = min(rows, max(1, -(-n_rows // workers)))
        workers = max(1, min(workers, -(-n_rows // rows)))
    return Plan(tile_rows=rows, tile_cols=cols, workers=workers)


def run_row_blocks(n_rows: int, plan: Plan, ops, make_buffer: Callable, fn: Callable) -> None:
    """Call fn(start, stop, buffer) for each row block; on the CPU spread over a thread pool.

    On the CPU every tile runs single-threaded (several threads on one small tile cost more in
    wake-ups than they gain) and the row blocks are shared by `plan.workers` Python threads;
    callers run inside ops.single_threaded() (tiles.cpu_single_threaded kernels), which
    restores the process-wide thread settings afterwards. On CUDA the blocks run in order on
    the current stream. Each block is a safe point (worker.interrupt): a stop asked for
    takes effect after the blocks running now.
    """
    starts = list(range(0, n_rows, plan.tile_rows))

    def serial() -> None:
        buf = make_buffer()
        for s in stoppable(starts):
            fn(s, min(s + plan.tile_rows, n_rows), buf)

    if ops.cuda:
        serial()
        return

    local = threading.local()
    failed: list[bool] = []  # a block raised: the call is over, no other block starts

    def task(s: int) -> None:
        check()  # in the row-block thread: blocks not started when a stop comes never run
        if failed:
            return
        if not getattr(local, "ready", False):
            ops.thread_setup()
            local.buf = make_buffer()
            local.ready = True
        try:
            fn(s, min(s + plan.tile_rows, n_rows), local.buf)
        except BaseException:
            failed.append(True)
            raise

    if plan.workers <= 1 or len(starts) <= 1:
        serial()
    else:
        pool = ThreadPoolExecutor(max_workers=plan.workers)
        try:
            for _ in pool.map(task, starts):
                pass
        finally:  # a stop (or an error) drops the blocks not started yet
            pool.shutdown(wait=True, cancel_futures=True)
