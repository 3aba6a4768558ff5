"""Engine vs independent float64 references (numpy direct differences, hand vectors)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.helpers import reference as R
from worker import engine
from worker.engine import kcenter_greedy, nearest_distances, planning, row_distance_sums, tiles
from worker.engine.pair import fused_pass
from worker.errors import JobError

RNG = np.random.default_rng(20240611)


def _tiled_row_sums(rows, cols, **kw):
    """The tiled kernel's row sums (no small-call shortcut, no backend); kw: workers etc."""
    return fused_pass(rows, cols, **kw).i_dist[np.shape(rows)[1]]


def _tiled_nearest(queries, points, *, exclude_self=False, **kw):
    """The tiled kernel's nearest (no small-call shortcut, no backend)."""
    res = fused_pass(queries, points, prefixes=[], nearest=True, exclude_self=exclude_self, **kw)
    return res.nearest_distance, res.nearest_index


@pytest.fixture(autouse=True, params=["numpy-tiles", "torch-tiles", "small"])
def route(request, monkeypatch):
    """Every test runs on the three CPU routes: numpy tiles (the CPU's tiled path), torch tiles
    (the CUDA route's code, run on the CPU), both forced for small inputs too, and the direct
    float64 differences that small CPU calls take (SMALL_CALL_ELEMENTS)."""
    if request.param != "small":
        monkeypatch.setattr(planning, "SMALL_CALL_ELEMENTS", -1)
    if request.param == "torch-tiles":
        monkeypatch.setattr(tiles, "CPU_TILES", "torch")
    return request.param


# --------------------------------------------------------------------------- hand vectors


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_design_hand_vector_idist(precision):
    out = row_distance_sums(R.S_HAND, R.P_HAND, precision=precision)
    assert out.dtype == np.float64 and out.shape == (2,)
    np.testing.assert_allclose(out, R.I_DIST_HAND, atol=1e-6)
    assert out.mean() == pytest.approx(R.O_DIST_HAND, abs=1e-6)


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_design_hand_vector_diversity(precision):
    x = R.X_HAND
    d, idx = nearest_distances(x, x, exclude_self=True, precision=precision)
    assert d.mean() == pytest.approx(R.DIVERSITY_HAND["mean"], abs=1e-6)
    assert d.min() == R.DIVERSITY_HAND["min"]
    assert d.max() == pytest.approx(R.DIVERSITY_HAND["max"], abs=1e-6)
    np.testing.assert_allclose(d, R.DIVERSITY_VALUES_HAND, rtol=1e-12)
    np.testing.assert_array_equal(idx, [1, 0, 0, 4, 3, 4])


# --------------------------------------------------------------------------- row sums


@pytest.mark.parametrize(
    ("m", "n", "z"), [(37, 53, 5), (1, 40, 3), (40, 1, 3), (1, 1, 4), (30, 20, 1), (300, 1500, 25)]
)
@pytest.mark.parametrize(("precision", "rtol"), [("float64", 1e-12), ("float32", 1e-6)])
def test_row_sums_match_numpy(m, n, z, precision, rtol):
    s, p = RNG.standard_normal((m, z)), RNG.standard_normal((n, z))
    out = row_distance_sums(s, p, precision=precision)
    np.testing.assert_allclose(out, R.i_dist(s, p), rtol=rtol)


@pytest.mark.parametrize(("precision", "rtol"), [("float64", 1e-12), ("float32", 1e-6)])
def test_row_sums_uncentred_data(precision, rtol):
    # far from the origin, where |a|^2 + |b|^2 - 2ab cancels badly without centring
    s = RNG.standard_normal((50, 8)) + 1e4
    p = RNG.standard_normal((70, 8)) + 1e4
    out = row_distance_sums(s, p, precision=precision)
    np.testing.assert_allclose(out, R.i_dist(s, p), rtol=rtol)


