"""worker.selection: band, farthest, k-center and random subsets against hand vectors and a
plain numpy float64 greedy k-center (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests import reference as R
from worker import metrics, selection

I_DIST = np.array([0.0, 10.0, 6.0, 9.0, 2.0, 8.0])  # scaled = I_DIST / 10


# --------------------------------------------------------------------------- farthest


def test_farthest_order_and_ties():
    assert selection.select_farthest(I_DIST, 2) == [1, 3]
    assert selection.select_farthest(np.array([5.0, 9.0, 9.0, 1.0, 9.0]), 2) == [1, 2]
    assert selection.select_farthest(I_DIST, 100) == [1, 3, 5, 2, 4, 0]
    assert selection.select_farthest(I_DIST, 0) == []


# --------------------------------------------------------------------------- band


def test_band_inside_inclusive_and_deterministic():
    # scaled: [0, 1, 0.6, 0.9, 0.2, 0.8]; band [0.6, 1] holds 1, 2, 3, 5 (0.6 inclusive)
    inside = {1, 2, 3, 5}
    for seed in range(20):
        got = selection.select_band(I_DIST, 3, (0.6, 1.0), seed)
        assert len(got) == 3 and set(got) <= inside
        assert got == sorted(got, key=lambda j: -I_DIST[j])  # farthest first
        assert got == selection.select_band(I_DIST, 3, (0.6, 1.0), seed)
    assert sorted(selection.select_band(I_DIST, 4, (0.6, 1.0), 0)) == [1, 2, 3, 5]


def test_band_is_uniform_within_the_band():
    rng = np.random.default_rng(0)
    i_dist = rng.uniform(size=200)
    scaled = metrics.min_max_scale(i_dist)
    inside = np.flatnonzero(scaled >= 0.6)
    hits = np.zeros(len(i_dist))
    for seed in range(300):
        got = selection.select_band(i_dist, 5, (0.6, 1.0), seed)
        assert set(got) <= set(inside.tolist())
        hits[got] += 1
    expected = 300 * 5 / len(inside)
    # each in-band image drawn about equally often (loose bounds), none outside
    assert hits[inside].min() > 0.2 * expected and hits[inside].max() < 2.5 * expected
    assert hits.sum() == hits[inside].sum()
    assert len({tuple(selection.select_band(i_dist, 5, (0.6, 1.0), s)) for s in range(10)}) > 1


def test_band_fills_with_next_farthest_below():
    # band [0.95, 1] holds only image 1; the fill is 3 (0.9) then 5 (0.8)
    assert selection.select_band(I_DIST, 3, (0.95, 1.0), seed=0) == [1, 3, 5]
    few = selection.select_band(I_DIST, 6, (0.95, 1.0), seed=0)
    assert few == [1, 3, 5, 2, 4, 0]
    assert selection.select_band(I_DIST, 10, (0.6, 1.0), seed=0) == [1, 3, 5, 2, 4, 0]


def test_band_fill_for_a_middle_band_takes_the_closest_outside():
    i_dist = np.array([0.0, 8.0, 4.0, 6.0, 1.0, 7.0])  # scaled: 0, 1, .5, .75, .125, .875
    # band [0.25, 0.375] is empty; gaps: .25, .625, .125, .375, .125, .5
    # equal gaps (images 2 and 4) go to the larger I_dist first
    assert selection.select_band(i_dist, 1, (0.25, 0.375), seed=0) == [2]
    assert selection.select_band(i_dist, 2, (0.25, 0.375), seed=0) == [2, 4]
    assert selection.select_band(i_dist, 3, (0.25, 0.375), seed=0) == [2, 4, 0]


def test_band_invalid():
    with pytest.raises(ValueError, match="selection.band"):
        selection.select_band(I_DIST, 1, (0.9, 0.1), seed=0)
    with pytest.raises(ValueError, match="selection.counts"):
        selection.select_band(I_DIST, -1, (0.6, 1.0), seed=0)


# --------------------------------------------------------------------------- k-center


def test_kcenter_hand_vector():
    S = np.array([[0.0], [1.0], [10.0], [11.0]])
    P = np.array([[0.5]])
    # farthest from P is 11 (index 3); then 0 and 1 are 0.5 from P, 10 is 1 from 11 -> 10
    assert selection.select_kcenter(S, P, 2) == [3, 2]
    assert selection.select_kcenter(S, P, 10) == [3, 2, 0, 1]


def test_kcenter_against_numpy_reference():
    rng = np.random.default_rng(1)
    P, S = rng.normal(size=(60, 5)), rng.normal(size=(80, 5)) * 1.5 + 0.3
    for k in (1, 7, 25):
        got = selection.select_kcenter(S, P, k, memory_budget_mb=0.05)
        assert got == R.kcenter(S, k, P)
    # the covering radius of S by P + selection never grows with more picks
    radii = []
    for k in (0, 5, 10, 20):
        chosen = selection.select_kcenter(S, P, k)
        radii.append(metrics.coverage(S, np.vstack([P, S[chosen]]))["max"])
    assert radii == sorted(radii, reverse=True) and radii[-1] < radii[0]


def test_kcenter_skips_points_already_covered_by_p():
    rng = np.random.default_rng(2)
    P = rng.normal(size=(30, 3))
    S = np.vstack([P[:10] + 1e-9, [[50.0, 0.0, 0.0]]])  # copies of P and one far image
    assert selection.select_kcenter(S, P, 1) == [10]


# --------------------------------------------------------------------------- dispatch, random


def test_select_dispatch():
    rng = np.random.default_rng(3)
    P, S = rng.normal(size=(20, 3)), rng.normal(size=(15, 3)) + 1
    i_dist = metrics.image_dataset_distances(S, P)
    kw = {"S_L": S, "P_L": P, "i_dist": i_dist, "band": (0.6, 1.0), "seed": 4}
    assert selection.select("farthest", count=3, **kw) == selection.select_farthest(i_dist, 3)
    assert selection.select("band", count=3, **kw) == selection.select_band(
        i_dist, 3, (0.6, 1.0), 4
    )
    assert selection.select("kcenter", count=3, **kw) == R.kcenter(S, 3, P)
    for strategy in selection.STRATEGIES:
        assert sorted(selection.select(strategy, count=99, **kw)) == list(range(15))
        assert selection.select(strategy, count=0, **kw) == []
    with pytest.raises(ValueError, match="selection.strategy"):
        selection.select("nearest", count=1, **kw)


def test_random_subset():
    assert selection.random_subset(10, 3, 0) == selection.random_subset(10, 3, 0)
    got = selection.random_subset(10, 3, 0)
    assert got == sorted(np.random.default_rng(0).choice(10, size=3, replace=False).tolist())
    assert selection.random_subset(5, 9, 1) == [0, 1, 2, 3, 4]
    assert selection.random_subset(0, 3, 1) == []
    counts = np.zeros(20)
    for seed in range(400):
        counts[selection.random_subset(20, 5, seed)] += 1
    # expected 100 per index; binomial sd ~ 8.7
    assert counts.min() > 60 and counts.max() < 140
