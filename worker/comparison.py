"""Comparisons across many datasets (docs/method.md §11-12): pure functions on arrays.

- Ranking: secondaries ordered by the job's ranking metric (default the energy distance,
  method.md §12.1), ascending: closest first.
- Group separation of values (paper appendix E): for groups A and B of secondaries,
  `AUC(A, B) = (1 / (|A| |B|)) sum_a sum_b ([v_a < v_b] + 1/2 [v_a = v_b])`, 1 when every A set
  is closer than every B set, 0.5 when the groups are mixed; `separation = max(AUC, 1 - AUC)`
  does not depend on which group is listed first; a permutation p-value over the group labels
  (two-sided: |AUC_perm - 1/2| >= |AUC - 1/2|), pooled in name order, each pair of groups with
  its own seeded stream.
- Group separation from a matrix: the AUC of the within-group entries (both sets in A, or both
  in B) against the between-group entries (one in each): 1 when every within entry is smaller
  than every between entry; symmetric in A and B by construction.
- Dataset matrix: `M[i, j] = o_dist_mean(X_i, X_j)` with one joint PCA per unordered pair (or
  one shared PCA over every set); symmetric by construction (each pair computed once and
  mirrored); the diagonal is a set against itself, self-pairs (distance 0) included. Its energy
  form `E[i, j]` is each pair's energy distance in the same space (zero diagonal).

No I/O, no printing. Distances go through worker.metrics / worker.engine (`**engine_kw`).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from worker import engine, metrics
from worker.interrupt import stoppable
from worker.pca import joint_pca

# --------------------------------------------------------------------------- ranking


def rank_order(values: Mapping[str, float | None]) -> list[str]:
    """Names sorted by value, ascending (closest first); ties keep the mapping's order, names
    without a value (None) come last in their given order."""
    known = [(v, i, n) for i, (n, v) in enumerate(values.items()) if v is not None]
    missing = [n for n, v in values.items() if v is None]
    return [n for _, _, n in sorted(known)] + missing


def ranking(values: Mapping[str, float | None], top_k: int) -> dict[str, list[str]]:
    """{order, closest, farthest}: `order` every name closest first (rank_order), `closest` its
    first top_k, `farthest` the top_k largest values, farthest first (names without a value are
    in neither end). top_k >= 1; with fewer than 2 top_k names the ends split them (the closer
    half closest, the farther half farthest), so no name is at both ends."""
    if top_k < 1:
        raise ValueError(f"report.top_k: must be at least 1, got {top_k}")
    order = rank_order(values)
    known = [n for n in order if values[n] is not None]
    near = min(top_k, (len(known) + 1) // 2)
    far = min(top_k, len(known) // 2)
    return {"order": order, "closest": known[:near], "farthest": known[::-1][:far]}


def separation_auc(a: np.ndarray, b: np.ndarray) -> float | None:
    """Share of pairs (x in a, y in b) with x < y, ties counting 1/2 (Mann-Whitney AUC).
    a (p,), b (q,) -> float in [0, 1]; None when either is empty."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        return None
    less = (a[:, None] < b[None, :]).sum()
    ties = (a[:, None] == b[None, :]).sum()
    return float((less + 0.5 * ties) / (a.size * b.size))


def pair_rng(seed: int, group_a: str, group_b: str) -> np.random.Generator:
    """The seeded stream of one pair of groups: numpy default_rng([seed, crc32(first),
    crc32(second)]) with the two labels in name order, so every pair has its own stream and
    neither depends on which group is listed first."""
    first, second = sorted((group_a, group_b))
    keys = [zlib.crc32(x.encode("utf-8")) for x in (first, second)]
    return np.random.default_rng([int(seed), *keys])