def test_row_sums_duplicates_and_float32_input():
    p = RNG.standard_normal((20, 6)).astype(np.float32)
    s = np.vstack([p[:5], p[:5], RNG.standard_normal((3, 6)).astype(np.float32)])
    out = row_distance_sums(s, p)
    np.testing.assert_allclose(out, R.i_dist(s, p), rtol=1e-12)
    # equal rows sit in other SIMD lanes of a tile: equal up to the last bit
    np.testing.assert_allclose(out[:5], out[5:10], rtol=1e-15)


@pytest.mark.parametrize(("precision", "rtol"), [("float64", 1e-12), ("float32", 1e-6)])
def test_row_sums_near_duplicates_small_n(precision, rtol):
    # few columns, so a badly rounded tiny distance would show in the sum
    p = RNG.standard_normal((4, 5)) * 10 + 3
    s = np.vstack([p, p + 1e-6 * RNG.standard_normal(p.shape), p[::-1] + 1e-3])
    out = row_distance_sums(s, p, precision=precision)
    np.testing.assert_allclose(out, R.i_dist(s, p), rtol=rtol)
    d, idx = nearest_distances(s, p, precision=precision)
    np.testing.assert_array_equal(d[:4], 0.0)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3, 0, 1, 2, 3, 3, 2, 1, 0])
    np.testing.assert_allclose(d, R.pairwise(s, p).min(axis=1), rtol=1e-12)


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_row_sums_chunked_equals_unchunked(precision):
    s, p = RNG.standard_normal((300, 7)), RNG.standard_normal((1100, 7))
    whole = _tiled_row_sums(
        s, p, memory_budget_mb=4096, precision=precision, device="cpu", workers=1
    )
    for budget, workers in [(0.003, 1), (0.003, 2), (0.02, 2), (1, 2), (256, 2)]:
        plan = planning.plan(len(s), len(p), 8, budget, False, workers=workers)
        used = plan.tile_rows * (plan.tile_cols + 1) * plan.workers * 8 * engine.TILE_OVERHEAD
        assert used <= budget * 2**20
        part = _tiled_row_sums(
            s, p, memory_budget_mb=budget, precision=precision, device="cpu", workers=workers
        )
        np.testing.assert_allclose(part, whole, rtol=1e-13 if precision == "float64" else 1e-6)
    tiny = planning.plan(len(s), len(p), 8, 0.003, False, workers=2)
    assert tiny.tile_rows <= 4 and tiny.tile_cols < len(p)  # really many blocks


def test_row_sums_empty_inputs():
    assert row_distance_sums(np.zeros((0, 3)), np.ones((4, 3))).shape == (0,)
    np.testing.assert_array_equal(row_distance_sums(np.ones((2, 3)), np.zeros((0, 3))), [0, 0])


def test_pca_invariant_distances_equal_raw():
    """method.md §1.2: z >= rank of centred X -> PCA is a rotation, distances are the raw ones."""
    from worker.pca import joint_pca

    p, s = RNG.standard_normal((15, 4)) * 3 + 1, RNG.standard_normal((9, 4))
    (p_l, s_l), info = joint_pca([p, s], 4, route="exact")
    assert info.dims == 4
    np.testing.assert_allclose(row_distance_sums(s_l, p_l), R.i_dist(s, p), rtol=1e-12)


# --------------------------------------------------------------------------- nearest


@pytest.mark.parametrize(("m", "n", "z"), [(40, 60, 5), (1, 30, 3), (30, 1, 3), (25, 25, 1)])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_nearest_matches_numpy(m, n, z, precision):
    q, p = RNG.standard_normal((m, z)), RNG.standard_normal((n, z))
    d, idx = nearest_distances(q, p, precision=precision)
    rd, ridx = R.nearest(q, p)
    np.testing.assert_allclose(d, rd, rtol=1e-12)
    np.testing.assert_array_equal(idx, ridx)
    assert d.dtype == np.float64 and idx.dtype == np.int64


