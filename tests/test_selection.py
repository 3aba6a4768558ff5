"""worker.selection: band, farthest, k-center and random subsets against hand vectors and a
plain numpy float64 greedy k-center (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import reference as R
from tests.helpers.reports import typed_report
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
    novel = np.zeros(15, dtype=bool)
    novel[[2, 5, 9]] = True
    kw = {"S_L": S, "P_L": P, "i_dist": i_dist, "band": (0.6, 1.0), "seed": 4, "novel": novel}
    assert selection.select("farthest", count=3, **kw) == selection.select_farthest(i_dist, 3)
    assert selection.select("band", count=3, **kw) == selection.select_band(
        i_dist, 3, (0.6, 1.0), 4
    )
    assert selection.select("kcenter", count=3, **kw) == R.kcenter(S, 3, P)
    got = selection.select("novel", count=3, **kw)
    assert got == [[2, 5, 9][j] for j in R.kcenter(S[[2, 5, 9]], 3, P)]
    for strategy in selection.STRATEGIES:
        assert sorted(selection.select(strategy, count=99, **kw)) == list(range(15))
        assert selection.select(strategy, count=0, **kw) == []
    with pytest.raises(ValueError, match="selection.strategy"):
        selection.select("nearest", count=1, **kw)


@pytest.mark.parametrize("strategy", selection.NESTED)
def test_nested_strategies_are_prefixes_of_larger_selections(strategy):
    """The job picks a nested strategy once at its largest count and slices: that must be
    what each count would pick alone (novel: both with more novel images than the count and
    with fewer, where k-center continues over the rest; with a pool and held images)."""
    rng = np.random.default_rng(4)
    for trial in range(12):
        m = int(rng.integers(8, 60))
        S, P = rng.normal(size=(m, 3)), rng.normal(size=(int(rng.integers(0, 30)), 3)) - 1
        novel = rng.random(m) < rng.choice([0.1, 0.5, 1.0])
        exclude, hold = rng.random(m) < 0.1, rng.random(m) < 0.1
        kw = dict(S_L=S, P_L=P, i_dist=rng.random(m), novel=novel, exclude=exclude, hold=hold)
        largest = selection.select(strategy, count=m, **kw)
        for count in (1, 2, 3, 7, m // 2):
            assert selection.select(strategy, count=count, **kw) == largest[:count], trial


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


# --------------------------------------------------------------------------- novel, exclusion


def test_novel_spreads_the_novel_images_then_fills():
    P = np.array([[0.0, 0.0], [1.0, 0.0]])
    # 0 and 1 are novel and close together, 2 novel and apart, 3 not novel (near P)
    S = np.array([[10.0, 0.0], [10.5, 0.0], [0.0, 8.0], [0.5, 0.1]])
    novel = np.array([True, True, True, False])
    # farthest novel from P: 0 (9 from [1,0]) vs 2 (8 from [0,0]) vs 1 (9.5) -> 1; then 2
    assert selection.select_novel(S, P, novel, 2) == [1, 2]
    # all three novel first (k-center order), then the non-novel one
    assert selection.select_novel(S, P, novel, 4) == [1, 2, 0, 3]
    # an excluded image is a centre: with 1 excluded, 0 lies 0.5 from it; 2 is picked first
    exclude = np.array([False, True, False, False])
    assert selection.select_novel(S, P, novel, 2, exclude) == [2, 0]


def test_novel_does_not_count_other_s_images_as_centres():
    P = np.array([[0.0, 0.0], [1.0, 0.0]])
    # 0 is the novel image farthest from P; 2 (not novel) lies next to it but is no centre
    S = np.array([[0.0, 12.0], [10.0, 0.0], [0.0, 11.8]])
    assert selection.select_novel(S, P, np.array([True, True, False]), 1) == [0]


def test_hold_is_neither_proposed_nor_a_centre():
    rng = np.random.default_rng(6)
    P, S = rng.normal(size=(20, 3)), rng.normal(size=(30, 3)) * 2
    i_dist = metrics.image_dataset_distances(S, P)
    hold = np.zeros(30, dtype=bool)
    hold[selection.held_out_split(i_dist, 0.3, seed=1)] = True
    cand = np.flatnonzero(~hold)
    assert selection.select_kcenter(S, P, 5, hold=hold) == cand[R.kcenter(S[cand], 5, P)].tolist()
    novel = np.ones(30, dtype=bool)
    for strategy in selection.STRATEGIES:
        got = selection.select(
            strategy, S_L=S, P_L=P, i_dist=i_dist, count=99, novel=novel, hold=hold
        )
        assert sorted(got) == cand.tolist()


def test_held_out_split_strata_by_i_dist():
    i_dist = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.0])
    # k = round(0.3 * 10) = 3 strata of the ascending order, sizes 4, 3, 3 (array_split):
    # I_dist 0-3, 4-6 and 7-9; one image drawn from each
    got = selection.held_out_split(i_dist, 0.3, seed=0)
    order = np.argsort(i_dist)
    strata = [set(order[:4].tolist()), set(order[4:7].tolist()), set(order[7:].tolist())]
    assert len(got) == 3 and all(len(set(got) & st) == 1 for st in strata)
    assert got == selection.held_out_split(i_dist, 0.3, seed=0)  # deterministic
    assert max(i_dist[got]) >= 7.0  # one of the farthest three
    draws = {tuple(selection.held_out_split(i_dist, 0.3, seed=s)) for s in range(20)}
    assert len(draws) > 1
    assert selection.held_out_split(i_dist, 0.0, seed=0) == []
    assert len(selection.held_out_split(i_dist[:2], 0.9, seed=0)) == 1  # one left to select
    with pytest.raises(ValueError, match="adaptation.held_out"):
        selection.held_out_split(i_dist, 1.0, seed=0)


def test_exclude_is_never_proposed_and_joins_the_pool():
    rng = np.random.default_rng(5)
    P, S = rng.normal(size=(30, 3)), rng.normal(size=(40, 3)) * 2
    i_dist = metrics.image_dataset_distances(S, P)
    exclude = np.zeros(40, dtype=bool)
    exclude[selection.select_farthest(i_dist, 5)] = True
    novel = np.ones(40, dtype=bool)
    for strategy in selection.STRATEGIES:
        got = selection.select(
            strategy, S_L=S, P_L=P, i_dist=i_dist, count=8, novel=novel, exclude=exclude
        )
        assert len(got) == 8 and not exclude[got].any()
        every = selection.select(
            strategy, S_L=S, P_L=P, i_dist=i_dist, count=99, novel=novel, exclude=exclude
        )
        assert sorted(every) == np.flatnonzero(~exclude).tolist()
    # k-center with the excluded images as centres equals the reference on P + excluded
    cand = np.flatnonzero(~exclude)
    ref = R.kcenter(S[cand], 6, np.vstack([P, S[exclude]]))
    assert selection.select_kcenter(S, P, 6, exclude) == cand[ref].tolist()
    assert selection.select_farthest(i_dist, 3, exclude) == selection.select_farthest(
        np.where(exclude, -np.inf, i_dist), 3
    )


def test_earlier_selections_and_masks():
    earlier = typed_report(
        {
            "secondaries": [
                {
                    "name": "S",
                    "images": [{"id": "a", "sha256": "h1"}, {"id": "b"}, {"id": "c"}],
                    "selections": [{"ids": ["a", "b"]}, {"ids": ["b"]}],
                }
            ]
        }
    )
    memory = selection.earlier_selections([earlier])
    assert memory.hashes == {"h1"} and memory.ids == {("S", "b")} and memory.runs == 1
    # by hash in any secondary (a renamed file keeps its hash), by id within the same name
    got = selection.earlier_mask("T", ["x", "b", "y"], ["h1", "h2", "h3"], memory)
    assert got.tolist() == [True, False, False]
    assert selection.earlier_mask("S", ["x", "b"], [], memory).tolist() == [False, True]
    assert selection.earlier_mask("S", ["x"], [], None).tolist() == [False]


def test_labelled_mask_ids_folders_and_prefixes(tmp_path):
    ids = ["a/1.png", "a/2.png", "b/1.png", "ab/3.png"]
    uris = [str(tmp_path / "S" / i) for i in ids]
    assert selection.labelled_mask(ids, uris, ["a"]).tolist() == [True, True, False, False]
    assert selection.labelled_mask(ids, uris, ["b/1.png"]).tolist() == [False, False, True, False]
    folder = str(tmp_path / "S" / "ab") + "/"
    assert selection.labelled_mask(ids, uris, [folder]).tolist() == [False, False, False, True]
    got = selection.labelled_mask(ids, uris, ["S/a"], base_dir=tmp_path)
    assert got.tolist() == [True, True, False, False]
    s3 = [f"s3://bucket/night/{i}" for i in ids]
    assert selection.labelled_mask(ids, s3, ["s3://bucket/night/b"]).tolist() == [
        False,
        False,
        True,
        False,
    ]
    assert not selection.labelled_mask(ids, uris, []).any()


# --------------------------------------------------------------------------- against random


def test_judge_value_hand_computation():
    r = np.array([1.0, 2.0, 3.0, 3.0, 4.0])
    # higher is better, value 3: worse 2 (1, 2), equal 2 -> 100 * (2 + 1) / 5 = 60
    # at least as good: 3, 3, 4 -> p = (1 + 3) / 6
    got = selection.judge_value(3.0, r, higher_is_better=True)
    assert got["percentile"] == pytest.approx(60.0)
    assert got["p_value"] == pytest.approx(4 / 6) and got["beats_random"] is False
    # lower is better, value 1.5: worse 4 (2, 3, 3, 4) -> 80; at least as good: 1 -> p = 2/6
    got = selection.judge_value(1.5, r, higher_is_better=False)
    assert got["percentile"] == pytest.approx(80.0) and got["p_value"] == pytest.approx(2 / 6)
    # better than all of 19: p = 1/20 = 0.05 -> beats random
    got = selection.judge_value(0.0, np.arange(1.0, 20.0), higher_is_better=False)
    assert got["percentile"] == 100.0 and got["p_value"] == pytest.approx(0.05)
    assert got["beats_random"] is True
    assert selection.judge_value(None, r, True)["beats_random"] is None


def test_covering_radii_against_brute_force():
    rng = np.random.default_rng(11)
    P, S = rng.normal(size=(25, 4)), rng.normal(size=(60, 4)) + 1
    pool = R.nearest(S, P)[0]
    subsets = selection.random_subsets(np.arange(60), 5, 30, seed=2)
    assert subsets.shape == (30, 5)
    assert all(len(set(row)) == 5 for row in subsets.tolist())
    rows = np.arange(0, 60, 3)
    got = selection.covering_radii(S, pool, subsets, rows, chunk_values=64)
    for b, row in enumerate(subsets):
        ref = R.coverage(S[rows], np.vstack([P, S[row]])).max()
        assert got[b] == pytest.approx(ref, rel=1e-12)
    # the same subsets with the same seed; the seed changes them
    assert (selection.random_subsets(np.arange(60), 5, 30, 2) == subsets).all()
    assert not (selection.random_subsets(np.arange(60), 5, 30, 3) == subsets).all()


@pytest.mark.parametrize("pool_kind", ["nearest", "empty", "zero", "ties"])
def test_covering_radii_visit_that_stops_early_is_exact(pool_kind):
    """Rows are visited farthest from the pool first and the visit stops early: every radius
    must still equal the brute-force max over all rows of min(pool, nearest subset member)."""
    rng = np.random.default_rng(5)
    for trial in range(25):
        m, d = int(rng.integers(2, 120)), int(rng.integers(1, 5))
        S = rng.normal(size=(m, d)) * 10.0 ** rng.integers(-3, 4)
        pool = {
            "nearest": R.nearest(S, rng.normal(size=(30, d)) * np.abs(S).max())[0],
            "empty": np.full(m, np.inf),
            "zero": np.zeros(m),
            "ties": np.round(rng.exponential(size=m), 1) * np.abs(S).mean(),
        }[pool_kind]
        k = int(rng.integers(1, min(m, 6) + 1))
        subsets = np.array(
            [rng.choice(m, k, replace=False) for _ in range(int(rng.integers(1, 20)))]
        )
        rows = np.sort(rng.choice(m, int(rng.integers(1, m + 1)), replace=False))
        got = selection.covering_radii(
            S, pool, subsets, rows, chunk_values=int(rng.integers(1, 500))
        )
        d2 = ((S[rows][:, None, :] - S[None, :, :]) ** 2).sum(axis=2)  # (rows, m) float64
        for b, row in enumerate(subsets):
            ref = np.sqrt(np.minimum(pool[rows] ** 2, d2[:, row].min(axis=1)).max())
            # abs: a zero distance from expanded squares is sqrt(eps) * scale, not 0
            assert got[b] == pytest.approx(ref, rel=1e-9, abs=1e-7 * np.abs(S).max()), trial


def _two_cluster_world(seed: int):
    """P: a big tight cluster at the origin and a small one at (10, 0). S: images on P's small
    cluster (large I_dist, not novel) and a spread of novel images near the big one (small
    I_dist): the band picks the former, novelty lives in the latter."""
    rng = np.random.default_rng(seed)
    P = np.vstack([rng.normal(0, 0.3, size=(90, 2)), rng.normal(0, 0.3, size=(10, 2)) + [10, 0]])
    familiar = rng.normal(0, 0.3, size=(20, 2)) + [10, 0]
    angles = rng.uniform(0, np.pi, size=20)
    novel_ring = np.c_[3 * np.cos(angles), 3 * np.sin(angles)] + rng.normal(0, 0.2, (20, 2))
    return P, np.vstack([familiar, novel_ring])


def _judged(strategy, P, S, count=7, B=200, seed=0):
    near_p = R.nearest(S, P)[0]
    loo = R.nearest_other(P)
    novelty = metrics.novelty_scores(near_p, loo)["novelty"]
    novel = metrics.novelty_summary(near_p, loo, 0.95)["novel"]
    i_dist = metrics.image_dataset_distances(S, P)
    idx = selection.select(
        strategy, S_L=S, P_L=P, i_dist=i_dist, count=count, novel=novel, seed=seed
    )
    subsets = selection.random_subsets(np.arange(len(S)), count, B, seed)
    judged = selection.judge(
        strategy,
        idx,
        S_L=S,
        novelty=novelty,
        novel=novel,
        pool_nearest=near_p,
        subsets=subsets,
    )
    return idx, judged, {j["aim"]: j for j in judged}


def test_band_fails_random_where_i_dist_is_not_novelty():
    P, S = _two_cluster_world(0)
    idx, judged, by_aim = _judged("band", P, S)
    assert set(idx) <= set(range(20))  # the familiar far cluster
    assert by_aim["novelty"]["decides"] and by_aim["novelty"]["beats_random"] is False
    assert by_aim["coverage"]["beats_random"] is False and not by_aim["coverage"]["decides"]
    assert selection.beats_random(judged) is False
    words = selection.verdict("band", 7, judged, 200)
    assert words.startswith("band 7: does not beat random on novelty")


def test_kcenter_and_novel_beat_random_on_their_aims():
    P, S = _two_cluster_world(0)
    _, judged, by_aim = _judged("kcenter", P, S)
    assert by_aim["coverage"]["beats_random"] is True and by_aim["coverage"]["decides"]
    assert selection.beats_random(judged) is True
    assert "kcenter 7: beats random on coverage of S" in selection.verdict(
        "kcenter", 7, judged, 200
    )
    idx, judged, by_aim = _judged("novel", P, S)
    assert set(idx) <= set(range(20, 40))
    assert by_aim["novelty"]["beats_random"] and by_aim["novel_coverage"]["beats_random"]
    assert selection.beats_random(judged) is True


def _shifted_world(seed: int, clustered: bool):
    """P ~ N(0, I_5); S: 60 images like P and 20 novel ones, either 4 new domains of 5 tight
    images each (clustered) or one diffuse blob shifted by 4."""
    rng = np.random.default_rng(100 + seed)
    P = rng.normal(size=(150, 5))
    if clustered:
        centres = rng.normal(size=(4, 5))
        centres = 5 * centres / np.linalg.norm(centres, axis=1, keepdims=True)
        novel = np.repeat(centres, 5, axis=0) + rng.normal(size=(20, 5)) * 0.3
    else:
        novel = rng.normal(size=(20, 5)) * 0.7 + [4, 0, 0, 0, 0]
    return P, np.vstack([rng.normal(size=(60, 5)), novel])


@pytest.mark.parametrize(
    ("clustered", "count", "least"), [(True, 3, 10), (True, 7, 10), (False, 3, 6), (False, 7, 10)]
)
def test_novel_beats_random_on_planted_worlds(clustered, count, least):
    """The default beats random on both of its aims in at least `least` of 10 planted worlds
    (measured over 20: new domains 20/20 at 3 and at 7; a diffuse blob 20/20 at 7 but 15/20
    at 3, where three picks barely shrink the blob's covering radius)."""
    wins = 0
    for seed in range(10):
        P, S = _shifted_world(seed, clustered)
        idx, judged, by_aim = _judged("novel", P, S, count=count, seed=seed)
        assert by_aim["novelty"]["beats_random"]  # novelty: always
        wins += bool(selection.beats_random(judged))
    assert wins >= least


def test_one_pick_cannot_beat_random_on_novelty_among_many_novel_images():
    # a quarter of S is novel (novelty about 1): one novel pick ties with a quarter of the
    # random single images, so it is not significantly better and the verdict says so
    P, S = _shifted_world(0, clustered=True)
    _, judged, by_aim = _judged("novel", P, S, count=1)
    assert by_aim["novelty"]["beats_random"] is False
    assert "does not beat random on novelty" in selection.verdict("novel", 1, judged, 200)


def test_every_candidate_is_not_judged():
    P, S = _two_cluster_world(1)
    idx, judged, by_aim = _judged("kcenter", P, S, count=40)
    assert len(idx) == 40 and by_aim["coverage"]["beats_random"] is None
    assert selection.beats_random(judged) is None
    assert "not judged" in selection.verdict("kcenter", 40, judged, 200)


def test_nothing_left_to_propose_is_not_judged():
    P, S = _two_cluster_world(2)
    exclude = np.ones(len(S), dtype=bool)  # every image selected earlier or labelled
    novel = np.ones(len(S), dtype=bool)
    i_dist = metrics.image_dataset_distances(S, P)
    for strategy in selection.STRATEGIES:
        idx = selection.select(
            strategy, S_L=S, P_L=P, i_dist=i_dist, count=7, novel=novel, exclude=exclude
        )
        assert idx == []
        subsets = selection.random_subsets(selection.candidates(len(S), exclude), 7, 50, 0)
        assert subsets.shape == (50, 0)
        judged = selection.judge(
            strategy,
            idx,
            S_L=S,
            novelty=np.zeros(len(S)),
            novel=novel,
            pool_nearest=np.zeros(len(S)),
            subsets=subsets,
        )
        assert all(j["value"] is None and j["beats_random"] is None for j in judged)
        assert all(np.isfinite(j["random"]).all() for j in judged)
        assert selection.beats_random(judged) is None
        assert selection.verdict(strategy, 0, judged, 50).endswith("nothing to judge.")


def test_report_percentile_equals_a_hand_computation(tmp_path):
    """A run's kcenter coverage judgement, recomputed by hand with scipy from its ids: the
    pool is P plus the labelled embeddings (selection.labelled), the B random subsets are
    numpy.random.default_rng([seed, count]) draws, percentile and p as method.md §3.5."""
    from scipy.spatial.distance import cdist

    from worker.job import parse_job
    from worker.pipeline import run

    rng = np.random.default_rng(5)
    P = rng.normal(size=(30, 3))
    S = np.vstack([rng.normal(size=(15, 3)), rng.normal(size=(10, 3)) + 4])
    L = rng.normal(size=(4, 3)) + 4
    for name, x in (("P", P), ("S", S), ("L", L)):
        np.save(tmp_path / f"{name}.npy", x)
    B, count = 60, 3
    job = {
        "model": {"name": "precomputed"},
        "pca": {"dims": None, "sweep": []},  # centred raw features: distances as given
        "compute": {"precision": "float64"},
        "datasets": {
            "primary": {"name": "P", "embeddings": "P.npy"},
            "secondary": [{"name": "S", "embeddings": "S.npy"}],
        },
        "metrics": {"statistics": False, "duplicates": False, "null_repeats": 2},
        "selection": {"strategy": "kcenter", "counts": [count], "random_subsets": B,
                      "labelled": ["L.npy"]},
    }  # fmt: skip
    sel = run(parse_job(job, tmp_path)).report.secondaries[0].selections[0]
    got = next(j for j in sel.against_random if j.aim == "coverage")
    pool = np.vstack([P, L])

    def radius(rows) -> float:
        return float(cdist(S, np.vstack([pool, S[list(rows)]])).min(axis=1).max())

    value = radius(int(i) for i in sel.ids)
    draws = np.random.default_rng([0, count])
    randoms = np.array([radius(draws.choice(len(S), size=count, replace=False)) for _ in range(B)])
    tol = 1e-9
    worse = int(np.sum(randoms > value + tol))  # random covers worse: larger radius
    equal = int(np.sum(np.abs(randoms - value) <= tol))
    assert got.value == pytest.approx(value, abs=tol) and got.subsets == B
    assert got.percentile == pytest.approx(100 * (worse + equal / 2) / B)
    assert got.p_value == pytest.approx((1 + B - worse) / (B + 1))
    assert got.random.mean == pytest.approx(randoms.mean(), abs=tol)
    # the novelty aim (not kcenter's): mean share of P's leave-one-out NN distances below
    # each chosen image's NN distance to P, where random subsets land on both sides
    pp = cdist(P, P)
    np.fill_diagonal(pp, np.inf)
    loo, near = pp.min(axis=1), cdist(S, P).min(axis=1)
    novelty = (loo[None, :] < near[:, None]).mean(axis=1)
    value = novelty[[int(i) for i in sel.ids]].mean()
    draws = np.random.default_rng([0, count])
    randoms = np.array([novelty[draws.choice(len(S), size=count, replace=False)].mean()
                        for _ in range(B)])  # fmt: skip
    worse, equal = int(np.sum(randoms < value)), int(np.sum(randoms == value))
    assert 0 < worse < B
    got = next(j for j in sel.against_random if j.aim == "novelty")
    assert not got.decides and got.value == pytest.approx(value)
    assert got.percentile == pytest.approx(100 * (worse + equal / 2) / B)
    assert got.p_value == pytest.approx((1 + B - worse) / (B + 1))
