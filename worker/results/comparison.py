"""Report blocks across models and datasets: model agreement, perturbation robustness, the
ranking, groups and the dataset matrix.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from worker.results.base import ByName, Count, Result, Summary, optional_block

# --------------------------------------------------------------------------- across models


class RankCorrelation(Result):
    """Rank agreement of two paired sequences (scipy; null when undefined)."""

    spearman: float | None = Field(description="Spearman's rho (in [-1, 1]).")
    kendall_tau: float | None = Field(description="Kendall's tau-b (in [-1, 1]).")


class ModelPair(Result):
    """Agreement of two extractors."""

    model_a: str = Field(description="Label of the first extractor.")
    model_b: str = Field(description="Label of the second extractor.")
    o_dist: RankCorrelation = Field(description="Agreement of O_dist across secondaries.")
    i_dist: dict[str, RankCorrelation] = Field(
        description="Secondary -> agreement of its per-image I_dist."
    )


class ModelAgreement(Result):
    """Do the extractors rank the data alike? (several models only)."""

    pairs: list[ModelPair] = Field(description="One entry per pair of extractors.")
    rank_differs: list[str] = Field(
        description="Secondaries whose O_dist rank is not the same under every extractor."
    )


class Perturbation(Result):
    """Ranking stability under one image perturbation (paper appendix D)."""

    kendall_tau: float | None = Field(
        description="Kendall tau of the secondaries' O_dist, clean vs perturbed (in [-1, 1])."
    )
    o_dist_scaled: ByName = Field(description="Secondary -> scaled O_dist when perturbed.")
    image_kendall_tau: ByName = Field(
        description="Secondary -> Kendall tau of its per-image I_dist, clean vs perturbed."
    )


# --------------------------------------------------------------------------- many datasets


RankingMetric = Literal["energy_distance", "o_dist_mean", "mmd", "fid", "kid"]


class RankDisagreement(Result):
    """A secondary whose rank by the ranking metric differs from its rank by the paper's
    o_dist_mean, and why (method.md §12.2)."""

    name: str = Field(description="Secondary name.")
    rank: int = Field(ge=1, description="Its rank by ranking.metric (1 = closest).")
    o_dist_mean_rank: int = Field(ge=1, description="Its rank by o_dist_mean (1 = closest).")
    explanation: str = Field(description="Why, in words (the energy decomposition).")


class Ranking(Result):
    """Secondaries ranked by ranking.metric (default the energy distance, method.md §12),
    closest first."""

    by: RankingMetric = Field(description="The ranking key (same as metric).")
    metric: RankingMetric = Field(
        default="energy_distance",
        description="ranking.metric: energy_distance, o_dist_mean, mmd (MMD²), fid or kid "
        "(KID mean); every ranking is closest first.",
    )
    values: ByName = Field(
        default_factory=dict, description="Secondary -> its value of the ranking metric."
    )
    disagreements: list[RankDisagreement] = Field(
        default_factory=list,
        description="Secondaries ranked differently by o_dist_mean (the paper's distance), "
        "with the reason.",
    )
    top_k: Count = Field(description="report.top_k: how many names each end lists.")
    order: list[str] = Field(
        description="Every secondary, closest first (ties: job order; no value: last)."
    )
    closest: list[str] = Field(description="The top_k closest secondaries, closest first.")
    farthest: list[str] = Field(description="The top_k farthest secondaries, farthest first.")
    detail: Literal["full", "summary"] = Field(
        description="report.detail as applied: full (a PDF section per secondary) or summary."
    )
    sections: list[str] = Field(
        description="Secondaries with a full PDF section, in rank order (summary: both ends)."
    )

    @property
    def highlighted(self) -> list[str]:
        """Both ends, in rank order: the top_k closest and the top_k farthest secondaries, each
        once (every secondary when there are at most 2 top_k). The one owner of the rule the
        summary sections, the figures and report.html follow."""
        if len(self.order) <= 2 * self.top_k:
            return list(self.order)
        return list(self.order[: self.top_k]) + list(self.order[-self.top_k :])


class GroupSummary(Result):
    """One group of secondaries (`group:` in the job)."""

    name: str = Field(description="Group label from the job.")
    members: list[str] = Field(description="Secondaries of the group, in job order.")
    o_dist_mean: Summary = Field(description="Summary of the members' o_dist_mean (std ddof 0).")
    values: Summary | None = optional_block(
        "Summary of the members' values of the ranking metric (groups.metric; std ddof 0)."
    )


class GroupPair(Result):
    """Separation of two groups: AUC = share of pairs (a in A, b in B) with
    o_dist_mean(a) < o_dist_mean(b), ties 1/2 (paper appendix E)."""

    group_a: str = Field(description="Group A (earlier in the job).")
    group_b: str = Field(description="Group B.")
    auc: float | None = Field(description="In [0, 1]: 1 = every A set closer than every B set.")
    p_value: float | None = Field(
        description="Permutation p-value over the group labels, two-sided on |AUC - 1/2| "
        "((1 + hits) / (1 + permutations), in (0, 1]); null without permutations."
    )
    permutations: Count = Field(description="Label permutations (metrics.group_permutations).")
    separation: float | None = optional_block(
        "In [0, 1], the same whichever group is listed first: from the matrix, the AUC of "
        "within-group entries below between-group ones; else max(auc, 1 - auc) (§12.6)."
    )
    p_value_adjusted: float | None = optional_block(
        "p_value adjusted over the pairs of groups (metrics.p_adjustment)."
    )


class Groups(Result):
    """Groups of secondaries (or of every dataset of the matrix) and how well the ranking
    metric separates them."""

    groups: list[GroupSummary] = Field(description="Every group, in order of first appearance.")
    pairs: list[GroupPair] = Field(description="One entry per pair of groups.")
    metric: RankingMetric | None = optional_block(
        "The ranking metric the values, auc and separation use (ranking.metric)."
    )
    basis: Literal["matrix", "primary"] | None = optional_block(
        "matrix: separation from the energy (or o_dist_mean) matrix over every dataset; "
        "primary: from each secondary's value against the primary."
    )


class DatasetMatrix(Result):
    """Every dataset as the primary in turn (datasets.matrix; method.md §11)."""

    names: list[str] = Field(description="Datasets, in job order (primary first).")
    o_dist_mean: list[list[float | None]] = Field(
        description="[i][j] = o_dist_mean of dataset i against dataset j (symmetric; diagonal: "
        "a set against itself, self-pairs included)."
    )
    pca: Literal["pair", "shared"] = Field(
        description="pair: one joint PCA per pair of datasets; shared: one PCA over all."
    )
    dims: int | None = Field(description="pca.dims (null: raw centred features).")
    order: list[str] = Field(
        description="Names in the leaf order of an average-linkage clustering (scipy)."
    )
    nearest: dict[str, str | None] = Field(
        description="Dataset -> the other dataset with the smallest entry of the matrix that "
        "orders (ordered_by)."
    )
    energy: list[list[float]] | None = optional_block(
        "[i][j] = energy distance of datasets i and j in their pair's space (method.md "
        "§12.1; symmetric, zero diagonal)."
    )
    ordered_by: Literal["energy", "o_dist_mean"] | None = optional_block(
        "The matrix behind order and nearest: o_dist_mean when ranking.metric is o_dist_mean, "
        "else energy."
    )
    linkage: list[list[float]] | None = optional_block(
        "The clustering behind order (scipy linkage rows [i, j, height, size]: i, j index names, "
        "or K + r for the cluster made by row r; average linkage of the ordered_by matrix); "
        "null below 3 datasets."
    )