@pytest.mark.parametrize("budget", [0.0005, 0.01, 256])
@pytest.mark.parametrize("workers", [1, 2])
def test_nearest_exclude_self_duplicates_chunked(budget, workers):
    base = RNG.standard_normal((120, 4))
    x = np.vstack([base, base[:10], base[50:51]])  # exact duplicates: true zero distances
    d, idx = _tiled_nearest(
        x,
        x,
        exclude_self=True,
        memory_budget_mb=budget,
        precision="float64",
        device="cpu",
        workers=workers,
    )
    rd, _ = R.nearest(x, x, exclude_self=True)
    np.testing.assert_allclose(d, rd, rtol=1e-12, atol=0)
    # the index points at a nearest neighbour (among exact duplicates any one may win)
    np.testing.assert_allclose(np.linalg.norm(x - x[idx], axis=1), rd, rtol=1e-12, atol=0)
    assert (d[:10] == 0).all() and (idx[:10] == np.arange(120, 130)).all()
    assert d[50] == 0 and idx[50] == 130
    assert (idx != np.arange(len(x))).all()


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_all_points_identical(precision):
    x = np.full((300, 4), 7.5)
    np.testing.assert_array_equal(row_distance_sums(x, x, precision=precision), 0.0)
    d, idx = _tiled_nearest(
        x, x, exclude_self=True, memory_budget_mb=0.05, precision=precision, device="cpu"
    )
    np.testing.assert_array_equal(d, 0.0)
    assert (idx != np.arange(300)).all() and (idx >= 0).all()


def test_nearest_single_point_and_empty():
    d, idx = nearest_distances(np.ones((1, 3)), np.ones((1, 3)), exclude_self=True)
    assert np.isinf(d[0]) and idx[0] == -1
    d, idx = nearest_distances(np.ones((2, 3)), np.zeros((0, 3)))
    assert np.isinf(d).all() and (idx == -1).all()
    d, idx = nearest_distances(np.ones((1, 3)), np.ones((1, 3)))
    assert d[0] == 0 and idx[0] == 0
    with pytest.raises(ValueError, match="same set"):
        nearest_distances(np.ones((2, 3)), np.ones((3, 3)), exclude_self=True)


def test_nearest_float32_near_duplicates_distance_exact():
    # distances of 1e-4 around |x| ~ 1e3: the float32 GEMM cannot resolve them, the
    # float64 recomputation of the chosen neighbour still returns an exact distance
    p = RNG.standard_normal((30, 5)) * 1e3
    q = p + 1e-4 * RNG.standard_normal(p.shape)
    d, idx = nearest_distances(q, p, precision="float32")
    np.testing.assert_array_equal(idx, np.arange(30))
    np.testing.assert_allclose(d, np.linalg.norm(q - p, axis=1), rtol=1e-12)


# --------------------------------------------------------------------------- k-center


@pytest.mark.parametrize("with_centers", [False, True])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_kcenter_matches_numpy(with_centers, precision):
    x = RNG.standard_normal((300, 6))
    c = RNG.standard_normal((40, 6)) if with_centers else None
    got = kcenter_greedy(x, 25, c, precision=precision)
    assert got == R.kcenter(x, 25, c)
    assert len(set(got)) == 25


def test_kcenter_duplicates_and_clamping():
    base = RNG.standard_normal((6, 3))
    x = np.vstack([base, base])  # every point twice
    got = kcenter_greedy(x, 20)  # clamped to 12 candidates
    assert got == R.kcenter(x, 20)
    assert sorted(got) == list(range(12))
    assert kcenter_greedy(x, 0) == []
    assert kcenter_greedy(x[:1], 3) == [0]
    c = RNG.standard_normal((1, 3))
    assert kcenter_greedy(x, 5, c, memory_budget_mb=0.0001) == R.kcenter(x, 5, c)
    assert kcenter_greedy(x, 3, np.zeros((0, 3))) == R.kcenter(x, 3)


def test_kcenter_one_dimensional():
    x = np.array([[0.0], [1.0], [10.0], [4.0], [5.0]])
    assert kcenter_greedy(x, 3) == [2, 0, 4]
    assert kcenter_greedy(x, 2, np.array([[10.0]])) == [0, 4]


