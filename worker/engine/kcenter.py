"""Greedy k-center selection (Sener & Savarese 2017) by direct differences (no GEMM trick)."""

from __future__ import annotations

import numpy as np

from worker.engine.pair import nearest_distances
from worker.engine.planning import (
    DEFAULT_MEMORY_BUDGET_MB,
    as_matrix,
    centred,
    check_pair,
    joint_mean,
    resolve_precision,
    scale_of,
    small_call,
)
from worker.engine.small import small_kcenter
from worker.engine.tiles import cpu_single_threaded, tile_ops
from worker.interrupt import stoppable


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
    if small_call(len(x_np), k + n_centers, x_np.shape[1], **kw):
        min_d = nearest_distances(x_np, c_np, **kw)[0] if n_centers else None
        return small_kcenter(x_np, k, min_d)
    return _kcenter_greedy(x_np, k, c_np, **kw)


@cpu_single_threaded
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
    ops, name = tile_ops(device), resolve_precision(precision, work)
    # distances from each pick are direct differences, not the GEMM trick, so duplicates
    # give exactly 0 and the order matches a plain float64 implementation
    first = None
    with ops.exact_matmul():
        if c_np is not None and len(c_np):
            # before x exists, so the two working copies are never held at the same time
            d0, _ = nearest_distances(
                x_np, c_np, memory_budget_mb=memory_budget_mb, precision=precision, device=device
            )
            mean = joint_mean([x_np])
            scale = scale_of([x_np], mean)
            min_d = ops.asarray(np.array(d0, dtype=np.float64) / scale)
            x = centred(x_np, mean, name, scale=scale)
        else:
            mean = joint_mean([x_np])
            x = centred(x_np, mean, name, scale=scale_of([x_np], mean))
            # the mean only seeds the first pick; it is not a centre afterwards
            first = int(np.argmax(np.einsum("ij,ij->i", x, x, dtype=np.float64)))
            min_d = ops.full(len(x), float("inf"), ops.dtype("float64"))
        x = ops.asarray(x)
        chunk = max(1, int(memory_budget_mb * 1024 * 1024 // (8 * max(1, x.shape[1]))))
        chosen: list[int] = []
        # one memory-bound pass per pick, single-threaded (the cpu_single_threaded decorator)
        _kcenter_loop(ops, x, k, first, min_d, chunk, chosen)
    return chosen


def _kcenter_loop(ops, x, k: int, first: int | None, min_d, chunk: int, chosen: list) -> None:
    """The O(k N) greedy loop; min_d (float64) is updated in place after each pick."""
    for it in stoppable(range(k)):
        j = first if (it == 0 and first is not None) else ops.argmax(min_d)
        chosen.append(j)
        xj = x[j]
        for s in range(0, len(x), chunk):
            part = min_d[s : s + chunk]
            ops.minimum_(part, ops.point_distances(x[s : s + chunk], xj))
        min_d[j] = -1.0
