"""Energy distance, per-image novelty, the energy permutation test and p-value adjustment
(method.md §12), against brute-force float64 references and hand vectors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sstats

from tests.helpers import reference as R
from worker import metrics, stats


def _sets(seed: int, m: int = 40, n: int = 55, z: int = 6, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, z)) + shift, rng.normal(size=(n, z))


# --------------------------------------------------------------------------- energy distance


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_distance_equals_brute_force(seed):
    s, p = _sets(seed, shift=0.3 * seed)
    got = metrics.energy_distance(s, p)
    ref = R.energy_terms(s, p)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert got["coefficient"] == pytest.approx(ref["distance"] / (2 * ref["cross"]), rel=1e-12)


def test_energy_distance_tiled_route_agrees():
    """Sets large enough for the engine's tiles (float64) give the brute-force value."""
    s, p = _sets(3, m=700, n=900, z=8, shift=0.1)
    got = metrics.energy_distance(s, p, precision="float64")
    ref = R.energy_terms(s, p)
    assert got["distance"] == pytest.approx(ref["distance"], rel=1e-9)


def test_energy_hand_vector():
    """S = {0}, P = {0, 2} on a line: cross = 1, within S = 0, within P = 4 / 4 = 1, so
    E = 2 - 0 - 1 = 1 and the coefficient 1 / 2."""
    got = metrics.energy_distance(np.array([[0.0]]), np.array([[0.0], [2.0]]))
    assert got == {
        "distance": 1.0,
        "cross": 1.0,
        "within_secondary": 0.0,
        "within_primary": 1.0,
        "coefficient": 0.5,
    }


def test_energy_identical_sets_is_zero_and_symmetric():
    s, p = _sets(4)
    assert metrics.energy_distance(p, p)["distance"] == 0.0
    a, b = metrics.energy_distance(s, p), metrics.energy_distance(p, s)
    assert a["distance"] == pytest.approx(b["distance"], rel=1e-12)
    assert a["within_secondary"] == pytest.approx(b["within_primary"], rel=1e-12)


def test_energy_cross_is_o_dist_mean():
    s, p = _sets(5)
    i_dist = metrics.image_dataset_distances(s, p)
    assert metrics.energy_distance(s, p)["cross"] == pytest.approx(
        metrics.o_dist_mean(i_dist, len(p)), rel=1e-14
    )


def test_explanation_names_contraction_and_shift():
    rng = np.random.default_rng(6)
    p = rng.normal(size=(300, 5))
    contracted = metrics.energy_distance(0.4 * rng.normal(size=(300, 5)), p)
    text = metrics.energy_explanation(contracted)
    assert "less varied than P" in text and "shifted" not in text
    shifted = metrics.energy_distance(rng.normal(size=(300, 5)) + 2.0, p)
    text = metrics.energy_explanation(shifted)
    assert "S is shifted" in text and "less varied" not in text
    same = metrics.energy_explanation(metrics.energy_distance(p, p))
    assert "as varied as P and not shifted" in same


# --------------------------------------------------------------------------- novelty


@pytest.mark.parametrize("k", [1, 3])
def test_kth_nearest_against_brute_force(k):
    s, p = _sets(7)
    assert np.allclose(metrics.kth_nearest_distances(s, p, k), R.knn(s, p, k), rtol=1e-12)
    loo = metrics.kth_nearest_distances(p, p, k, exclude_self=True)
    assert np.allclose(loo, R.loo_knn(p, k), rtol=1e-12)


def test_novelty_hand_vector():
    """loo = [1, 2, 3, 4]; d = [0.5, 2, 5]: below = [0, 1, 4] -> novelty [0, .25, 1],
    p = (1 + [4, 3, 0]) / 5; q = 0.5 'higher' -> threshold 3, so only 5 is novel."""
    loo = np.array([4.0, 1.0, 3.0, 2.0])
    d = np.array([0.5, 2.0, 5.0])
    scores = metrics.novelty_scores(d, loo)
    assert scores["novelty"].tolist() == [0.0, 0.25, 1.0]
    assert scores["p_value"].tolist() == [1.0, 0.8, 0.2]
    summary = metrics.novelty_summary(d, loo, 0.5)
    assert summary["threshold"] == 3.0
    assert summary["novel"].tolist() == [False, False, True]
    assert summary["novel_count"] == 1 and summary["base_rate"] == 0.5
    assert summary["p_value"] == pytest.approx(1 - 0.5**3)  # P(X >= 1), X ~ B(3, 1/2)