# --------------------------------------------------------------------------- config


def test_device_and_precision_validation():
    assert engine.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert engine.resolve_device("CPU").type == "cpu"
    with pytest.raises(JobError, match="compute.device"):
        engine.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(JobError, match="CUDA GPU but none is visible"):
            row_distance_sums(np.ones((2, 2)), np.ones((2, 2)), device="cuda:0")
    with pytest.raises(ValueError, match="compute.precision"):
        row_distance_sums(np.ones((2, 2)), np.ones((2, 2)), precision="float16")
    with pytest.raises(ValueError, match="memory_budget_mb"):
        row_distance_sums(np.ones((2, 2)), np.ones((2, 2)), memory_budget_mb=0)
    with pytest.raises(ValueError, match="same number of columns"):
        row_distance_sums(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="cols: contains NaN"):
        row_distance_sums(np.ones((2, 2)), np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        nearest_distances(np.ones(3), np.ones((2, 3)))


def test_auto_memory_budget():
    assert engine.auto_memory_budget_mb("cpu") == engine.DEFAULT_MEMORY_BUDGET_MB
    if torch.cuda.is_available():
        free = torch.cuda.mem_get_info()[0] / 2**20
        budget = engine.auto_memory_budget_mb("cuda")
        assert engine.DEFAULT_MEMORY_BUDGET_MB <= budget <= engine.CUDA_AUTO_MEMORY_BUDGET_MB
        assert budget <= max(engine.DEFAULT_MEMORY_BUDGET_MB, free / 4)


def test_tf32_disabled_on_cuda_and_restored():
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with tiles.no_tf32(torch.device("cuda")):
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_cuda_plan_respects_budget():
    plan = planning.plan(100_000, 100_000, 4, 64, True)
    assert plan.workers == 1
    assert plan.tile_rows * plan.tile_cols * 4 * engine.TILE_OVERHEAD <= 64 * 2**20
    assert plan.tile_cols == engine.CUDA_TILE_COLS


def test_public_calls_use_the_thread_pool(monkeypatch, route):
    """The plan must see the caller's thread count (torch) or the cores (numpy), not the 1 set
    inside engine calls."""
    seen = []
    real = planning.plan

    def spy(*args, **kwargs):
        plan = real(*args, **kwargs)
        seen.append(plan.workers)
        return plan

    monkeypatch.setattr(planning, "plan", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x = RNG.standard_normal((600, 20))  # above SMALL_CALL_ELEMENTS: the tiled path
        row_distance_sums(x, x)
        nearest_distances(x, x, exclude_self=True)
        kcenter_greedy(x, 3, x[:400])
    finally:
        torch.set_num_threads(before)
    workers = 2 if route == "torch-tiles" else planning.cpu_count()
    assert seen == [workers] * 3
    assert torch.get_num_threads() == before


def test_threads_restored_after_pool():
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    blas_before = [lib["num_threads"] for lib in threadpool_info()]
    _tiled_row_sums(
        RNG.standard_normal((600, 3)),
        RNG.standard_normal((50, 3)),
        memory_budget_mb=1,
        precision="float64",
        device="cpu",
        workers=2,
    )
    assert torch.get_num_threads() == before
    assert [lib["num_threads"] for lib in threadpool_info()] == blas_before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    s, p = RNG.standard_normal((500, 25)), RNG.standard_normal((800, 25))
    for precision, rtol in [("float64", 1e-12), ("float32", 1e-6)]:
        np.testing.assert_allclose(
            row_distance_sums(s, p, precision=precision, device="cuda"),
            R.i_dist(s, p),
            rtol=rtol,
        )
    d, idx = nearest_distances(s, s, exclude_self=True, device="cuda")
    rd, ridx = R.nearest(s, s, exclude_self=True)
    np.testing.assert_allclose(d, rd, rtol=1e-12)
    np.testing.assert_array_equal(idx, ridx)
    assert kcenter_greedy(s, 10, p, device="cuda") == R.kcenter(s, 10, p)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_row_blocks_with_the_call_center_equal_the_whole_call(block):
    """What the Ray backend does: blocks of rows, one shared centre, global self-exclusion."""
    rng = np.random.default_rng(11)
    a = rng.normal(size=(50, 5)) * 3 + 10
    b = rng.normal(size=(40, 5))
    a[13] = a[12]  # an exact duplicate across a block boundary (block = 1, 7)
    starts = range(0, len(a), block)
    ref = R.pairwise(a, b)  # numpy float64
    center = engine.call_center(a, b)
    sums = np.concatenate(
        [engine.block_row_distance_sums(a[s : s + block], b, center) for s in starts]
    )
    np.testing.assert_allclose(sums, ref.sum(axis=1), rtol=1e-12)
    center = engine.call_center(a)
    parts = [
        engine.block_nearest_distances(a[s : s + block], a, center, exclude_self=True, row_offset=s)
        for s in starts
    ]
    dist = np.concatenate([d for d, _ in parts])
    idx = np.concatenate([i for _, i in parts])
    np.testing.assert_allclose(dist, R.nearest_other(a), rtol=1e-12)
    assert idx[12] == 13 and idx[13] == 12 and dist[12] == 0.0
    assert (idx != np.arange(len(a))).all()


# --------------------------------------------------------------------------- fused passes


def _pca_like(rng, rows, z, shift=0.0):
    """Centred Gaussian columns with decreasing variance, as PCA components have."""
    return rng.normal(size=(rows, z)) * np.linspace(3.0, 0.2, z) + shift


@pytest.mark.parametrize(
    "precision,rtol", [("float64", 1e-12), ("float32", 1e-6)], ids=["f64", "f32"]
)
@pytest.mark.parametrize("budget", [1, 256])
def test_pair_pass_matches_numpy_for_every_prefix(precision, rtol, budget):
    rng = np.random.default_rng(3)
    s, p = _pca_like(rng, 300, 25, 0.2), _pca_like(rng, 410, 25)
    s[4] = p[9]  # exact duplicate: distance 0 in every prefix
    s[5] = p[9] + 1e-9  # near duplicate
    s[6, :5] = p[11, :5]  # duplicate in the first 5 columns only
    res = engine.pair_pass(
        s, p, prefixes=[25, 5, 10, 5], nearest=True, precision=precision, memory_budget_mb=budget
    )
    assert sorted(res.i_dist) == [5, 10, 25] and res.nearest_dims == 25
    for z in (5, 10, 25):
        np.testing.assert_allclose(res.i_dist[z], R.pairwise(s[:, :z], p[:, :z]).sum(1), rtol=rtol)
    rd, ridx = R.nearest(s, p)
    np.testing.assert_array_equal(res.nearest_index, ridx)
    np.testing.assert_allclose(res.nearest_distance, rd, rtol=1e-12)
    assert res.nearest_distance[4] == 0.0


def test_pair_pass_equals_the_separate_calls_to_1e9():
    """Issue 18: the fused pass gives the numbers of the calls it replaces (float64)."""
    rng = np.random.default_rng(4)
    s, p = _pca_like(rng, 700, 25, 0.1) + 5.0, _pca_like(rng, 900, 25) + 5.0  # uncentred
    res = engine.pair_pass(s, p, prefixes=[5, 10, 15, 20, 25], nearest=10)
    for z in (5, 10, 15, 20, 25):
        sep = row_distance_sums(s[:, :z], p[:, :z])
        np.testing.assert_allclose(res.i_dist[z], sep, rtol=1e-9)
    d, i = nearest_distances(s[:, :10], p[:, :10])
    np.testing.assert_array_equal(res.nearest_index, i)
    np.testing.assert_allclose(res.nearest_distance, d, rtol=1e-9)
    assert res.nearest_dims == 10


def test_pair_pass_nearest_beyond_the_widest_sum_and_defaults():
    rng = np.random.default_rng(5)
    s, p = rng.normal(size=(40, 6)), rng.normal(size=(30, 6))
    res = engine.pair_pass(s, p, prefixes=[2], nearest=6, memory_budget_mb=1)
    np.testing.assert_allclose(res.i_dist[2], R.pairwise(s[:, :2], p[:, :2]).sum(1), rtol=1e-12)
    np.testing.assert_array_equal(res.nearest_index, R.nearest(s, p)[1])
    plain = engine.pair_pass(s, p)  # all columns, no nearest
    assert list(plain.i_dist) == [6] and plain.nearest_index is None
    np.testing.assert_allclose(plain.i_dist[6], R.pairwise(s, p).sum(1), rtol=1e-12)


def test_pair_pass_hand_vector_and_ties():
    p = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    s = np.array([[1.0, 1.0], [3.0, 3.0]])
    res = engine.pair_pass(s, p, prefixes=[1, 2], nearest=True)
    np.testing.assert_allclose(res.i_dist[2], [4.242641, 10.567196], atol=1e-6)
    np.testing.assert_allclose(res.i_dist[1], [1 + 1 + 1, 3 + 1 + 3])  # |x_s - x_p|
    assert res.nearest_index[0] == 0  # three equal distances: the lowest index wins
    np.testing.assert_allclose(res.nearest_distance, [np.sqrt(2), np.sqrt(10)])


def test_pair_pass_bad_prefixes_and_empty_inputs():
    s, p = RNG.normal(size=(5, 3)), RNG.normal(size=(4, 3))
    for bad in ([0], [4]):
        with pytest.raises(ValueError, match="outside 1..3"):
            engine.pair_pass(s, p, prefixes=bad)
    with pytest.raises(ValueError, match="outside"):
        engine.pair_pass(s, p, nearest=7)
    empty = engine.pair_pass(s[:0], p, prefixes=[2], nearest=True)
    assert empty.i_dist[2].shape == (0,) and empty.nearest_index.shape == (0,)
    none = engine.pair_pass(s, p[:0], nearest=True)
    assert (none.i_dist[3] == 0).all() and (none.nearest_index == -1).all()
    assert np.isinf(none.nearest_distance).all()


@pytest.mark.parametrize("block", [1, 7, 64])
def test_pair_pass_row_blocks_equal_the_whole_call(block):
    """What the Ray backend does with pair_pass: blocks centred by the call's mean."""
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(50, 6)) * 3 + 10, rng.normal(size=(40, 6))
    whole = engine.pair_pass(a, b, prefixes=[2, 6], nearest=4)
    center = engine.call_center(a, b)
    parts = [
        engine.block_pair_pass(a[s : s + block], b, center, prefixes=[2, 6], nearest=4)
        for s in range(0, len(a), block)
    ]
    joined = engine.concat_pair_results(parts)
    for z in (2, 6):
        np.testing.assert_allclose(joined.i_dist[z], whole.i_dist[z], rtol=1e-12)
    np.testing.assert_array_equal(joined.nearest_index, whole.nearest_index)
    np.testing.assert_array_equal(joined.nearest_distance, whole.nearest_distance)


def test_pair_pass_goes_to_the_backend_when_it_takes_the_call():
    calls = []

    class Backend:
        def takes(self, m, n):
            return m > 3

        def pair_pass(self, rows, cols, **kw):
            calls.append(kw)
            return engine.block_pair_pass(rows, cols, engine.call_center(rows, cols), **kw)

    s, p = RNG.normal(size=(6, 3)), RNG.normal(size=(5, 3))
    with engine.distance_backend(Backend()):
        res = engine.pair_pass(s, p, prefixes=[2], nearest=True)
        engine.pair_pass(s[:3], p)  # small: stays local
    assert len(calls) == 1 and calls[0]["prefixes"] == [2] and calls[0]["nearest"] is True
    np.testing.assert_allclose(res.i_dist[2], R.pairwise(s[:, :2], p[:, :2]).sum(1), rtol=1e-12)


def test_self_pass_is_the_nearest_other_by_index():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(120, 8))
    x[7] = x[3]
    res = engine.self_pass(x, memory_budget_mb=1)
    rd, ridx = R.nearest(x, x, exclude_self=True)
    np.testing.assert_allclose(res.distance, rd, rtol=1e-12)
    assert res.distance[3] == 0.0 and {res.index[3], res.index[7]} == {3, 7}
    assert (res.index != np.arange(len(x))).all()
    one = engine.self_pass(x[:1])
    assert one.index.tolist() == [-1] and np.isinf(one.distance).all()


