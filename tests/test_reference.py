"""tests/reference.py itself, against closed forms and scikit-learn, so that the other tests'
reference is not just consistent with itself."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.neighbors import NearestNeighbors

from tests.helpers import reference as R


def test_hand_vectors_are_their_closed_forms():
    r2, r10, r18 = np.sqrt(2.0), np.sqrt(10.0), np.sqrt(18.0)
    np.testing.assert_allclose(R.i_dist(R.S_HAND, R.P_HAND), [r2 + 2 * r2, r18 + 2 * r10])
    np.testing.assert_allclose(R.I_DIST_HAND, [3 * r2, r18 + 2 * r10], atol=1e-6)
    assert R.O_DIST_HAND == pytest.approx((3 * r2 + r18 + 2 * r10) / 2, abs=1e-6)
    assert R.o_dist(R.S_HAND, R.P_HAND) == pytest.approx(R.O_DIST_HAND, abs=1e-6)
    assert R.o_dist_mean(R.S_HAND, R.P_HAND) == pytest.approx(R.O_DIST_HAND / 3, abs=1e-6)
    np.testing.assert_array_equal(R.nearest_other(R.X_HAND), R.DIVERSITY_VALUES_HAND)
    v = R.DIVERSITY_VALUES_HAND
    assert R.DIVERSITY_HAND == pytest.approx({"mean": v.mean(), "min": 1.0, "max": v.max()})


def test_ods_hand_vector_counts():
    # at t = 0.12 (prob > 30.6 / 255): image 1 TP 3 FP 2, image 2 TP 2 FP 0 -> P 5/7, R 1
    tp = fp = fn = 0
    for prob, mask in zip(R.ODS_PROBS_HAND, R.ODS_MASKS_HAND, strict=True):
        pred, gt = prob / 255.0 > 0.12, mask > 0
        tp, fp, fn = tp + (pred & gt).sum(), fp + (pred & ~gt).sum(), fn + (~pred & gt).sum()
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert (p, r) == pytest.approx((R.ODS_HAND["precision"], R.ODS_HAND["recall"]))
    assert 2 * p * r / (p + r) == pytest.approx(R.ODS_HAND["ods_f"])


def test_distances_against_sklearn():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(17, 4)), rng.normal(size=(11, 4)) + 1
    np.testing.assert_allclose(R.pairwise(a, b), euclidean_distances(a, b), rtol=1e-12)
    np.testing.assert_allclose(R.i_dist(a, b), euclidean_distances(a, b).sum(1), rtol=1e-12)
    ref = NearestNeighbors(n_neighbors=2).fit(a).kneighbors(a)[0][:, 1]
    np.testing.assert_allclose(R.nearest_other(a), ref, rtol=1e-12)
    ref = NearestNeighbors(n_neighbors=1).fit(b).kneighbors(a)[0][:, 0]
    np.testing.assert_allclose(R.coverage(a, b), ref, rtol=1e-12)
    assert R.scaled({"x": 1.0, "y": 3.0}) == {"x": 0.25, "y": 0.75}


def test_joint_pca_is_a_rotation_at_full_rank():
    rng = np.random.default_rng(1)
    p, s = rng.normal(size=(9, 3)) + 5, rng.normal(size=(6, 3))
    pl, sl = R.joint_pca([p, s], 3)
    assert pl.shape == (9, 3) and sl.shape == (6, 3)
    np.testing.assert_allclose(R.pairwise(sl, pl), R.pairwise(s, p), atol=1e-10)
    np.testing.assert_allclose(np.vstack([pl, sl]).mean(0), 0.0, atol=1e-12)
    assert R.pair_o_dist(p, s, None) == pytest.approx(R.o_dist(s, p), rel=1e-12)


def test_kcenter_hand_vector():
    x = np.array([[0.0], [1.0], [5.0], [9.0], [10.0]])
    # centre at 0: farthest is 10 (index 4), then 5 (index 2: 5 from both 0 and 10)
    assert R.kcenter(x, 2, np.array([[0.0]])) == [4, 2]
    # no centre: the first pick is farthest from the mean 5 (index 0 on the tie with 4)
    assert R.kcenter(x, 2) == [0, 4]