def test_in_distribution_set_has_about_the_base_rate_novel():
    """Gaussian P and S from the same law: the novel fraction averages about 1 - q = 5%."""
    fractions = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        p, s = rng.normal(size=(400, 4)), rng.normal(size=(400, 4))
        d = metrics.kth_nearest_distances(s, p, 1)
        loo = metrics.kth_nearest_distances(p, p, 1, exclude_self=True)
        fractions.append(metrics.novelty_summary(d, loo, 0.95)["novel_fraction"])
    assert 0.025 <= np.mean(fractions) <= 0.075
    rng = np.random.default_rng(99)
    p, s = rng.normal(size=(400, 4)), rng.normal(size=(400, 4)) + 1.5
    d = metrics.kth_nearest_distances(s, p, 1)
    loo = metrics.kth_nearest_distances(p, p, 1, exclude_self=True)
    far = metrics.novelty_summary(d, loo, 0.95)
    assert far["novel_fraction"] > 0.3 and far["p_value"] < 1e-6


def test_novelty_bad_input_is_refused():
    with pytest.raises(ValueError, match="quantile"):
        metrics.novelty_threshold(np.ones(3), 1.0)
    with pytest.raises(ValueError, match="k"):
        metrics.kth_nearest_distances(np.ones((2, 2)), np.ones((2, 2)), 0)


# --------------------------------------------------------------------------- energy test


def test_energy_test_statistic_is_the_energy_distance():
    s, p = _sets(8)
    out = stats.energy_test(p, s, permutations=50, seed=0)
    assert out["statistic"] == pytest.approx(R.energy_terms(s, p)["distance"], rel=1e-12)
    assert out["n_x"] == len(p) and out["n_y"] == len(s) and out["permutations"] == 50


def test_energy_test_small_for_a_shift_and_deterministic():
    s, p = _sets(9, shift=0.8)
    a = stats.energy_test(p, s, permutations=199, seed=3)
    assert a["p_value"] == pytest.approx(1 / 200)  # the smallest attainable p
    assert a == stats.energy_test(p, s, permutations=199, seed=3)


def test_energy_test_p_uniform_under_the_null():
    """Identical distributions: p-values over 60 seeds do not depart from U(0, 1) (KS)."""
    ps = []
    for seed in range(60):
        s, p = _sets(1000 + seed, m=15, n=15, z=3)
        ps.append(stats.energy_test(p, s, permutations=99, seed=seed)["p_value"])
    assert sstats.kstest(ps, "uniform").pvalue > 0.01
    assert 0.3 < np.mean(ps) < 0.7


def test_energy_test_without_permutations():
    s, p = _sets(10)
    out = stats.energy_test(p, s, permutations=0, seed=0)
    assert out["p_value"] is None and out["statistic"] > 0


# --------------------------------------------------------------------------- adjustment


def test_adjust_p_values_hand_vectors():
    """p = [0.01, 0.04, 0.03, 0.2] (k = 4), sorted [0.01, 0.03, 0.04, 0.2]:
    Holm [0.04, 0.09, 0.09 (max with 0.08), 0.2]; BH [0.04, 0.0533, 0.0533, 0.2]."""
    p = [0.01, 0.04, 0.03, 0.2]
    holm = stats.adjust_p_values(p, "holm")
    assert holm == pytest.approx([0.04, 0.09, 0.09, 0.2])
    bh = stats.adjust_p_values(p, "bh")
    assert bh == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])


def test_adjust_p_values_skips_missing_and_checks_method():
    assert stats.adjust_p_values([None, 0.5, 0.1], "holm") == pytest.approx([None, 0.5, 0.2])
    assert stats.adjust_p_values([], "bh") == []
    with pytest.raises(ValueError, match="holm, bh"):
        stats.adjust_p_values([0.1], "bonferroni")


def test_adjust_p_values_against_scipy_bh():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=30) ** 2
    assert np.allclose(stats.adjust_p_values(list(p), "bh"), sstats.false_discovery_control(p))


def test_binomial_upper_tail_equals_scipy_binom_sf():
    """The novelty summary's binomial p-value (scipy.special, no scipy.stats import) equals
    scipy.stats.binom.sf(k - 1, n, p) for every k, including the ends."""
    from scipy.stats import binom

    from worker.metrics import binomial_upper_tail

    for n in (1, 7, 40, 500):
        for p in (0.0, 0.05, 0.5, 1.0):
            for k in range(-1, n + 2):
                want = float(binom.sf(k - 1, n, p))
                assert binomial_upper_tail(k, n, p) == pytest.approx(want, rel=1e-12, abs=1e-300)