def test_self_pass_later_sums_hand_vector():
    """Points 0, 1, 3 on a line: each row's summed distance to the later rows (1 + 3, 2, 0),
    and every ordered pair's (2 * 6 = 4 + 3 + 5)."""
    x = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    res = engine.self_pass(x)
    np.testing.assert_allclose(res.later_sums, [4.0, 2.0, 0.0], rtol=1e-12)
    assert res.later_sums.dtype == np.float64 and res.pair_sum == pytest.approx(12.0, rel=1e-12)
    np.testing.assert_array_equal(res.index, [1, 0, 1])
    assert engine.self_pass(x[:1]).later_sums.tolist() == [0.0]
    assert (
        engine.self_pass(x[:0]).later_sums.shape == (0,) and engine.self_pass(x[:0]).pair_sum == 0
    )


@pytest.mark.parametrize(("precision", "rtol"), [("float64", 1e-12), ("float32", 1e-6)])
@pytest.mark.parametrize("budget", [0.05, 256])
def test_self_pass_later_sums_come_from_the_same_tiles_as_the_nearest(precision, rtol, budget):
    """later_sums equals numpy's sums over the later rows (the upper triangle; duplicates
    included) whatever the tiling (budget 0.05 MB: tiles straddle the diagonal at every
    offset), and the nearest of the same pass equals the separate nearest call."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(150, 6)) * 2 + 5
    x[9] = x[4]
    kw = {"memory_budget_mb": budget, "precision": precision}
    res = engine.self_pass(x, **kw)
    ref = R.pairwise(x, x)
    np.testing.assert_allclose(res.later_sums, np.triu(ref, 1).sum(axis=1), rtol=rtol)
    assert res.pair_sum == pytest.approx(ref.sum(), rel=rtol)
    d, idx = nearest_distances(x, x, exclude_self=True, **kw)
    np.testing.assert_array_equal(res.distance, d)
    np.testing.assert_array_equal(res.index, idx)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_self_pass_row_blocks_equal_the_whole_call(block):
    """What the Ray backend does with the self pass: blocks centred by the call's mean, the
    self-exclusion placed by the block's row offset."""
    rng = np.random.default_rng(13)
    x = rng.normal(size=(50, 5)) * 3 + 10
    x[13] = x[12]  # an exact duplicate across a block boundary (block = 1, 7)
    whole = engine.self_pass(x)
    center = engine.call_center(x)
    parts = [
        engine.block_pair_pass(
            x[s : s + block], x, center, nearest=True, exclude_self=True, row_offset=s
        )
        for s in range(0, len(x), block)
    ]
    joined = engine.concat_pair_results(parts)
    np.testing.assert_allclose(joined.i_dist[5], whole.later_sums, rtol=1e-12)
    np.testing.assert_allclose(whole.later_sums, np.triu(R.pairwise(x, x), 1).sum(1), rtol=1e-12)
    np.testing.assert_allclose(joined.nearest_distance, whole.distance, rtol=1e-12)
    assert joined.nearest_distance[12] == 0.0 and joined.nearest_index[12] == 13


