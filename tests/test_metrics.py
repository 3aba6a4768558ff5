"""worker.metrics against hand vectors, numpy float64 brute force and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.neighbors import NearestNeighbors

from tests.helpers import reference as R
from worker import metrics

P_HAND, S_HAND, X_HAND = R.P_HAND, R.S_HAND, R.X_HAND


# --------------------------------------------------------------------------- I_dist, O_dist


def test_design_hand_vector_raw():
    i_dist = metrics.image_dataset_distances(S_HAND, P_HAND)
    np.testing.assert_allclose(i_dist, R.I_DIST_HAND, atol=1e-6)
    assert i_dist.dtype == np.float64 and i_dist.shape == (2,)
    assert metrics.dataset_distance(i_dist) == pytest.approx(R.O_DIST_HAND, abs=1e-6)


def test_design_hand_vector_through_joint_pca_z2():
    # z = 2 on 2-D data is a rotation of the centred stack: distances are the raw ones
    p_l, s_l = R.joint_pca([P_HAND, S_HAND], 2)
    i_dist = metrics.image_dataset_distances(s_l, p_l)
    np.testing.assert_allclose(i_dist, R.I_DIST_HAND, atol=1e-6)
    assert metrics.dataset_distance(i_dist) == pytest.approx(R.O_DIST_HAND, abs=1e-6)


@pytest.mark.parametrize("precision,rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_i_dist_against_brute_force(precision, rtol):
    rng = np.random.default_rng(0)
    P, S = rng.normal(size=(53, 7)), rng.normal(size=(37, 7)) + 0.5
    ref = euclidean_distances(S, P).sum(axis=1)
    got = metrics.image_dataset_distances(S, P, memory_budget_mb=0.01, precision=precision)
    np.testing.assert_allclose(got, ref, rtol=rtol)
    assert metrics.dataset_distance(got) == pytest.approx(ref.mean(), rel=rtol)


def test_size_free_distances():
    rng = np.random.default_rng(1)
    P, S = rng.normal(size=(40, 4)), rng.normal(size=(25, 4))
    D = euclidean_distances(S, P)
    i_dist = metrics.image_dataset_distances(S, P)
    np.testing.assert_allclose(metrics.mean_distance_per_image(i_dist, 40), D.mean(1), rtol=1e-12)
    assert metrics.o_dist_mean(i_dist, 40) == pytest.approx(D.mean(), rel=1e-12)
    # size-free: doubling P with copies of itself doubles I_dist but not the mean
    i2 = metrics.image_dataset_distances(S, np.vstack([P, P]))
    assert metrics.o_dist_mean(i2, 80) == pytest.approx(metrics.o_dist_mean(i_dist, 40))
    with pytest.raises(ValueError):
        metrics.mean_distance_per_image(i_dist, 0)
    with pytest.raises(ValueError):
        metrics.dataset_distance(np.zeros(0))


def test_scaled_dataset_distances():
    got = metrics.scaled_dataset_distances({"a": 1.0, "b": 3.0})
    assert got == {"a": 0.25, "b": 0.75}
    three = metrics.scaled_dataset_distances({"x": 2.0, "y": 5.0, "z": 3.0})
    assert sum(three.values()) == pytest.approx(1.0)
    assert three["y"] == pytest.approx(0.5)
    assert metrics.scaled_dataset_distances({"a": 0.0, "b": 0.0}) == {"a": 0.5, "b": 0.5}
    assert metrics.scaled_dataset_distances({}) == {}


def test_min_max_scale():
    np.testing.assert_allclose(metrics.min_max_scale(np.array([3.0, 1.0, 2.0])), [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(metrics.min_max_scale(np.ones(3)), np.zeros(3))
    assert metrics.min_max_scale(np.zeros(0)).shape == (0,)
    x = np.random.default_rng(2).normal(size=50) * 1e3
    y = metrics.min_max_scale(x)
    assert y.max() == 1.0 and y.min() == 0.0
    np.testing.assert_allclose(y, (x - x.min()) / (x.max() - x.min()), rtol=1e-14)


# --------------------------------------------------------------------------- summaries


def test_summary_stats_against_numpy():
    x = np.random.default_rng(3).exponential(size=101)
    s = metrics.summary_stats(x)
    assert s == pytest.approx(
        {
            "mean": x.mean(),
            "std": x.std(ddof=0),
            "min": x.min(),
            "max": x.max(),
            "p50": np.median(x),
            "p90": np.quantile(x, 0.9, method="linear"),
        },
        rel=1e-14,
    )
    assert metrics.summary_stats([1.0, 2.0, 3.0, 4.0])["p90"] == pytest.approx(3.7)
    assert all(v is None for v in metrics.summary_stats(np.zeros(0)).values())


def test_sorted_splits_hand_vector():
    i_dist = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    halves = metrics.sorted_splits(i_dist, 2, scores=np.arange(5.0))
    assert [p["count"] for p in halves] == [3, 2]
    assert halves[0]["mean"] == pytest.approx(2.0) and halves[1]["mean"] == pytest.approx(4.5)
    assert halves[0]["std"] == pytest.approx(np.std([1, 2, 3]))
    assert halves[1]["std"] == pytest.approx(0.5)
    # scores follow their images: the three closest are images 1, 3, 2 -> scores 1, 3, 2
    assert halves[0]["score_mean"] == pytest.approx(2.0)
    assert halves[0]["score_std"] == pytest.approx(np.std([1, 3, 2]))
    assert halves[1]["score_mean"] == pytest.approx(2.0)  # images 4, 0
    thirds = metrics.sorted_splits(i_dist, 3)
    assert [p["count"] for p in thirds] == [2, 2, 1]
    assert [p["mean"] for p in thirds] == pytest.approx([1.5, 3.5, 5.0])
    assert "score_mean" not in thirds[0]


def test_sorted_splits_edges():
    parts = metrics.sorted_splits(np.array([2.0, 1.0]), 3)
    assert [p["count"] for p in parts] == [1, 1, 0]
    assert parts[2]["mean"] is None and parts[2]["std"] is None
    with pytest.raises(ValueError):
        metrics.sorted_splits(np.array([1.0]), 0)
    with pytest.raises(ValueError):
        metrics.sorted_splits(np.array([1.0, 2.0]), 2, scores=np.array([1.0]))


# --------------------------------------------------------------------------- diversity, coverage


def test_diversity_design_hand_vector():
    d = metrics.diversity(X_HAND)
    assert d["mean"] == pytest.approx(R.DIVERSITY_HAND["mean"], abs=1e-6)
    assert d["min"] == R.DIVERSITY_HAND["min"]
    assert d["max"] == pytest.approx(R.DIVERSITY_HAND["max"], abs=1e-6)
    np.testing.assert_allclose(d["values"], R.DIVERSITY_VALUES_HAND, rtol=1e-12)
    np.testing.assert_allclose(d["values"], R.nearest_other(X_HAND), rtol=1e-12)


def test_diversity_exact_duplicates_are_zero():
    dup = metrics.diversity(np.vstack([X_HAND, X_HAND[:1]]))
    assert dup["min"] == 0.0
    assert dup["values"][0] == 0.0 and dup["values"][-1] == 0.0
    same = metrics.diversity(np.tile([[3.0, -1.0, 2.5]], (5, 1)))
    assert same["mean"] == 0.0 and same["max"] == 0.0


def test_diversity_small_sets():
    one = metrics.diversity(X_HAND[:1])
    assert one["mean"] is None and one["min"] is None and one["max"] is None
    assert len(one["values"]) == 0
    assert metrics.diversity(np.zeros((0, 3)))["mean"] is None
    two = metrics.diversity(X_HAND[:2])
    assert two["mean"] == 1.0 and list(two["values"]) == [1.0, 1.0]


def test_diversity_against_sklearn():
    X = np.random.default_rng(4).normal(size=(120, 6))
    ref = NearestNeighbors(n_neighbors=2).fit(X).kneighbors(X)[0][:, 1]
    d = metrics.diversity(X, memory_budget_mb=0.01)
    np.testing.assert_allclose(d["values"], ref, rtol=1e-12)
    assert d["mean"] == pytest.approx(ref.mean(), rel=1e-12)


def test_coverage_against_sklearn():
    rng = np.random.default_rng(5)
    S, sel = rng.normal(size=(40, 5)), rng.normal(size=(6, 5))
    ref = NearestNeighbors(n_neighbors=1).fit(sel).kneighbors(S)[0][:, 0]
    c = metrics.coverage(S, sel)
    np.testing.assert_allclose(c["values"], ref, rtol=1e-12)
    assert c["mean"] == pytest.approx(ref.mean(), rel=1e-12)
    assert c["max"] == pytest.approx(euclidean_distances(S, sel).min(1).max(), rel=1e-12)
    itself = metrics.coverage(S, S)
    assert itself["max"] == 0.0
    nothing = metrics.coverage(S, np.zeros((0, 5)))
    assert nothing["mean"] is None and nothing["max"] is None


def test_histogram_against_numpy():
    v = np.random.default_rng(6).normal(size=200)
    h = metrics.histogram(v, 7)
    counts, edges = np.histogram(v, bins=7)
    assert h["counts"] == counts.tolist() and h["edges"] == pytest.approx(edges.tolist())
    assert sum(h["counts"]) == 200
    assert metrics.histogram(np.zeros(0), 5) == {"edges": [], "counts": []}
    assert sum(metrics.histogram(np.array([1.0, np.inf, 2.0]), 2)["counts"]) == 2
    with pytest.raises(ValueError):
        metrics.histogram(v, 0)


def test_from_nearest_summaries_equal_the_direct_calls():
    from worker import engine

    rng = np.random.default_rng(21)
    X, out = rng.normal(size=(90, 5)), rng.normal(size=(12, 5))
    got = metrics.diversity_from_nearest(engine.self_pass(X).distance)
    ref = metrics.diversity(X)
    keys = ("mean", "min", "max")
    assert {k: got[k] for k in keys} == {k: ref[k] for k in keys}
    nn = NearestNeighbors(n_neighbors=1).fit(out).kneighbors(X)[0][:, 0]
    cov = metrics.coverage_from_nearest(engine.pair_pass(X, out, nearest=True).nearest_distance, 12)
    assert cov["mean"] == pytest.approx(nn.mean(), rel=1e-12)
    assert cov["max"] == pytest.approx(nn.max(), rel=1e-12)
    assert metrics.coverage_from_nearest(np.full(3, np.inf), 0)["mean"] is None
    assert metrics.diversity_from_nearest(np.zeros(1))["mean"] is None


@pytest.mark.parametrize("k", [0, 1, 4])
def test_pool_diversity_against_sklearn(k):
    """diversity of P u Q from P's own nearest-other distances: no P x P pass."""
    from worker import engine

    rng = np.random.default_rng(22)
    P, Q = rng.normal(size=(70, 4)), rng.normal(size=(k, 4))
    if k:
        Q[0] = P[3]  # an exact duplicate between the two
    pool = np.vstack([P, Q])
    ref = NearestNeighbors(n_neighbors=2).fit(pool).kneighbors(pool)[0][:, 1]
    got = metrics.pool_diversity(P, Q, engine.self_pass(P).distance)
    np.testing.assert_allclose(got["values"], ref, rtol=1e-12, atol=1e-12)
    assert got["mean"] == pytest.approx(ref.mean(), rel=1e-12)
    if k:
        assert got["min"] == 0.0
    with pytest.raises(ValueError, match="p_nearest_other"):
        metrics.pool_diversity(P, Q, np.zeros(3))
