"""The measure stage across many datasets (moved out of worker.analysis): the ranking of the
secondaries, group separations and the dataset matrix (docs/method.md sections 11-12).
"""

from __future__ import annotations

import numpy as np

from worker import comparison, stats
from worker.embeddings import EmbeddedSet
from worker.job import Job
from worker.pair_passes import _engine_kw
from worker.results import (
    DatasetMatrix,
    GroupPair,
    Groups,
    GroupSummary,
    RankDisagreement,
    Ranking,
    SecondaryResult,
    Summary,
)

# --------------------------------------------------------------------------- many datasets


def ranking_values(secondaries: list[SecondaryResult], metric: str) -> dict[str, float | None]:
    """Secondary -> its value of ranking.metric (method.md §12): energy_distance, o_dist_mean,
    mmd (MMD²), fid or kid (KID mean); None where it was not computed."""

    def value(s: SecondaryResult) -> float | None:
        st = s.statistics
        if metric == "energy_distance":
            return s.energy.distance if s.energy is not None else None
        if metric == "o_dist_mean":
            return s.o_dist_mean
        if metric == "mmd":
            return st.mmd.statistic if st is not None else None
        if metric == "fid":
            return st.fid if st is not None else None
        return st.kid.mean if st is not None else None

    return {s.name: value(s) for s in secondaries}


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def rank_disagreements(
    secondaries: list[SecondaryResult], order: list[str], metric: str
) -> list[RankDisagreement]:
    """The secondaries whose rank by `metric` (order, closest first) differs from their rank
    by o_dist_mean, each with the energy decomposition in words (method.md §12.2)."""
    if metric == "o_dist_mean":
        return []
    by_name = {s.name: s for s in secondaries}
    paper = comparison.rank_order({s.name: s.o_dist_mean for s in secondaries})
    out = []
    for r, name in enumerate(order, start=1):
        pr = paper.index(name) + 1
        if pr == r:
            continue
        sec = by_name[name]
        why = sec.energy.explanation if sec.energy is not None else ""
        out.append(
            RankDisagreement(
                name=name,
                rank=r,
                o_dist_mean_rank=pr,
                explanation=f"{name} ranks {_ordinal(r)} by {metric} but {_ordinal(pr)} by "
                f"the paper's o_dist_mean. {why}".strip(),
            )
        )
    return out


def rank_secondaries(secondaries: list[SecondaryResult], job: Job) -> Ranking:
    """Secondaries ranked by ranking.metric, closest first (method.md §11-12), where the
    paper's o_dist_mean ranks them differently and why, and the PDF sections report.detail
    keeps: every secondary (full) or the top_k closest and farthest (summary)."""
    top_k = job.report.top_k
    metric = job.ranking.metric
    values = ranking_values(secondaries, metric)
    ranked = comparison.ranking(values, top_k)
    detail = job.report.detail_for(len(secondaries))
    ranking = Ranking(
        by=metric,
        metric=metric,
        values=values,
        disagreements=rank_disagreements(secondaries, ranked["order"], metric),
        top_k=top_k,
        detail=detail,
        sections=[],
        **ranked,
    )
    ranking.sections = ranking.order if detail == "full" else ranking.highlighted
    return ranking


def compare_groups(
    secondaries: list[SecondaryResult], job: Job, matrix: DatasetMatrix | None = None
) -> Groups | None:
    """Per-group summaries and the separation of every pair of groups (method.md §12.6;
    paper appendix E). With the dataset matrix: groups of every dataset with a `group`,
    separated by the matrix that orders it (energy unless ranking.metric is o_dist_mean);
    without: groups of secondaries by their ranking-metric value against P. None when fewer
    than one group is given."""
    metric = job.ranking.metric
    perms = job.metrics.group_permutations
    if matrix is not None:
        labels = {d.name: d.group for d in job.all_datasets if d.group is not None}
    else:
        labels = {d.name: d.group for d in job.datasets.secondary if d.group is not None}
    if not labels:
        return None
    o_mean = {s.name: s.o_dist_mean for s in secondaries}
    values = ranking_values(secondaries, metric)
    if matrix is not None:
        grid = matrix.o_dist_mean if matrix.ordered_by == "o_dist_mean" else matrix.energy
        pairs = comparison.matrix_separations(
            np.array(grid, dtype=np.float64),
            [labels.get(n) for n in matrix.names],
            permutations=perms,
            seed=job.seed,
        )
        order = [n for n in matrix.names if n in labels]
    else:
        order = [s.name for s in secondaries if s.name in labels]
        pairs = comparison.group_separations(
            {n: values[n] for n in order},
            {n: labels[n] for n in order},
            permutations=perms,
            seed=job.seed,
        )
    groups = {n: labels[n] for n in order}
    summaries = comparison.group_summaries({n: o_mean.get(n) for n in order}, groups)
    value_summaries = comparison.group_summaries({n: values.get(n) for n in order}, groups)
    adjusted = stats.adjust_p_values([p["p_value"] for p in pairs], job.metrics.p_adjustment)
    return Groups(
        groups=[
            GroupSummary(
                name=label,
                members=g["members"],
                o_dist_mean=Summary(**g["summary"]),
                values=Summary(**value_summaries[label]["summary"]),
            )
            for label, g in summaries.items()
        ],
        pairs=[
            GroupPair(permutations=perms, p_value_adjusted=a, **p)
            for p, a in zip(pairs, adjusted, strict=True)
        ],
        metric=metric,
        basis="matrix" if matrix is not None else "primary",
    )


def analyse_matrix(sets: list[EmbeddedSet], job: Job) -> DatasetMatrix:
    """o_dist_mean and the energy distance between every two datasets, each pair in its own
    joint PCA (or one shared PCA: pca.shared), from the embeddings already made (method.md
    §11-12). Clustering order and nearest use the energy matrix unless ranking.metric is
    o_dist_mean."""
    names = [s.name for s in sets]
    both = comparison.dataset_matrices(
        [s.vectors for s in sets],
        dims=job.pca.dims,
        shared=job.pca.shared,
        route=job.pca.route,
        seed=job.seed,
        **_engine_kw(job),
    )
    ordered_by = "o_dist_mean" if job.ranking.metric == "o_dist_mean" else "energy"
    grid = both[ordered_by]
    order, tree = comparison.cluster_tree(grid)
    return DatasetMatrix(
        names=names,
        o_dist_mean=both["o_dist_mean"].tolist(),
        energy=both["energy"].tolist(),
        ordered_by=ordered_by,
        pca="shared" if job.pca.shared else "pair",
        dims=job.pca.dims,
        order=[names[i] for i in order],
        linkage=tree,
        nearest=comparison.nearest_other(grid, names),
    )