def test_self_pass_goes_to_the_backend_as_a_pair_pass_without_self():
    calls = []

    class Backend:
        def takes(self, m, n):
            return m > 3

        def pair_pass(self, rows, cols, **kw):
            calls.append(kw)
            return engine.block_pair_pass(rows, cols, engine.call_center(cols), **kw)

    x = RNG.normal(size=(6, 3))
    with engine.distance_backend(Backend()):
        res = engine.self_pass(x)
    assert len(calls) == 1 and calls[0]["exclude_self"] is True and calls[0]["nearest"] is True
    ref = R.pairwise(x, x)
    np.testing.assert_allclose(res.later_sums, np.triu(ref, 1).sum(axis=1), rtol=1e-12)
    np.fill_diagonal(ref, np.inf)
    np.testing.assert_allclose(res.distance, ref.min(axis=1), rtol=1e-12)


def test_cpu_threads_are_capped(monkeypatch):
    """Row-block threads: one per core of the affinity mask, at most CPU_MAX_WORKERS and at
    most OMP_NUM_THREADS when set."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert planning.cpu_count() == engine.CPU_MAX_WORKERS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert planning.cpu_count() == 3
    assert planning.plan(10_000, 10_000, 4, 256, False).workers == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert planning.cpu_count() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "nonsense")
    assert planning.cpu_count() == 3


@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1e20, 1e30])
def test_float32_tiles_at_any_magnitude(magnitude):
    """float32 squares overflow above ~1e19 and underflow below ~1e-19; the tiles hold the
    centred data divided by a power of two near its largest value, so every call keeps float32
    accuracy at any magnitude (method.md §8)."""
    s, p = RNG.standard_normal((60, 5)) * magnitude, RNG.standard_normal((70, 5)) * magnitude
    ref = R.i_dist(s, p)
    kw = {"precision": "float32"}
    np.testing.assert_allclose(row_distance_sums(s, p, **kw), ref, rtol=1e-6)
    fused = engine.pair_pass(s, p, prefixes=[2, 5], nearest=True, **kw)
    np.testing.assert_allclose(fused.i_dist[5], ref, rtol=1e-6)
    np.testing.assert_allclose(fused.i_dist[2], R.i_dist(s[:, :2], p[:, :2]), rtol=1e-6)
    rd, ridx = R.nearest(s, p)
    d, idx = nearest_distances(s, p, **kw)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_allclose(d, rd, rtol=1e-12)
    assert kcenter_greedy(s, 6, p, **kw) == R.kcenter(s / magnitude, 6, p / magnitude)


def test_zero_columns_give_zero_distances():
    a, b = np.zeros((5, 0)), np.zeros((7, 0))
    np.testing.assert_array_equal(row_distance_sums(a, b), 0.0)
    d, idx = nearest_distances(a, b)
    np.testing.assert_array_equal(d, 0.0)
    np.testing.assert_array_equal(idx, 0)


def test_interrupt_stops_the_row_blocks(monkeypatch):
    """Ctrl-C (or a failing block) during a CPU call returns without running the blocks that
    had not started (a 200k pass would otherwise run to its end before the interrupt lands)."""
    ran = []
    plan = planning.Plan(tile_rows=1, tile_cols=4, workers=2)

    def block(s, e, buf):
        ran.append(s)
        if s == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        planning.run_row_blocks(400, plan, tiles.NUMPY_TILES, lambda: None, block)
    assert len(ran) < 400


@pytest.mark.parametrize("offset", [-6, -1, 0, 3, 7])
def test_zero_through_diagonal_numpy_and_torch_tiles_agree(offset):
    """The self pass's sums mask (entries j <= i + offset) on both tile backends, against
    np.triu's complement."""
    import torch

    from worker.engine.tiles import NumpyTiles, TorchTiles

    t = RNG.normal(size=(5, 7)) + 10.0
    a, b = t.copy(), torch.tensor(t)
    NumpyTiles().zero_through_diagonal(a, offset)
    TorchTiles(torch.device("cpu")).zero_through_diagonal(b, offset)
    np.testing.assert_array_equal(a, np.triu(t, offset + 1))
    np.testing.assert_array_equal(b.numpy(), np.triu(t, offset + 1))
