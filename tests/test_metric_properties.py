"""Every metric through the one metric tester (tests/helpers/metric_tester.py): its reference,
row-order invariance, and symmetry / zero on identical inputs where they hold."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import reference as R
from tests.helpers.metric_tester import MetricCase, check_metric
from worker import metrics


def _o_dist(s: np.ndarray, p: np.ndarray) -> float:
    return metrics.dataset_distance(metrics.image_dataset_distances(s, p))


def _o_dist_mean(s: np.ndarray, p: np.ndarray) -> float:
    return metrics.o_dist_mean(metrics.image_dataset_distances(s, p), len(p))


CASES = [
    MetricCase("I_dist", metrics.image_dataset_distances, R.i_dist, output="rows"),
    MetricCase("O_dist", _o_dist, R.o_dist),
    MetricCase("o_dist_mean", _o_dist_mean, R.o_dist_mean, symmetric=True),
    MetricCase(
        "diversity",
        lambda x: metrics.diversity(x)["values"],
        R.nearest_other,
        arity=1,
        output="rows",
    ),
    MetricCase(
        "coverage",
        lambda s, p: metrics.coverage(s, p)["values"],
        R.coverage,
        output="rows",
        zero_on_identical=True,
    ),
    MetricCase(
        "energy_distance",
        lambda s, p: metrics.energy_distance(s, p)["distance"],
        lambda s, p: R.energy_terms(s, p)["distance"],
        symmetric=True,
        zero_on_identical=True,
        atol=1e-9,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_metric(case):
    check_metric(case)


def test_the_tester_catches_a_wrong_metric():
    """A metric off its reference, one that depends on row order, and a symmetry it does not
    have each fail with the check's name."""
    wrong = MetricCase("wrong", lambda s, p: R.o_dist(s, p) * 1.001, R.o_dist)
    with pytest.raises(AssertionError, match="wrong: reference"):
        check_metric(wrong)
    ordered = MetricCase("ordered", lambda s, p: float(s[0, 0]), lambda s, p: float(s[0, 0]))
    with pytest.raises(AssertionError, match="ordered: row order"):
        check_metric(ordered)
    o_dist = MetricCase("O_dist", _o_dist, R.o_dist, symmetric=True)  # n E|s-p|: not symmetric
    with pytest.raises(AssertionError, match="O_dist: symmetry"):
        check_metric(o_dist)
    i_dist_zero = MetricCase(
        "I_dist", metrics.image_dataset_distances, R.i_dist, output="rows", zero_on_identical=True
    )
    with pytest.raises(AssertionError, match="I_dist: zero on identical"):
        check_metric(i_dist_zero)
