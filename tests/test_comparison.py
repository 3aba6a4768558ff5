"""worker.comparison against independent references: numpy argsort, scikit-learn's ROC AUC,
an exact enumeration of label permutations, scipy cdist and scikit-learn PCA."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from worker import comparison
from worker.results import Ranking


def test_ranking_matches_numpy_argsort_and_ends():
    rng = np.random.default_rng(0)
    values = rng.gamma(3.0, 1.0, size=23)
    names = [f"S{i:02d}" for i in range(23)]
    got = comparison.ranking(dict(zip(names, values, strict=True)), top_k=5)
    order = [names[i] for i in np.argsort(values, kind="stable")]
    assert got["order"] == order
    assert got["closest"] == order[:5]
    assert got["farthest"] == order[::-1][:5]
    ranking = Ranking(by="o_dist_mean", top_k=5, detail="summary", sections=[], **got)
    assert ranking.highlighted == order[:5] + order[-5:]
    few = comparison.ranking(dict(zip(names[:8], values[:8], strict=True)), top_k=5)
    assert not set(few["closest"]) & set(few["farthest"])  # 8 < 2k: the ends split the names
    assert (
        Ranking(by="o_dist_mean", top_k=5, detail="full", sections=[], **few).highlighted
        == (few["order"])
    )  # <= 2k: every name


def test_ranking_ties_keep_job_order_and_missing_values_last():
    got = comparison.ranking({"a": 2.0, "b": None, "c": 1.0, "d": 2.0}, top_k=2)
    assert got["order"] == ["c", "a", "d", "b"]
    assert got["closest"] == ["c", "a"]
    assert got["farthest"] == ["d"]  # 3 names: the ends split them, "a" is not at both
    with pytest.raises(ValueError, match="top_k"):
        comparison.ranking({"a": 1.0}, top_k=0)


def test_separation_auc_hand_vector_and_sklearn():
    # pairs (a, b): 1<2 yes, 1<3 yes, 2<2 tie, 2<3 yes, 4<2 no, 4<3 no -> (3 + 0.5) / 6
    assert comparison.separation_auc([1, 2, 4], [2, 3]) == pytest.approx(3.5 / 6, abs=1e-15)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, size=17).astype(float)  # integers: many ties
    b = rng.integers(2, 9, size=11).astype(float)
    labels = np.r_[np.zeros(len(a)), np.ones(len(b))]  # b positive: larger value = positive
    expected = roc_auc_score(labels, np.r_[a, b])
    assert comparison.separation_auc(a, b) == pytest.approx(expected, abs=1e-12)
    assert comparison.separation_auc([], b) is None


def test_permutation_p_value_matches_exact_enumeration():
    a, b = np.array([0.1, 0.4, 0.2]), np.array([0.5, 0.3, 0.9])
    auc = comparison.separation_auc(a, b)
    pooled = np.r_[a, b]
    exact = []
    for idx in itertools.combinations(range(6), 3):
        rest = [i for i in range(6) if i not in idx]
        exact.append(comparison.separation_auc(pooled[list(idx)], pooled[rest]))
    p_exact = np.mean([abs(x - 0.5) >= abs(auc - 0.5) - 1e-12 for x in exact])
    got_auc, p = comparison.separation_test(a, b, permutations=4000, seed=3)
    assert got_auc == pytest.approx(8 / 9)
    assert p == pytest.approx(p_exact, abs=0.03)
    # seeded: same seed, same p; no permutations: no p
    assert comparison.separation_test(a, b, permutations=4000, seed=3)[1] == p
    assert comparison.separation_test(a, b, permutations=0, seed=3) == (got_auc, None)


def test_groups_planted_closer_are_separated():
    rng = np.random.default_rng(2)
    values, groups = {}, {}
    for i in range(6):
        values[f"near{i}"] = 1.0 + 0.1 * rng.random()
        groups[f"near{i}"] = "near"
    for i in range(6):
        values[f"far{i}"] = 2.0 + 0.1 * rng.random()
        groups[f"far{i}"] = "far"
    for i in range(6):
        values[f"mix{i}"] = rng.choice([1.0, 2.0]) + 0.1 * rng.random()
        groups[f"mix{i}"] = "mixed"
    pairs = comparison.group_separations(values, groups, permutations=999, seed=0)
    by = {(p["group_a"], p["group_b"]): p for p in pairs}
    assert list(by) == [("near", "far"), ("near", "mixed"), ("far", "mixed")]
    assert by[("near", "far")]["auc"] == 1.0
    # exact two-sided p of a perfect split of 6 + 6: 2 / C(12, 6) = 0.00216; (1 + hits) / 1000
    assert by[("near", "far")]["p_value"] < 0.01
    assert 0.0 < by[("far", "mixed")]["auc"] < 0.5
    summary = comparison.group_summaries(values, groups)
    near = np.array([values[f"near{i}"] for i in range(6)])
    assert summary["near"]["members"] == [f"near{i}" for i in range(6)]
    assert summary["near"]["summary"]["mean"] == pytest.approx(near.mean(), abs=1e-14)
    assert summary["near"]["summary"]["std"] == pytest.approx(near.std(), abs=1e-14)


def _blocks(seed=4):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(20, 6)),
        rng.normal(size=(15, 6)) + 1.0,
        rng.normal(size=(12, 6)) * 2.0,
        rng.normal(size=(18, 6)) + 4.0,
    ]


def test_matrix_symmetric_and_raw_distances_when_pca_keeps_every_dimension():
    blocks = _blocks()
    for dims in (None, 6):  # 6 >= rank: PCA is a rotation, distances are the raw ones
        m = comparison.dataset_matrix(blocks, dims=dims, precision="float64")
        assert np.array_equal(m, m.T)  # mirrored, not recomputed
        for i, a in enumerate(blocks):
            for j, b in enumerate(blocks):
                assert m[i, j] == pytest.approx(cdist(a, b).mean(), rel=1e-10)
        # the diagonal: a set against itself, the n zero self-pairs included
        assert m[0, 0] == pytest.approx(cdist(blocks[0], blocks[0]).sum() / 20**2, rel=1e-10)


def test_matrix_pair_pca_and_shared_pca_match_sklearn():
    blocks = _blocks()
    m = comparison.dataset_matrix(blocks, dims=2)
    a, b = blocks[0], blocks[3]
    y = PCA(n_components=2, svd_solver="full").fit_transform(np.vstack([a, b]))
    assert m[0, 3] == pytest.approx(cdist(y[:20], y[20:]).mean(), rel=1e-8)
    y = PCA(n_components=2, svd_solver="full").fit_transform(blocks[2])
    assert m[2, 2] == pytest.approx(cdist(y, y).mean(), rel=1e-8)
    shared = comparison.dataset_matrix(blocks, dims=2, shared=True)
    y = PCA(n_components=2, svd_solver="full").fit_transform(np.vstack(blocks))
    cuts = np.cumsum([0] + [len(b) for b in blocks])
    parts = [y[cuts[i] : cuts[i + 1]] for i in range(len(blocks))]
    assert np.array_equal(shared, shared.T)
    assert shared[1, 3] == pytest.approx(cdist(parts[1], parts[3]).mean(), rel=1e-8)


def test_cluster_order_and_nearest_other():
    # two planted clusters {0, 2} and {1, 3}; 4 close to 1
    m = np.array(
        [
            [1.0, 9.0, 2.0, 9.5, 9.0],
            [9.0, 1.0, 9.2, 2.0, 1.5],
            [2.0, 9.2, 1.0, 9.1, 9.3],
            [9.5, 2.0, 9.1, 1.0, 2.2],
            [9.0, 1.5, 9.3, 2.2, 1.0],
        ]
    )
    order = comparison.cluster_order(m)
    assert sorted(order) == list(range(5))
    pos = {k: order.index(k) for k in range(5)}
    assert abs(pos[0] - pos[2]) == 1  # a cluster stays together
    assert {order[0], order[1]} == {0, 2} or {order[-1], order[-2]} == {0, 2}
    names = ["a", "b", "c", "d", "e"]
    assert comparison.nearest_other(m, names) == {"a": "c", "b": "e", "c": "a", "d": "b", "e": "b"}
    assert comparison.nearest_other(np.array([[1.0]]), ["a"]) == {"a": None}
    assert comparison.cluster_order(np.array([[1.0]])) == [0]
    order2, tree = comparison.cluster_tree(m)
    assert order2 == order and len(tree) == 4 and all(len(row) == 4 for row in tree)
    assert {int(tree[0][0]), int(tree[0][1])} == {1, 4}  # the closest pair merges first
    assert tree[0][2] == pytest.approx(1.5) and tree[-1][3] == 5  # height; the root holds all
    assert comparison.cluster_tree(np.ones((2, 2))) == ([0, 1], None)


def test_matrix_figure_draws_the_dendrogram_of_the_report(tmp_path):
    """plot_matrix draws matrix.linkage above the heatmap when its leaves are the heatmap's
    order, and leaves it out (heatmap only) when they are not."""
    from matplotlib.figure import Figure

    from tests.helpers.sample_report import make_report
    from worker.report import distance_figures
    from worker.results import DatasetMatrix, Report

    m = np.array([[0, 4, 1, 4], [4, 0, 4, 1], [1, 4, 0, 4], [4, 1, 4, 0]], dtype=float)
    order, tree = comparison.cluster_tree(m)
    names = ["a", "b", "c", "d"]
    block = DatasetMatrix(
        names=names, o_dist_mean=m.tolist(), pca="pair", dims=None,
        order=[names[i] for i in order], nearest=comparison.nearest_other(m, names),
        energy=m.tolist(), ordered_by="energy", linkage=tree,
    )  # fmt: skip
    report = Report.model_validate(make_report()).model_copy(update={"matrix": block})
    axes_made = []
    real = Figure.add_axes

    def spy(self, *a, **k):
        axes_made.append(a[0] if a else k)
        return real(self, *a, **k)

    Figure.add_axes = spy
    try:
        assert distance_figures.plot_matrix(report, tmp_path / "m.png").exists()
        with_tree = len(axes_made)
        axes_made.clear()
        shuffled = block.model_copy(update={"order": ["a", "b", "c", "d"]})
        if [names[i] for i in order] == shuffled.order:
            shuffled = block.model_copy(update={"order": ["b", "a", "c", "d"]})
        other = report.model_copy(update={"matrix": shuffled})
        assert distance_figures.plot_matrix(other, tmp_path / "n.png").exists()
        without_tree = len(axes_made)
    finally:
        Figure.add_axes = real
    assert with_tree == without_tree + 1  # the dendrogram's axes


def test_group_separation_does_not_depend_on_listing_order():
    """Values of two groups listed either way: the same separation and p-value; auc flips."""
    rng = np.random.default_rng(2)
    values = {f"a{i}": 1.0 + rng.random() for i in range(5)}
    values.update({f"b{i}": 1.6 + rng.random() for i in range(5)})
    ab = {n: n[0] for n in values}
    ba_values = dict(reversed(list(values.items())))
    one = comparison.group_separations(values, ab, permutations=300, seed=1)[0]
    ba = {n: n[0] for n in ba_values}
    two = comparison.group_separations(ba_values, ba, permutations=300, seed=1)[0]
    assert (one["group_a"], two["group_a"]) == ("a", "b")
    assert one["separation"] == two["separation"] == max(one["auc"], 1 - one["auc"])
    assert one["auc"] == pytest.approx(1 - two["auc"])
    assert one["p_value"] == two["p_value"]


def test_each_pair_of_groups_has_its_own_stream():
    a = comparison.pair_rng(0, "x", "y").random(4)
    assert np.array_equal(a, comparison.pair_rng(0, "y", "x").random(4))
    assert not np.array_equal(a, comparison.pair_rng(0, "x", "z").random(4))
    assert not np.array_equal(a, comparison.pair_rng(1, "x", "y").random(4))


def test_matrix_separation_hand_vector_and_order():
    """Four sets, groups g = [A, A, B, B]: within entries (0,1) = 1 and (2,3) = 2, between
    entries 3, 4, 5, 6 -> every within below every between: separation 1. Swapping which
    group comes first (relabelling, reordering the sets) gives the same value and p."""
    m = np.array(
        [[0, 1, 3, 4], [1, 0, 5, 6], [3, 5, 0, 2], [4, 6, 2, 0]], dtype=float
    )  # fmt: skip
    one = comparison.matrix_separations(m, ["A", "A", "B", "B"], permutations=200, seed=0)
    assert one[0]["separation"] == 1.0 and (one[0]["group_a"], one[0]["group_b"]) == ("A", "B")
    # 4 sets, 2 + 2: 3 distinct labellings, one of them the observed -> p about 1/3
    assert 0.2 < one[0]["p_value"] < 0.5
    perm = [2, 3, 0, 1]
    two = comparison.matrix_separations(
        m[np.ix_(perm, perm)], ["B", "B", "A", "A"], permutations=200, seed=0
    )
    assert (two[0]["group_a"], two[0]["group_b"]) == ("B", "A")
    assert two[0]["separation"] == one[0]["separation"] and two[0]["p_value"] == one[0]["p_value"]
    # one within entry overlapping: (0,1) = 3.5 > between 3 -> 7 of 8 pairs ordered
    m2 = m.copy()
    m2[0, 1] = m2[1, 0] = 3.5
    got = comparison.matrix_separations(m2, ["A", "A", "B", "B"], permutations=0, seed=0)[0]
    assert got["separation"] == pytest.approx(7 / 8) and got["p_value"] is None


def test_energy_matrix_zero_diagonal_symmetric_and_nearest_itself():
    """Energy form of the matrix: zero diagonal, symmetric, every row's smallest entry on the
    diagonal (each set nearest itself), and two planted groups separated."""
    rng = np.random.default_rng(8)
    blocks = [rng.normal(size=(25, 5)) + (0.0 if k < 3 else 3.0) for k in range(6)]
    both = comparison.dataset_matrices(blocks, dims=None)
    e = both["energy"]
    assert np.array_equal(e, e.T) and np.all(np.diag(e) == 0.0)
    assert all(int(np.argmin(row)) == i for i, row in enumerate(e))
    ref = np.array(
        [
            [2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean() for b in blocks]
            for a in blocks
        ]
    )
    np.testing.assert_allclose(e, ref, rtol=1e-10, atol=1e-12)
    sep = comparison.matrix_separations(e, list("aaabbb"), permutations=100, seed=0)[0]
    assert sep["separation"] == 1.0 and sep["p_value"] < 0.2  # 1 of 10 partitions of 3 + 3


def _luminance(rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour (components in 0..1)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_matrix_figure_numbers_are_readable_and_groups_are_a_bar(tmp_path):
    """Every number of the heatmap keeps a WCAG contrast of at least 3 against its cell (white
    on cividis yellow had 1.1), and the bar above the columns gives each dataset its group's
    colour, one colour per group, in the heatmap's order."""
    from matplotlib.axes import Axes
    from matplotlib.colors import to_rgb

    from tests.helpers.sample_report import make_report
    from worker.report import distance_figures
    from worker.results import DatasetMatrix, Groups, GroupSummary, Report

    rng = np.random.default_rng(4)
    pts = rng.normal(size=(6, 3)) * [1, 3, 9]
    m = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    order, tree = comparison.cluster_tree(m)
    names = ["a", "b", "c", "d", "e", "f"]
    block = DatasetMatrix(
        names=names, o_dist_mean=m.tolist(), pca="pair", dims=None,
        order=[names[i] for i in order], nearest=comparison.nearest_other(m, names),
        energy=m.tolist(), ordered_by="energy", linkage=tree,
    )  # fmt: skip
    member = {"a": "g1", "b": "g2", "c": "g1", "d": "g2", "e": "g1", "f": "g2"}
    groups = Groups.model_construct(
        groups=[
            GroupSummary.model_construct(name=g, members=[n for n in names if member[n] == g])
            for g in ("g1", "g2")
        ]
    )
    report = Report.model_validate(make_report()).model_copy(
        update={"matrix": block, "groups": groups}
    )
    texts, images = [], []
    real_text, real_imshow = Axes.text, Axes.imshow

    def text(self, x, y, s, *a, **k):
        texts.append((x, y, s, k.get("color")))
        return real_text(self, x, y, s, *a, **k)

    def imshow(self, data, *a, **k):
        images.append((np.asarray(data), k))
        return real_imshow(self, data, *a, **k)

    Axes.text, Axes.imshow = text, imshow
    try:
        assert distance_figures.plot_matrix(report, tmp_path / "m.png").exists()
    finally:
        Axes.text, Axes.imshow = real_text, real_imshow
    (values, heat), (bar, _) = images[0], images[1]
    cmap = heat["cmap"]
    span = heat["vmax"] - heat["vmin"]
    numbers = [t for t in texts if t[3] in ("black", "white")]
    assert len(numbers) == len(names) ** 2
    for x, y, s, colour in numbers:
        cell = _luminance(cmap((values[y, x] - heat["vmin"]) / span))
        ink = _luminance(to_rgb(colour))
        ratio = (max(cell, ink) + 0.05) / (min(cell, ink) + 0.05)
        assert ratio >= 3.0, (s, colour, ratio)
    ordered = [names[i] for i in order]
    bar_colour = {n: tuple(bar[0, j]) for j, n in enumerate(ordered)}
    assert bar.shape[:2] == (1, len(names))
    for n in names:
        same = [o for o in names if member[o] == member[n]]
        assert all(bar_colour[o] == bar_colour[n] for o in same)
    assert bar_colour["a"] != bar_colour["b"]
