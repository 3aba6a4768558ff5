"""Metrics, selection and statistics against hand vectors and float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.pairwise import euclidean_distances

from worker import metrics, selection, stats


def test_design_hand_vector_i_dist_o_dist():
    P = np.array([[0, 0], [2, 0], [0, 2]], float)
    S = np.array([[1, 1], [3, 3]], float)
    i_dist = metrics.image_dataset_distances(S, P)
    np.testing.assert_allclose(i_dist, [4.242641, 10.567196], atol=1e-6)
    assert metrics.dataset_distance(i_dist) == pytest.approx(7.404918, abs=1e-6)


def test_design_hand_vector_diversity_and_duplicates():
    X = np.array([[0, 0], [1, 0], [0, 2], [4, 0], [4, 1], [10, 10]], float)
    d = metrics.diversity(X)
    assert d["mean"] == pytest.approx(2.802776, abs=1e-6)
    assert d["min"] == 1.0 and d["max"] == pytest.approx(10.816654, abs=1e-6)
    dup = metrics.diversity(np.vstack([X, X[:1]]))
    assert dup["min"] == 0.0
    assert metrics.diversity(X[:1])["mean"] is None


def test_coverage_and_scaling_against_sklearn():
    rng = np.random.default_rng(1)
    S, sel = rng.normal(size=(40, 5)), rng.normal(size=(6, 5))
    ref = euclidean_distances(S, sel).min(1)
    c = metrics.coverage(S, sel)
    assert c["mean"] == pytest.approx(ref.mean(), rel=1e-12)
    assert c["max"] == pytest.approx(ref.max(), rel=1e-12)
    x = np.array([3.0, 1.0, 2.0])
    np.testing.assert_allclose(metrics.min_max_scale(x), [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(metrics.min_max_scale(np.ones(3)), np.zeros(3))
    assert metrics.scaled_dataset_distances({"a": 1.0, "b": 3.0}) == {"a": 0.25, "b": 0.75}


def test_sorted_splits_hand_vector():
    parts = metrics.sorted_splits(np.array([5.0, 1.0, 3.0, 2.0, 4.0]), 2, scores=np.arange(5.0))
    assert [p["count"] for p in parts] == [3, 2]
    assert parts[0]["mean"] == pytest.approx(2.0) and parts[1]["mean"] == pytest.approx(4.5)
    assert parts[0]["std"] == pytest.approx(np.std([1, 2, 3]))
    assert parts[0]["score_mean"] == pytest.approx(np.mean([1, 3, 2]))


def test_selection_strategies():
    i_dist = np.array([0.0, 10.0, 6.0, 9.0, 2.0, 8.0])
    assert selection.select_farthest(i_dist, 2) == [1, 3]
    band = selection.select_band(i_dist, 3, (0.6, 1.0), seed=0)
    assert sorted(band) == [1, 3, 5] or set(band) <= {1, 2, 3, 5}
    assert all(i_dist[i] / 10 >= 0.6 for i in band)
    assert selection.select_band(i_dist, 3, (0.6, 1.0), 0) == selection.select_band(
        i_dist, 3, (0.6, 1.0), 0
    )
    few = selection.select_band(i_dist, 6, (0.95, 1.0), seed=0)
    assert few[0] == 1 and sorted(few) == list(range(6))
    S = np.array([[0.0], [1.0], [10.0], [11.0]])
    P = np.array([[0.5]])
    assert selection.select_kcenter(S, P, 2) == [3, 1] or selection.select_kcenter(S, P, 2)[0] == 3
    assert selection.random_subset(10, 3, 0) == selection.random_subset(10, 3, 0)


def _mmd_brute(X, Y, sigma):
    k = lambda a, b: np.exp(-euclidean_distances(a, b, squared=True) / (2 * sigma**2))  # noqa: E731
    n, m = len(X), len(Y)
    kxx, kyy = k(X, X), k(Y, Y)
    return (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * k(X, Y).mean()
    )


def test_mmd_against_brute_force_and_pvalues():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(30, 3)), rng.normal(size=(25, 3)) + 0.2
    assert stats.mmd_unbiased(X, Y, 1.3) == pytest.approx(_mmd_brute(X, Y, 1.3), rel=1e-10)
    shifted = stats.mmd_test(X, rng.normal(size=(25, 3)) + 3.0, permutations=200, seed=0)
    assert shifted["p_value"] == pytest.approx(1 / 201)
    pvals = [
        stats.mmd_test(rng.normal(size=(20, 2)), rng.normal(size=(20, 2)), 100, seed=s)["p_value"]
        for s in range(40)
    ]
    assert 0.3 < np.mean(pvals) < 0.7
    assert 0.02 < np.mean(np.array(pvals) < 0.2) < 0.45


def test_fid_diagonal_closed_form():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20000, 3)) * [1.0, 2.0, 0.5] + [0, 1, 2]
    Y = rng.normal(size=(20000, 3)) * [2.0, 1.0, 0.5] + [1, 1, 0]
    sx, sy = X.std(0, ddof=1), Y.std(0, ddof=1)
    mu = X.mean(0) - Y.mean(0)
    # closed form with the sample (almost diagonal) covariances
    closed = mu @ mu + (sx**2 + sy**2 - 2 * sx * sy).sum()
    assert stats.fid(X, Y) == pytest.approx(closed, rel=2e-2)
    D = np.diag([1.0, 4.0])
    Xd = np.random.default_rng(4).multivariate_normal([0, 0], D, 5)
    assert stats.fid(Xd, Xd) == pytest.approx(0.0, abs=1e-8)


def test_kid_against_brute_force():
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(15, 4)), rng.normal(size=(15, 4)) + 1
    got = stats.kid(X, Y, seed=0, subsets=1, subset_size=15)
    k = lambda a, b: (a @ b.T / 4 + 1) ** 3  # noqa: E731
    n = 15
    ref = (
        (k(X, X).sum() - np.trace(k(X, X))) / (n * (n - 1))
        + (k(Y, Y).sum() - np.trace(k(Y, Y))) / (n * (n - 1))
        - 2 * k(X, Y).mean()
    )
    assert got["mean"] == pytest.approx(ref, rel=1e-10)


def test_null_calibration_and_ratio():
    rng = np.random.default_rng(6)
    P = rng.normal(size=(40, 3))
    null = stats.null_o_dist_means(P, repeats=5, seed=0)
    assert len(null) == 5 and np.all(null > 0)
    order = np.random.default_rng(0).permutation(40)
    a, b = P[order[:20]], P[order[20:]]
    assert null[0] == pytest.approx(euclidean_distances(a, b).mean(), rel=1e-12)
    assert stats.o_dist_ratio(2 * null.mean(), null) == pytest.approx(2.0)
    assert stats.o_dist_percentile(null.max() + 1, null) == 100.0


def test_duplicates_found_exactly():
    rng = np.random.default_rng(7)
    P, S = rng.normal(size=(50, 8)), rng.normal(size=(30, 8))
    S[4] = P[10]  # planted exact duplicate of P
    S[7] = S[2] + 1e-6  # planted near duplicate inside S
    found = stats.find_duplicates(
        S, P, ids=[f"s{i}" for i in range(30)], primary_ids=[f"p{i}" for i in range(50)]
    )
    assert [(w["id_a"], w["id_b"]) for w in found["within"]] == [("s2", "s7")]
    assert [(w["id"], w["primary_id"]) for w in found["with_primary"]] == [("s4", "p10")]
    clean = stats.find_duplicates(
        rng.normal(size=(30, 8)),
        P,
        ids=list("abcdefghijklmnopqrstuvwxyz0123"),
        primary_ids=[str(i) for i in range(50)],
    )
    assert clean["within"] == [] and clean["with_primary"] == []
