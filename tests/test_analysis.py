"""The measure stage (worker.analysis) on hand vectors: typed results equal the method's
definitions computed independently in numpy float64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.jobs import embeddings_job
from worker.analysis import analyse_model
from worker.embeddings import EmbeddedSet
from worker.job import parse_job
from worker.results import SecondaryResult


def _job(tmp_path: Path, **over) -> object:
    data = embeddings_job(
        "S",
        "T",
        pca={"dims": 2, "sweep": [1, 2]},
        selection={"strategy": ["farthest"], "counts": [1]},
        metrics={"statistics": False, "duplicates": False},
    )
    data.update(over)
    return parse_job(data, tmp_path)


def _set(name: str, x) -> EmbeddedSet:
    x = np.asarray(x, dtype=np.float64)
    return EmbeddedSet(name, [f"{name}{k}" for k in range(len(x))], x)


P = [[0, 0], [2, 0], [0, 2]]
S = [[1, 1], [3, 3]]  # design hand vector: I_dist = [4.242641, 10.567196]
T = [[0, 1], [1, 0], [5, 5]]


def _i_dist(s, p) -> np.ndarray:
    s, p = np.asarray(s, float), np.asarray(p, float)
    return np.sqrt(((s[:, None, :] - p[None, :, :]) ** 2).sum(-1)).sum(1)


@pytest.fixture()
def analysis(tmp_path):
    return analyse_model(_set("P", P), [_set("S", S), _set("T", T)], _job(tmp_path))


def test_hand_vector_i_dist_and_o_dist(analysis):
    s: SecondaryResult = analysis.secondaries[0]
    got = np.array([im.i_dist for im in s.images])
    np.testing.assert_allclose(got, [4.242641, 10.567196], atol=1e-6)  # z = rank: a rotation
    assert s.o_dist == pytest.approx(7.404918, abs=1e-6)
    assert s.o_dist_mean == pytest.approx(7.404918 / 3, abs=1e-6)
    assert [im.i_dist_scaled for im in s.images] == [0.0, 1.0]
    assert [im.i_dist_mean for im in s.images] == pytest.approx((got / 3).tolist(), rel=1e-12)


def test_scaled_o_dist_and_splits(analysis):
    o = {"S": _i_dist(S, P).mean(), "T": _i_dist(T, P).mean()}
    total = sum(o.values())
    for sec in analysis.secondaries:
        assert sec.o_dist == pytest.approx(o[sec.name], rel=1e-12)
        assert sec.o_dist_scaled == pytest.approx(o[sec.name] / total, rel=1e-12)
        assert analysis.o_dist_scaled[sec.name] == sec.o_dist_scaled
    t = analysis.secondaries[1]
    d = np.sort(_i_dist(T, P))
    halves = np.array_split(d, 2)
    assert [h.count for h in t.splits.halves] == [2, 1]
    assert t.splits.halves[0].mean == pytest.approx(halves[0].mean(), rel=1e-12)
    assert t.splits.halves[0].std == pytest.approx(halves[0].std(), rel=1e-12)
    assert t.i_dist.p90 == pytest.approx(np.percentile(d, 90), rel=1e-12)


def test_selection_sweep_and_diversity(analysis):
    t = analysis.secondaries[1]
    (sel,) = t.selections
    assert sel.strategy == "farthest" and sel.ids == ["T2"]  # [5, 5] is farthest from P
    assert analysis.selections["T"][("farthest", 1)] == [2]
    # diversity: nearest other sample of T, by index
    x = np.asarray(T, float)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert t.diversity.mean == pytest.approx(d.min(1).mean(), rel=1e-12)
    # coverage of T by P: distance of each T sample to its nearest P sample
    p = np.asarray(P, float)
    nearest = np.sqrt(((x[:, None] - p[None]) ** 2).sum(-1)).min(1)
    assert t.coverage_by_primary.max == pytest.approx(nearest.max(), rel=1e-12)
    # the sweep at z = 2 (the full rank) equals the main table
    row = next(r for r in analysis.pca_sweep if r.dims == 2)
    for name, value in row.o_dist_scaled.items():
        assert value == pytest.approx(analysis.o_dist_scaled[name], rel=1e-9)
    assert analysis.pca.dims == 2 and analysis.primary.count == 3
    assert analysis.scatter.names == ["P", "S", "T"]


def test_optional_blocks_only_when_asked(tmp_path):
    job = _job(tmp_path, metrics={"statistics": True, "duplicates": True, "null_repeats": 3,
                                  "mmd_permutations": 9})  # fmt: skip
    a = analyse_model(_set("P", P * 3), [_set("S", S * 2), _set("T", T)], job)
    assert a.secondaries[0].statistics is not None and a.secondaries[0].duplicates is not None
    # S * 2 repeats each row: exact zero-distance pairs within S are near duplicates
    within = a.secondaries[0].duplicates.within
    assert {(w.id_a, w.id_b) for w in within} == {("S0", "S2"), ("S1", "S3")}
    plain = analyse_model(_set("P", P), [_set("S", S), _set("T", T)], _job(tmp_path))
    dumped = plain.secondaries[0].model_dump()
    assert "statistics" not in dumped and "duplicates" not in dumped


def test_energy_and_novelty_blocks_on_the_hand_vector(analysis):
    """z = 2 = rank, so the pair space is a rotation: energy terms and nearest distances are
    those of the raw hand vectors (method.md §12)."""
    from tests.helpers import reference as R

    s: SecondaryResult = analysis.secondaries[0]
    ref = R.energy_terms(np.array(S, float), np.array(P, float))
    for key, value in ref.items():
        assert getattr(s.energy, key) == pytest.approx(value, abs=1e-12), key
    assert s.energy.cross == pytest.approx(s.o_dist_mean, rel=1e-12)
    assert s.energy.permutations == 500 and s.energy.p_value is not None
    assert "Energy distance" in s.energy.explanation
    # P's leave-one-out nearest distances: [2, 2, 2] (each corner's nearest) -> threshold 2
    assert s.novelty.threshold == pytest.approx(2.0) and s.novelty.base_rate == pytest.approx(0.05)
    nn = R.knn(np.array(S, float), np.array(P, float), 1)
    assert [im.nn_distance for im in s.images] == pytest.approx(nn)
    assert [im.novel for im in s.images] == [False, True]  # sqrt(2) <= 2 < sqrt(10)
    assert [im.novelty for im in s.images] == [0.0, 1.0]
    assert [im.novelty_p_value for im in s.images] == [1.0, 0.25]
    # two secondaries: Holm over both
    raw = [x.energy.p_value for x in analysis.secondaries]
    adj = [x.energy.p_value_adjusted for x in analysis.secondaries]
    assert min(adj) == pytest.approx(min(1.0, 2 * min(raw)))
    assert s.verdict is not None and s.verdict.label in ("same", "shifted", "far")


@pytest.mark.parametrize("metric", ["energy_distance", "o_dist_mean", "mmd", "fid", "kid"])
def test_ranking_metric_is_selectable(tmp_path, metric):
    """ranking.metric orders the secondaries by that metric, closest first, and names it."""
    from worker.analysis import rank_secondaries

    job = _job(
        tmp_path,
        metrics={"statistics": True, "duplicates": False, "mmd_permutations": 10},
        ranking={"metric": metric},
    )
    analysis = analyse_model(_set("P", P), [_set("S", S), _set("T", T)], job)
    read = {
        "energy_distance": lambda s: s.energy.distance,
        "o_dist_mean": lambda s: s.o_dist_mean,
        "mmd": lambda s: s.statistics.mmd.statistic,
        "fid": lambda s: s.statistics.fid,
        "kid": lambda s: s.statistics.kid.mean,
    }[metric]
    values = {s.name: read(s) for s in analysis.secondaries}
    ranking = rank_secondaries(analysis.secondaries, job)
    assert ranking.metric == ranking.by == metric and ranking.values == values
    assert ranking.order == sorted(values, key=values.get)
    assert ranking.closest == ranking.order[:1] and ranking.farthest == ranking.order[::-1][:1]


def test_ranking_by_a_statistic_needs_statistics(tmp_path):
    from worker.errors import JobError

    with pytest.raises(JobError, match="ranking.metric.*metrics.statistics"):
        _job(tmp_path, ranking={"metric": "fid"})  # _job switches statistics off


def test_verdict_says_when_the_energy_test_cannot_reach_alpha(tmp_path):
    """Two secondaries, 20 permutations: Holm's smallest adjusted p is 2 / 21 > 0.05, and the
    verdict's reason says how many permutations would do."""
    job = _job(tmp_path, metrics={"statistics": False, "duplicates": False,
                                  "energy_permutations": 20})  # fmt: skip
    analysis = analyse_model(_set("P", P), [_set("S", S), _set("T", T)], job)
    reason = analysis.secondaries[0].verdict.reason
    assert "cannot reach 0.05 over 2 secondaries with 20 permutations" in reason
    assert "at least 40" in reason
    job = _job(tmp_path, metrics={"statistics": False, "duplicates": False,
                                  "energy_permutations": 100})  # fmt: skip
    analysis = analyse_model(_set("P", P), [_set("S", S), _set("T", T)], job)
    assert "cannot reach" not in analysis.secondaries[0].verdict.reason
