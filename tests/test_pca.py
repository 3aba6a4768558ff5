"""Joint PCA routes vs scikit-learn PCA(svd_solver='full') and numpy float64."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import reference as R
from worker import pca
from worker.pca import fit_pca, joint_pca, project

RNG = np.random.default_rng(7)
ROUTES = ["exact", "gram", "covariance", "randomized", "auto"]


def low_rank(n: int, q: int, rank: int = 8, noise: float = 0.01, offset: float = 5.0):
    """Data with a decaying spectrum (so the randomized route converges), off-centre."""
    scales = np.linspace(10, 1, rank)
    x = (RNG.standard_normal((n, rank)) * scales) @ RNG.standard_normal((rank, q))
    return x + noise * RNG.standard_normal((n, q)) + offset


def assert_same_up_to_sign(a, b, atol):
    assert a.shape == b.shape
    for j in range(a.shape[1]):
        sign = 1.0 if np.dot(a[:, j], b[:, j]) >= 0 else -1.0
        np.testing.assert_allclose(a[:, j] * sign, b[:, j], atol=atol)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("n", "q"), [(90, 20), (40, 300), (300, 12)])
def test_routes_agree_with_sklearn(route, n, q):
    x = low_rank(n, q)
    blocks = [x[: n // 3], x[n // 3 : n // 2], x[n // 2 :]]
    projected, info = joint_pca(blocks, 6, route=route)
    assert [len(p) for p in projected] == [len(b) for b in blocks]
    assert all(p.dtype == np.float64 and p.shape[1] == 6 for p in projected)
    ref = R.sk_pca(x, 6)
    y = np.vstack(projected)
    scale = np.abs(ref.transform(x)).max()
    assert_same_up_to_sign(y, ref.transform(x), atol=1e-8 * scale)
    # same sign convention as sklearn's svd_flip(u_based_decision=False)
    np.testing.assert_allclose(y, ref.transform(x), atol=1e-8 * scale)
    np.testing.assert_allclose(info.explained_variance_ratio, ref.explained_variance_ratio_)
    assert info.dims == 6 and info.requested_dims == 6 and info.warnings == []
    assert info.route == (route if route != "auto" else "exact")


@pytest.mark.parametrize("route", ["exact", "gram", "covariance"])
def test_full_spectrum_noise_data(route):
    """Flat spectrum (pure noise): deterministic routes still match sklearn exactly."""
    x = RNG.standard_normal((50, 10)) * np.arange(1, 11)
    y, info = joint_pca([x], 10, route=route)
    ref = R.sk_pca(x, 10)
    np.testing.assert_allclose(y[0], ref.transform(x), atol=1e-9)
    assert sum(info.explained_variance_ratio) == pytest.approx(1.0)


def test_columns_are_nested_for_the_sweep():
    x = low_rank(80, 30)
    y25, _ = joint_pca([x], 25)
    for z in (5, 10, 15, 20):
        yz, _ = joint_pca([x], z)
        np.testing.assert_allclose(yz[0], y25[0][:, :z], atol=1e-9)


@pytest.mark.parametrize("route", ["exact", "gram", "covariance"])
def test_rotation_invariant_distances(route):
    """method.md §1.2: z >= rank of centred X -> pairwise distances equal the raw ones."""
    p, s = RNG.standard_normal((12, 5)), RNG.standard_normal((7, 5)) + 2
    (p_l, s_l), info = joint_pca([p, s], 5, route=route)
    np.testing.assert_allclose(R.pairwise(s_l, p_l), R.pairwise(s, p), atol=1e-10)
    assert info.dims == 5


def test_design_hand_vector():
    (p_l, s_l), _ = joint_pca([R.P_HAND, R.S_HAND], 2)
    np.testing.assert_allclose(R.i_dist(s_l, p_l), R.I_DIST_HAND, atol=1e-6)


def test_dims_none_returns_centred_raw_features():
    p, s = RNG.standard_normal((5, 3)) + 4, RNG.standard_normal((4, 3))
    (p_l, s_l), info = joint_pca([p, s], None)
    mean = np.vstack([p, s]).mean(axis=0)
    np.testing.assert_allclose(p_l, p - mean)
    np.testing.assert_allclose(s_l, s - mean)
    assert info.route == "none" and info.dims == 3 and info.requested_dims is None


@pytest.mark.parametrize("route", ROUTES)
def test_dims_clamped_with_warning(route):
    x = low_rank(6, 4, rank=3)
    y, info = joint_pca([x[:2], x[2:]], 50, route=route)
    assert info.dims == 4 and info.requested_dims == 50
    assert len(info.warnings) == 1 and "dims=50" in info.warnings[0]
    assert y[0].shape == (2, 4) and y[1].shape == (4, 4)
    # still a rotation of the centred data: distances preserved
    z = np.vstack(y)
    np.testing.assert_allclose(R.pairwise(z, z), R.pairwise(x, x), atol=1e-8)


@pytest.mark.parametrize("route", ["exact", "gram", "covariance", "randomized"])
def test_rank_deficient_wide_data(route):
    """N <= q: the centred X has rank N - 1; the last component has zero variance."""
    x = low_rank(5, 40, rank=8)
    y, info = joint_pca([x], 5, route=route)
    ref = R.sk_pca(x, 5)
    np.testing.assert_allclose(np.abs(y[0][:, :4]), np.abs(ref.transform(x)[:, :4]), atol=1e-8)
    np.testing.assert_allclose(y[0][:, 4], 0.0, atol=1e-8)
    assert info.explained_variance_ratio[4] == pytest.approx(0.0, abs=1e-12)


def test_single_sample_and_single_feature():
    y, info = joint_pca([np.array([[1.0, 2.0, 3.0]])], 2)
    assert info.dims == 1 and y[0].shape == (1, 1) and y[0][0, 0] == 0.0
    assert info.explained_variance_ratio == [0.0] and len(info.warnings) == 2
    x = RNG.standard_normal((10, 1))
    y, info = joint_pca([x[:3], x[3:]], 1)
    np.testing.assert_allclose(np.abs(np.vstack(y)[:, 0]), np.abs(x[:, 0] - x.mean()))
    assert info.explained_variance_ratio == [pytest.approx(1.0)]


def test_duplicates_and_float32_blocks():
    base = low_rank(20, 15).astype(np.float32)
    x = np.vstack([base, base[:5]])
    y, _ = joint_pca([x[:10], x[10:]], 4, route="gram")
    ref = R.sk_pca(x.astype(np.float64), 4).transform(x.astype(np.float64))
    np.testing.assert_allclose(np.vstack(y), ref, atol=1e-8)
    np.testing.assert_allclose(np.vstack(y)[20:], np.vstack(y)[:5], rtol=1e-13, atol=1e-12)


def test_deterministic_randomized():
    x = low_rank(120, 60)
    a, _ = joint_pca([x], 5, route="randomized", seed=3)
    b, _ = joint_pca([x], 5, route="randomized", seed=3)
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("route", ["gram", "covariance", "randomized"])
def test_chunked_routes_with_tiny_budget(route):
    x = low_rank(70, 50)
    y_small, _ = joint_pca([x[:30], x[30:]], 5, route=route, memory_budget_mb=0.001)
    y_big, _ = joint_pca([x[:30], x[30:]], 5, route="exact")
    np.testing.assert_allclose(np.vstack(y_small), np.vstack(y_big), atol=1e-8)


def test_auto_route_choice(monkeypatch):
    assert pca._choose_route(2_000, 768) == "exact"
    assert pca._choose_route(40_000, 128) == "covariance"  # tall: q x q eigenproblem
    assert pca._choose_route(4_000, 128) == "exact"  # small: the reference SVD
    assert pca._choose_route(2_000, 1_048_576) == "gram"
    assert pca._choose_route(1_000_000, 768) == "covariance"
    assert pca._choose_route(1_000_000, 4096) == "covariance"
    assert pca._choose_route(100_000, 1_048_576) == "randomized"
    # wide data through 'auto' really takes the Gram route and never forms q x q
    monkeypatch.setattr(pca, "EXACT_MAX_VALUES", 1000)
    monkeypatch.setattr(pca, "COVARIANCE_MAX_Q", 100)
    x = low_rank(30, 2000)
    called = []
    real_eigh = np.linalg.eigh

    def spy(a, *args, **kw):
        called.append(a.shape)
        return real_eigh(a, *args, **kw)

    monkeypatch.setattr(np.linalg, "eigh", spy)
    y, info = joint_pca([x], 5)
    assert info.route == "gram" and called == [(30, 30)]
    np.testing.assert_allclose(y[0], R.sk_pca(x, 5).transform(x), atol=1e-8)


def test_fit_on_p_project_others():
    p, s = low_rank(40, 12), low_rank(15, 12)
    model = fit_pca(p, 3)
    ref = R.sk_pca(p, 3)
    np.testing.assert_allclose(project(model, p), ref.transform(p), atol=1e-9)
    np.testing.assert_allclose(project(model, s), ref.transform(s), atol=1e-9)
    assert model.info().route == "exact"
    with pytest.raises(ValueError, match="fitted on 12 features"):
        project(model, np.ones((2, 5)))


def test_bad_input():
    with pytest.raises(ValueError, match="block 1 has 4 features"):
        joint_pca([np.ones((3, 3)), np.ones((3, 4))], 2)
    with pytest.raises(ValueError, match="dims"):
        joint_pca([np.ones((3, 3))], 0)
    with pytest.raises(ValueError, match="route"):
        joint_pca([np.ones((3, 3))], 2, route="magic")
    with pytest.raises(ValueError, match="NaN"):
        joint_pca([np.array([[np.nan, 1.0]])], 1)
    with pytest.raises(ValueError, match="empty"):
        joint_pca([np.zeros((0, 3))], 1)


def test_auto_on_tall_data_takes_covariance_and_equals_sklearn(monkeypatch):
    from tests.helpers import reference as R

    monkeypatch.setattr(pca, "TALL_MIN_VALUES", 1000)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 20)) * np.exp(-np.arange(20) / 6)
    (a, b), info = joint_pca([x[:1200], x[1200:]], 6)
    assert info.route == "covariance"
    ra, rb = R.joint_pca([x[:1200], x[1200:]], 6)
    np.testing.assert_allclose(R.pairwise(b, a), R.pairwise(rb, ra), rtol=1e-10)


# --------------------------------------------------------------------------- memory-mapped


def _rss_file_kb() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_joint_pca_streams_memory_mapped_blocks_at_bounded_rss(tmp_path):
    """Blocks memory-mapped from .npy files give the same PCA as in memory, and a pass over
    them releases each chunk's pages (RssFile grows by far less than the files' 48 MB)."""
    from worker.pca import _Blocks

    if _rss_file_kb() is None:
        pytest.skip("needs /proc/self/status (Linux)")
    rng = np.random.default_rng(4)
    a = (rng.normal(size=(2000, 3000)) + 1.0).astype(np.float32)
    b = rng.normal(size=(2000, 3000)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    ma = np.load(tmp_path / "a.npy", mmap_mode="r")
    mb = np.load(tmp_path / "b.npy", mmap_mode="r")
    before = _rss_file_kb()
    blocks = _Blocks([ma, mb], memory_budget_mb=8)  # the finite check is one pass
    mean = blocks.mean()  # and another
    grown_mb = (_rss_file_kb() - before) / 1024
    assert grown_mb < 12, grown_mb
    np.testing.assert_allclose(mean, np.vstack([a, b]).astype(np.float64).mean(0), atol=1e-9)
    (pm, sm), info = joint_pca([ma, mb], 5, route="randomized", seed=1, memory_budget_mb=8)
    (pa, sa), ref = joint_pca([a, b], 5, route="randomized", seed=1, memory_budget_mb=8)
    np.testing.assert_array_equal(pm, pa)
    np.testing.assert_array_equal(sm, sa)
    assert info == ref
