"""worker.stats against hand vectors, hand-written float64 brute force, scipy and sklearn."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import pdist
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.neighbors import NearestNeighbors

from tests.helpers import reference as R
from worker import metrics, stats

# --------------------------------------------------------------------------- references


def _gauss(a: np.ndarray, b: np.ndarray, sigma: float) -> float:
    return float(np.exp(-np.sum((a - b) ** 2) / (2.0 * sigma**2)))


def _mmd_loops(X: np.ndarray, Y: np.ndarray, sigma: float) -> float:
    """Unbiased MMD^2 straight from the definition, pair by pair."""
    n, m = len(X), len(Y)
    xx = sum(_gauss(X[i], X[j], sigma) for i in range(n) for j in range(n) if i != j)
    yy = sum(_gauss(Y[i], Y[j], sigma) for i in range(m) for j in range(m) if i != j)
    xy = sum(_gauss(X[i], Y[j], sigma) for i in range(n) for j in range(m))
    return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (n * m)


def _mmd_sklearn(X: np.ndarray, Y: np.ndarray, sigma: float) -> float:
    gamma = 1.0 / (2.0 * sigma**2)
    kxx, kyy = rbf_kernel(X, X, gamma=gamma), rbf_kernel(Y, Y, gamma=gamma)
    n, m = len(X), len(Y)
    return (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2.0 * rbf_kernel(X, Y, gamma=gamma).mean()
    )


def _kid_brute(x: np.ndarray, y: np.ndarray) -> float:
    d, s = x.shape[1], len(x)
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    return (
        (kxx.sum() - np.trace(kxx)) / (s * (s - 1))
        + (kyy.sum() - np.trace(kyy)) / (s * (s - 1))
        - 2.0 * k(x, y).mean()
    )


def _fid_scipy(X: np.ndarray, Y: np.ndarray) -> float:
    """Reference FID: Tr((Sx^1/2 Sy Sx^1/2)^1/2) = nuclear norm of sqrtm(Sx) sqrtm(Sy)."""
    sx, sy = np.cov(X, rowvar=False), np.cov(Y, rowvar=False)
    ax, ay = np.real(scipy.linalg.sqrtm(sx)), np.real(scipy.linalg.sqrtm(sy))
    cross = np.linalg.svd(ax @ ay, compute_uv=False).sum()
    diff = X.mean(0) - Y.mean(0)
    return float(diff @ diff + np.trace(sx) + np.trace(sy) - 2.0 * cross)


def _with_diagonal_covariance(rng, n: int, mean, std) -> np.ndarray:
    """n samples whose sample mean is `mean` and sample covariance (ddof=1) is diag(std^2)."""
    d = len(std)
    A = rng.normal(size=(n, d))
    Q, _ = np.linalg.qr(A - A.mean(0))  # orthonormal columns, each orthogonal to ones
    return np.asarray(mean) + np.sqrt(n - 1) * Q * np.asarray(std)


# --------------------------------------------------------------------------- null calibration


def test_null_against_brute_force():
    rng = np.random.default_rng(6)
    P = rng.normal(size=(41, 3))
    null = stats.null_o_dist_means(P, repeats=5, seed=3)
    ref_rng = np.random.default_rng(3)
    ref = []
    for _ in range(5):
        order = ref_rng.permutation(41)
        ref.append(R.o_dist_mean(P[order[:20]], P[order[20:]]))
    np.testing.assert_allclose(null, ref, rtol=1e-12)
    np.testing.assert_array_equal(null, stats.null_o_dist_means(P, repeats=5, seed=3))
    assert len(stats.null_o_dist_means(P[:3], repeats=5, seed=0)) == 0


def test_null_subsample_above_the_cap_against_brute_force():
    """Above max_samples each repeat draws k rows and splits them (seeded, documented)."""
    rng = np.random.default_rng(8)
    P = rng.normal(size=(101, 3))
    null = stats.null_o_dist_means(P, repeats=4, seed=2, max_samples=30)
    ref_rng = np.random.default_rng(2)
    ref = []
    for _ in range(4):
        order = ref_rng.permutation(101)[:30]
        ref.append(R.pairwise(P[order[:15]], P[order[15:]]).mean())
    np.testing.assert_allclose(null, ref, rtol=1e-12)
    # at or below the cap: the whole of P, as before the cap existed
    np.testing.assert_array_equal(
        stats.null_o_dist_means(P, repeats=3, seed=2, max_samples=101),
        stats.null_o_dist_means(P, repeats=3, seed=2, max_samples=10_000),
    )
    cal = stats.null_calibration(P, 1.0, repeats=4, seed=2, max_samples=30)
    assert cal["subsample"] == {"size": 30, "of": 101, "repeats": 4}
    np.testing.assert_allclose(cal["null"], ref, rtol=1e-12)
    assert stats.null_sample_size(20_000) == stats.NULL_MAX_SAMPLES
    assert stats.null_calibration(P[:3], 1.0, repeats=4, seed=0)["subsample"]["size"] == 0


def test_null_subsample_estimates_the_same_mean():
    """The effect of the cap: each value is an unbiased estimate of P's mean pairwise
    distance; the spread grows as the sample shrinks, the centre does not move."""
    rng = np.random.default_rng(10)
    P = rng.normal(size=(1500, 4))
    full = stats.null_o_dist_means(P, repeats=10, seed=0)
    capped = stats.null_o_dist_means(P, repeats=10, seed=0, max_samples=300)
    everything = pdist(P).mean()
    assert abs(full.mean() - everything) / everything < 0.01
    assert abs(capped.mean() - everything) / everything < 0.03
    assert capped.std() > full.std()


def test_null_ratio_and_percentile():
    null = np.array([1.0, 2.0, 3.0, 4.0])
    assert stats.o_dist_ratio(5.0, null) == pytest.approx(2.0)
    assert stats.o_dist_percentile(3.0, null) == 50.0  # strictly below: 1, 2
    assert stats.o_dist_percentile(10.0, null) == 100.0
    assert stats.o_dist_percentile(0.5, null) == 0.0
    assert stats.o_dist_ratio(1.0, np.zeros(0)) is None
    assert stats.o_dist_percentile(1.0, np.zeros(0)) is None
    assert stats.o_dist_ratio(1.0, np.zeros(3)) is None


def test_null_calibration_is_comparable_with_o_dist_mean():
    rng = np.random.default_rng(7)
    P = rng.normal(size=(200, 4))
    same, far = rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 3.0
    ratios = {}
    for name, S in (("same", same), ("far", far)):
        o_mean = metrics.o_dist_mean(metrics.image_dataset_distances(S, P), len(P))
        cal = stats.null_calibration(P, o_mean, repeats=10, seed=0)
        assert len(cal["null"]) == 10 and cal["null_mean"] == pytest.approx(np.mean(cal["null"]))
        # ratio and percentile against the brute-force o_dist_mean (method.md §4.1)
        ref_mean = R.o_dist_mean(S, P)
        assert o_mean == pytest.approx(ref_mean, rel=1e-12)
        assert cal["ratio"] == pytest.approx(ref_mean / np.mean(cal["null"]), rel=1e-12)
        assert cal["percentile"] == 100.0 * np.mean(np.asarray(cal["null"]) < ref_mean)
        ratios[name] = cal
    assert 0.9 < ratios["same"]["ratio"] < 1.1
    assert ratios["far"]["ratio"] > 1.5 and ratios["far"]["percentile"] == 100.0


# --------------------------------------------------------------------------- MMD


def test_mmd_fixed_sigma_against_brute_force():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(12, 3)), rng.normal(size=(9, 3)) + 0.4
    assert stats.mmd_unbiased(X, Y, 1.3) == pytest.approx(_mmd_loops(X, Y, 1.3), rel=1e-10)
    X, Y = rng.normal(size=(60, 5)), rng.normal(size=(45, 5)) * 1.2
    for sigma in (0.5, 2.0, 10.0):
        ref = _mmd_sklearn(X, Y, sigma)
        assert stats.mmd_unbiased(X, Y, sigma) == pytest.approx(ref, rel=1e-9, abs=1e-13)
    with pytest.raises(ValueError):
        stats.mmd_unbiased(X[:1], Y, 1.0)


def test_median_heuristic_against_pdist():
    rng = np.random.default_rng(8)
    X, Y = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) + 1.0
    ref = np.median(pdist(np.vstack([X, Y])))
    assert stats.median_heuristic(X, Y) == pytest.approx(ref, rel=1e-12)
    # above the cap: the pdist median of the same seeded subsample of the pooled points
    Z = np.vstack([X, Y])
    idx = np.sort(np.random.default_rng(5).choice(len(Z), 20, replace=False))
    got = stats.median_heuristic(X, Y, seed=5, max_samples=20)
    assert got == pytest.approx(np.median(pdist(Z[idx])), rel=1e-12)
    # mostly duplicates: the median of the positive distances
    D = np.vstack([np.zeros((6, 2)), [[3.0, 4.0]]])
    assert stats.median_heuristic(D[:4], D[4:]) == pytest.approx(5.0)
    assert stats.median_heuristic(np.zeros((3, 2)), np.zeros((2, 2))) == 0.0


def test_mmd_test_statistic_and_exact_permutation_p_value():
    rng = np.random.default_rng(9)
    X, Y = rng.normal(size=(10, 2)), rng.normal(size=(8, 2)) + 0.5
    got = stats.mmd_test(X, Y, permutations=50, seed=11)
    sigma = np.median(pdist(np.vstack([X, Y])))
    assert got["sigma"] == pytest.approx(sigma, rel=1e-12)
    obs = _mmd_loops(X, Y, sigma)
    assert got["statistic"] == pytest.approx(obs, rel=1e-10)
    # reproduce the permutation scheme: rng.permutation(N)[:n] are the "X" rows
    Z, ref_rng, exceed = np.vstack([X, Y]), np.random.default_rng(11), 0
    for _ in range(50):
        perm = ref_rng.permutation(18)
        exceed += _mmd_loops(Z[perm[:10]], Z[perm[10:]], sigma) >= obs - 1e-12
    assert got["p_value"] == pytest.approx((1 + exceed) / 51)
    assert got["permutations"] == 50 and (got["n_x"], got["n_y"]) == (10, 8)


def test_mmd_blocked_path_matches(monkeypatch):
    rng = np.random.default_rng(10)
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.3
    whole = stats.mmd_test(X, Y, permutations=40, seed=1)
    monkeypatch.setattr(stats, "KERNEL_BLOCK_MB", 0.005)  # 1-row blocks, batches of 9
    blocked = stats.mmd_test(X, Y, permutations=40, seed=1)
    assert blocked["statistic"] == pytest.approx(whole["statistic"], rel=1e-10)
    assert blocked["p_value"] == whole["p_value"] and blocked["sigma"] == whole["sigma"]


def test_mmd_p_values_uniform_under_the_null_and_small_when_shifted():
    rng = np.random.default_rng(12)
    pvals = np.array(
        [
            stats.mmd_test(rng.normal(size=(20, 2)), rng.normal(size=(20, 2)), 99, seed=s)[
                "p_value"
            ]
            for s in range(60)
        ]
    )
    # every p-value is (1 + k) / (1 + 99) for an integer count k of permutations >= observed
    k = pvals * 100 - 1
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    assert k.min() >= 0 and k.max() <= 99
    assert 0.35 < pvals.mean() < 0.65
    assert np.mean(pvals <= 0.1) < 0.25 and np.mean(pvals <= 0.5) > 0.3
    X, Y = rng.normal(size=(25, 3)), rng.normal(size=(25, 3)) + 3.0
    shifted = stats.mmd_test(X, Y, 200, 0)
    assert shifted["p_value"] == pytest.approx(1 / 201)
    sigma = np.median(pdist(np.vstack([X, Y])))
    assert shifted["sigma"] == pytest.approx(sigma, rel=1e-12)
    assert shifted["statistic"] == pytest.approx(_mmd_sklearn(X, Y, sigma), rel=1e-9)


def test_mmd_edge_cases():
    rng = np.random.default_rng(13)
    X = rng.normal(size=(5, 2))
    assert stats.mmd_test(X[:1], X, 10, 0)["statistic"] is None
    none = stats.mmd_test(X, X + 1, 0, 0)
    assert none["p_value"] is None and none["permutations"] == 0
    sigma = np.median(pdist(np.vstack([X, X + 1])))
    assert none["statistic"] == pytest.approx(_mmd_loops(X, X + 1, sigma), rel=1e-10)
    same = stats.mmd_test(np.ones((4, 2)), np.ones((3, 2)), 10, 0)
    assert same["statistic"] == 0.0 and same["p_value"] == 1.0 and same["sigma"] is None
    with pytest.raises(ValueError):
        stats.mmd_test(X, X + 1, 10, 0, sigma=0.0)


def test_mmd_subsamples_and_keeps_memory_bounded(monkeypatch):
    rng = np.random.default_rng(14)
    X, Y = rng.normal(size=(1500, 8)), rng.normal(size=(1200, 8))
    monkeypatch.setattr(stats, "KERNEL_BLOCK_MB", 4)
    tracemalloc.start()
    got = stats.mmd_test(X, Y, permutations=5, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (got["n_x"], got["n_y"]) == (stats.MMD_MAX_SAMPLES, stats.MMD_MAX_SAMPLES)
    # a dense 2000 x 2000 kernel alone would take 32 MB
    assert peak < 20 * 1024 * 1024
    small = stats.mmd_test(X, Y, permutations=5, seed=0, max_samples=50)
    assert (small["n_x"], small["n_y"]) == (50, 50)
    assert small == stats.mmd_test(X, Y, permutations=5, seed=0, max_samples=50)


# --------------------------------------------------------------------------- FID, KID


def test_fid_hand_vector_1d():
    # means 1 and 3, variances (ddof=1) 2 and 8: 4 + 2 + 8 - 2 * sqrt(16) = 6
    assert stats.fid(np.array([[0.0], [2.0]]), np.array([[1.0], [5.0]])) == pytest.approx(6.0)


def test_fid_diagonal_covariances_closed_form():
    rng = np.random.default_rng(3)
    mx, my = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    sx, sy = np.array([1.0, 2.0, 0.5]), np.array([2.0, 1.0, 0.5])
    X = _with_diagonal_covariance(rng, 50, mx, sx)
    Y = _with_diagonal_covariance(rng, 70, my, sy)
    np.testing.assert_allclose(np.cov(Y, rowvar=False), np.diag(sy**2), atol=1e-12)
    closed = np.sum((mx - my) ** 2) + np.sum(sx**2 + sy**2 - 2.0 * sx * sy)
    assert stats.fid(X, Y) == pytest.approx(closed, rel=1e-10)
    assert stats.fid(X, X) == pytest.approx(0.0, abs=1e-9)
    assert stats.fid(X[:1], Y) is None


def test_fid_both_routes_against_scipy_sqrtm():
    rng = np.random.default_rng(15)
    A = rng.normal(size=(4, 4))
    X = rng.normal(size=(60, 4)) @ A
    Y = rng.normal(size=(50, 4)) @ A.T + 0.5
    assert stats.fid(X, Y) == pytest.approx(_fid_scipy(X, Y), rel=1e-8)  # d^2 <= nm
    Xw, Yw = rng.normal(size=(9, 12)), rng.normal(size=(8, 12)) * 1.5 + 0.2
    assert stats.fid(Xw, Yw) == pytest.approx(_fid_scipy(Xw, Yw), rel=1e-6)  # Gram route


def test_kid_hand_vector():
    # d = 1: k(x, y) = (xy + 1)^3; kxx off-diag 1, kyy off-diag 64, kxy mean 372 / 4
    got = stats.kid(np.array([[0.0], [2.0]]), np.array([[1.0], [3.0]]), seed=0, subsets=3)
    assert got["mean"] == pytest.approx(1.0 + 64.0 - 2.0 * 93.0) and got["std"] == 0.0


@pytest.mark.parametrize("d", [3, 12])  # d^2 < s: moment route; d^2 >= s: kernel matrix
def test_kid_against_brute_force(d):
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(40, d)), rng.normal(size=(40, d)) * 1.3 + 0.5
    whole = stats.kid(X, Y, seed=0, subsets=1, subset_size=40)
    assert whole["mean"] == pytest.approx(_kid_brute(X, Y), rel=1e-10)
    assert whole["std"] == 0.0
    X, Y = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) * 2
    got = stats.kid(X, Y, seed=4, subsets=6, subset_size=10)
    ref_rng = np.random.default_rng(4)
    ref = []
    for _ in range(6):
        x = X[ref_rng.choice(30, 10, replace=False)]
        y = Y[ref_rng.choice(25, 10, replace=False)]
        ref.append(_kid_brute(x, y))
    assert got["mean"] == pytest.approx(np.mean(ref), rel=1e-10)
    assert got["std"] == pytest.approx(np.std(ref), rel=1e-10)
    assert stats.kid(X[:1], Y, seed=0) == {
        "mean": None,
        "std": None,
        "subset_size": 1,
        "subsets": 0,
    }
    assert (got["subset_size"], got["subsets"]) == (10, 6)


def test_kid_subsample_sizes_are_returned_and_bound_the_work():
    rng = np.random.default_rng(9)
    X, Y = rng.normal(size=(3000, 5)), rng.normal(size=(2500, 5))
    got = stats.kid(X, Y, seed=1, subsets=4, subset_size=200)
    assert (got["subset_size"], got["subsets"]) == (200, 4)
    ref_rng = np.random.default_rng(1)
    ref = [
        _kid_brute(
            X[ref_rng.choice(3000, 200, replace=False)], Y[ref_rng.choice(2500, 200, replace=False)]
        )
        for _ in range(4)
    ]
    assert got["mean"] == pytest.approx(np.mean(ref), rel=1e-10)
    small = stats.kid(X[:30], Y, seed=1, subsets=2)
    assert small["subset_size"] == 30  # min(subset_size, n, m)


# --------------------------------------------------------------------------- duplicates


def test_near_duplicate_threshold_against_sklearn():
    P = np.random.default_rng(16).normal(size=(80, 6))
    nn = NearestNeighbors(n_neighbors=2).fit(P).kneighbors(P)[0][:, 1]
    assert stats.near_duplicate_threshold(P) == pytest.approx(0.1 * np.median(nn), rel=1e-12)
    assert stats.near_duplicate_threshold(P, 0.5) == pytest.approx(0.5 * np.median(nn))
    assert stats.near_duplicate_threshold(P[:1]) == 0.0


def test_exact_and_near_pairs():
    assert stats.exact_duplicate_pairs(["a", "b", "a", "c", "a", "b"]) == [(0, 2), (0, 4), (1, 5)]
    X = np.random.default_rng(17).normal(size=(50, 4))
    X[9], X[30] = X[3], X[3] + 1e-7  # a triple: 3, 9 exact copies, 30 very close
    t = 0.01
    d, nn = R.nearest(X, X, exclude_self=True)  # exact, no GEMM trick; ties to the lower index
    brute = {(min(j, nn[j]), max(j, nn[j])) for j in range(50) if d[j] < t}
    got = stats.near_duplicate_pairs(X, t)
    assert {(a, b) for a, b, _ in got} == brute
    assert {(a, b) for a, b, _ in got} >= {(3, 9)}
    assert all(dist == pytest.approx(np.linalg.norm(X[a] - X[b])) for a, b, dist in got)


def test_duplicates_found_exactly_and_nothing_else():
    rng = np.random.default_rng(7)
    P, S = rng.normal(size=(60, 8)), rng.normal(size=(30, 8))
    S[4] = P[10]  # planted leak (same file)
    S[7] = S[2] + 1e-6  # planted near duplicate inside S
    S[11] = P[3] + 1e-4  # planted near duplicate of P (re-encoded file)
    S[21] = S[20]  # planted exact triple inside S (same file)
    S[22] = S[20]
    hashes = [f"h{i}" for i in range(30)]
    hashes[21] = hashes[22] = hashes[20]
    p_hashes = [f"p{i}" for i in range(60)]
    p_hashes[10] = hashes[4]
    ids, p_ids = [f"s{i}" for i in range(30)], [f"p{i}" for i in range(60)]
    found = stats.find_duplicates(
        S, P, ids=ids, primary_ids=p_ids, hashes=hashes, primary_hashes=p_hashes
    )
    nn = NearestNeighbors(n_neighbors=2).fit(P).kneighbors(P)[0][:, 1]
    assert found["threshold"] == pytest.approx(0.1 * np.median(nn))
    within = [(w["id_a"], w["id_b"], w["exact"]) for w in found["within"]]
    assert within == [("s2", "s7", False), ("s20", "s21", True), ("s20", "s22", True)]
    assert found["within"][0]["distance"] == pytest.approx(1e-6 * np.sqrt(8), rel=1e-6)
    leaks = [(w["id"], w["primary_id"], w["exact"]) for w in found["with_primary"]]
    assert leaks == [("s4", "p10", True), ("s11", "p3", False)]
    assert found["with_primary"][0]["distance"] == 0.0
    # without hashes: the same pairs by distance, none marked exact
    plain = stats.find_duplicates(S, P, ids=ids, primary_ids=p_ids)
    assert [(w["id_a"], w["id_b"]) for w in plain["within"]] == [
        ("s2", "s7"),
        ("s20", "s21"),
        ("s20", "s22"),
    ]
    assert [(w["id"], w["primary_id"]) for w in plain["with_primary"]] == [
        ("s4", "p10"),
        ("s11", "p3"),
    ]
    assert not any(w["exact"] for w in plain["within"] + plain["with_primary"])


def test_duplicates_from_precomputed_passes_equal_the_direct_ones():
    from worker import engine

    rng = np.random.default_rng(17)
    P, S = rng.normal(size=(80, 6)), rng.normal(size=(50, 6))
    S[3], S[9], S[10] = P[5], S[1] + 1e-7, P[7] + 1e-5
    ids, p_ids = [f"s{i}" for i in range(50)], [f"p{i}" for i in range(80)]
    direct = stats.find_duplicates(S, P, ids=ids, primary_ids=p_ids)
    p_self = engine.self_pass(P)
    s_self = engine.self_pass(S)
    pair = engine.pair_pass(S, P, nearest=True)
    t = stats.threshold_from_nearest(p_self.distance)
    assert t == pytest.approx(stats.near_duplicate_threshold(P), rel=1e-12)
    assert stats.threshold_from_nearest(np.zeros(1)) == 0.0
    fused = stats.find_duplicates(
        S,
        P,
        ids=ids,
        primary_ids=p_ids,
        threshold=t,
        within_nearest=(s_self.distance, s_self.index),
        primary_nearest=(pair.nearest_distance, pair.nearest_index),
    )
    assert fused == direct
    assert [w["id"] for w in fused["with_primary"]] == ["s3", "s10"]
    assert [(w["id_a"], w["id_b"]) for w in fused["within"]] == [("s1", "s9")]


def test_no_duplicates_on_random_data():
    rng = np.random.default_rng(18)
    for seed in range(5):
        r = np.random.default_rng(seed)
        P, S = r.normal(size=(100, 8)), r.normal(size=(60, 8)) + rng.uniform(0, 1)
        found = stats.find_duplicates(
            S, P, ids=[str(i) for i in range(60)], primary_ids=[str(i) for i in range(100)]
        )
        assert found["within"] == [] and found["with_primary"] == []


# --------------------------------------------------------------------------- rank agreement


def test_rank_helpers_hand_vectors():
    assert stats.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert stats.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert stats.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert stats.spearman([1.0], [2.0]) is None
    assert stats.kendall_tau([1, 1, 1], [1, 2, 3]) is None
    assert stats.rank_correlations([1, 2, 3], [2, 4, 6]) == {"spearman": 1.0, "kendall_tau": 1.0}
    with pytest.raises(ValueError):
        stats.spearman([1, 2], [1, 2, 3])


def test_model_agreement():
    o = {"a": {"S1": 1.0, "S2": 2.0, "S3": 3.0}, "b": {"S1": 2.0, "S2": 1.0, "S3": 3.0}}
    i = {m: {s: [1.0, 2.0, 3.0] for s in o[m]} for m in o}
    got = stats.model_agreement(o, i)
    assert got["rank_differs"] == ["S1", "S2"]
    (pair,) = got["pairs"]
    assert pair["o_dist"]["kendall_tau"] == pytest.approx(1 / 3)
    assert pair["i_dist"]["S1"]["spearman"] == 1.0
    assert stats.model_agreement({}, {}) == {"pairs": [], "rank_differs": []}
