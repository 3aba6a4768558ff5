"""The one fused pair pass over the (m x n) tiles of rows x cols, and the calls that are its
special cases: row_distance_sums (the sums alone), nearest_distances (the nearest alone),
pair_pass (sums at several column prefixes and a nearest at one), and the self pass's
S x S call (worker.engine.selfpass: the nearest OTHER row and the sums, exclude_self).

Per tile: one GEMM per column group gives squared distances (the GEMM trick of
planning/centring), near-duplicates are recomputed by direct differences (fix_small, the one
fix-up), the nearest prefix updates each row's best column, every summed prefix pays one
sqrt and one row sum (accumulated across tiles in float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.engine import planning
from worker.engine.backends import delegate
from worker.engine.planning import (
    DEFAULT_MEMORY_BUDGET_MB,
    TAU,
    as_matrix,
    call_center,
    centred,
    check_pair,
    resolve_precision,
    run_row_blocks,
    scale_of,
    small_call,
)
from worker.engine.small import neighbour_distances, small_pair_pass
from worker.engine.tiles import cpu_single_threaded, tile_ops


@dataclass(frozen=True)
class PairPassResult:
    """Every S x P quantity of one fused pass.

    i_dist[z]: I_dist over the first z columns, (m,) float64, for each requested prefix z.
    nearest_distance / nearest_index: each row's nearest column row over the first
    `nearest_dims` columns, (m,) float64 / int64 (as nearest_distances), or None if not asked.
    """

    i_dist: dict[int, np.ndarray]
    nearest_distance: np.ndarray | None = None
    nearest_index: np.ndarray | None = None
    nearest_dims: int | None = None


def prefix_plan(
    z: int, prefixes: list[int] | tuple[int, ...] | None, nearest: bool | int
) -> tuple[list[int], int | None]:
    """Sorted unique prefixes for the sums (None -> all z columns), and the nearest prefix
    (True -> z; None when not asked). ValueError for a prefix outside 1..z."""
    sums = sorted({int(p) for p in prefixes}) if prefixes is not None else [z]
    near = None
    if nearest is not False and nearest is not None:
        near = z if nearest is True else int(nearest)
    asked = [*(sums if prefixes is not None else []), *([near] if nearest is not True else [])]
    for p in asked:
        if p is not None and not 1 <= p <= z:
            raise ValueError(f"prefixes / nearest: {p} is outside 1..{z} (the inputs' columns)")
    return sums, near


# --------------------------------------------------------------------------- public calls


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
    return dispatch(rows, cols, prefixes, nearest, False, memory_budget_mb, precision, device)


def row_distance_sums(
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
) -> np.ndarray:
    """I_dist: out[j] = sum_k ||rows[j] - cols[k]||_2, accumulated in float64. Shape (m,).

    The fused pass with the sums over all columns and no nearest.
    precision: 'float32' (fast, relative error ~1e-7) or 'float64' (~1e-15).
    device: 'cpu', 'cuda', 'cuda:N' or 'auto'.
    Inside `distance_backend(...)`, a call the backend takes runs there in row blocks.
    """
    rows, cols = as_matrix(rows, "rows"), as_matrix(cols, "cols")
    check_pair(rows, cols, "rows", "cols")
    kw = {"memory_budget_mb": memory_budget_mb, "device": device}
    precision = resolve_precision(precision, len(rows) * len(cols))
    backend = delegate(len(rows), len(cols))
    if backend is not None:
        return backend.row_distance_sums(rows, cols, precision=precision, **kw)
    res = dispatch(rows, cols, None, False, False, memory_budget_mb, precision, device)
    return res.i_dist[rows.shape[1]]


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

    The fused pass with the nearest over all columns and no sums.
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
    backend = delegate(len(queries), len(points))
    if backend is not None:
        return backend.nearest_distances(queries, points, exclude_self=exclude_self, **kw)
    res = dispatch(queries, points, [], True, exclude_self, memory_budget_mb, precision, device)
    return res.nearest_distance, res.nearest_index


def dispatch(
    rows: np.ndarray,
    cols: np.ndarray,
    prefixes: list[int] | tuple[int, ...] | None,
    nearest: bool | int,
    exclude_self: bool,
    memory_budget_mb: float,
    precision: str,
    device: str,
) -> PairPassResult:
    """The fused pass on validated inputs: the backend's row blocks when it takes the call
    (pair_pass), else the small-call differences or the local tiles."""
    m, n, z = len(rows), len(cols), rows.shape[1]
    precision = resolve_precision(precision, m * n)
    kw = {"memory_budget_mb": memory_budget_mb, "precision": precision, "device": device}
    backend = delegate(m, n)
    if backend is not None:
        if exclude_self:
            kw["exclude_self"] = True
        return backend.pair_pass(rows, cols, prefixes=prefixes, nearest=nearest, **kw)
    if small_call(m, n, z, memory_budget_mb, precision, device):
        sums_at, near = prefix_plan(z, prefixes, nearest)
        i_dist, dist, idx = small_pair_pass(rows, cols, sums_at, near, exclude_self)
        return PairPassResult(i_dist, dist, idx, near)
    kw.update(prefixes=prefixes, nearest=nearest, exclude_self=exclude_self)
    return fused_pass(rows, cols, **kw)


# --------------------------------------------------------------------------- row blocks


def block_pair_pass(
    rows: np.ndarray,
    cols: np.ndarray,
    center: np.ndarray,
    *,
    exclude_self: bool = False,
    row_offset: int = 0,
    **kw: Any,
) -> PairPassResult:
    """pair_pass for one row block of a larger call, centred by the call's `center`; with
    exclude_self, block row i skips column row_offset + i.
    kw: prefixes, nearest, memory_budget_mb, precision, device."""
    return fused_pass(
        rows, cols, center=center, exclude_self=exclude_self, row_offset=row_offset, **kw
    )


def block_row_distance_sums(
    rows: np.ndarray, cols: np.ndarray, center: np.ndarray, **engine_kw: Any
) -> np.ndarray:
    """row_distance_sums for one row block of a larger call, centred by the call's `center`.
    engine_kw: memory_budget_mb, precision, device."""
    return block_pair_pass(rows, cols, center, **engine_kw).i_dist[np.shape(rows)[1]]


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
    res = block_pair_pass(
        queries,
        points,
        center,
        prefixes=[],
        nearest=True,
        exclude_self=exclude_self,
        row_offset=row_offset,
        **engine_kw,
    )
    return res.nearest_distance, res.nearest_index


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


# --------------------------------------------------------------------------- the kernel


def _group_blocks(
    x: np.ndarray, mean: np.ndarray, bounds: list[int], dtype: str, ops, *, side: str, scale: float
) -> tuple[Any, list[Any], Any]:
    """Centred x in `dtype` (N, z), its augmented column groups, and the cumulative squared
    norms per prefix (N, groups) (float64 sums of the rounded values, stored in `dtype`), as
    `ops` arrays. side='rows': group g -> [a_g, |a_g|^2, 1]; side='cols': [-2 b_g, 1, |b_g|^2],
    so that one GEMM gives |a|^2 + |b|^2 - 2ab, the squared distances of the group."""
    raw = centred(x, mean, dtype, scale=scale)
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


def fix_small(
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
    """Replace the squared distances of near-duplicate pairs in the tile `t` by exact ones.

    |a|^2 + |b|^2 - 2ab loses about log10(S / d^2) digits where S = |a|^2 + |b|^2 (norms of
    the first zp columns); entries with d^2 < tau S are recomputed by direct differences of
    those columns, so exact duplicates give 0 and close pairs keep full relative precision.
    a_raw (r, z) / a_sq (r,) are the tile's rows, b_raw / b_sq its columns; `limit` bounds
    tau S over the tile, so the common case costs one min-reduction (or none, given
    `tile_min`); row_min (r,): t's row minima if known. True if t changed.

    Past the tile test only rows whose minimum is below tau (|a_i|^2 + max |b|^2) are scanned
    entry by entry: at low prefixes (z = 5) the tile test passes often while few rows hold a
    near duplicate. Temporaries stay below the tile's own size."""
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