def separation_test(
    a: np.ndarray,
    b: np.ndarray,
    *,
    permutations: int,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[float | None, float | None]:
    """(AUC of a vs b, permutation p-value): the labels of the pooled values are shuffled
    `permutations` times (`rng`, or numpy default_rng(seed)); p = (1 + #{|AUC* - 1/2| >=
    |AUC - 1/2|}) / (1 + permutations), in (0, 1]. p is None when permutations is 0 or a side
    is empty."""
    auc = separation_auc(a, b)
    if auc is None or permutations <= 0:
        return auc, None
    a = np.asarray(a, dtype=np.float64).ravel()
    pooled = np.concatenate([a, np.asarray(b, dtype=np.float64).ravel()])
    rng = np.random.default_rng(seed) if rng is None else rng
    observed = abs(auc - 0.5)
    hits = 0
    for _ in stoppable(range(permutations)):
        perm = rng.permutation(pooled)
        value = separation_auc(perm[: a.size], perm[a.size :])
        hits += abs(value - 0.5) >= observed - 1e-12
    return auc, float((1 + hits) / (1 + permutations))


def group_summaries(
    values: Mapping[str, float | None], groups: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Group label -> {members (names in given order), summary of their values
    (metrics.summary_stats, None values left out)}; groups in order of first appearance."""
    out: dict[str, dict[str, Any]] = {}
    for name, label in groups.items():
        out.setdefault(label, {"members": []})["members"].append(name)
    for entry in out.values():
        vals = np.array([values[n] for n in entry["members"] if values.get(n) is not None])
        entry["summary"] = metrics.summary_stats(vals)
    return out


def group_separations(
    values: Mapping[str, float | None],
    groups: Mapping[str, str],
    *,
    permutations: int,
    seed: int,
) -> list[dict[str, Any]]:
    """One entry per pair of groups (A before B in order of first appearance):
    {group_a, group_b, auc, separation, p_value}; auc = share of (a, b) with value(a) <
    value(b), separation = max(auc, 1 - auc). The permutation test pools the two groups (and
    their members) in name order with the pair's own stream (pair_rng), so p does not depend
    on the listing."""
    summary = group_summaries(values, groups)
    labels = list(summary)
    out = []
    for i, ga in enumerate(labels):
        for gb in labels[i + 1 :]:
            va = [values[n] for n in sorted(summary[ga]["members"]) if values.get(n) is not None]
            vb = [values[n] for n in sorted(summary[gb]["members"]) if values.get(n) is not None]
            first, second = (va, vb) if ga <= gb else (vb, va)
            auc, p = separation_test(
                np.array(first),
                np.array(second),
                permutations=permutations,
                rng=pair_rng(seed, ga, gb),
            )
            if auc is not None and ga > gb:
                auc = 1.0 - auc
            sep = None if auc is None else max(auc, 1.0 - auc)
            out.append({"group_a": ga, "group_b": gb, "auc": auc, "separation": sep, "p_value": p})
    return out


def _within_between(
    matrix: np.ndarray, labels: np.ndarray, ga: str, gb: str
) -> tuple[np.ndarray, np.ndarray]:
    """Upper-triangle entries of `matrix` with both ends in one of the two groups (within)
    and with one end in each (between)."""
    i, j = np.triu_indices(len(matrix), k=1)
    li, lj = labels[i], labels[j]
    ends = np.isin(li, [ga, gb]) & np.isin(lj, [ga, gb])
    within = ends & (li == lj)
    between = ends & (li != lj)
    return matrix[i[within], j[within]], matrix[i[between], j[between]]


def matrix_separations(
    matrix: np.ndarray,
    groups: Sequence[str | None],
    *,
    permutations: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Separation of every pair of groups from a symmetric (K, K) distance matrix (method.md
    §12.6): separation = AUC(within entries < between entries) (ties 1/2), within = pairs of
    sets in the same group (A or B), between = one set in each; symmetric in A and B. p-value:
    the group labels of the sets of A and B are permuted (pair_rng stream), p = (1 + #{sep* >=
    sep}) / (1 + permutations) (one-sided: separation larger than by chance). `groups[i]` is
    set i's label (None: in no group). One entry per pair, A before B in order of first
    appearance: {group_a, group_b, auc, separation, p_value} (auc = separation here). None
    values when no within entry exists (both groups of one set)."""
    m = np.asarray(matrix, dtype=np.float64)
    labels = np.array([g if g is not None else "" for g in groups], dtype=object)
    order = list(dict.fromkeys(g for g in groups if g is not None))
    out = []
    for x, ga in enumerate(order):
        for gb in order[x + 1 :]:
            within, between = _within_between(m, labels, ga, gb)
            sep = separation_auc(-between, -within) if within.size else None
            p = None
            if sep is not None and permutations > 0:
                rng = pair_rng(seed, ga, gb)
                idx = np.flatnonzero(np.isin(labels, [ga, gb]))
                hits = 0
                for _ in stoppable(range(permutations)):
                    shuffled = labels.copy()
                    shuffled[idx] = rng.permutation(labels[idx])
                    w, b = _within_between(m, shuffled, ga, gb)
                    hits += separation_auc(-b, -w) >= sep - 1e-12
                p = float((1 + hits) / (1 + permutations))
            out.append({"group_a": ga, "group_b": gb, "auc": sep, "separation": sep, "p_value": p})
    return out


# --------------------------------------------------------------------------- matrix


def dataset_matrices(
    blocks: Sequence[np.ndarray],
    *,
    dims: int | None,
    shared: bool = False,
    route: str = "auto",
    seed: int = 0,
    **engine_kw: Any,
) -> dict[str, np.ndarray]:
    """{o_dist_mean, energy}: two (K, K) float64 matrices between every two of the K blocks.

    shared False: each unordered pair {i, j} gets its own joint PCA of [X_i; X_j] to `dims`
    (the diagonal: a PCA of X_i alone), as the paper measures one (P, S) pair; shared True:
    one joint PCA of every block. o_dist_mean[i, j] = mean ||a - b|| over the pair;
    energy[i, j] = 2 o_dist_mean[i, j] - E||a - a'|| - E||b - b'|| with the within means in the
    same pair space (metrics.energy_from_sums, V-statistic), so energy has a zero diagonal.
    Each unordered pair is computed once and mirrored: both matrices are exactly symmetric."""
    k = len(blocks)
    out = np.zeros((k, k), dtype=np.float64)
    energy = np.zeros((k, k), dtype=np.float64)
    within_shared: dict[int, float] = {}

    def within(x: np.ndarray, i: int | None) -> float:
        if i is not None and i in within_shared:
            return within_shared[i]
        value = float(engine.row_distance_sums(x, x, **engine_kw).sum())
        if i is not None:
            within_shared[i] = value
        return value

    if shared:
        projected, _ = joint_pca(list(blocks), dims, route=route, seed=seed)
    for i in range(k):
        for j in range(i, k):
            if shared:
                a, b = projected[i], projected[j]
            elif i == j:
                (a,), _ = joint_pca([blocks[i]], dims, route=route, seed=seed)
                b = a
            else:
                (a, b), _ = joint_pca([blocks[i], blocks[j]], dims, route=route, seed=seed)
            i_dist = metrics.image_dataset_distances(a, b, **engine_kw)
            cross = float(np.sum(i_dist))
            out[i, j] = out[j, i] = metrics.o_dist_mean(i_dist, len(b))
            if i != j:
                keys = (i, j) if shared else (None, None)
                terms = metrics.energy_from_sums(
                    cross, within(a, keys[0]), within(b, keys[1]), len(a), len(b)
                )
                energy[i, j] = energy[j, i] = terms["distance"]
    return {"o_dist_mean": out, "energy": energy}


def dataset_matrix(
    blocks: Sequence[np.ndarray],
    *,
    dims: int | None,
    shared: bool = False,
    route: str = "auto",
    seed: int = 0,
    **engine_kw: Any,
) -> np.ndarray:
    """The o_dist_mean matrix of dataset_matrices."""
    return dataset_matrices(blocks, dims=dims, shared=shared, route=route, seed=seed, **engine_kw)[
        "o_dist_mean"
    ]


def cluster_tree(matrix: np.ndarray) -> tuple[list[int], list[list[float]] | None]:
    """Average-linkage hierarchical clustering (scipy, optimal leaf ordering) of the
    off-diagonal entries of a symmetric (K, K) matrix: (leaf order, linkage rows [i, j,
    height, size], (K - 1, 4); None for K < 3, whose order is the job order)."""
    m = np.asarray(matrix, dtype=np.float64)
    k = len(m)
    if k < 3:
        return list(range(k)), None
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    off = np.maximum(m, 0.0)
    np.fill_diagonal(off, 0.0)
    tree = linkage(squareform(off, checks=False), method="average", optimal_ordering=True)
    return [int(i) for i in leaves_list(tree)], tree.tolist()


def cluster_order(matrix: np.ndarray) -> list[int]:
    """Leaf order of cluster_tree(matrix); [0] for K = 1."""
    return cluster_tree(matrix)[0]


def nearest_other(matrix: np.ndarray, names: Sequence[str]) -> dict[str, str | None]:
    """Name -> the other name with the smallest entry in its row (first on ties); None for a
    single dataset."""
    m = np.asarray(matrix, dtype=np.float64)
    out: dict[str, str | None] = {}
    for i, name in enumerate(names):
        row = m[i].copy()
        row[i] = np.inf
        out[name] = names[int(np.argmin(row))] if len(names) > 1 else None
    return out
