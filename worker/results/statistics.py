"""Report blocks for a secondary's statistics: MMD, KID, null subsamples, duplicates, energy
distance, novelty and the verdict.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from worker.results.base import Count, Result, optional_block


class MmdResult(Result):
    """Two-sample test: unbiased Gaussian-kernel MMD² and its permutation p-value (§4.2)."""

    statistic: float | None = Field(description="Unbiased MMD² (unit-free; may be < 0).")
    p_value: float | None = Field(description="(1 + #{perm >= obs}) / (1 + permutations); (0, 1].")
    sigma: float | None = Field(description="Kernel bandwidth (distance units, > 0).")
    permutations: Count = Field(description="Number of label permutations.")
    n_x: Count = Field(description="P samples used (after subsampling).")
    n_y: Count = Field(description="S samples used (after subsampling).")
    p_value_adjusted: float | None = optional_block(
        "p_value adjusted over the secondaries (metrics.p_adjustment; method.md §12.4)."
    )


class KidResult(Result):
    """Kernel Inception Distance over random subsets (cubic polynomial kernel, §4.3)."""

    mean: float | None = Field(description="Mean unbiased MMD² over the subsets.")
    std: float | None = Field(description="Population std over the subsets (>= 0).")
    subset_size: Count | None = Field(
        default=None, description="Samples drawn from each set per subset (seeded)."
    )
    subsets: Count | None = Field(default=None, description="Number of subsets averaged.")


class NullSubsample(Result):
    """The seeded subsample of P that each null repeat splits (bounded cost, method.md §4.1)."""

    size: Count = Field(description="Rows of P drawn per repeat (all of P when it is small).")
    of: Count = Field(description="Rows of P in all.")
    repeats: Count = Field(description="Random half-splits averaged.")


class Statistics(Result):
    """Yardsticks of one secondary in its pair's PCA space (method.md §4)."""

    o_dist_null_mean: float | None = Field(
        description="Mean o_dist_mean of P's random halves against each other (>= 0)."
    )
    o_dist_ratio: float | None = Field(description="o_dist_mean / null mean (1 = like P itself).")
    o_dist_percentile: float | None = Field(
        description="Percentage of null values below o_dist_mean (0-100)."
    )
    null_subsample: NullSubsample | None = Field(
        default=None, description="The subsample of P the null calibration used."
    )
    mmd: MmdResult = Field(description="MMD two-sample test of P against S.")
    fid: float | None = Field(description="Fréchet distance of Gaussian fits (squared units).")
    kid: KidResult = Field(description="Kernel Inception Distance.")


class DuplicatePair(Result):
    """Two images of one secondary that are the same or nearly so."""

    id_a: str = Field(description="First image id (earlier in S).")
    id_b: str = Field(description="Second image id.")
    distance: float = Field(description="Their distance (>= 0).")
    exact: bool = Field(description="True when their file contents are identical (SHA-256).")


class PrimaryDuplicate(Result):
    """An image of S that duplicates an image of P (possible train/test leakage)."""

    id: str = Field(description="Image id in S.")
    primary_id: str = Field(description="Image id in P.")
    distance: float = Field(description="Their distance (>= 0).")
    exact: bool = Field(description="True when their file contents are identical (SHA-256).")


class Duplicates(Result):
    """Exact and near duplicates (method.md §4.4)."""

    threshold: float = Field(
        description="Near-duplicate distance: a tenth of P's median nearest-neighbour distance."
    )
    within: list[DuplicatePair] = Field(description="Duplicate pairs within S, in S order.")
    with_primary: list[PrimaryDuplicate] = Field(
        description="S images with a duplicate in P (at most one entry each), in S order."
    )


class EnergyResult(Result):
    """Energy distance of S from P in the pair's PCA space, its terms, its permutation test and
    its decomposition in words (method.md §12.1-12.2)."""

    distance: float = Field(
        description="2 cross - within_secondary - within_primary (V-statistic; >= 0, 0 for "
        "identical sets; distance units)."
    )
    cross: float = Field(description="E|s - p|: mean S-P distance (= o_dist_mean; >= 0).")
    within_secondary: float = Field(description="E|s - s'|: mean distance within S (>= 0).")
    within_primary: float = Field(description="E|p - p'|: mean distance within P (>= 0).")
    coefficient: float = Field(
        description="distance / (2 cross), in [0, 1]: unit-free (0 = same distribution)."
    )
    p_value: float | None = Field(
        description="Permutation p-value (1 + #{perm >= obs}) / (1 + permutations), in (0, 1]; "
        "null without permutations."
    )
    p_value_adjusted: float | None = Field(
        description="p_value adjusted over the secondaries (metrics.p_adjustment; §12.4)."
    )
    min_p_value: float | None = Field(
        description="Smallest attainable p_value: 1 / (1 + permutations)."
    )
    permutations: Count = Field(description="Label permutations (metrics.energy_permutations).")
    n_x: Count = Field(description="P samples the test used (after subsampling).")
    n_y: Count = Field(description="S samples the test used (after subsampling).")
    explanation: str = Field(
        description="Why S is far or near, in words: shifted, less or more varied than P."
    )


class NoveltySummary(Result):
    """Per-image novelty against P, summarised for S (method.md §12.3)."""

    k: int = Field(ge=1, description="The k of the k-th nearest P image (novelty.k).")
    quantile: float = Field(description="q (novelty.quantile): novel beyond P's q-quantile.")
    threshold: float = Field(
        description="q-quantile of P's leave-one-out k-NN distances (distance units)."
    )
    novel_count: Count = Field(description="Images of S beyond the threshold.")
    novel_fraction: float | None = Field(description="novel_count / |S|, in [0, 1].")
    base_rate: float = Field(
        description="1 - q: the novel fraction expected of a set drawn like P (e.g. 0.05)."
    )
    p_value: float | None = Field(
        description="One-sided binomial P(X >= novel_count), X ~ Binomial(|S|, base_rate)."
    )
    p_value_adjusted: float | None = Field(
        description="p_value adjusted over the secondaries (metrics.p_adjustment; §12.4)."
    )


class Verdict(Result):
    """A verdict page 1 prints as it is (method.md §12.5)."""

    label: Literal["same", "shifted", "far"] = Field(
        description="same: no detectable difference; shifted: a significant difference; far: "
        "most of S lies beyond P's envelope."
    )
    reason: str = Field(description="The numbers behind the label, in words.")