def take_better(ops, t, v, vi, bv, bi, c0: int) -> None:
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


@cpu_single_threaded
def fused_pass(
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    prefixes: list[int] | tuple[int, ...] | None = None,
    nearest: bool | int = False,
    exclude_self: bool = False,
    row_offset: int = 0,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    precision: str = "float64",
    device: str = "cpu",
    workers: int | None = None,
    center: np.ndarray | None = None,
) -> PairPassResult:
    """The tiled kernel of every pair call (pair_pass's arguments). exclude_self: rows are
    cols[row_offset:...]; row i's nearest skips column row_offset + i, and its sums take only
    the later columns k > row_offset + i (each unordered pair once: the self pass's sums; the
    tiles left of a row block skip their square roots). workers: CPU threads (None:
    tile_ops' default); center: the whole call's mean for a row block (None: this call's, as
    call_center)."""
    a_np, b_np = as_matrix(rows, "rows"), as_matrix(cols, "cols")
    check_pair(a_np, b_np, "rows", "cols")
    m, n = len(a_np), len(b_np)
    ops, name = tile_ops(device), resolve_precision(precision, m * n)
    dtype = ops.dtype(name)
    sums_at, near = prefix_plan(a_np.shape[1], prefixes, nearest)
    bounds = sorted({*sums_at, *([near] if near is not None else [])})
    out = {p: ops.full(m, 0.0, ops.dtype("float64")) for p in sums_at}
    best = ops.full(m, float("inf"), dtype)
    best_idx = ops.full(m, -1, ops.dtype("int64"))
    scale = 1.0
    if m and n and bounds:
        if center is not None:
            mean = np.array(center, dtype=np.float64)
        else:
            mean = call_center(b_np) if exclude_self else call_center(a_np, b_np)
        mean = mean[: bounds[-1]]
        a_np, b_np = a_np[:, : bounds[-1]], b_np[:, : bounds[-1]]
        scale = scale_of([a_np, b_np], mean)
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
        plan = planning.plan(m, n, itemsize, memory_budget_mb, ops.cuda, workers=workers)
        tr, tc = plan.tile_rows, plan.tile_cols
        tau = TAU[name]
        col_max = [
            [float(b_sq[c : c + tc, g].max()) for c in range(0, n, tc)] for g in range(len(bounds))
        ]
        last = len(bounds) - 1
        in_sums = [p in out for p in bounds]
        inf = float("inf")

        def make_buffer():
            return ops.empty(n_buf * tr * tc + tr, dtype)

        def block(s: int, e: int, buf) -> None:
            r = e - s
            row_max = [float(a_sq[s:e, g].max()) for g in range(len(bounds))]
            acc = buf[n_buf * tr * tc : n_buf * tr * tc + r]
            bv, bi = best[s:e], best_idx[s:e]
            g0 = row_offset + s  # this block's first row among the columns (exclude_self)
            for k, c0 in enumerate(range(0, n, tc)):
                c1 = min(c0 + tc, n)
                t = ops.tile(buf, r, c1 - c0)
                w = ops.tile(buf[tr * tc :], r, c1 - c0) if n_buf == 2 else None
                diagonal = exclude_self and c0 < g0 + r and g0 < c1
                # exclude_self sums: a tile's entries right of the diagonal only
                earlier = exclude_self and c1 <= g0 + 1  # no column after any of its rows
                straddles = exclude_self and not earlier and c0 <= g0 + r - 1
                for g, zp in enumerate(bounds):
                    if g == 0:
                        ops.mm(a_groups[0][s:e], b_groups[0][c0:c1], out=t)
                    else:
                        ops.addmm(t, a_groups[g][s:e], b_groups[g][c0:c1], w)
                    limit = tau * (row_max[g] + col_max[g][k])
                    v = vi = tile_min = None
                    if zp == near:
                        if diagonal:
                            ops.fill_diagonal(t, g0 - c0, inf)
                        # numpy: argmin and a gather (faster than min along the rows); torch:
                        # the minimum alone, the argmin only on the rows this tile improves
                        v, vi = ops.row_min_index(t)
                        tile_min = float(v.min())
                    changed = fix_small(
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
                        take_better(ops, t, v, vi, bv, bi, c0)
                    if not in_sums[g] or earlier:
                        continue
                    roots = ops.sqrt_(t) if g == last else ops.sqrt_(t, out=w)
                    if straddles:
                        ops.zero_through_diagonal(roots, g0 - c0)
                    ops.row_sum(roots, out=acc)
                    out[zp][s:e] += acc

        with ops.exact_matmul():
            run_row_blocks(m, plan, ops, make_buffer, block)

    dist = idx = None
    if near is not None:
        idx = np.asarray(ops.to_numpy(best_idx), dtype=np.int64)
        dist = neighbour_distances(a_np, b_np, idx, near)
    return PairPassResult(
        i_dist={p: ops.to_numpy(v) * scale for p, v in out.items()},
        nearest_distance=dist,
        nearest_index=idx,
        nearest_dims=near,
    )
