"""Blocked distance engine (numpy tiles on the CPU, torch on CUDA): the fused pair pass (row
sums and nearest neighbours are its special cases), the self pass, k-center.

All inputs are (N, z) float arrays; nothing here builds an N x M matrix for large sets.

Where things live:

- ``planning``: input checks, the one precision rule (``resolve_precision``), centring and
  scaling, the tile shape and thread count within ``memory_budget_mb``, the row-block pool.
- ``tiles``: the tile operations, one table for numpy (CPU) and one for torch (CUDA).
- ``pair``: the one fused kernel and its calls: ``pair_pass``, ``row_distance_sums``,
  ``nearest_distances``, the ``block_*`` calls of a distributed backend; the one
  near-duplicate fix-up.
- ``selfpass``: ``self_pass`` (nearest other row and row sums of one S x S pass).
- ``kcenter``: ``kcenter_greedy``. ``small``: small CPU calls by direct differences.
- ``backends``: ``distance_backend`` (large calls on Ray, worker.distributed).

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
  the same kernels through a small table of tile operations (tiles.NumpyTiles,
  tiles.TorchTiles); tiles.CPU_TILES = "torch" runs the CUDA route's torch code on the CPU
  (the tests do).
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
- Small calls on the CPU (at most planning.SMALL_CALL_ELEMENTS = pairs x columns) skip the
  tiles: numpy float64 direct differences, exact. A CPU job never imports torch; torch is
  imported by the first call that runs on CUDA.
"""

from __future__ import annotations

from worker.engine.backends import distance_backend
from worker.engine.kcenter import kcenter_greedy
from worker.engine.pair import (
    PairPassResult,
    block_nearest_distances,
    block_pair_pass,
    block_row_distance_sums,
    concat_pair_results,
    nearest_distances,
    pair_pass,
    row_distance_sums,
)
from worker.engine.planning import (
    AUTO_FLOAT32_MIN_DISTANCES,
    CPU_MAX_WORKERS,
    CPU_TILE_COLS,
    CPU_TILE_ROWS,
    CUDA_AUTO_MEMORY_BUDGET_MB,
    CUDA_TILE_COLS,
    DEFAULT_MEMORY_BUDGET_MB,
    TILE_OVERHEAD,
    as_matrix,
    auto_memory_budget_mb,
    call_center,
    check_pair,
    resolve_precision,
)
from worker.engine.selfpass import SelfPassResult, self_pass
from worker.engine.tiles import resolve_device

__all__ = [
    "AUTO_FLOAT32_MIN_DISTANCES",
    "CPU_MAX_WORKERS",
    "CPU_TILE_COLS",
    "CPU_TILE_ROWS",
    "CUDA_AUTO_MEMORY_BUDGET_MB",
    "CUDA_TILE_COLS",
    "DEFAULT_MEMORY_BUDGET_MB",
    "TILE_OVERHEAD",
    "PairPassResult",
    "SelfPassResult",
    "as_matrix",
    "auto_memory_budget_mb",
    "block_nearest_distances",
    "block_pair_pass",
    "block_row_distance_sums",
    "call_center",
    "check_pair",
    "concat_pair_results",
    "distance_backend",
    "kcenter_greedy",
    "nearest_distances",
    "pair_pass",
    "resolve_device",
    "resolve_precision",
    "row_distance_sums",
    "self_pass",
]
